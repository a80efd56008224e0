# The embedded demo data: one job per phantom subject (each subject depends only on seed + index).

rule phantom:
    output:
        dicom=directory(layout.phantom_dicom(RESULTS)),
        labels=layout.phantom_labels(RESULTS),
    params:
        out=layout.phantom_dir(RESULTS),
        cfg=config["data"].get("phantom", {}),
    log:
        f"{RESULTS}/logs/phantom/{{subject}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/phantom/{{subject}}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        MEDGEN + " phantom --out {params.out} --subjects {params.cfg[subjects]} --seed {params.cfg[seed]}"
        " --spacing {params.cfg[spacing_mm]} --only {wildcards.subject} > {log} 2>&1"
