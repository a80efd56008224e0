# The embedded demo data: the whole phantom cohort in one job. Every subject is drawn from the same
# template maps (a distance transform of the 1 mm template, about 6 s), which one job prepares once
# and shares with its worker processes; one job per subject would prepare them once per subject.
import json

if USE_PHANTOM:

    rule phantom:
        output:
            dicom=directory(expand(layout.phantom_dicom(RESULTS), subject=SUBJECTS)),
            labels=expand(layout.phantom_labels(RESULTS), subject=SUBJECTS),
        params:
            out=layout.phantom_dir(RESULTS),
            settings=json.dumps(config["data"].get("phantom", {}), sort_keys=True),
        threads: 2  # worker processes: fits the smallest cluster node; Snakemake scales it to --cores
        log:
            f"{RESULTS}/logs/phantom.log",
        benchmark:
            f"{RESULTS}/benchmarks/phantom.tsv"
        resources:
            mem_mb=4000,
            runtime=20,
        shell:
            MEDGEN + " phantom --out {params.out} --settings {params.settings:q} --workers {threads} > {log} 2>&1"
