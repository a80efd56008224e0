# One training job per (task, model). Only model.pt is declared: checkpoint.pt beside it is the
# resumable state, which Snakemake must not delete when a job fails or is killed.
from pipeline.targets import model_options_json, task_json, train_setting

# Several GPUs of one node: one process per GPU through torchrun (gradients averaged each step).
_GPUS = config["train"]["gpus"]
_MEDGEN_TRAIN = f"torchrun --standalone --nproc_per_node {_GPUS} -m medgen.cli train" if _GPUS > 1 else "medgen train"


rule train:
    input:
        split=f"{RESULTS}/splits.json",
        prep=expand(f"{RESULTS}/prep/{{subject}}/normalisation.json", subject=SUBJECTS),
    output:
        model=f"{RESULTS}/models/{{task}}/{{model}}/model.pt",
    params:
        prep=f"{RESULTS}/prep",
        out=lambda wc: f"{RESULTS}/models/{wc.task}/{wc.model}",
        task=lambda wc: task_json(config, wc.task),
        options=lambda wc: model_options_json(config, wc.task, wc.model),
        steps=lambda wc: train_setting(config, wc.task, wc.model, "steps"),
        val_every=lambda wc: train_setting(config, wc.task, wc.model, "val_every"),
        batch=lambda wc: train_setting(config, wc.task, wc.model, "batch_size"),
        t=config["train"],
        flags=("" if config["train"]["amp"] else " --no-amp") + (" --compile" if config["train"]["compile"] else "")
        + (" --deterministic" if config["train"]["deterministic"] else ""),
    log:
        f"{RESULTS}/logs/train/{{task}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{task}}_{{model}}.tsv"
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["train"]["gpus"],
    shell:
        f"{_MEDGEN_TRAIN} --prep-root {{params.prep}} --split {{input.split}} --task-json {{params.task:q}}"
        " --model {wildcards.model} --options-json {params.options:q} --out {params.out}"
        " --steps {params.steps} --batch-size {params.batch} --seed {params.t[seed]} --device {params.t[device]}"
        " --ckpt-every {params.t[ckpt_every]} --log-every {params.t[log_every]} --image-every {params.t[image_every]}"
        " --ema-decay {params.t[ema_decay]} --val-every {params.val_every}{params.flags} > {log} 2>&1"
