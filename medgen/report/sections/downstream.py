"""Downstream segmentation: Dice per training setting (real slices alone, or with a model's
synthetic pairs), from each task's ``downstream.json``."""

from __future__ import annotations

from typing import Mapping

from medgen.report.format import MISSING, aggregate_cell, esc, fmt, table
from medgen.report.results import Results, get


def build(ctx: Results) -> str | None:
    cards = []
    for task, data in ctx.downstream():
        if not isinstance(data.get("settings"), dict):
            continue
        classes = [c for c in data.get("classes") or [] if any(c in (st.get("dice") or {}) for st in data["settings"].values())]
        header = ["training data", "mean Dice (± SD over seeds)"] + classes
        rows = []
        for name, setting in data["settings"].items():
            mean = setting.get("mean_dice") or {}
            spread = f" ± {fmt(mean['seed_std'], 3)}" if mean.get("seed_std") is not None else ""
            rows.append([esc(name), fmt(mean.get("mean"), 3) + spread] + [aggregate_cell({**c, "std": c.get("seed_std")}, 3) if isinstance(c := get(setting, "dice", cls), Mapping) else MISSING for cls in classes])
        caption = (
            f"{task}: {data.get('modality')} tissue segmentation, {data.get('network')}, {data.get('steps')} steps, "
            f"seeds {data.get('seeds')}; Dice on {len(data.get('test_subjects') or [])} real test subjects: mean ± SD over seeds "
            f"[95% bootstrap CI over subjects]"
        )
        cards.append(f'<div class="card"><h3>{esc(task)}</h3>{table(header, rows, caption=caption)}</div>')
    return "".join(cards) or None
