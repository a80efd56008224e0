# One training job per (task, model). Only model.pt is declared: checkpoint.pt beside it is the
# resumable state, which Snakemake must not delete when a job fails or is killed. The job resumes
# it only if it records this run's fingerprint (model, options, task, split, preprocessing, data);
# a checkpoint of another run is moved aside (checkpoint.stale-<n>.pt) and training starts afresh.
from pipeline.targets import model_options_json, run_model, run_seed, task_json, train_setting

# Several GPUs of one node: one process per GPU through torchrun (gradients averaged each step),
# started as a module of the same Python as MEDGEN (no `torchrun` on PATH needed).
_GPUS = config["train"]["gpus"]
_MEDGEN_TRAIN = f"{PYTHON} -m torch.distributed.run --standalone --nproc_per_node {_GPUS} -m medgen.cli train" if _GPUS > 1 else f"{MEDGEN} train"


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
        name=lambda wc: run_model(wc.model),
        seed=lambda wc: run_seed(config, wc.task, wc.model),
        options=lambda wc: model_options_json(config, wc.task, wc.model),
        steps=lambda wc: train_setting(config, wc.task, wc.model, "steps"),
        batch=lambda wc: train_setting(config, wc.task, wc.model, "batch_size"),
        t=config["train"],
        flags=("" if config["train"]["amp"] else " --no-amp") + (" --compile" if config["train"]["compile"] else ""),
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
        " --model {params.name} --options-json {params.options:q} --out {params.out}"
        " --steps {params.steps} --batch-size {params.batch} --seed {params.seed} --device {params.t[device]}"
        " --ckpt-every {params.t[ckpt_every]} --log-every {params.t[log_every]} --image-every {params.t[image_every]}"
        " --ema-decay {params.t[ema_decay]}{params.flags} --on-mismatch restart > {log} 2>&1"
