"""Subject-level train/val/test splits: deterministic, order-independent, never overlapping."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from medgen.data.settings import SplitSettings
from medgen.io.atomic import atomic_write_json

SPLIT_NAMES = ("train", "val", "test")
_FRACTION_TOLERANCE = 1e-6


class Split(dict):
    """``{"train": [...], "val": [...], "test": [...]}`` that also remembers how it was drawn."""

    def __init__(self, subsets: Mapping[str, list[str]], seed: int | None = None, fractions: Sequence[float] | None = None) -> None:
        super().__init__(subsets)
        self.seed = seed
        self.fractions = None if fractions is None else tuple(float(f) for f in fractions)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != len(SPLIT_NAMES):
        raise ValueError(f"fractions need one value for each of {SPLIT_NAMES}, got {fractions}")
    if any(not np.isfinite(f) or f < 0 for f in fr):
        raise ValueError(f"fractions must be finite and non-negative, got {fractions}")
    if abs(sum(fr) - 1.0) > _FRACTION_TOLERANCE:
        raise ValueError(f"fractions must sum to 1, got {fractions} (sum {sum(fr):g})")
    return fr


def _check_subjects(subjects: Iterable[str]) -> list[str]:
    subjects = [str(s) for s in subjects]
    seen: set[str] = set()
    dupes = sorted({s for s in subjects if s in seen or seen.add(s)})  # type: ignore[func-returns-value]
    if dupes:
        raise ValueError(f"duplicate subject(s): {', '.join(dupes)}")
    return sorted(subjects)


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Subjects per split: largest-remainder rounding of ``n * fractions``, then at least one
    subject for every non-zero fraction (taken from the largest split)."""
    wanted = np.array(fractions, dtype=np.float64) * n
    counts = np.floor(wanted).astype(int)
    order = np.argsort(-(wanted - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    for i in np.flatnonzero((np.array(fractions) > 0) & (counts == 0)):
        donor = int(np.argmax(counts))
        counts[donor] -= 1
        counts[i] += 1
    return counts.tolist()


def make_split(subjects: Iterable[str], fractions: Sequence[float] = SplitSettings.fractions, seed: int = SplitSettings.seed) -> Split:
    """Assign each subject to exactly one of train/val/test.

    The result depends only on the set of subjects, ``fractions`` and ``seed`` (subjects are
    sorted before the seeded shuffle). Raises ValueError for duplicates, fractions that do not
    sum to 1, or fewer subjects than non-zero fractions.
    """
    fr = _check_fractions(fractions)
    ordered = _check_subjects(subjects)
    needed = sum(f > 0 for f in fr)
    if len(ordered) < needed:
        raise ValueError(f"{len(ordered)} subject(s) cannot fill {needed} non-empty splits (fractions {fr})")
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    subsets: dict[str, list[str]] = {}
    start = 0
    for name, count in zip(SPLIT_NAMES, split_counts(len(ordered), fr)):
        subsets[name] = sorted(shuffled[start : start + count])
        start += count
    return Split(subsets, seed=seed, fractions=fr)


def check_disjoint(split: Mapping[str, Sequence[str]]) -> None:
    """ValueError naming the subject and the splits when a subject appears twice."""
    where: dict[str, str] = {}
    for name, members in split.items():
        for subject in members:
            if subject in where:
                places = f"twice in {name!r}" if where[subject] == name else f"in both {where[subject]!r} and {name!r}"
                raise ValueError(f"subject {subject!r} is {places}")
            where[subject] = name


def write_split(split: Mapping[str, Sequence[str]], path: Path | str, *, seed: int | None = None, fractions: Sequence[float] | None = None) -> Path:
    """Write the split as JSON (atomically): ``{"splits": {...}, "seed": s, "fractions": [...]}``.

    ``seed``/``fractions`` default to those remembered by a :class:`Split` from :func:`make_split`.
    """
    check_disjoint(split)
    seed = seed if seed is not None else getattr(split, "seed", None)
    fractions = fractions if fractions is not None else getattr(split, "fractions", None)
    payload = {
        "splits": {name: list(members) for name, members in split.items()},
        "seed": seed,
        "fractions": None if fractions is None else [float(f) for f in fractions],
        "n_subjects": sum(len(m) for m in split.values()),
    }
    return atomic_write_json(path, payload)


def read_split(path: Path | str) -> Split:
    """Read a split written by :func:`write_split` (or a bare ``{"train": [...], ...}`` mapping).

    Raises ValueError if a subject is in two splits, or if the file holds no split lists.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        from medgen.errors import CorruptFileError

        raise CorruptFileError(f"{path}: not a valid split file ({exc}); write it again with medgen split") from None
    subsets = data.get("splits", data) if isinstance(data, dict) else None
    if not isinstance(subsets, dict) or not all(isinstance(v, list) for v in subsets.values()):
        raise ValueError(f"{path}: expected a mapping of split name -> list of subjects")
    try:
        check_disjoint(subsets)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return Split({k: [str(s) for s in v] for k, v in subsets.items()}, seed=data.get("seed"), fractions=data.get("fractions"))
