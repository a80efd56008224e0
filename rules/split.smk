# Subject-level train/val/test split, written once for the whole study.

rule split:
    input:
        expand(layout.prep_mapping(RESULTS), subject=SUBJECTS),
    output:
        layout.splits_file(RESULTS),
    params:
        subjects=" ".join(SUBJECTS),
        prep=layout.prep_dir(RESULTS),
        s=config["split"],
        min_mask=config["preprocess"]["min_mask_fraction"],
    log:
        f"{RESULTS}/logs/split.log",
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        MEDGEN + " split --subjects {params.subjects} --out {output} --seed {params.s[seed]} --prep-root {params.prep}"
        " --min-mask-fraction {params.min_mask}"
        " --fractions {params.s[fractions][0]} {params.s[fractions][1]} {params.s[fractions][2]} > {log} 2>&1"
