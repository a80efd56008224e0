"""The subject split, known when the workflow is parsed.

The split is a pure function of the subjects, fractions and seed (``medgen.data.splits``), so
the workflow computes the same test subjects that the ``split`` rule writes to splits.json and
can name each test subject's translation job before that file exists.
"""

from __future__ import annotations

from typing import Any

from medgen.data.splits import make_split


def test_subjects(cfg: dict[str, Any], subjects: list[str]) -> list[str]:
    """Test-split subjects, exactly as ``medgen split`` will write them."""
    try:
        split = make_split(subjects, fractions=tuple(cfg["split"]["fractions"]), seed=cfg["split"]["seed"])
    except ValueError as exc:
        raise ValueError(f"config key 'split.fractions': {exc}") from None
    return list(split["test"])
