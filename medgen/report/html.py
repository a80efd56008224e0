"""A self-contained HTML report of a medgen results folder.

:func:`build_report` writes ONE HTML file with inline CSS and every picture embedded as a base64
PNG data URI, so that it can be e-mailed as is. Each section appears only when its inputs exist:
a partial run (or an empty folder) still gives a report.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import logging
import math
import os
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

import medgen
from medgen.io.atomic import atomic_write_text
from medgen.io.secret import privacy_note, public_config

log = logging.getLogger(__name__)

#: packages whose versions the overview lists (distribution names)
PACKAGES: tuple[str, ...] = ("torch", "monai", "nibabel", "SimpleITK", "pydicom", "snakemake")
#: widest embedded picture in pixels; larger ones are downscaled
MAX_IMAGE_PX = 1400
#: translation panels shown per model (the rest are counted)
MAX_TRANSLATION_SUBJECTS = 6
#: subjects listed openly in the data table (more are folded away)
MAX_SUBJECT_ROWS = 30
#: ingest issues listed (the rest are counted)
MAX_ISSUES = 40
#: a missing value in a table
MISSING = "–"
#: the flat table of every metric, written beside the report (see medgen.report.metrics_tsv)
METRICS_TSV = "metrics.tsv"


# --------------------------------------------------------------------------- small helpers


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int | None = None) -> str:
    """A number at sensible precision (``digits`` decimals when given); :data:`MISSING` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return MISSING
    if digits is not None:
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return str(value)
    size = abs(value)
    if size == 0:
        return "0"
    if size >= 100:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    if size >= 1e-3:
        return f"{value:.3g}"
    return f"{value:.2e}"


def _read_json(path: Path) -> Any:
    """Parsed JSON of ``path``; ``None`` when missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        log.warning("report: cannot read %s: %s", path, exc)
        return None


def _get(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...`` or ``None`` when any level is missing."""
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def _run_dirs(task_dir: Path) -> list[Path]:
    """A task's model folders, or their ``seed-<s>`` folders when the model has several seeds."""
    runs = []
    for model in _dirs(task_dir):
        seeds = [d for d in _dirs(model) if d.name.startswith("seed-")]
        runs += seeds or [model]
    return runs


def _run_name(task_dir: Path, run_dir: Path) -> str:
    """``pix2pix`` or ``pix2pix/seed-1``."""
    return run_dir.relative_to(task_dir).as_posix()


