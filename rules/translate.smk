# Whole test-subject volumes translated into the target modality, in scanner space and units: one
# job per model for all test subjects (the model and the libraries load once, not once per subject).


rule translate:
    input:
        model=layout.model_file(RESULTS),
        images=lambda wc: [layout.nifti_image(RESULTS, s, config["tasks"][wc.task]["source"]) for s in TEST_SUBJECTS],
    output:
        expand(layout.translation(RESULTS, "{{task}}", "{{model}}"), subject=TEST_SUBJECTS),
    log:
        f"{RESULTS}/logs/translate/{{task}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/translate/{{task}}_{{model}}.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        mirror="--mirror-average" if config["translate"]["mirror_average"] else "--no-mirror-average",
    shell:
        MEDGEN + " translate --checkpoint {input.model} --input {input.images} --output {output} {params.mirror} > {log} 2>&1"
