"""The flat metrics table: every number of every metrics file, one row each, for spreadsheets.

Columns: ``task, method, seed, kind, metric, value, std, ci_low, ci_high, n``. ``kind`` is
``model`` or ``baseline`` for translation (paired metrics over test subjects: ``value`` is the
mean, ``std`` the SD over subjects, the interval the subject-level bootstrap), ``model`` for
generation (``metric`` is ``<extractor>/<statistic>`` real vs fake, ``<extractor>/<statistic>/real_vs_real``
for the baseline at the same N), and ``downstream`` for segmentation Dice (``method`` is the
training set, ``metric`` ``dice/<class>``; ``std`` the SD over training seeds).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from medgen.io.atomic import atomic_write_text

COLUMNS = ("task", "method", "seed", "kind", "metric", "value", "std", "ci_low", "ci_high", "n")


def _aggregate_rows(task: str, method: str, seed: Any, kind: str, aggregate: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for metric, stats in aggregate.items():
        if isinstance(stats, Mapping) and "mean" in stats:
            ci = stats.get("ci95") or [None, None]
            yield {"task": task, "method": method, "seed": seed, "kind": kind, "metric": metric, "value": stats["mean"],
                   "std": stats.get("std"), "ci_low": ci[0], "ci_high": ci[1], "n": stats.get("n")}


def metric_rows(entry: Mapping[str, Any], *, with_baselines: bool = True) -> Iterator[dict[str, Any]]:
    """The rows of one parsed metrics file (a translation file's baselines unless ``with_baselines`` is false)."""
    task, method, seed = str(entry.get("task")), str(entry.get("model")), entry.get("seed")
    kind = entry.get("kind")
    if kind == "translation":
        yield from _aggregate_rows(task, method, seed, "model", entry.get("aggregate") or {})
        for name, base in (entry.get("baselines") or {}).items() if with_baselines else ():
            yield from _aggregate_rows(task, name, None, "baseline", base.get("aggregate") or {})
    elif kind == "generation":
        for extractor, values in (entry.get("features") or {}).items():
            for side, suffix in (("real_vs_fake", ""), ("real_vs_real", "/real_vs_real")):
                for stat, value in ((values or {}).get(side) or {}).items():
                    if isinstance(value, (int, float)):
                        ci = ((values.get("bootstrap") or {}).get(side) or {}).get(stat) if side == "real_vs_fake" else None
                        ci = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else [None, None]
                        yield {"task": task, "method": method, "seed": seed, "kind": "model", "metric": f"{extractor}/{stat}{suffix}",
                               "value": value, "std": None, "ci_low": ci[0], "ci_high": ci[1], "n": (entry.get("n") or {}).get("synthetic")}
    elif kind == "downstream":
        for setting, result in (entry.get("settings") or {}).items():
            for name, stats in (result.get("dice") or {}).items():
                ci = stats.get("ci95") or [None, None]
                yield {"task": task, "method": setting, "seed": None, "kind": "downstream", "metric": f"dice/{name}", "value": stats.get("mean"),
                       "std": stats.get("seed_std"), "ci_low": ci[0], "ci_high": ci[1], "n": stats.get("n_subjects")}


def write_metrics_tsv(entries: Sequence[Mapping[str, Any]], out: Path) -> Path:
    """Write :data:`COLUMNS` rows of every entry to ``out`` (atomically) and return its path."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    baselines_written: set[str] = set()  # a task's baselines once, not once per model file
    for entry in entries:
        task = str(entry.get("task"))
        for row in metric_rows(entry, with_baselines=task not in baselines_written):
            writer.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        if entry.get("kind") == "translation" and entry.get("baselines"):
            baselines_written.add(task)
    return atomic_write_text(Path(out), buffer.getvalue())
