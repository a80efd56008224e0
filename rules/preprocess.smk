# Reorient, resample, mask and normalise each subject onto one grid shared by its modalities.

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
        p=config["preprocess"],
        modalities=" ".join(MODALITIES),
        labels=lambda wc, input: f"--labels {input.labels}" if "labels" in input.keys() else "",
        reference=lambda wc: f"--reference {config['preprocess']['reference']}" if config["preprocess"]["reference"] else "",
        register="--register" if config["preprocess"]["register"] else "",
    log:
        f"{RESULTS}/logs/preprocess/{{subject}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/preprocess/{{subject}}.tsv"
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        MEDGEN + " preprocess --input-dir {params.indir} --modalities {params.modalities} --out {params.outdir}"
        " --spacing {params.p[spacing][0]} {params.p[spacing][1]} {params.p[spacing][2]}"
        " --size {params.p[size][0]} {params.p[size][1]} {params.p[size][2]}"
        " --mr-norm {params.p[mr_norm]} --mr-percentiles {params.p[mr_percentiles][0]} {params.p[mr_percentiles][1]}"
        " --ct-window {params.p[ct_window][0]} {params.p[ct_window][1]}"
        " {params.reference} {params.register} {params.labels} > {log} 2>&1"
