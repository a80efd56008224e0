# DICOM series / NIfTI -> de-identified NIfTI + JSON sidecars, one job per subject.

rule ingest:
    input:
        lambda wc: ingest_inputs(config, wc.subject, SUBJECT_SOURCES),
    output:
        images=expand(layout.nifti_image(RESULTS, "{{subject}}"), modality=MODALITIES),
        sidecars=expand(layout.nifti_sidecar(RESULTS, "{{subject}}"), modality=MODALITIES),
    params:
        out=layout.nifti_dir(RESULTS),
        opts=config["ingest"],
        modalities=" ".join(MODALITIES),
        # the secret reaches medgen through the environment or this file, never on the command line
        secret=INGEST_SECRET_FLAG,
        flags=" ".join(
            flag for flag, on in (("--keep-descriptions", config["ingest"]["keep_descriptions"]),
                                  ("--keep-subject-labels", config["data"]["keep_subject_labels"]),
                                  ("--merge-patients", config["ingest"]["merge_patients"]),
                                  ("--allow-constant", config["ingest"]["allow_constant"])) if on),
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
        " {params.secret} --nonfinite {params.opts[nonfinite]}"
        " --form-mismatch {params.opts[form_mismatch]} --min-slices {params.opts[min_slices]}"
        " {params.flags} > {log} 2>&1"
