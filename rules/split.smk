# Subject-level train/val/test split, written once for the whole study.
import json

rule split:
    input:
        expand(layout.prep_mapping(RESULTS), subject=SUBJECTS),
    output:
        layout.splits_file(RESULTS),
    params:
        subjects=" ".join(SUBJECTS),
        prep=layout.prep_dir(RESULTS),
        settings=json.dumps(config["split"], sort_keys=True),
        min_mask=config["preprocess"]["min_mask_fraction"],  # the preprocessed data's, beside --prep-root
    log:
        f"{RESULTS}/logs/split.log",
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        MEDGEN + " split --subjects {params.subjects} --out {output} --settings {params.settings:q} --prep-root {params.prep}"
        " --min-mask-fraction {params.min_mask} > {log} 2>&1"
