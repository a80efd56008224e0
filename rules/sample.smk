# Augmentation sets: samples of every generation model as NIfTI + manifest + PNG grid.
from pipeline.targets import model_entry, run_seed


def _sample_labels(wc):
    classes = config["tasks"][wc.task].get("condition")
    if classes is None:
        return ""
    if classes == "label_map":
        return f"--label-maps-from {layout.prep_dir(RESULTS)} {layout.splits_file(RESULTS)}"
    n = len(config["tasks"][wc.task]["modalities"]) if classes == "modality" else config["tasks"][wc.task]["slice_bins"] if classes == "slice_bin" else 2
    return "--labels " + " ".join(str(i) for i in range(n))


rule sample:
    input:
        model=layout.model_file(RESULTS),
    output:
        manifest=layout.samples_manifest(RESULTS),
        grid=layout.samples_grid(RESULTS),
    params:
        out=lambda wc: layout.samples_dir(RESULTS, wc.task, wc.model),
        n=lambda wc: config["tasks"][wc.task]["samples"],
        labels=_sample_labels,
        seed=lambda wc: run_seed(config, wc.task, wc.model),
        sampling=lambda wc: "".join(f" --{k} {v}" for k, v in sorted(model_entry(config, wc.task, wc.model)["sample"].items())),
    log:
        f"{RESULTS}/logs/sample/{{task}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/sample/{{task}}_{{model}}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        MEDGEN + " sample --checkpoint {input.model} --n {params.n} --out {params.out} --seed {params.seed}{params.sampling} {params.labels} > {log} 2>&1"
