"""Data: ingested images per subject, the split, ingest warnings, skips and failures, and the
preprocessed images of one subject."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from medgen.report.format import MISSING, esc, figure, fmt, note, table
from medgen.report.results import Results, modality_info

#: subjects listed openly in the data table (more are folded away)
MAX_SUBJECT_ROWS = 30
#: ingest issues listed (the rest are counted)
MAX_ISSUES = 40


def _shape_text(info: Mapping[str, Any]) -> str:
    shape, spacing = info.get("shape"), info.get("spacing")
    text = "×".join(str(s) for s in shape) if isinstance(shape, list) else MISSING
    if isinstance(spacing, list) and spacing:
        text += " @ " + "×".join(fmt(float(s), 2) for s in spacing) + " mm"
    source = info.get("source")
    return esc(text) + (f' <span class="tag">{esc(source)}</span>' if source else "")


def _issue_list(issues: Sequence[str]) -> str:
    shown = "".join(f"<li>{esc(i)}</li>" for i in issues[:MAX_ISSUES])
    more = f"<li>… and {len(issues) - MAX_ISSUES} more</li>" if len(issues) > MAX_ISSUES else ""
    return f'<ul class="issues">{shown}{more}</ul>'


def _subjects_table(ctx: Results) -> tuple[str, list[str]]:
    infos = {s: {m: modality_info(p) for m, p in images.items()} for s, images in ctx.nifti_images().items()}
    if not infos:
        return "", []
    modalities = ctx.modality_order({m for v in infos.values() for m in v})
    rows = [[esc(s)] + [_shape_text(v[m]) if m in v else MISSING for m in modalities] for s, v in infos.items()]
    counts = ", ".join(f"{m}: {sum(m in v for v in infos.values())}" for m in modalities)
    summary = note(f"{len(infos)} subjects; images per modality — {counts}. Cells: shape @ voxel spacing, source.")
    warnings = [f"{s}/{m}: {w}" for s, v in infos.items() for m, i in v.items() for w in (i.get("warnings") or [])]
    subjects = table(["subject"] + modalities, rows, numeric_from=len(modalities) + 1)
    if len(rows) > MAX_SUBJECT_ROWS:
        subjects = f"<details><summary>show the {len(rows)} subjects</summary>{subjects}</details>"
    return summary + subjects, warnings


def _split_table(ctx: Results) -> str:
    split = ctx.split()
    if not split:
        return ""
    rows = [[esc(name), str(len(members)), esc(", ".join(members[:12]) + (" …" if len(members) > 12 else ""))] for name, members in split.items()]
    rows.append(["<b>total</b>", f"<b>{sum(len(m) for m in split.values())}</b>", ""])
    return "<h3>Split</h3>" + table(["split", "subjects (n)", "members"], rows, numeric_from=1, numeric_to=2)


def _prep_views(ctx: Results) -> str:
    from medgen.report.figures import orthogonal_views

    for subject, files in ctx.prep_images().items():
        modalities = ctx.modality_order(set(files) - {"mask", "labels"})
        images = {m: files[m] for m in modalities}
        if "mask" in files:
            images["mask"] = files["mask"]
        if not images:
            continue
        try:
            png = orthogonal_views(images, ctx.png(f"prep_{subject}"), title=f"{subject}, preprocessed")
        except Exception as exc:
            return note(f"cannot draw {subject}: {exc}")
        return "<h3>Preprocessed images</h3>" + figure(png, f"{subject}: preprocessed modalities and brain mask, mid slices")
    return ""


def build(ctx: Results) -> str | None:
    subjects, warnings = _subjects_table(ctx)
    issues = [f"warning {w}" for w in warnings] + ctx.ingest_issues()
    parts = [subjects, _split_table(ctx)]
    if subjects or issues:
        parts.append("<h3>Ingest warnings, skips and failures</h3>" + (_issue_list(issues) if issues else note("none")))
    parts.append(_prep_views(ctx))
    body = "".join(parts)
    return body or None
