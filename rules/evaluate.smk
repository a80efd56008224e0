# Metrics per (task, model): paired errors for translation, distribution metrics and the
# memorization audit for generation (in the study's feature spaces).
import json

from pipeline.targets import task_json

_FEATURES = config["eval"]["features"]


rule encoder:
    input:
        split=f"{RESULTS}/splits.json",
    output:
        f"{RESULTS}/eval/encoder.pt",
    params:
        prep=f"{RESULTS}/prep",
        modalities=" ".join(MODALITIES),
        steps=config["eval"]["encoder_steps"],
        seed=config["train"]["seed"],
    log:
        f"{RESULTS}/logs/encoder.log",
    benchmark:
        f"{RESULTS}/benchmarks/encoder/encoder.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        MEDGEN + " encoder --prep-root {params.prep} --split {input.split} --modalities {params.modalities}"
        " --out {output} --steps {params.steps} --seed {params.seed} > {log} 2>&1"


def _evaluate_inputs(wc):
    spec = config["tasks"][wc.task]
    inputs = {"split": f"{RESULTS}/splits.json"}
    if spec["kind"] == "translation":
        inputs["synth"] = [f"{RESULTS}/synth/{wc.task}/{wc.model}/{s}.nii.gz" for s in TEST_SUBJECTS]
    else:
        inputs["model"] = f"{RESULTS}/models/{wc.task}/{wc.model}/model.pt"
        inputs["samples"] = f"{RESULTS}/augment/{wc.task}/{wc.model}/manifest.tsv"
        if "encoder" in _FEATURES:
            inputs["encoder"] = f"{RESULTS}/eval/encoder.pt"
    return inputs


def _evaluate_args(wc, input):
    spec = config["tasks"][wc.task]
    if spec["kind"] == "translation":
        return (
            f"translation --task-json '{task_json(config, wc.task)}' --pred-dir {RESULTS}/synth/{wc.task}/{wc.model}"
            f" --nifti-root {RESULTS}/nifti"
        )
    encoder = f" --encoder {input.encoder}" if "encoder" in _FEATURES else ""
    extractors = json.dumps(config["eval"]["extractors"], sort_keys=True)
    return (
        f"generation --checkpoint {input.model} --samples {input.samples} --features {' '.join(_FEATURES)}{encoder}"
        f" --max-real {config['eval']['max_real']} --extractors-json '{extractors}'"
    )


rule evaluate:
    input:
        unpack(_evaluate_inputs),
    output:
        f"{RESULTS}/metrics/{{task}}/{{model}}.json",
    params:
        args=_evaluate_args,
        prep=f"{RESULTS}/prep",
        seed=config["train"]["seed"],
    log:
        f"{RESULTS}/logs/evaluate/{{task}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{task}}_{{model}}.tsv"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        MEDGEN + " evaluate {params.args} --model {wildcards.model} --prep-root {params.prep} --split {input.split}"
        " --out {output} --seed {params.seed} > {log} 2>&1"
