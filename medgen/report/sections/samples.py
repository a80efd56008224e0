"""Samples: the augmentation set of every generation run (its grid and sample count)."""

from __future__ import annotations

from medgen.report.format import esc, figure, note
from medgen.report.results import Results, count_rows


def build(ctx: Results) -> str | None:
    cards = []
    for task, run in ctx.sample_runs():
        grid, manifest = ctx.samples_grid(task, run), ctx.samples_manifest(task, run)
        if not grid.is_file() and not manifest.is_file():
            continue
        n = count_rows(manifest) if manifest.is_file() else None
        caption = f"{task} / {run}: " + (f"{n} generated samples in manifest.tsv" if n is not None else "no manifest.tsv")
        body = figure(grid, caption, css="samples") if grid.is_file() else note(caption + " (no grid.png)")
        cards.append(f'<div class="card"><h3>{esc(task)} / {esc(run)}</h3>{body}</div>')
    return "".join(cards) or None
