# Reorient, resample, mask and normalise each subject onto one grid shared by its modalities.
import json

def _preprocess_inputs(wc):
    inputs = {m: f"{RESULTS}/nifti/{wc.subject}/{m}.nii.gz" for m in MODALITIES}
    if USE_PHANTOM:
        inputs["labels"] = f"{RESULTS}/phantom/nifti/{wc.subject}/labels.nii.gz"
    return inputs


rule preprocess:
    input:
        unpack(_preprocess_inputs),
    output:
        images=expand(f"{RESULTS}/prep/{{{{subject}}}}/{{modality}}.nii.gz", modality=MODALITIES),
        mask=f"{RESULTS}/prep/{{subject}}/mask.nii.gz",
        mapping=f"{RESULTS}/prep/{{subject}}/normalisation.json",
        labels=[f"{RESULTS}/prep/{{subject}}/labels.nii.gz"] if USE_PHANTOM else [],
    params:
        indir=lambda wc: f"{RESULTS}/nifti/{wc.subject}",
        outdir=lambda wc: f"{RESULTS}/prep/{wc.subject}",
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
