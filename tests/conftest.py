"""Shared fixtures: a tiny preprocessed phantom cohort built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from medgen.data.phantom import generate_cohort
from medgen.data.preprocess import PreprocessConfig, preprocess_subject
from medgen.data.splits import make_split, write_split

#: The pseudonym secret every test runs with unless it sets or removes its own (medgen refuses to
#: ingest data without one); subprocesses (the CLI, Snakemake) inherit it.
TEST_SECRET = "test-secret-not-for-real-data"


@pytest.fixture(autouse=True)
def _pseudonym_secret(monkeypatch):
    monkeypatch.setenv("MEDGEN_UID_SALT", TEST_SECRET)


TINY_SUBJECTS = 4
TINY_MODALITIES = ("T1w", "T2w", "CT")


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> dict[str, Path]:
    """Four phantom subjects at 4 mm, preprocessed to 32^3 voxels of 6 mm (T1w, T2w, CT, mask,
    labels) and split 2/1/1 by subject. Returns the phantom, prep and split paths."""
    root = tmp_path_factory.mktemp("tiny_cohort")
    subjects = generate_cohort(root / "phantom", n_subjects=TINY_SUBJECTS, seed=11, spacing_mm=4.0, write_dicom=False)
    cfg = PreprocessConfig(spacing=(6.0, 6.0, 6.0), size=(32, 32, 32), mr_norm="percentile", mr_percentiles=(0.5, 99.5), ct_window=(-1024.0, 3000.0), register=False, reference=None)
    for subject in subjects:
        src = root / "phantom" / "nifti" / subject
        preprocess_subject({m: src / f"{m}.nii.gz" for m in TINY_MODALITIES}, root / "prep" / subject, cfg, labels=src / "labels.nii.gz")
    write_split(make_split(subjects, fractions=(0.5, 0.25, 0.25), seed=0), root / "splits.json")
    return {"phantom": root / "phantom", "prep": root / "prep", "split": root / "splits.json", "root": root}
