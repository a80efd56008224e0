# DICOM series / NIfTI -> de-identified NIfTI + JSON sidecars, one job per subject.

rule ingest:
    input:
        lambda wc: ingest_inputs(config, wc.subject),
    output:
        images=expand(f"{RESULTS}/nifti/{{{{subject}}}}/{{modality}}.nii.gz", modality=MODALITIES),
        sidecars=expand(f"{RESULTS}/nifti/{{{{subject}}}}/{{modality}}.json", modality=MODALITIES),
    params:
        out=f"{RESULTS}/nifti",
        opts=config["ingest"],
        modalities=" ".join(MODALITIES),
    log:
        f"{RESULTS}/logs/ingest/{{subject}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest/{{subject}}.tsv"
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        MEDGEN + " ingest {input} --out {params.out} --subject {wildcards.subject} --modalities {params.modalities}"
        " --on-tilt {params.opts[on_tilt]} --on-uneven {params.opts[on_uneven]}"
        " --uid-salt {params.opts[uid_salt]:q} --nonfinite {params.opts[nonfinite]}"
        " --form-mismatch {params.opts[form_mismatch]} --min-slices {params.opts[min_slices]}"
        + (" --keep-descriptions" if config["ingest"]["keep_descriptions"] else "")
        + " > {log} 2>&1"
