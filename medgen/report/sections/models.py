"""Models: per trained run, its last training state, loss curves and last sample grid; per task, the
validation FD of its generation runs during training."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from medgen.report.format import MISSING, esc, facts, figure, fmt, note
from medgen.report.results import Results, last_sample_grid, read_training_log
from medgen.report.validation import FD_KEY, validation_card


def _last(records: Sequence[Mapping[str, Any]], key: str) -> Any:
    return next((r[key] for r in reversed(records) if key in r), None)


def _loss_figure(ctx: Results, task: str, model: str, records: Sequence[Mapping[str, Any]]) -> str:
    from medgen.report.plots import loss_curves

    try:
        png = loss_curves(records, ctx.png(f"loss_{task}_{model}"), title=f"{task} / {model}")
    except Exception as exc:
        return note(f"cannot plot the losses: {exc}")
    return figure(png, "training losses per step") if png else note("no loss/* terms logged")


def _model_card(ctx: Results, task: str, run: str) -> str:
    model_dir = ctx.model_dir(task, run)
    log_path = model_dir / "log.jsonl"
    records = read_training_log(log_path)
    kind = ctx.task_spec(task).get("kind")
    items = [("kind", esc(kind or MISSING))]
    if records:
        lrs = [(k.removeprefix("lr/"), fmt(_last(records, k))) for k in sorted({k for r in records for k in r if k.startswith("lr/")})]
        items += [
            ("last step", fmt(_last(records, "step"))),
            ("epochs", fmt(_last(records, "epoch"))),
            ("final images/s", fmt(_last(records, "images_per_s"))),
        ] + [(f"final lr ({name})", value) for name, value in lrs]
    parts = [f'<div class="card"><h3>{esc(task)} / {esc(run)}</h3>', facts(items), '<div class="row">']
    if records:
        parts.append(_loss_figure(ctx, task, run.replace("/", "_"), records))
    elif log_path.is_file():
        parts.append(note("log.jsonl has no readable lines"))
    grid = last_sample_grid(model_dir)
    if grid is not None:
        parts.append(figure(grid, f"last training samples ({grid.stem.replace('_', ' ')})", css="samples"))
    parts.append("</div></div>")
    return "".join(parts)


def build(ctx: Results) -> str | None:
    cards = []
    runs = ctx.model_runs()
    for i, (task, run) in enumerate(runs):
        cards.append(_model_card(ctx, task, run))
        if i + 1 == len(runs) or runs[i + 1][0] != task:  # after the task's last run
            cards.append(validation_card(ctx, task, FD_KEY))
    return "".join(cards) or None
