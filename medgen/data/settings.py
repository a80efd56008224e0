"""Data settings: the defaults of the config's ``data.phantom`` and ``split`` sections and of
``medgen phantom`` and ``medgen split`` (the schema is checked against them by the tests).
Nothing heavy is imported here, so that the command line's parser can read them."""

from __future__ import annotations

from dataclasses import dataclass

#: Default share of a slice the head mask must cover for the slice to be served (training and
#: evaluation alike; the workflow's value is ``preprocess.min_mask_fraction``).
MIN_MASK_FRACTION = 0.05


@dataclass(frozen=True)
class PhantomSettings:
    """The embedded brain phantom cohort (config section ``data.phantom``)."""

    subjects: int = 20  # cohort size: sub-001 ... sub-<subjects>
    seed: int = 0  # cohort seed; each subject's draw depends only on it and its index
    spacing_mm: float = 2.0  # isotropic voxel size in mm (the template is 1 mm)


@dataclass(frozen=True)
class SplitSettings:
    """The subject-level split (config section ``split``)."""

    fractions: tuple[float, ...] = (0.7, 0.15, 0.15)  # train, val, test shares of subjects
    seed: int = 0