def _nifti_stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], *, caption: str | None = None, numeric_from: int = 1, numeric_to: int | None = None) -> str:
    """An HTML table; cells are already HTML; columns ``numeric_from:numeric_to`` are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    numeric = range(len(header))[numeric_from:numeric_to]
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if i in numeric else "txt"}">{cell}</td>' for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _facts(items: Iterable[tuple[str, str]]) -> str:
    """A compact key/value list (values are already HTML)."""
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


# --------------------------------------------------------------------------- pictures


def png_data_uri(path: Path, *, max_px: int = MAX_IMAGE_PX) -> str:
    """``path`` as a ``data:image/png;base64`` URI, converted to PNG and downscaled to at most
    ``max_px`` pixels wide when needed."""
    data = Path(path).read_bytes()
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.format != "PNG" or img.width > max_px:
            if img.width > max_px:
                img = img.resize((max_px, max(1, round(img.height * max_px / img.width))), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            img.save(buffer, format="PNG", optimize=True)
            data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(path: Path | None, caption: str, *, css: str = "") -> str:
    """An embedded picture with a caption; a note when it cannot be read."""
    if path is None:
        return ""
    try:
        uri = png_data_uri(path)
    except Exception as exc:  # a broken picture must not stop the report
        return _note(f"cannot embed {Path(path).name}: {exc}")
    cls = f' class="{css}"' if css else ""
    return f'<figure{cls}><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


# --------------------------------------------------------------------------- context


@dataclass
class _Context:
    """What every section builder needs: the results folder, the config and a scratch folder."""

    results: Path
    config: dict[str, Any]
    work: Path
    _count: int = 0
    _metrics: list[tuple[Path, dict[str, Any]]] | None = field(default=None, repr=False)

    def png(self, stem: str) -> Path:
        """A fresh path for a picture drawn for the report."""
        self._count += 1
        return self.work / f"{self._count:03d}_{stem}.png"

    def task_spec(self, task: str) -> dict[str, Any]:
        spec = _get(self.config, "tasks", task)
        return spec if isinstance(spec, dict) else {}

    def metrics(self) -> list[tuple[Path, dict[str, Any]]]:
        """Every ``metrics/<task>/<model>.json`` and ``metrics/<task>/<model>/seed-<s>.json``
        (path, parsed; seeded files carry ``seed``), in task/model order."""
        if self._metrics is None:
            self._metrics = []
            for task_dir in _dirs(self.results / "metrics"):
                for path in sorted([*task_dir.glob("*.json"), *task_dir.glob("*/seed-*.json")]):
                    data = _read_json(path)
                    if isinstance(data, dict):
                        data.setdefault("task", task_dir.name)
                        seeded = path.parent != task_dir
                        data.setdefault("model", path.parent.name if seeded else path.stem)
                        if seeded and path.stem.removeprefix("seed-").isdigit():
                            data["seed"] = int(path.stem.removeprefix("seed-"))
                        self._metrics.append((path, data))
        return self._metrics

    def split(self) -> dict[str, list[str]]:
        splits = _get(_read_json(self.results / "splits.json") if (self.results / "splits.json").is_file() else None, "splits")
        return {k: list(v) for k, v in splits.items() if isinstance(v, list)} if isinstance(splits, dict) else {}


# --------------------------------------------------------------------------- 1. overview


def package_versions() -> dict[str, str]:
    """Python and the versions of :data:`PACKAGES` ("not installed" when missing)."""
    versions = {"medgen": medgen.__version__, "Python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _yaml_text(config: Mapping[str, Any]) -> str:
    plain = json.loads(json.dumps(config, default=str))
    try:
        import yaml

        return yaml.safe_dump(plain, sort_keys=False, default_flow_style=None, width=100)
    except ImportError:
        return json.dumps(plain, indent=2)


def _overview(ctx: _Context, title: str) -> str:
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    versions = package_versions()
    facts = _facts([("report", esc(title)), ("generated", esc(now)), ("results", f"<code>{esc(ctx.results)}</code>")])
    table = _table(["package", "version"], ([esc(k), esc(v)] for k, v in versions.items()), numeric_from=2)
    parts = [facts, '<div class="row">', table, "</div>"]
    if ctx.config:
        parts.append(_note(privacy_note(ctx.config)))
        parts += ["<h3>Configuration</h3>", f'<pre class="yaml"><code>{esc(_yaml_text(public_config(ctx.config)))}</code></pre>']
    else:
        parts.append(_note("no configuration given (and no results/config.yaml)"))
    return "".join(parts)


# --------------------------------------------------------------------------- 2. data


def _modality_info(nifti: Path) -> dict[str, Any]:
    """Shape, spacing, source and warnings of a NIfTI file, from its sidecar or its header."""
    sidecar = _read_json(nifti.with_name(_nifti_stem(nifti) + ".json")) if nifti.with_name(_nifti_stem(nifti) + ".json").is_file() else None
    info = dict(sidecar) if isinstance(sidecar, dict) else {}
    if "shape" not in info or "spacing" not in info:
        try:
            import nibabel as nib

            img = nib.load(str(nifti))
            info.setdefault("shape", list(img.shape))
            info.setdefault("spacing", [float(z) for z in img.header.get_zooms()[:3]])
        except Exception as exc:
            info.setdefault("warnings", []).append(f"cannot read header: {exc}")
    return info


def _shape_text(info: Mapping[str, Any]) -> str:
    shape, spacing = info.get("shape"), info.get("spacing")
    text = "×".join(str(s) for s in shape) if isinstance(shape, list) else MISSING
    if isinstance(spacing, list) and spacing:
        text += " @ " + "×".join(fmt(float(s), 2) for s in spacing) + " mm"
    source = info.get("source")
    return esc(text) + (f' <span class="tag">{esc(source)}</span>' if source else "")


def _ingest_log_issues(results: Path) -> list[str]:
    """Lines starting with "  skipped"/"  failed" of every ingest log, prefixed by the subject."""
    issues = []
    for path in sorted((results / "logs" / "ingest").glob("*.log")):
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        issues += [f"{path.stem}: {line.strip()}" for line in lines if line.startswith(("  skipped", "  failed"))]
    return issues


def _issue_list(issues: Sequence[str]) -> str:
    shown = "".join(f"<li>{esc(i)}</li>" for i in issues[:MAX_ISSUES])
    more = f"<li>… and {len(issues) - MAX_ISSUES} more</li>" if len(issues) > MAX_ISSUES else ""
    return f'<ul class="issues">{shown}{more}</ul>'


def _modality_order(ctx: _Context, found: Iterable[str]) -> list[str]:
    configured = [m for m in (ctx.config.get("modalities") or []) if isinstance(m, str)]
    found = set(found)
    return [m for m in configured if m in found] + sorted(found - set(configured))


def _subjects_table(ctx: _Context) -> tuple[str, list[str]]:
    subjects = _dirs(ctx.results / "nifti")
    infos = {s.name: {_nifti_stem(p): _modality_info(p) for p in sorted(s.glob("*.nii*"))} for s in subjects}
    infos = {k: v for k, v in infos.items() if v}
    if not infos:
        return "", []
    modalities = _modality_order(ctx, {m for v in infos.values() for m in v})
    rows = [[esc(s)] + [_shape_text(v[m]) if m in v else MISSING for m in modalities] for s, v in infos.items()]
    counts = ", ".join(f"{m}: {sum(m in v for v in infos.values())}" for m in modalities)
    summary = _note(f"{len(infos)} subjects; images per modality — {counts}. Cells: shape @ voxel spacing, source.")
    warnings = [f"{s}/{m}: {w}" for s, v in infos.items() for m, i in v.items() for w in (i.get("warnings") or [])]
    table = _table(["subject"] + modalities, rows, numeric_from=len(modalities) + 1)
    if len(rows) > MAX_SUBJECT_ROWS:
        table = f"<details><summary>show the {len(rows)} subjects</summary>{table}</details>"
    return summary + table, warnings


def _split_table(ctx: _Context) -> str:
    split = ctx.split()
    if not split:
        return ""
    rows = [[esc(name), str(len(members)), esc(", ".join(members[:12]) + (" …" if len(members) > 12 else ""))] for name, members in split.items()]
    rows.append(["<b>total</b>", f"<b>{sum(len(m) for m in split.values())}</b>", ""])
    return "<h3>Split</h3>" + _table(["split", "subjects (n)", "members"], rows, numeric_from=1, numeric_to=2)


def _prep_views(ctx: _Context) -> str:
    from medgen.report.figures import orthogonal_views

    for subject in _dirs(ctx.results / "prep"):
        files = {_nifti_stem(p): p for p in sorted(subject.glob("*.nii.gz"))}
        modalities = _modality_order(ctx, set(files) - {"mask", "labels"})
        images = {m: files[m] for m in modalities}
        if "mask" in files:
            images["mask"] = files["mask"]
        if not images:
            continue
        try:
            png = orthogonal_views(images, ctx.png(f"prep_{subject.name}"), title=f"{subject.name}, preprocessed")
        except Exception as exc:
            return _note(f"cannot draw {subject.name}: {exc}")
        return "<h3>Preprocessed images</h3>" + _figure(png, f"{subject.name}: preprocessed modalities and brain mask, mid slices")
    return ""


def _data(ctx: _Context) -> str | None:
    table, warnings = _subjects_table(ctx)
    issues = [f"warning {w}" for w in warnings] + _ingest_log_issues(ctx.results)
    parts = [table, _split_table(ctx)]
    if table or issues:
        parts.append("<h3>Ingest warnings, skips and failures</h3>" + (_issue_list(issues) if issues else _note("none")))
    parts.append(_prep_views(ctx))
    body = "".join(parts)
    return body or None


# --------------------------------------------------------------------------- 3. models


def _last(records: Sequence[Mapping[str, Any]], key: str) -> Any:
    return next((r[key] for r in reversed(records) if key in r), None)


def _last_sample_grid(model_dir: Path) -> Path | None:
    def step(path: Path) -> int:
        digits = "".join(c for c in path.stem if c.isdigit())
        return int(digits) if digits else -1

    grids = sorted((model_dir / "samples").glob("step_*.png"), key=step)
    return grids[-1] if grids else None


def _model_card(ctx: _Context, task: str, model_dir: Path) -> str:
    log_path = model_dir / "log.jsonl"
    records = _read_log_safe(log_path)
    kind = ctx.task_spec(task).get("kind")
    facts = [("kind", esc(kind or MISSING))]
    if records:
        lrs = [(k.removeprefix("lr/"), fmt(_last(records, k))) for k in sorted({k for r in records for k in r if k.startswith("lr/")})]
        facts += [
            ("last step", fmt(_last(records, "step"))),
            ("epochs", fmt(_last(records, "epoch"))),
            ("final images/s", fmt(_last(records, "images_per_s"))),
        ] + [(f"final lr ({name})", value) for name, value in lrs]
    name = _run_name(ctx.results / "models" / task, model_dir)
    parts = [f'<div class="card"><h3>{esc(task)} / {esc(name)}</h3>', _facts(facts), '<div class="row">']
    if records:
        parts.append(_loss_figure(ctx, task, name.replace("/", "_"), records))
    elif log_path.is_file():
        parts.append(_note("log.jsonl has no readable lines"))
    grid = _last_sample_grid(model_dir)
    if grid is not None:
        parts.append(_figure(grid, f"last training samples ({grid.stem.replace('_', ' ')})", css="samples"))
    parts.append("</div></div>")
    return "".join(parts)


def _read_log_safe(path: Path) -> list[dict[str, Any]]:
    from medgen.report.plots import read_log

    try:
        return read_log(path) if path.is_file() else []
    except OSError:
        return []


def _loss_figure(ctx: _Context, task: str, model: str, records: Sequence[Mapping[str, Any]]) -> str:
    from medgen.report.plots import loss_curves

    try:
        png = loss_curves(records, ctx.png(f"loss_{task}_{model}"), title=f"{task} / {model}")
    except Exception as exc:
        return _note(f"cannot plot the losses: {exc}")
    return _figure(png, "training losses per step") if png else _note("no loss/* terms logged")


def _models(ctx: _Context) -> str | None:
    cards = [_model_card(ctx, task.name, model) for task in _dirs(ctx.results / "models") for model in _run_dirs(task)]
    return "".join(cards) or None


# --------------------------------------------------------------------------- 4. samples


def _count_rows(tsv: Path) -> int | None:
    """Data rows of a TSV with a header; ``None`` when unreadable."""
    try:
        lines = [line for line in tsv.read_text().splitlines() if line.strip()]
    except OSError:
        return None
    return max(len(lines) - 1, 0)


def _samples(ctx: _Context) -> str | None:
    cards = []
    for task in _dirs(ctx.results / "augment"):
        for model in _run_dirs(task):
            grid, manifest = model / "grid.png", model / "manifest.tsv"
            if not grid.is_file() and not manifest.is_file():
                continue
            n = _count_rows(manifest) if manifest.is_file() else None
            caption = f"{task.name} / {_run_name(task, model)}: " + (f"{n} generated samples in manifest.tsv" if n is not None else "no manifest.tsv")
            body = _figure(grid, caption, css="samples") if grid.is_file() else _note(caption + " (no grid.png)")
            cards.append(f'<div class="card"><h3>{esc(task.name)} / {esc(_run_name(task, model))}</h3>{body}</div>')
    return "".join(cards) or None


# --------------------------------------------------------------------------- 5. translation


def _translation_subjects(ctx: _Context, model_dir: Path) -> list[Path]:
    outputs = sorted(model_dir.glob("*.nii.gz"))
    test = set(ctx.split().get("test", []))
    chosen = [p for p in outputs if _nifti_stem(p) in test]
    return chosen or outputs


def _translation_model(ctx: _Context, task: str, model_dir: Path, source: str, target: str) -> str:
    from medgen.report.plots import translation_panel

    outputs = _translation_subjects(ctx, model_dir)
    name = _run_name(ctx.results / "synth" / task, model_dir)
    parts = [f'<div class="card"><h3>{esc(task)} / {esc(name)}: {esc(source)} → {esc(target)}</h3>']
    for output in outputs[:MAX_TRANSLATION_SUBJECTS]:
        subject = _nifti_stem(output)
        src, ref = (ctx.results / "nifti" / subject / f"{m}.nii.gz" for m in (source, target))
        if not (src.is_file() and ref.is_file()):
            parts.append(_note(f"{subject}: no {source}/{target} in nifti/ to compare with"))
            continue
        try:
            png = translation_panel(src, output, ref, ctx.png(f"tr_{task}_{name.replace('/', '_')}_{subject}"), source_name=source, target_name=target, title=subject)
        except Exception as exc:
            parts.append(_note(f"{subject}: cannot draw the panel: {exc}"))
            continue
        parts.append(_figure(png, f"{subject}: input | output | ground truth | error (output − truth), mid slices"))
    if len(outputs) > MAX_TRANSLATION_SUBJECTS:
        parts.append(_note(f"… and {len(outputs) - MAX_TRANSLATION_SUBJECTS} more subjects not shown"))
    parts.append("</div>")
    return "".join(parts)


def _translation(ctx: _Context) -> str | None:
    cards = []
    for task in _dirs(ctx.results / "synth"):
        spec = ctx.task_spec(task.name)
        models = [m for m in _run_dirs(task) if any(m.glob("*.nii.gz"))]
        if not models:
            continue
        source, target = spec.get("source"), spec.get("target")
        if not (isinstance(source, str) and isinstance(target, str)):
            cards.append(_note(f"{task.name}: the configuration names no source/target modality; outputs not shown"))
            continue
        cards += [_translation_model(ctx, task.name, model, source, target) for model in models]
    return "".join(cards) or None


# --------------------------------------------------------------------------- 6. metrics

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


def _aggregate_cell(agg: Any, digits: int | None) -> str:
    """``mean ± std [lo, hi]`` of one aggregate metric."""
    if not isinstance(agg, Mapping):
        return MISSING
    text = f"{fmt(agg.get('mean'), digits)} ± {fmt(agg.get('std'), digits)}"
    ci = agg.get("ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        text += f' <span class="ci">[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]</span>'
    return text


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
            cells = [_aggregate_cell(_get(aggregate, key), _mae_digits(units) if key == "mae" else digits) for key, _, _, digits in TRANSLATION_METRICS]
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
    ranked = _note(f"Ranking on MAE ({comparison.TEST_NAME} over (subject, seed) pairs, p < {comparison.ALPHA}): " + "; ".join(ranking)) if ranking else ""
    return _table(header, rows, caption=caption, numeric_from=1) + ranked + "".join(_per_subject_details(e, units) for e in entries)


def _seeds_cell(summary: Mapping[str, Any] | None, digits: int | None) -> str:
    """``mean ± std [lo, hi]`` over subjects and the SD over seeds."""
    if not summary:
        return MISSING
    text = _aggregate_cell(summary, digits)
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
    return f"<details><summary>per subject: {esc(entry.get('model', ''))}{esc(seed)}</summary>{_table(header, rows)}</details>"


def _warning_marks(notes: Any) -> str:
    """Small-N warnings of a metrics file, shown next to the numbers they qualify."""
    if not isinstance(notes, list) or not notes:
        return ""
    return "".join(f'<p class="warn">⚠ {esc(n)}</p>' for n in notes)


def _generation_tables(entry: Mapping[str, Any]) -> str:
    features = entry.get("features")
    title = f"{entry.get('task')} / {entry.get('model')}"
    if not isinstance(features, Mapping) or not features:
        return f'<div class="card"><h3>{esc(title)}</h3>{_note("no feature metrics in the file")}</div>'
    tables = []
    for extractor, values in features.items():
        values = values if isinstance(values, Mapping) else {}
        intervals = values.get("intervals") or values.get("bootstrap") or {}  # as medgen.eval.distribution writes it
        warn = " ⚠" if values.get("warnings") else ""
        rows = []
        for key, label, digits in GENERATION_METRICS:
            ci = _get(intervals, "real_vs_fake", key)
            ci_text = f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else MISSING
            rows.append([esc(label), fmt(_get(values, "real_vs_fake", key), digits) + warn, fmt(_get(values, "real_vs_real", key), digits), ci_text])
        checksum = values.get("checksum")
        n = values.get("n")
        n_text = f"N = {fmt(n)} per set" + (f" (of {fmt(values.get('n_real_total'))} real, {fmt(values.get('n_fake_total'))} synthetic)" if "n_real_total" in values else "")
        caption = f"extractor {extractor}, {n_text}, feature dimension {fmt(values.get('feature_dim'))}" + (f", weights {str(checksum)[:12]}" if checksum else ", weights unverified")
        method = intervals.get("method") if isinstance(intervals, Mapping) else None
        label = "95% interval (real vs fake)" if method else "bootstrap 95% CI (real vs fake)"
        standardisation = values.get("standardisation")
        notes = _note(f"intervals: {method}") if method else ""
        if isinstance(standardisation, Mapping):
            notes += _note(f"features: {standardisation.get('method')}; {fmt(standardisation.get('features_kept'))} of {fmt(standardisation.get('features_in'))} kept, {fmt(standardisation.get('values_clipped'))} values clipped")
        tables.append("<div>" + _table(["metric (unitless)", "real vs fake", "real vs real (baseline)", label], rows, caption=caption) + _warning_marks(values.get("warnings")) + notes + "</div>")
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
            real = [_get(r, "features", extractor, "real_vs_real", key) for r in runs]
            rows.append([esc(label), spread, " / ".join(fmt(v, digits) for v in values) or MISSING, fmt(next((v for v in real if v is not None), None), digits)])
        tables.append(_table(["metric (unitless)", "real vs fake, mean ± SD over seeds", f"per seed ({seeds})", "real vs real (baseline)"], rows, caption=f"extractor {extractor}, {len(runs)} seeds"))
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
                parts.append(_note(f"{task}, ranking on FD in {extractor} features ({comparison.TEST_NAME} over seeds, p < {comparison.ALPHA}): " + "; ".join(lines)))
    return "".join(parts)


def _metrics(ctx: _Context) -> str | None:
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
        parts.append("<h3>Generation</h3>" + _note("Each metric compares the generated set with held-out real images (real vs fake) next to two halves of the real data (real vs real), the level that a perfect generator would reach.") + _generation_section(generation))
    if other:
        parts.append(_note("metrics of unknown kind not shown: " + ", ".join(other)))
    return "".join(parts)


# --------------------------------------------------------------------------- 7. memorization


def _memorization(ctx: _Context) -> str | None:
    cards = []
    for path, data in ctx.metrics():
        memo = data.get("memorization")
        if data.get("kind") != "generation" or not isinstance(memo, Mapping):
            continue
        share = memo.get("likely_copy_share")
        share_text = f"{fmt(100 * share, 1)} %" if isinstance(share, (int, float)) and not isinstance(share, bool) else MISSING
        counts = data.get("n") if isinstance(data.get("n"), Mapping) else {}
        n_syn = memo.get("n_synthetic", counts.get("synthetic"))
        n_train = memo.get("n_train", counts.get("real_train"))
        n_test = memo.get("n_test", counts.get("real_test"))
        alpha = memo.get("alpha")
        rule = f"closer to a training image than the {fmt(alpha)}-quantile of {fmt(n_test)} real test images' nearest-training distances"
        items = [
            ("likely copies of training images", f"<b>{share_text}</b> of {fmt(n_syn)} samples, compared with all {fmt(n_train)} training slices"),
            ("flagged when", esc(rule)),
        ]
        spaces = memo.get("spaces")
        if isinstance(spaces, Mapping) and spaces:
            for space, info in spaces.items():
                if isinstance(info, Mapping):
                    items.append((f"{space} space ({info.get('metric')})", f"threshold {fmt(info.get('threshold'))}, {fmt(100 * info['likely_copy_share'], 1) if isinstance(info.get('likely_copy_share'), (int, float)) else MISSING} % flagged"))
        else:
            items.append(("distance threshold", fmt(memo.get("threshold"))))
        facts = _facts(items) + _warning_marks(memo.get("warnings"))
        picture = memo.get("closest_pairs_png")
        figure = ""
        if isinstance(picture, str) and picture:
            png = path.parent / picture
            figure = _figure(png, "generated samples (left) next to their closest training images (right)", css="samples") if png.is_file() else _note(f"{picture} not found")
        cards.append(f'<div class="card"><h3>{esc(data.get("task"))} / {esc(data.get("model"))}</h3>{facts}{figure}</div>')
    return "".join(cards) or None


# --------------------------------------------------------------------------- 8. timing


def _first_row(tsv: Path) -> dict[str, str] | None:
    try:
        with tsv.open(newline="") as handle:
            return next(csv.DictReader(handle, delimiter="\t"), None)
    except (OSError, csv.Error):
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def benchmark_times(results: Path) -> dict[str, dict[str, float]]:
    """Per rule: ``jobs``, ``total_s``, ``max_s`` and ``max_rss_mb`` from ``benchmarks/<rule>/**/*.tsv``."""
    times: dict[str, dict[str, float]] = {}
    for rule in _dirs(results / "benchmarks"):
        seconds, rss = [], []
        for tsv in sorted(rule.rglob("*.tsv")):
            row = _first_row(tsv) or {}
            s = _float(row.get("s"))
            if s is not None:
                seconds.append(s)
            r = _float(row.get("max_rss"))
            if r is not None:
                rss.append(r)
        if seconds:
            times[rule.name] = {"jobs": len(seconds), "total_s": sum(seconds), "max_s": max(seconds), "max_rss_mb": max(rss) if rss else math.nan}
    return times


def _hms(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}"


def _timing(ctx: _Context) -> str | None:
    from medgen.report.plots import timing_bars

    times = benchmark_times(ctx.results)
    if not times:
        return None
    ordered = sorted(times.items(), key=lambda kv: -kv[1]["total_s"])
    rows = [[esc(rule), str(int(t["jobs"])), fmt(t["total_s"], 1), fmt(t["max_s"], 1), fmt(t["max_rss_mb"], 0)] for rule, t in ordered]
    total = sum(t["total_s"] for t in times.values())
    rows.append(["<b>all rules</b>", f"<b>{sum(int(t['jobs']) for t in times.values())}</b>", f"<b>{fmt(total, 1)}</b>", "", ""])
    table = _table(["rule", "jobs (n)", "total wall (s)", "longest job (s)", "max RSS (MB)"], rows, caption=f"total wall time {_hms(total)} (h:mm:ss), summed over jobs")
    try:
        png = timing_bars({rule: t["total_s"] for rule, t in times.items()}, ctx.png("timing"), title="wall time per rule (sum over jobs)")
        figure = _figure(png, "wall time per rule")
    except Exception as exc:
        figure = _note(f"cannot draw the timing chart: {exc}")
    return f'<div class="row">{table}{figure}</div>'


# --------------------------------------------------------------------------- page

#: the sections in report order: id, heading, builder
def _downstream(ctx: _Context) -> str | None:
    """Segmentation Dice per training setting (``metrics/<task>/downstream.json``)."""
    cards = []
    for task_dir in _dirs(ctx.results / "metrics"):
        data = _read_json(task_dir / "downstream.json") if (task_dir / "downstream.json").is_file() else None
        if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
            continue
        classes = [c for c in data.get("classes") or [] if any(c in (st.get("dice") or {}) for st in data["settings"].values())]
        header = ["training data", "mean Dice (± SD over seeds)"] + classes
        rows = []
        for name, setting in data["settings"].items():
            mean = setting.get("mean_dice") or {}
            spread = f" ± {fmt(mean['seed_std'], 3)}" if mean.get("seed_std") is not None else ""
            rows.append([esc(name), fmt(mean.get("mean"), 3) + spread] + [_aggregate_cell({**c, "std": c.get("seed_std")}, 3) if isinstance(c := _get(setting, "dice", cls), Mapping) else MISSING for cls in classes])
        caption = (
            f"{task_dir.name}: {data.get('modality')} tissue segmentation, {data.get('network')}, {data.get('steps')} steps, "
            f"seeds {data.get('seeds')}; Dice on {len(data.get('test_subjects') or [])} real test subjects: mean ± SD over seeds "
            f"[95% bootstrap CI over subjects]"
        )
        cards.append(f'<div class="card"><h3>{esc(task_dir.name)}</h3>{_table(header, rows, caption=caption)}</div>')
    return "".join(cards) or None


SECTIONS: tuple[tuple[str, str, Callable[[_Context], str | None]], ...] = (
    ("data", "Data", _data),
    ("models", "Models", _models),
    ("samples", "Samples", _samples),
    ("translation", "Translation", _translation),
    ("metrics", "Metrics", _metrics),
    ("downstream", "Downstream segmentation", _downstream),
    ("memorization", "Memorization", _memorization),
    ("timing", "Timing", _timing),
)

CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dee7; --accent:#2f5fa8; --bg:#f6f7fa; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; color:var(--fg); background:var(--bg); }
header { background:#1d2f52; color:#fff; padding:18px 28px 12px; }
header h1 { margin:0 0 4px; font-size:26px; }
header p { margin:0; color:#c9d4ea; font-size:13px; }
nav { position:sticky; top:0; z-index:1; background:#fff; border-bottom:1px solid var(--line); padding:8px 28px; }
nav a { display:inline-block; margin-right:6px; padding:4px 12px; border-radius:14px; background:#e8eef8; color:var(--accent); text-decoration:none; font-size:14px; }
main { max-width:1280px; margin:0 auto; padding:8px 28px 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:6px 22px 18px; margin:18px 0; }
h2 { font-size:21px; border-bottom:2px solid var(--accent); padding-bottom:4px; }
h3 { font-size:16px; margin:16px 0 8px; }
.card { border-top:1px solid var(--line); padding-top:4px; margin-top:10px; }
.row { display:flex; flex-wrap:wrap; gap:18px; align-items:flex-start; }
figure { margin:8px 0; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; background:#fff; }
figure.samples img { min-width:min(100%, 480px); image-rendering:pixelated; }
figcaption { color:var(--muted); font-size:13px; }
table { border-collapse:collapse; margin:8px 0 12px; font-size:14px; }
caption { text-align:left; color:var(--muted); font-size:13px; padding-bottom:4px; }
th, td { border-bottom:1px solid var(--line); padding:4px 10px; }
th { background:#eef1f6; text-align:left; font-weight:600; }
td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
.ci { color:var(--muted); font-size:12px; }
.tag { background:#eef1f6; border-radius:8px; padding:0 6px; font-size:12px; color:var(--muted); }
.note { color:var(--muted); font-size:13px; }
.warn { color:#9a5b00; font-size:13px; margin:2px 0; }
dl.facts { display:grid; grid-template-columns:max-content auto; gap:2px 14px; margin:6px 0; font-size:14px; }
dl.facts dt { color:var(--muted); }
dl.facts dd { margin:0; }
pre.yaml { background:#f3f5f9; border:1px solid var(--line); border-radius:6px; padding:10px 14px; font-size:12.5px; max-height:520px; overflow:auto; }
ul.issues { font-size:13px; font-family:ui-monospace,Menlo,Consolas,monospace; }
details summary { cursor:pointer; color:var(--accent); font-size:13px; }
"""


