"""Whether each subject of a split can serve its role: slices with enough head in them.

Training and evaluation read axial slices (axis 2 of the preprocessed RAS volumes) whose head
mask covers at least a minimum fraction of the slice (:class:`medgen.data.datasets.SliceDataset`).
A subject with no such slice (a small field of view inside a large grid, a mostly empty volume)
would be silently dropped from training or make evaluation fail later without naming it; the
split names it instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import nibabel as nib
import numpy as np

from medgen.data.settings import MIN_MASK_FRACTION
from medgen.layout import MASK_FILE


def largest_mask_fraction(prep_root: Path | str, subject: str) -> float:
    """The largest fraction of any axial slice that the subject's head mask covers."""
    mask = np.asarray(nib.load(str(Path(prep_root) / subject / MASK_FILE)).dataobj) > 0
    return float(mask.mean(axis=(0, 1)).max()) if mask.size else 0.0


def unusable_subjects(prep_root: Path | str, split: Mapping[str, Sequence[str]], *, min_fraction: float = MIN_MASK_FRACTION) -> list[str]:
    """One line per subject of ``split`` without a slice whose head mask covers ``min_fraction``
    (``preprocess.min_mask_fraction``: one value for training and evaluation)."""
    problems = []
    for role, subjects in split.items():
        for subject in subjects:
            best = largest_mask_fraction(prep_root, subject)
            if best < min_fraction:
                problems.append(
                    f"{role} subject {subject}: no axial slice of {Path(prep_root) / subject / MASK_FILE} has {min_fraction:.0%} head mask "
                    f"(largest {best:.1%}); its head is too small in the preprocessed grid"
                )
    return problems


def check_split_subjects(prep_root: Path | str, split: Mapping[str, Sequence[str]], *, min_fraction: float = MIN_MASK_FRACTION) -> None:
    """Raise ValueError naming every subject that cannot serve its role in ``split``."""
    problems = unusable_subjects(prep_root, split, min_fraction=min_fraction)
    if problems:
        raise ValueError(
            "subject(s) that cannot serve training or evaluation:\n  " + "\n  ".join(problems)
            + "\nReduce preprocess.size (or enlarge preprocess.spacing) so that the head fills more of the grid, "
            "or remove these subjects from the data."
        )
