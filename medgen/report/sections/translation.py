"""Translation: per translation task, the validation MAE during training beside the baselines, then
per run input | output | ground truth | error panels of test subjects."""

from __future__ import annotations

from pathlib import Path

from medgen.report.format import esc, figure, note
from medgen.report.results import Results, nifti_stem
from medgen.report.validation import MAE_KEY, validation_card

#: translation panels shown per model (the rest are counted)
MAX_TRANSLATION_SUBJECTS = 6


def _translation_subjects(ctx: Results, task: str, run: str) -> list[Path]:
    outputs = ctx.translations(task, run)
    test = set(ctx.split().get("test", []))
    chosen = [p for p in outputs if nifti_stem(p) in test]
    return chosen or outputs


def _translation_model(ctx: Results, task: str, run: str, source: str, target: str) -> str:
    from medgen.report.plots import translation_panel

    outputs = _translation_subjects(ctx, task, run)
    parts = [f'<div class="card"><h3>{esc(task)} / {esc(run)}: {esc(source)} → {esc(target)}</h3>']
    for output in outputs[:MAX_TRANSLATION_SUBJECTS]:
        subject = nifti_stem(output)
        src, ref = (ctx.nifti_image(subject, m) for m in (source, target))
        if not (src.is_file() and ref.is_file()):
            parts.append(note(f"{subject}: no {source}/{target} in nifti/ to compare with"))
            continue
        try:
            png = translation_panel(src, output, ref, ctx.png(f"tr_{task}_{run.replace('/', '_')}_{subject}"), source_name=source, target_name=target, title=subject)
        except Exception as exc:
            parts.append(note(f"{subject}: cannot draw the panel: {exc}"))
            continue
        parts.append(figure(png, f"{subject}: input | output | ground truth | error (output − truth), mid slices"))
    if len(outputs) > MAX_TRANSLATION_SUBJECTS:
        parts.append(note(f"… and {len(outputs) - MAX_TRANSLATION_SUBJECTS} more subjects not shown"))
    parts.append("</div>")
    return "".join(parts)


def build(ctx: Results) -> str | None:
    cards = []
    translated = ctx.translation_tasks()
    for task in sorted({*translated, *(task for task, _ in ctx.model_runs())}):
        cards.append(validation_card(ctx, task, MAE_KEY))
        runs = translated.get(task)
        if not runs:
            continue
        spec = ctx.task_spec(task)
        source, target = spec.get("source"), spec.get("target")
        if not (isinstance(source, str) and isinstance(target, str)):
            cards.append(note(f"{task}: the configuration names no source/target modality; outputs not shown"))
            continue
        cards += [_translation_model(ctx, task, run, source, target) for run in runs]
    return "".join(cards) or None
