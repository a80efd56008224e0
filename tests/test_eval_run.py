"""The evaluation stage: whole-training-set memorization audit, subjects that cannot serve
evaluation, the metrics writer's interval check, radiomic standardisation, one slice threshold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medgen.data.datasets import SliceDataset
from medgen.data.normalise import invert_normalisation
from medgen.data.preprocess import load_normalisation
from medgen.data.splits import read_split
from medgen.data.tasks import task_dataset
from medgen.eval import generation_run as run
from medgen.eval.distribution import fid_from_features
from medgen.eval.metrics_file import write_metrics
from medgen.eval.radiomics_features import standardise_features
from medgen.io.nifti import save_nifti
from medgen.models.artifact import ModelCard


def _copies_of_training_slices(cohort: dict[str, Path], out: Path, n: int) -> tuple[Path, dict, int]:
    """A sample manifest whose images are exact copies of ``n`` training slices (spread over the
    whole training set), on the original scale as ``medgen sample`` writes them."""
    split = read_split(cohort["split"])
    ds = SliceDataset(cohort["prep"], split["train"], ["T1w"])
    mapping = load_normalisation(cohort["prep"] / split["train"][0])["T1w"]
    picks = np.linspace(0, len(ds) - 1, n).round().astype(int)
    rows = []
    for j, i in enumerate(picks):
        item = ds[int(i)]
        # Written through the mapping the evaluation reads them back with (the model's meta).
        path = save_nifti(out / "images" / f"sample_{j:05d}.nii.gz", invert_normalisation(item["T1w"][0].numpy(), mapping)[..., None], np.eye(4))
        rows.append({"index": j, "modality": "T1w", "label": "n/a", "path": str(path.relative_to(out))})
    manifest = out / "manifest.tsv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return manifest, mapping, len(ds)


def test_memorization_audit_sees_every_training_slice(tiny_cohort, tmp_path):
    manifest, mapping, n_train = _copies_of_training_slices(tiny_cohort, tmp_path / "samples", 12)
    card = ModelCard(model="gan", task={"name": "t1", "modalities": ["T1w"], "classes": None, "min_mask_fraction": 0.05}, data={"mappings": {"T1w": mapping}})
    out = tmp_path / "metrics" / "gan.json"
    # max_real=8 limits only the real test set; the audit must still use all training slices.
    result = run.evaluate_generation(card=card, model="gan", manifest=manifest, prep_root=tiny_cohort["prep"], split_path=tiny_cohort["split"], out_json=out, extractors={}, max_real=8)
    memo = result["memorization"]
    assert memo["n_train"] == n_train and result["n"]["real_train"] == n_train and n_train > 8
    assert memo["likely_copy_share"] == 1.0, memo["likely_copies"]  # every copy is found
    assert memo["n_test"] == 8 and memo["alpha"] == 0.01 and memo["threshold"] > 0
    assert any("only 8 test-to-train distances" in w for w in memo["warnings"])
    assert json.loads(out.read_text())["memorization"]["n_synthetic"] == 12


def test_subject_that_cannot_serve_evaluation_is_named(tiny_cohort):
    subject = read_split(tiny_cohort["split"])["test"][0]
    with pytest.raises(ValueError, match=rf"subject {subject}: largest head-mask share of an axial slice \d+\.\d%") as err:
        run._slices(tiny_cohort["prep"], [subject], ["T1w"], None, 0, min_mask_fraction=0.99, split="test")
    assert "99%" in str(err.value) and "preprocess.min_mask_fraction" in str(err.value)


def test_training_and_evaluation_share_the_slice_threshold(tiny_cohort):
    train = read_split(tiny_cohort["split"])["train"]
    task = {"kind": "generation", "modalities": ["T1w"], "min_mask_fraction": 0.3}
    served = task_dataset(task, tiny_cohort["prep"], train, model_paired=False, spatial_dims=2, patch_size=None, seed=0)
    assert len(served) == len(SliceDataset(tiny_cohort["prep"], train, ["T1w"], min_mask_fraction=0.3))
    assert len(served) < len(SliceDataset(tiny_cohort["prep"], train, ["T1w"], min_mask_fraction=0.05))
    images = run._slices(tiny_cohort["prep"], train, ["T1w"], None, 0, min_mask_fraction=0.3, split="train")
    assert len(images) == len(served)


def test_task_json_carries_the_configured_threshold():
    from pipeline.targets import task_json

    cfg = {"tasks": {"t": {"kind": "generation", "modalities": ["T1w"], "models": {"gan": {}}}}, "preprocess": {"min_mask_fraction": 0.2}}
    assert json.loads(task_json(cfg, "t"))["min_mask_fraction"] == 0.2


def test_writer_refuses_an_interval_without_its_estimate(tmp_path):
    good = {"aggregate": {"mae": {"mean": 5.0, "ci95": [4.0, 6.0]}}, "features": {"x": {"real_vs_fake": {"fd": 2.0}, "intervals": {"real_vs_fake": {"fd": [1.0, 3.0]}}}}}
    assert write_metrics(tmp_path / "good.json", good).is_file()
    bad_paired = {"aggregate": {"mae": {"mean": 5.0, "ci95": [5.5, 6.0]}}}
    with pytest.raises(AssertionError, match=r"aggregate\.mae: mean 5\.0 outside ci95"):
        write_metrics(tmp_path / "bad1.json", bad_paired)
    bad_distribution = {"features": {"x": {"real_vs_fake": {"fd": 2.84}, "intervals": {"real_vs_fake": {"fd": [4.88, 5.98]}}}}}
    with pytest.raises(AssertionError, match=r"features\.x\.real_vs_fake\.fd: 2\.84 outside"):
        write_metrics(tmp_path / "bad2.json", bad_distribution)
    assert not (tmp_path / "bad1.json").exists() and not (tmp_path / "bad2.json").exists()


def test_one_radiomic_feature_cannot_blow_up_fd():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(30, 6)) * [1, 10, 100, 1e3, 1e4, 1], rng.normal(size=(30, 6)) * [1, 10, 100, 1e3, 1e4, 1]
    real[:, 5] = 7.0 + 1e-6 * rng.normal(size=30)  # nearly constant in the real images ...
    fake[:, 5] = 8.0  # ... and off by one in the synthetic ones: z = 1e6 without a bound
    real[:, 0] = 3.0  # exactly constant: dropped
    za, zb, record = standardise_features(real, fake)
    assert record["features_kept"] == 5 and record["dropped_constant"] == 1 and record["values_clipped"] == 30
    # kept features: 4 on the same distribution (FD ~ 1) plus one clipped to 10 SD: FD ~ 10^2
    fd = fid_from_features(za, zb)
    assert 50 < fd < 200
    unbounded = (fake[:, 5] - real[:, 5].mean()) / real[:, 5].std(ddof=1)
    assert np.abs(unbounded).min() > 1e5  # what plain z-scoring would have fed into FD
    np.testing.assert_allclose(za[:, 0], (real[:, 1] - real[:, 1].mean()) / real[:, 1].std(ddof=1))
