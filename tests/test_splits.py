"""Subject-level splits: disjoint, complete, deterministic, order-independent, validated on read."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from medgen.data.splits import make_split, read_split, split_counts, write_split


def _subjects(n: int) -> list[str]:
    return [f"sub-{i:03d}" for i in range(1, n + 1)]


@pytest.mark.parametrize("fractions", [(0.7, 0.15, 0.15), (0.8, 0.2, 0.0), (1 / 3, 1 / 3, 1 / 3), (0.5, 0.0, 0.5)])
def test_every_subject_in_exactly_one_split(fractions: tuple[float, float, float]) -> None:
    needed = sum(f > 0 for f in fractions)
    for n in range(needed, 40):
        for seed in range(8):
            split = make_split(_subjects(n), fractions, seed=seed)
            assert set(split) == {"train", "val", "test"}
            members = [s for names in split.values() for s in names]
            assert sorted(members) == _subjects(n), (n, seed)  # complete, no repeats
            for name, fraction in zip(("train", "val", "test"), fractions):
                assert (len(split[name]) > 0) == (fraction > 0), (n, seed, name)


def test_sizes_follow_fractions() -> None:
    split = make_split(_subjects(20), (0.7, 0.15, 0.15), seed=0)
    assert [len(split[k]) for k in ("train", "val", "test")] in ([14, 3, 3],)
    assert split_counts(3, (0.7, 0.15, 0.15)) == [1, 1, 1]
    assert split_counts(10, (1.0, 0.0, 0.0)) == [10, 0, 0]


def test_deterministic_and_order_independent() -> None:
    subjects = _subjects(23)
    first = make_split(subjects, seed=5)
    shuffled = subjects[:]
    random.Random(1).shuffle(shuffled)
    assert make_split(shuffled, seed=5) == first
    assert make_split(tuple(reversed(subjects)), seed=5) == first
    assert any(make_split(subjects, seed=s) != first for s in range(6, 12))  # the seed matters


@pytest.mark.parametrize(
    ("subjects", "fractions", "match"),
    [
        (["a", "b", "a", "c"], (0.7, 0.15, 0.15), "duplicate.*a"),
        (_subjects(10), (0.7, 0.2, 0.2), "sum to 1"),
        (_subjects(10), (0.7, 0.3), "one value"),
        (_subjects(10), (1.2, -0.1, -0.1), "non-negative"),
        (_subjects(2), (0.7, 0.15, 0.15), "cannot fill"),
        ([], (0.7, 0.15, 0.15), "cannot fill"),
    ],
)
def test_bad_requests_raise(subjects: list[str], fractions: tuple[float, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_split(subjects, fractions)


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    split = make_split(_subjects(12), (0.5, 0.25, 0.25), seed=3)
    path = write_split(split, tmp_path / "splits" / "split.json")
    stored = json.loads(path.read_text())
    assert stored["seed"] == 3 and stored["fractions"] == [0.5, 0.25, 0.25]
    back = read_split(path)
    assert back == split and back.seed == 3
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp file left behind


def test_read_split_rejects_overlap(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"splits": {"train": ["sub-001", "sub-002"], "val": ["sub-003"], "test": ["sub-002"]}, "seed": 0}))
    with pytest.raises(ValueError, match=r"sub-002.*'train'.*'test'"):
        read_split(path)


def test_write_split_rejects_overlap(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sub-001"):
        write_split({"train": ["sub-001"], "val": ["sub-001"], "test": []}, tmp_path / "split.json")
    assert not (tmp_path / "split.json").exists()