def _section(section_id: str, heading: str, body: str) -> str:
    return f'<section id="{esc(section_id)}"><h2>{esc(heading)}</h2>{body}</section>'


def _page(title: str, sections: Sequence[tuple[str, str, str]], subtitle: str) -> str:
    nav = "".join(f'<a href="#{esc(sid)}">{esc(heading)}</a>' for sid, heading, _ in sections)
    body = "".join(_section(*s) for s in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f"<nav>{nav}</nav><main>{body}</main></body></html>\n"
    )


def _build_section(ctx: _Context, section_id: str, heading: str, builder: Callable[[_Context], str | None]) -> tuple[str, str, str] | None:
    """One section, or ``None`` when its inputs are absent; a failure becomes a note in it."""
    try:
        body = builder(ctx)
    except Exception as exc:  # a report of a damaged folder is still useful
        log.warning("report: section %s failed: %s", section_id, exc, exc_info=True)
        body = _note(f"this section could not be built: {type(exc).__name__}: {exc}")
    return (section_id, heading, body) if body else None


def load_config(results: Path) -> dict[str, Any]:
    """``results/config.yaml`` as a dict; empty when absent or unreadable."""
    path = Path(results) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        import yaml

        data = yaml.safe_load(path.read_text())
    except Exception as exc:
        log.warning("report: cannot read %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def build_report(results: Path, out_html: Path, *, config: dict | None = None, title: str = "medgen report") -> Path:
    """Write a self-contained HTML report of ``results`` to ``out_html`` and return its path.

    ``config`` defaults to ``results/config.yaml``. Sections: overview, data, models, samples,
    translation, metrics, memorization, timing; each only when its inputs exist."""
    results = Path(results)
    config = dict(config) if config is not None else load_config(results)
    with tempfile.TemporaryDirectory(prefix="medgen_report_") as tmp:
        ctx = _Context(results=results, config=config, work=Path(tmp))
        sections = [("overview", "Overview", _overview(ctx, title))]
        sections += [s for s in (_build_section(ctx, *spec) for spec in SECTIONS) if s]
    subtitle = f"medgen {medgen.__version__} · {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M} · {results.name or results}"
    out_html = atomic_write_text(Path(out_html), _page(title, sections, subtitle))
    _readable(out_html)
    return out_html


def _readable(path: Path) -> None:
    """Give the report the usual file mode (0644 less the umask) instead of a temp file's 0600."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o644 & ~umask)


def report_main(results: Path, out: Path, config_path: Path | None = None) -> int:
    """``medgen report``: build the report; returns 0 (failures raise errors of :mod:`medgen.errors`)."""
    from medgen.errors import CorruptFileError, InputMissingError

    results = Path(results)
    if not results.is_dir():
        raise InputMissingError(f"{results}: not a folder; pass the workflow's results folder to --results")
    config = None
    if config_path is not None:
        import yaml

        try:
            config = yaml.safe_load(Path(config_path).read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise CorruptFileError(f"{config_path}: not a readable YAML config ({' '.join(str(exc).split())}); pass the workflow's config file") from None
        if not isinstance(config, dict):
            raise CorruptFileError(f"{config_path}: not a config (a YAML mapping of keys to values); pass the workflow's config file")
    path = build_report(results, Path(out), config=config)
    print(f"medgen report: wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    from medgen.report.metrics_tsv import write_metrics_tsv

    with tempfile.TemporaryDirectory() as tmp:
        table = write_metrics_tsv([d for _, d in _Context(results=results, config=config or {}, work=Path(tmp)).metrics()], results / METRICS_TSV)
    print(f"medgen report: wrote {table}")
    return 0
