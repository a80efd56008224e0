"""The one writer of metrics files: every interval is checked against its point estimate first.

Two layouts carry intervals: an aggregate ``{"mean": x, "ci95": [lo, hi], ...}`` (paired
metrics over subjects), and a distribution block ``{"real_vs_fake": {...}, "real_vs_real":
{...}, "intervals": {"real_vs_fake": {metric: [lo, hi]}, ...}}``. An interval that does not
contain its estimate is a bug in the method that made it, so the file is not written.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from medgen.io.atomic import atomic_write_json


def _contains(interval: Any, estimate: Any) -> bool:
    lo, hi = (float(v) for v in interval)
    x = float(estimate)
    if not all(math.isfinite(v) for v in (lo, hi, x)):
        return True  # nothing to check: a missing interval (nan) or an infinite estimate
    # Round-off allowance: the percentile arithmetic may differ from the estimate's by a few ulps.
    slack = 1e-12 * max(1.0, abs(x))
    return lo - slack <= x <= hi + slack


def interval_violations(doc: Any, where: str = "") -> Iterator[str]:
    """Paths (``a.b.c``) of every interval in ``doc`` that excludes its point estimate."""
    if isinstance(doc, Mapping):
        if "ci95" in doc and "mean" in doc and not _contains(doc["ci95"], doc["mean"]):
            yield f"{where}: mean {doc['mean']} outside ci95 {list(doc['ci95'])}"
        intervals = doc.get("intervals")
        if isinstance(intervals, Mapping):
            for pair, per_metric in intervals.items():
                if isinstance(per_metric, Mapping) and isinstance(doc.get(pair), Mapping):
                    for metric, interval in per_metric.items():
                        if metric in doc[pair] and not _contains(interval, doc[pair][metric]):
                            yield f"{where}.{pair}.{metric}: {doc[pair][metric]} outside interval {list(interval)}"
        for key, value in doc.items():
            yield from interval_violations(value, f"{where}.{key}" if where else str(key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from interval_violations(value, f"{where}[{i}]")


def write_metrics(path: Path | str, result: Mapping[str, Any]) -> Path:
    """Write ``result`` as JSON (atomically) after checking that every interval holds its estimate."""
    bad = list(interval_violations(result))
    if bad:
        raise AssertionError(f"{path}: not written, {len(bad)} interval(s) exclude their estimate: " + "; ".join(bad[:5]))
    return atomic_write_json(Path(path), dict(result))
