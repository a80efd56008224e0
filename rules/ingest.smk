# DICOM series / NIfTI -> de-identified NIfTI + JSON sidecars, one job per subject.
import json

rule ingest:
    input:
        lambda wc: ingest_inputs(config, wc.subject, SUBJECT_SOURCES),
    output:
        images=expand(layout.nifti_image(RESULTS, "{{subject}}"), modality=MODALITIES),
        sidecars=expand(layout.nifti_sidecar(RESULTS, "{{subject}}"), modality=MODALITIES),
    params:
        out=layout.nifti_dir(RESULTS),
        # the ingest section (its uid_salt_file and mapping_file are the workflow's) and data.keep_subject_labels
        settings=json.dumps({**config["ingest"], "keep_subject_labels": config["data"]["keep_subject_labels"]}, sort_keys=True),
        modalities=" ".join(MODALITIES),
        # the secret reaches medgen through the environment or this file, never on the command line
        secret=INGEST_SECRET_FLAG,
    log:
        f"{RESULTS}/logs/ingest/{{subject}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest/{{subject}}.tsv"
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        MEDGEN + " ingest {input} --out {params.out} --subject {wildcards.subject} --modalities {params.modalities}"
        " --settings {params.settings:q} {params.secret} > {log} 2>&1"
