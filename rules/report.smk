# The study in one self-contained HTML page: data, losses, samples, translations, metrics, timing;
# metrics.tsv beside it holds every number in one flat table.
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
        config_file=layout.config_copy(RESULTS),
    log:
        f"{RESULTS}/logs/report.log",
    resources:
        mem_mb=4000,
        runtime=20,
    run:
        import yaml
        from medgen.io.atomic import atomic_write_text
        from medgen.io.secret import public_config

        atomic_write_text(params.config_file, yaml.safe_dump(public_config(config), sort_keys=False))
        shell(MEDGEN + " report --results {params.results} --out {output.html} --config {params.config_file} > {log} 2>&1")
