"""Validation curves of the trained models: the score each run logged on the validation subjects
against the step, the step whose weights ``model.pt`` holds, and the task's baselines.

Translation runs log the MAE (:data:`MAE_KEY`, HU for CT, the normalised scale for MR) and
generation runs the encoder FD (:data:`FD_KEY`) every ``train.val_every`` steps into their
``log.jsonl``; ``model.pt``'s card records the chosen step (``validation = {"key", "step",
"value"}``). The baselines (:mod:`medgen.eval.baselines`) are scored on the test subjects, the
curves on the validation subjects: the figure says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from medgen import layout
from medgen.data.normalise import is_ct
from medgen.report.format import esc, figure, note
from medgen.report.results import Results, get, read_json, read_training_log

log = logging.getLogger(__name__)

#: the logged key of :class:`medgen.train.validation.TranslationValidator`
MAE_KEY = "val/mae"
#: the logged key of :class:`medgen.train.validation.GenerationValidator`
FD_KEY = "val/fd"
#: baselines drawn beside the MAE curves (name in the baselines file -> legend label)
BASELINE_LABELS: dict[str, str] = {
    "intensity_lookup": "lookup (test subjects)",
    "identity_matched": "identity (test subjects)",
}


@dataclass(frozen=True)
class Curve:
    """One run's validation scores: ``steps`` and ``values`` (finite, by step), and ``chosen``, the
    (step, value) whose weights ``model.pt`` holds (``None`` when unknown)."""

    run: str
    steps: tuple[int, ...]
    values: tuple[float, ...]
    chosen: tuple[int, float] | None = None

    @property
    def model(self) -> str:
        """The model name of the run (``pix2pix`` for ``pix2pix/seed-1``)."""
        return self.run.split("/", 1)[0]


def curve_of(run: str, records: Sequence[Mapping[str, Any]], key: str, card_validation: Mapping[str, Any] | None = None) -> Curve | None:
    """The ``key`` scores of a run's log records (the last record of a step wins), with the step of
    ``card_validation`` (the card's ``validation``) when it names ``key``; ``None`` without scores."""
    from medgen.report.plots import _finite

    by_step = {int(r["step"]): float(r[key]) for r in records if _finite(r.get("step")) and _finite(r.get(key))}
    if not by_step:
        return None
    steps = tuple(sorted(by_step))
    chosen = None
    if isinstance(card_validation, Mapping) and card_validation.get("key") == key and _finite(card_validation.get("step")):
        step = int(card_validation["step"])
        value = card_validation.get("value")
        chosen = (step, float(value) if _finite(value) else by_step.get(step, float("nan")))
    return Curve(run, steps, tuple(by_step[s] for s in steps), chosen)


def card_validation(model_file: Path) -> dict[str, Any] | None:
    """The ``validation`` of a ``model.pt``'s card; ``None`` when absent or unreadable."""
    if not model_file.is_file():
        return None
    try:
        from medgen.models.artifact import read_card

        return read_card(model_file).validation
    except Exception as exc:  # a damaged model file must not stop the report
        log.warning("report: cannot read the card of %s: %s", model_file, exc)
        return None


def read_curves(ctx: Results, task: str, key: str) -> list[Curve]:
    """The ``key`` curve of every run of ``task`` that logged one, in run order."""
    curves = []
    for run_task, run in ctx.model_runs():
        if run_task != task:
            continue
        records = read_training_log(ctx.model_dir(task, run) / "log.jsonl")
        if not any(key in r for r in records):
            continue
        curve = curve_of(run, records, key, card_validation(Path(layout.model_file(ctx.results, task, run))))
        if curve is not None:
            curves.append(curve)
    return curves


def baseline_levels(path: Path) -> dict[str, float]:
    """Legend label -> mean test-subject MAE of each baseline in :data:`BASELINE_LABELS`, from a
    task's baselines file; empty when the file is absent or unreadable."""
    from medgen.report.plots import _finite

    doc = read_json(path) if Path(path).is_file() else None
    levels = {}
    for name, label in BASELINE_LABELS.items():
        value = get(doc, "baselines", name, "aggregate", "mae", "mean")
        if _finite(value):
            levels[label] = float(value)
    return levels


def units(ctx: Results, task: str, key: str) -> str:
    """What the curves of ``key`` measure, for the axis label."""
    if key == FD_KEY:
        return "FD (encoder features)"
    if key == MAE_KEY:
        target = ctx.task_spec(task).get("target")
        return "MAE (HU)" if isinstance(target, str) and is_ct(target) else "MAE (normalised)"
    return key


def validation_card(ctx: Results, task: str, key: str) -> str:
    """A card with the ``key`` curves of ``task`` (baselines beside the MAE); empty without curves."""
    from medgen.report.plots import validation_curves

    curves = read_curves(ctx, task, key)
    if not curves:
        return ""
    levels = baseline_levels(Path(layout.baselines_metrics(ctx.results, task))) if key == MAE_KEY else {}
    measure = units(ctx, task, key)
    try:
        png = validation_curves(curves, ctx.png(f"val_{task}"), ylabel=f"validation {measure}", baselines=levels, title=f"{task}: {key} on the validation subjects")
    except Exception as exc:
        return note(f"{task}: cannot plot the validation curves: {exc}")
    caption = f"{task}: {measure} on the validation subjects against the training step, one line per run"
    caption += "; ★ the step model.pt holds (the best validation)" if key == MAE_KEY else "; model.pt holds each run's last step"
    if levels:
        caption += "; horizontal lines: baselines measured on the test subjects"
    return f'<div class="card"><h3>{esc(task)}: validation during training</h3>{figure(png, caption)}</div>'
