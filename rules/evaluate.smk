# Metrics per (task, model): paired errors for translation (beside the task's baselines),
# distribution metrics and the memorization audit for generation (in the study's feature spaces).
import json
import shlex

from pipeline.targets import downstream_models, downstream_tasks, run_model, task_json

_FEATURES = config["eval"]["features"]
# Each verb gets the keys of the eval section it reads, so that a change reruns only the jobs it affects.
_ENCODER_SETTINGS = json.dumps({"encoder_steps": config["eval"]["encoder_steps"]}, sort_keys=True)
_GENERATION_SETTINGS = json.dumps({k: config["eval"][k] for k in ("features", "max_real", "extractors")}, sort_keys=True)


rule encoder:
    input:
        split=layout.splits_file(RESULTS),
    output:
        layout.encoder_file(RESULTS),
    params:
        prep=layout.prep_dir(RESULTS),
        modalities=" ".join(MODALITIES),
        settings=_ENCODER_SETTINGS,
        seed=config["train"]["seed"],
    log:
        f"{RESULTS}/logs/encoder.log",
    benchmark:
        f"{RESULTS}/benchmarks/encoder/encoder.tsv"
    # every validating generation model's training waits for it: first in line once the split exists
    priority: 10
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        MEDGEN + " encoder --prep-root {params.prep} --split {input.split} --modalities {params.modalities}"
        " --out {output} --settings {params.settings:q} --seed {params.seed} > {log} 2>&1"


def _evaluate_inputs(wc):
    spec = config["tasks"][wc.task]
    inputs = {"split": layout.splits_file(RESULTS)}
    if spec["kind"] == "translation":
        inputs["synth"] = [layout.translation(RESULTS, wc.task, wc.model, s) for s in TEST_SUBJECTS]
        inputs["baselines"] = layout.baselines_metrics(RESULTS, wc.task)
    else:
        inputs["model"] = layout.model_file(RESULTS, wc.task, wc.model)
        inputs["samples"] = layout.samples_manifest(RESULTS, wc.task, wc.model)
        if "encoder" in _FEATURES:
            inputs["encoder"] = layout.encoder_file(RESULTS)
    return inputs


def _evaluate_args(wc, input):
    spec = config["tasks"][wc.task]
    if spec["kind"] == "translation":
        return (
            f"translation --task-json '{task_json(config, wc.task)}' --pred-dir {layout.translations_dir(RESULTS, wc.task, wc.model)}"
            f" --nifti-root {layout.nifti_dir(RESULTS)} --baselines {input.baselines}"
        )
    encoder = f" --encoder {input.encoder}" if "encoder" in _FEATURES else ""
    return f"generation --checkpoint {input.model} --samples {input.samples}{encoder} --settings {shlex.quote(_GENERATION_SETTINGS)}"


rule evaluate:
    input:
        unpack(_evaluate_inputs),
    output:
        layout.metrics_file(RESULTS),
    params:
        args=_evaluate_args,
        name=lambda wc: run_model(wc.model),
        prep=layout.prep_dir(RESULTS),
        seed=config["train"]["seed"],
    log:
        f"{RESULTS}/logs/evaluate/{{task}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{task}}_{{model}}.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        MEDGEN + " evaluate {params.args} --model {params.name} --prep-root {params.prep} --split {input.split}"
        " --out {output} --seed {params.seed} > {log} 2>&1"


def _baseline_inputs(wc):
    spec = config["tasks"][wc.task]
    return {
        "split": layout.splits_file(RESULTS),
        "prep": expand(layout.prep_mapping(RESULTS), subject=SUBJECTS),
        "nifti": [layout.nifti_image(RESULTS, s, m) for s in TEST_SUBJECTS for m in (spec["source"], spec["target"])],
    }


# What needs no learning, on the same test subjects and scored by the same code as the models:
# identity + intensity matching, a voxel-wise intensity lookup, the resolution floor.
rule baselines:
    input:
        unpack(_baseline_inputs),
    output:
        layout.baselines_metrics(RESULTS),
    params:
        task=lambda wc: task_json(config, wc.task),
        prep=layout.prep_dir(RESULTS),
        nifti=layout.nifti_dir(RESULTS),
        out_dir=lambda wc: layout.baselines_dir(RESULTS, wc.task),
        seed=config["train"]["seed"],
    log:
        f"{RESULTS}/logs/baselines/{{task}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baselines/{{task}}.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        MEDGEN + " baselines --task-json {params.task:q} --prep-root {params.prep} --nifti-root {params.nifti}"
        " --split {input.split} --out-dir {params.out_dir} --out {output} --seed {params.seed} > {log} 2>&1"


for _task in downstream_tasks(config):
    if not USE_PHANTOM:
        raise WorkflowError(f"config key 'tasks.{_task}.downstream': segmentation needs tissue label maps, which only the phantom data source provides")


# Downstream utility: segmentation Dice on the real test split, trained on real slices alone and
# with each model's synthetic (image, label) pairs (medgen.eval.downstream).
rule downstream:
    input:
        split=layout.splits_file(RESULTS),
        prep=expand(layout.prep_mapping(RESULTS), subject=SUBJECTS),
        models=lambda wc: [p for paths in downstream_models(config, RESULTS, wc.task).values() for p in paths],
    output:
        layout.downstream_metrics(RESULTS),
    params:
        task=lambda wc: task_json(config, wc.task),
        prep=layout.prep_dir(RESULTS),
        models=lambda wc: " ".join(f"--model {m}={','.join(p)}" for m, p in downstream_models(config, RESULTS, wc.task).items()),
        settings=json.dumps(config["eval"]["downstream"], sort_keys=True),
    log:
        f"{RESULTS}/logs/downstream/{{task}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/downstream/{{task}}.tsv"
    # the longest job after training: it starts once every training has (longest jobs first, see
    # rules/train.smk), then before the short per-model jobs
    priority: 4
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        MEDGEN + " downstream --task-json {params.task:q} --prep-root {params.prep} --split {input.split} --out {output}"
        " {params.models} --settings {params.settings:q} > {log} 2>&1"
