# The embedded demo data: one job per phantom subject (each subject depends only on seed + index).
import json

rule phantom:
    output:
        dicom=directory(layout.phantom_dicom(RESULTS)),
        labels=layout.phantom_labels(RESULTS),
    params:
        out=layout.phantom_dir(RESULTS),
        settings=json.dumps(config["data"].get("phantom", {}), sort_keys=True),
    log:
        f"{RESULTS}/logs/phantom/{{subject}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/phantom/{{subject}}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        MEDGEN + " phantom --out {params.out} --settings {params.settings:q} --only {wildcards.subject} > {log} 2>&1"
