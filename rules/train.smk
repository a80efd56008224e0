# One training job per (task, model). Only model.pt is declared: checkpoint.pt beside it is the
# resumable state, which Snakemake must not delete when a job fails or is killed. The job resumes
# it only if it records this run's fingerprint (model, options, task, split, preprocessing, data);
# a checkpoint of another run is moved aside (checkpoint.stale-<n>.pt) and training starts afresh.
from medgen.synth import DEFAULT_TEMPERATURE
from medgen.train.launch import torchrun_command
from pipeline.targets import downstream_tasks, model_entry, model_options_json, run_model, task_json, train_settings, train_settings_json

# Several GPUs: one process per GPU through torchrun (gradients averaged each step); several
# nodes (train.nodes > 1): srun starts one torchrun agent per node, joined by a c10d rendezvous.
_GPUS = config["train"]["gpus"]
_NODES = config["train"].get("nodes", 1)
_MEDGEN_TRAIN = torchrun_command(python=PYTHON, nodes=_NODES, procs_per_node=max(_GPUS, 1), rdzv_id="medgen-{wildcards.task}-{wildcards.model}")


def _validation_encoder(wc):
    """The study encoder for a generation model that validates (FD on the validation split in its
    space picks model.pt), when the study evaluates in that space; else nothing. The encoder rule
    reads only the split and the preprocessed training subjects, so this adds no cycle."""
    validates = train_settings(config, wc.task, wc.model)["val_every"] > 0 and "encoder" in config["eval"]["features"]
    return [layout.encoder_file(RESULTS)] if config["tasks"][wc.task]["kind"] == "generation" and validates else []


def _sample_temperature(wc) -> float:
    return model_entry(config, wc.task, wc.model)["sample"].get("temperature", DEFAULT_TEMPERATURE)


def _train_priority(wc) -> int:
    """The order in which jobs start (higher first), longest first so that no long job is left to run
    alone at the end: the encoder (10; the validating generation models wait for it), then the
    trainings, then a downstream study (4; it trains segmenters, the longest job after training),
    then the short per-model jobs (sample, translate, evaluate, baselines at 0), which fill both
    cores at the end. Among the trainings, the models a downstream study needs come first, so that
    it can start beside the last trainings; then generation models, whose chain after training
    (sampling, then evaluation in every feature space) is the longest per model, and in the demo
    the VAE-GAN is also the longest training."""
    if wc.task in downstream_tasks(config):
        return 8
    return 6 if config["tasks"][wc.task]["kind"] == "generation" else 5


rule train:
    input:
        split=layout.splits_file(RESULTS),
        prep=expand(layout.prep_mapping(RESULTS), subject=SUBJECTS),
        encoder=_validation_encoder,
    output:
        model=layout.model_file(RESULTS),
    params:
        prep=layout.prep_dir(RESULTS),
        out=lambda wc: layout.model_dir(RESULTS, wc.task, wc.model),
        task=lambda wc: task_json(config, wc.task),
        name=lambda wc: run_model(wc.model),
        options=lambda wc: model_options_json(config, wc.task, wc.model),
        # every training setting of the run in one object: a change to any of them reruns the job
        train=lambda wc: train_settings_json(config, wc.task, wc.model),
        encoder=lambda wc, input: f" --encoder {input.encoder}" if input.encoder else "",
        # validation samples are drawn as the sample rule will draw them
        temperature=lambda wc, input: f" --sample-temperature {_sample_temperature(wc)}" if input.encoder else "",
    priority: _train_priority
    log:
        f"{RESULTS}/logs/train/{{task}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{task}}_{{model}}.tsv"
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["train"]["gpus"],
        nodes=_NODES,
    shell:
        f"{_MEDGEN_TRAIN} --prep-root {{params.prep}} --split {{input.split}} --task-json {{params.task:q}}"
        " --model {params.name} --options-json {params.options:q} --settings {params.train:q} --out {params.out}"
        "{params.encoder}{params.temperature} --on-mismatch restart > {log} 2>&1"
