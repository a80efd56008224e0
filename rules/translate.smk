# Whole test-subject volumes translated into the target modality, in scanner space and units.


rule translate:
    input:
        model=f"{RESULTS}/models/{{task}}/{{model}}/model.pt",
        image=lambda wc: f"{RESULTS}/nifti/{wc.subject}/{config['tasks'][wc.task]['source']}.nii.gz",
    output:
        f"{RESULTS}/synth/{{task}}/{{model}}/{{subject}}.nii.gz",
    log:
        f"{RESULTS}/logs/translate/{{task}}/{{model}}/{{subject}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/translate/{{task}}_{{model}}_{{subject}}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        MEDGEN + " translate --checkpoint {input.model} --input {input.image} --output {output} > {log} 2>&1"
