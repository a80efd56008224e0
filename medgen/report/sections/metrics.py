"""Metrics: translation tables (models, seeds and baselines, with the paired ranking on MAE) and
generation tables (real vs fake next to real vs real, per feature extractor, with the FD ranking)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from medgen.report.format import MISSING, aggregate_cell, esc, fmt, note, table, warning_marks
from medgen.report.results import Results, get

#: translation metrics: key, label, unit (None = the file's "units"), decimals (None = automatic)
TRANSLATION_METRICS: tuple[tuple[str, str, str | None, int | None], ...] = (
    ("mae", "MAE", None, None),
    ("psnr", "PSNR", "dB", 2),
    ("ssim", "SSIM", "", 3),
    ("ms_ssim", "MS-SSIM", "", 3),
)
#: generation metrics: key, label with the better direction, decimals (None = automatic)
GENERATION_METRICS: tuple[tuple[str, str, int | None], ...] = (
    ("fd", "FD ↓", None),
    ("kid_mean", "KID mean ↓", 4),
    ("kid_std", "KID std", 4),
    ("precision", "precision ↑", 3),
    ("recall", "recall ↑", 3),
    ("density", "density ↑", 3),
    ("coverage", "coverage ↑", 3),
)


def _mae_digits(units: str) -> int | None:
    return 1 if units.upper() == "HU" else None


def _unit_label(label: str, unit: str) -> str:
    return f"{label} ({unit})" if unit else label


def _translation_n(data: Mapping[str, Any]) -> str:
    ns = [a.get("n") for a in (data.get("aggregate") or {}).values() if isinstance(a, Mapping) and isinstance(a.get("n"), int)]
    if ns:
        return str(max(ns))
    per_subject = data.get("per_subject")
    return str(len(per_subject)) if isinstance(per_subject, list) else MISSING


def _translation_table(task: str, entries: Sequence[dict[str, Any]]) -> str:
    """One row per model (several seeds summarised, see :mod:`medgen.report.comparison`), then the
    task's baselines, then which methods a paired test ranks on MAE."""
    from medgen.report import comparison

    units = next((str(e["units"]) for e in entries if e.get("units")), "a.u.")
    header = ["method", "seeds"] + [_unit_label(label, units if unit is None else unit) for _, label, unit, _ in TRANSLATION_METRICS] + ["subjects (n)"]
    methods = {**comparison.group_by_model(entries), **comparison.baseline_runs(entries)}
    rows = []
    for name, runs in methods.items():
        if len(runs) == 1:
            aggregate = runs[0].get("aggregate") or {}
            cells = [aggregate_cell(get(aggregate, key), _mae_digits(units) if key == "mae" else digits) for key, _, _, digits in TRANSLATION_METRICS]
            n_seeds = MISSING if name.startswith("baseline:") else "1"
        else:
            cells = [_seeds_cell(comparison.seed_summary(runs, key), _mae_digits(units) if key == "mae" else digits) for key, _, _, digits in TRANSLATION_METRICS]
            n_seeds = str(len(runs))
        rows.append([esc(name), n_seeds] + cells + [_translation_n(runs[0])])
    caption = (
        f"{task}: mean ± std [95% CI] over test subjects (per-subject values averaged over seeds); "
        f"'seeds ±' is the SD of the per-seed means; baselines fitted on the training split; MAE in {units}"
    )
    ranking = comparison.ranking_statements({n: comparison.per_subject_values(r, "mae") for n, r in methods.items()}, "MAE")
    ranked = note(f"Ranking on MAE ({comparison.TEST_NAME} over (subject, seed) pairs, p < {comparison.ALPHA}): " + "; ".join(ranking)) if ranking else ""
    return table(header, rows, caption=caption, numeric_from=1) + ranked + "".join(_per_subject_details(e, units) for e in entries)


def _seeds_cell(summary: Mapping[str, Any] | None, digits: int | None) -> str:
    """``mean ± std [lo, hi]`` over subjects and the SD over seeds."""
    if not summary:
        return MISSING
    text = aggregate_cell(summary, digits)
    if summary.get("seed_std") is not None:
        text += f' <span class="ci">seeds ± {fmt(summary["seed_std"], digits)}</span>'
    return text


def _per_subject_details(entry: Mapping[str, Any], units: str) -> str:
    rows_in = entry.get("per_subject")
    if not isinstance(rows_in, list) or not rows_in:
        return ""
    header = ["subject"] + [_unit_label(label, units if unit is None else unit) for _, label, unit, _ in TRANSLATION_METRICS]
    rows = [
        [esc(r.get("subject", MISSING))] + [fmt(r.get(key), _mae_digits(units) if key == "mae" else digits) for key, _, _, digits in TRANSLATION_METRICS]
        for r in rows_in
        if isinstance(r, Mapping)
    ]
    seed = f" (seed {entry['seed']})" if entry.get("seed") is not None else ""
    return f"<details><summary>per subject: {esc(entry.get('model', ''))}{esc(seed)}</summary>{table(header, rows)}</details>"


