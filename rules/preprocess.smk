# Reorient, resample, mask and normalise each subject onto one grid shared by its modalities.
import json

def _preprocess_inputs(wc):
    inputs = {m: layout.nifti_image(RESULTS, wc.subject, m) for m in MODALITIES}
    if USE_PHANTOM:
        inputs["labels"] = layout.phantom_labels(RESULTS, wc.subject)
    return inputs


rule preprocess:
    input:
        unpack(_preprocess_inputs),
    output:
        images=expand(layout.prep_image(RESULTS, "{{subject}}"), modality=MODALITIES),
        mask=layout.prep_mask(RESULTS),
        mapping=layout.prep_mapping(RESULTS),
        labels=[layout.prep_labels(RESULTS)] if USE_PHANTOM else [],
    params:
        indir=lambda wc: layout.nifti_subject_dir(RESULTS, wc.subject),
        outdir=lambda wc: layout.prep_subject_dir(RESULTS, wc.subject),
        settings=json.dumps(config["preprocess"], sort_keys=True),  # its min_mask_fraction is the split's and the datasets'
        modalities=" ".join(MODALITIES),
        labels=lambda wc, input: f"--labels {input.labels}" if "labels" in input.keys() else "",
    log:
        f"{RESULTS}/logs/preprocess/{{subject}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/preprocess/{{subject}}.tsv"
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        MEDGEN + " preprocess --input-dir {params.indir} --modalities {params.modalities} --out {params.outdir}"
        " --settings {params.settings:q} {params.labels} > {log} 2>&1"
