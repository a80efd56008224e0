"""Downstream segmentation: Dice per class and subject, and a run with a real translation model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from medgen.data.phantom import generate_cohort
from medgen.data.preprocess import PreprocessConfig, preprocess_subject
from medgen.data.splits import write_split
from medgen.eval.downstream import dice_per_subject, evaluate_downstream, summarise


class _Oracle(torch.nn.Module):
    """Returns logits whose argmax is the input itself (the input holds the label values)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(x[:, 0].long(), 4).permute(0, 3, 1, 2).float()


def test_dice_is_one_for_a_perfect_prediction_nan_for_an_absent_class_and_pools_a_subjects_slices():
    labels = np.zeros((3, 1, 8, 8), np.int64)
    labels[0, 0, :4] = 1  # subject a, slice 0: class 1
    labels[1, 0, :, :4] = 2  # subject a, slice 1: class 2
    labels[2, 0, 2:6, 2:6] = 1  # subject b: class 1 only
    dice = dice_per_subject(_Oracle(), labels.astype(np.float32), labels, ["a", "a", "b"], 4)
    assert dice["a"][:2] == [1.0, 1.0] and math.isnan(dice["a"][2])
    assert dice["b"][0] == 1.0 and math.isnan(dice["b"][1])
    # one wrong slice: a's class-1 Dice pools both slices, 2 * 32 / (32 + 64) = 2/3
    wrong = labels.copy()
    wrong[1, 0, :, :4] = 1
    got = dice_per_subject(_Oracle(), wrong.astype(np.float32), labels, ["a", "a", "b"], 4)
    assert got["a"][0] == pytest.approx(2 / 3) and got["a"][1] == 0.0


def test_summary_averages_seeds_per_subject_and_skips_absent_classes():
    per_seed = [{"a": [0.8, math.nan], "b": [0.6, math.nan]}, {"a": [0.9, math.nan], "b": [0.7, math.nan]}]
    out = summarise(per_seed, ["x", "absent"])
    assert set(out) == {"x"}
    assert out["x"]["mean"] == pytest.approx(0.75) and out["x"]["seed_means"] == pytest.approx([0.7, 0.8])
    assert out["x"]["seed_std"] == pytest.approx(math.sqrt(0.005)) and out["x"]["per_subject"] == pytest.approx({"a": 0.85, "b": 0.65})


@pytest.mark.slow
@pytest.mark.parametrize("in_channels", [1, 3])  # 3: a 2.5D model gets each slice's neighbours, as in training
def test_downstream_with_a_trained_translation_model(tmp_path, in_channels):
    from medgen.train.engine import TrainConfig
    from medgen.train.run import train_task

    subjects = generate_cohort(tmp_path / "phantom", n_subjects=4, seed=5, spacing_mm=4.0, write_dicom=False, workers=1)
    cfg = PreprocessConfig(spacing=(6.0, 6.0, 6.0), size=(32, 32, 32))
    for s in subjects:
        src = tmp_path / "phantom" / "nifti" / s
        preprocess_subject({m: src / f"{m}.nii.gz" for m in ("T1w", "T2w")}, tmp_path / "prep" / s, cfg, labels=src / "labels.nii.gz")
    write_split({"train": subjects[:2], "val": [], "test": subjects[2:]}, tmp_path / "splits.json")
    task = {"name": "t1_t2", "kind": "translation", "source": "T1w", "target": "T2w"}
    model = train_task(prep_root=tmp_path / "prep", split_path=tmp_path / "splits.json", task=task, model_name="pix2pix",
                       options={"ngf": 4, "ndf": 8, "num_downs": 4, "num_layers_d": 2, "in_channels": in_channels},
                       train_cfg=TrainConfig(out_dir=tmp_path / "model", max_steps=2, batch_size=2, device="cpu", ema_decay=None, image_every=0))
    out = evaluate_downstream(task=task, prep_root=tmp_path / "prep", split_path=tmp_path / "splits.json", out_json=tmp_path / "downstream.json",
                              models={"pix2pix": [model]}, seeds=(0, 1), steps=3, batch_size=4)
    assert json.loads((tmp_path / "downstream.json").read_text())["settings"].keys() == {"real", "real+pix2pix"}
    assert out["test_subjects"] == subjects[2:] and out["modality"] == "T2w"
    assert out["settings"]["real"]["n_synthetic"] == 0 and out["settings"]["real+pix2pix"]["n_synthetic"] == out["n_train_slices"]
    for setting in out["settings"].values():
        assert len(setting["mean_dice"]["seed_means"]) == 2
        for stats in setting["dice"].values():
            assert 0.0 <= stats["mean"] <= 1.0 and stats["ci95"][0] <= stats["mean"] <= stats["ci95"][1]


@pytest.mark.slow
def test_downstream_with_a_trained_label_map_model(tmp_path):
    """SPADE paints an image on each real training label map; the pairs join the real ones."""
    from medgen.eval.downstream import label_map_samples, real_slices
    from medgen.train.engine import TrainConfig
    from medgen.train.run import train_task

    subjects = generate_cohort(tmp_path / "phantom", n_subjects=4, seed=5, spacing_mm=4.0, write_dicom=False, workers=1)
    cfg = PreprocessConfig(spacing=(6.0, 6.0, 6.0), size=(32, 32, 32))
    for s in subjects:
        src = tmp_path / "phantom" / "nifti" / s
        preprocess_subject({"T1w": src / "T1w.nii.gz"}, tmp_path / "prep" / s, cfg, labels=src / "labels.nii.gz")
    write_split({"train": subjects[:2], "val": [], "test": subjects[2:]}, tmp_path / "splits.json")
    task = {"name": "t1_from_labels", "kind": "generation", "modalities": ["T1w"], "condition": "label_map"}
    model = train_task(prep_root=tmp_path / "prep", split_path=tmp_path / "splits.json", task=task, model_name="spade",
                       options={"ngf": 4, "ndf": 4, "latent_dim": 4, "num_d": 1, "patch_layers": 2},
                       train_cfg=TrainConfig(out_dir=tmp_path / "model", max_steps=2, batch_size=2, device="cpu", ema_decay=None, image_every=0))
    images, labels, _ = real_slices(tmp_path / "prep", subjects[:2], "T1w")
    painted = label_map_samples(model, labels, seed=0)
    assert painted.shape == images.shape and np.isfinite(painted).all()
    assert not np.array_equal(painted, label_map_samples(model, labels, seed=1))  # the seed draws the style noise

    out = evaluate_downstream(task=task, prep_root=tmp_path / "prep", split_path=tmp_path / "splits.json", out_json=tmp_path / "downstream.json",
                              models={"spade": [model]}, seeds=(0, 1), steps=3, batch_size=4)
    assert out["settings"].keys() == {"real", "real+spade"} and out["modality"] == "T1w"
    assert out["settings"]["real+spade"]["n_synthetic"] == out["n_train_slices"] == len(labels)
    # same segmentation seeds, other training data: the painted pairs reached the segmenter
    assert out["settings"]["real+spade"]["mean_dice"]["seed_means"] != out["settings"]["real"]["mean_dice"]["seed_means"]
    for setting in out["settings"].values():
        assert len(setting["mean_dice"]["seed_means"]) == 2
        for stats in setting["dice"].values():
            assert 0.0 <= stats["mean"] <= 1.0 and stats["ci95"][0] <= stats["mean"] <= stats["ci95"][1]
