# Whole test-subject volumes translated into the target modality, in scanner space and units.


rule translate:
    input:
        model=layout.model_file(RESULTS),
        image=lambda wc: layout.nifti_image(RESULTS, wc.subject, config["tasks"][wc.task]["source"]),
    output:
        layout.translation(RESULTS),
    log:
        f"{RESULTS}/logs/translate/{{task}}/{{model}}/{{subject}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/translate/{{task}}_{{model}}_{{subject}}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        MEDGEN + " translate --checkpoint {input.model} --input {input.image} --output {output} > {log} 2>&1"