def _generation_tables(entry: Mapping[str, Any]) -> str:
    features = entry.get("features")
    title = f"{entry.get('task')} / {entry.get('model')}"
    if not isinstance(features, Mapping) or not features:
        return f'<div class="card"><h3>{esc(title)}</h3>{note("no feature metrics in the file")}</div>'
    tables = []
    for extractor, values in features.items():
        values = values if isinstance(values, Mapping) else {}
        intervals = values.get("intervals") or values.get("bootstrap") or {}  # as medgen.eval.distribution writes it
        warn = " ⚠" if values.get("warnings") else ""
        rows = []
        for key, label, digits in GENERATION_METRICS:
            ci = get(intervals, "real_vs_fake", key)
            ci_text = f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else MISSING
            rows.append([esc(label), fmt(get(values, "real_vs_fake", key), digits) + warn, fmt(get(values, "real_vs_real", key), digits), ci_text])
        checksum = values.get("checksum")
        n = values.get("n")
        n_text = f"N = {fmt(n)} per set" + (f" (of {fmt(values.get('n_real_total'))} real, {fmt(values.get('n_fake_total'))} synthetic)" if "n_real_total" in values else "")
        caption = f"extractor {extractor}, {n_text}, feature dimension {fmt(values.get('feature_dim'))}" + (f", weights {str(checksum)[:12]}" if checksum else ", weights unverified")
        method = intervals.get("method") if isinstance(intervals, Mapping) else None
        label = "95% interval (real vs fake)" if method else "bootstrap 95% CI (real vs fake)"
        standardisation = values.get("standardisation")
        notes = note(f"intervals: {method}") if method else ""
        if isinstance(standardisation, Mapping):
            notes += note(f"features: {standardisation.get('method')}; {fmt(standardisation.get('features_kept'))} of {fmt(standardisation.get('features_in'))} kept, {fmt(standardisation.get('values_clipped'))} values clipped")
        tables.append("<div>" + table(["metric (unitless)", "real vs fake", "real vs real (baseline)", label], rows, caption=caption) + warning_marks(values.get("warnings")) + notes + "</div>")
    return f'<div class="card"><h3>{esc(title)}</h3><div class="row">{"".join(tables)}</div></div>'


def _generation_seed_tables(task: str, model: str, runs: Sequence[Mapping[str, Any]]) -> str:
    """A model trained with several seeds: per metric the mean ± SD over seeds and each seed's value."""
    from medgen.report import comparison

    seeds = ", ".join(str(r.get("seed")) for r in runs)
    tables = []
    for extractor in (runs[0].get("features") or {}):
        rows = []
        for key, label, digits in GENERATION_METRICS:
            values = comparison.generation_values(runs, extractor, key)
            spread = f"{fmt(float(np.mean(values)), digits)} ± {fmt(float(np.std(values, ddof=1)), digits)}" if len(values) > 1 else MISSING
            real = [get(r, "features", extractor, "real_vs_real", key) for r in runs]
            rows.append([esc(label), spread, " / ".join(fmt(v, digits) for v in values) or MISSING, fmt(next((v for v in real if v is not None), None), digits)])
        tables.append(table(["metric (unitless)", "real vs fake, mean ± SD over seeds", f"per seed ({seeds})", "real vs real (baseline)"], rows, caption=f"extractor {extractor}, {len(runs)} seeds"))
    return f'<div class="card"><h3>{esc(task)} / {esc(model)} ({len(runs)} seeds)</h3><div class="row">{"".join(tables)}</div></div>'


def _generation_section(entries: Sequence[dict[str, Any]]) -> str:
    """Per task: each model's tables (summarised over seeds when it has several) and the FD ranking."""
    from medgen.report import comparison

    by_task: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_task.setdefault(str(entry.get("task")), []).append(entry)
    parts = []
    for task, task_entries in by_task.items():
        groups = comparison.group_by_model(task_entries)
        for model, runs in groups.items():
            parts.append(_generation_tables(runs[0]) if len(runs) == 1 else _generation_seed_tables(task, model, runs))
        if len(groups) > 1:
            for extractor in (task_entries[0].get("features") or {}):
                fds = {m: {("set", r.get("seed")): v for r in runs for v in comparison.generation_values([r], extractor, "fd")} for m, runs in groups.items()}
                lines = comparison.ranking_statements(fds, f"FD ({extractor})")
                parts.append(note(f"{task}, ranking on FD in {extractor} features ({comparison.TEST_NAME} over seeds, p < {comparison.ALPHA}): " + "; ".join(lines)))
    return "".join(parts)


def build(ctx: Results) -> str | None:
    entries = ctx.metrics()
    if not entries:
        return None
    translation: dict[str, list[dict[str, Any]]] = {}
    generation: list[dict[str, Any]] = []
    other: list[str] = []
    for path, data in entries:
        kind = data.get("kind") or ctx.task_spec(str(data["task"])).get("kind")
        if kind in ("translation_baselines", "downstream"):
            continue  # in the translation tables and the downstream section
        if kind == "translation":
            translation.setdefault(str(data["task"]), []).append(data)
        elif kind == "generation":
            generation.append(data)
        else:
            other.append(f"{path.parent.name}/{path.name}")
    parts = []
    if translation:
        parts.append("<h3>Translation</h3>" + "".join(_translation_table(task, rows) for task, rows in translation.items()))
    if generation:
        parts.append("<h3>Generation</h3>" + note("Each metric compares the generated set with held-out real images (real vs fake) next to two halves of the real data (real vs real), the level that a perfect generator would reach.") + _generation_section(generation))
    if other:
        parts.append(note("metrics of unknown kind not shown: " + ", ".join(other)))
    return "".join(parts)
