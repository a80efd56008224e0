# The study in one self-contained HTML page: data, losses, samples, translations, metrics, timing;
# metrics.tsv beside it holds every number in one flat table.
import json

from medgen.io.secret import public_config
from pipeline.targets import downstream_tasks


rule report:
    input:
        [layout.metrics_file(RESULTS, t, m) for t, m in task_models(config)],
        [layout.downstream_metrics(RESULTS, t) for t in downstream_tasks(config)],
        layout.splits_file(RESULTS),
    output:
        html=layout.report_html(RESULTS),
        table=layout.metrics_table(RESULTS),
    params:
        results=RESULTS,
        # the study's config without its secret-bearing keys: medgen report writes it to
        # results/config.yaml and shows it (a shell job: a `run:` block would cost a second
        # Snakemake process, about 10 s, at the very end of every run)
        config=json.dumps(public_config(config)),
    log:
        f"{RESULTS}/logs/report.log",
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        MEDGEN + " report --results {params.results} --out {output.html} --config-json {params.config:q} > {log} 2>&1"
