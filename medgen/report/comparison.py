"""Metrics tables across seeds and baselines, and the paired test that decides a ranking.

A model trained with several seeds has one metrics file per seed. Its table row shows the mean
over subjects of the seed-averaged per-subject values with a subject-level bootstrap interval,
and beside it the spread over seeds (standard deviation of the per-seed means). Translation
tables end with the task's baselines, scored on the same subjects by the same code.

Two methods are ranked only when a two-sided Wilcoxon signed-rank test
(``scipy.stats.wilcoxon``) over paired observations rejects equality at p < 0.05: translation
pairs are (test subject, seed) MAE values (a baseline, which has no seed, pairs with every seed
of the model); generation pairs are per-seed FD values. With n pairs the smallest attainable
two-sided p is 2 / 2**n, so 3 subjects of one seed (p >= 0.25) can never rank two methods.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any, Mapping, Sequence

import numpy as np

from medgen.eval.paired import bootstrap_ci

#: level of the paired test
ALPHA = 0.05
TEST_NAME = "two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon)"


def group_by_model(entries: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Metrics entries of one task grouped by model, each list in seed order."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        groups.setdefault(str(entry.get("model")), []).append(entry)
    for runs in groups.values():
        runs.sort(key=lambda e: (e.get("seed") is None, e.get("seed") or 0))
    return groups


def per_subject_values(runs: Sequence[Mapping[str, Any]], metric: str) -> dict[tuple[str, int | None], float]:
    """``{(subject, seed): value}`` of one metric over every run of a model (finite values only)."""
    out: dict[tuple[str, int | None], float] = {}
    for run in runs:
        for row in run.get("per_subject") or []:
            value = row.get(metric) if isinstance(row, Mapping) else None
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[(str(row.get("subject")), run.get("seed"))] = float(value)
    return out


def seed_summary(runs: Sequence[Mapping[str, Any]], metric: str, *, seed: int = 0) -> dict[str, Any] | None:
    """Mean, SD and bootstrap 95% interval over subjects (values averaged over seeds), and the
    SD of the per-seed means (``seed_std``, ``None`` for one seed)."""
    values = per_subject_values(runs, metric)
    if not values:
        return None
    subjects = sorted({s for s, _ in values})
    per_subject = np.array([np.mean([v for (s, _), v in values.items() if s == subj]) for subj in subjects])
    seeds = sorted({k for _, k in values}, key=lambda k: (k is None, k or 0))
    seed_means = [np.mean([v for (_, k), v in values.items() if k == seed_]) for seed_ in seeds]
    return {
        "mean": float(per_subject.mean()),
        "std": float(per_subject.std(ddof=1)) if per_subject.size > 1 else 0.0,
        "ci95": list(bootstrap_ci(per_subject, seed=seed)),
        "n_subjects": len(subjects),
        "n_seeds": len(seeds),
        "seed_means": [float(v) for v in seed_means],
        "seed_std": float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else None,
    }


def _seedless(values: Mapping[tuple[str, int | None], float]) -> bool:
    return all(seed is None for _, seed in values)


def _pairs(a: Mapping[tuple[str, int | None], float], b: Mapping[tuple[str, int | None], float]) -> list[tuple[float, float]]:
    """Paired values: shared (subject, seed) keys, or every seed of one side against the other's
    seedless value of that subject (a baseline against each seed of a model)."""
    if _seedless(a) != _seedless(b):
        if _seedless(a):
            return [(a[(s, None)], v) for (s, _), v in sorted(b.items(), key=str) if (s, None) in a]
        return [(v, b[(s, None)]) for (s, _), v in sorted(a.items(), key=str) if (s, None) in b]
    return [(a[k], b[k]) for k in sorted(set(a) & set(b), key=str)]


def paired_test(a: Mapping[tuple[str, int | None], float], b: Mapping[tuple[str, int | None], float]) -> dict[str, Any]:
    """Wilcoxon signed-rank over the pairs the two share (a seedless side pairs with every seed)."""
    from scipy.stats import wilcoxon

    pairs = _pairs(a, b)
    n = len(pairs)
    out: dict[str, Any] = {"n": n, "test": TEST_NAME, "min_p": 2.0 / 2**n if n else 1.0}
    diffs = np.array([x - y for x, y in pairs])
    if n == 0 or not np.any(diffs != 0):
        return {**out, "p": 1.0, "median_difference": float(np.median(diffs)) if n else None}
    p = float(wilcoxon(diffs, alternative="two-sided").pvalue)
    return {**out, "p": p, "median_difference": float(np.median(diffs))}


def ranking_statements(methods: Mapping[str, Mapping[tuple[str, int | None], float]], metric_label: str, *, lower_is_better: bool = True) -> list[str]:
    """One sentence per pair of methods that the paired test separates; one saying how many it did not."""
    lines, undecided, smallest_n = [], 0, None
    for (name_a, a), (name_b, b) in combinations(methods.items(), 2):
        result = paired_test(a, b)
        smallest_n = result["n"] if smallest_n is None else min(smallest_n, result["n"])
        if result["p"] < ALPHA and result["median_difference"] is not None:
            a_better = (result["median_difference"] < 0) == lower_is_better
            better, worse = (name_a, name_b) if a_better else (name_b, name_a)
            lines.append(f"{better} beats {worse} on {metric_label} (p = {result['p']:.3g}, n = {result['n']} pairs)")
        else:
            undecided += 1
    if undecided:
        floor = f"; with {smallest_n} pairs the smallest attainable p is {2.0 / 2 ** smallest_n:.3g}" if smallest_n else ""
        lines.append(f"{undecided} pair(s) of methods not ranked: the test does not reach p < {ALPHA}{floor}")
    return lines


def baseline_runs(entries: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The ``baselines`` section of a task's model metrics files, as seedless pseudo-runs."""
    for entry in entries:
        section = entry.get("baselines")
        if isinstance(section, Mapping) and section:
            return {f"baseline: {name}": [{**dict(value), "model": f"baseline: {name}", "seed": None}] for name, value in section.items() if isinstance(value, Mapping)}
    return {}


def generation_values(runs: Sequence[Mapping[str, Any]], extractor: str, key: str) -> list[float]:
    """Per-seed real-vs-fake values of one generation metric."""
    out = []
    for run in runs:
        value = ((run.get("features") or {}).get(extractor) or {}).get("real_vs_fake", {}).get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append(float(value))
    return out
