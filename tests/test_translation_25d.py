"""2.5D translation input: adjacent source slices as channels, the same in training, validation and
whole-volume translation."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.cli import main
from medgen.data.tasks import TranslationDataset
from medgen.io.nifti import load_nifti
from medgen.synth.translate import run_2d, translate_volume
from medgen.models.artifact import load


def test_run_2d_feeds_each_slice_with_its_neighbours_edge_repeated():
    volume = np.random.default_rng(0).normal(size=(8, 8, 5)).astype(np.float32)
    below = lambda x: x[:, :1]  # the network's channel 0 is the slice below (k - 1)
    above = lambda x: x[:, 2:3]  # channel 2 is the slice above (k + 1)
    out_below = run_2d(below, volume, axis=2, multiple=4, background=0.0, batch_size=3, device=torch.device("cpu"), context=1)
    out_above = run_2d(above, volume, axis=2, multiple=4, background=0.0, batch_size=3, device=torch.device("cpu"), context=1)
    # exact: the network only copies values
    np.testing.assert_array_equal(out_below, volume[..., [0, 0, 1, 2, 3]])
    np.testing.assert_array_equal(out_above, volume[..., [1, 2, 3, 4, 4]])


def test_training_source_holds_the_adjacent_slices_of_the_volume(tiny_cohort):
    ds = TranslationDataset(tiny_cohort["prep"], ["sub-001"], "T1w", "CT", paired=True, context=1)
    t1 = load_nifti(tiny_cohort["prep"] / "sub-001" / "T1w.nii.gz").array
    for i in (0, len(ds) // 2, len(ds) - 1):
        _, k = ds.base.index[i]
        item = ds[i]
        assert item["source"].shape == (3, *t1.shape[:2]) and item["target"].shape == (1, *t1.shape[:2])
        expected = t1[..., [max(k - 1, 0), k, min(k + 1, t1.shape[2] - 1)]].transpose(2, 0, 1)
        np.testing.assert_array_equal(item["source"].numpy(), expected)


@pytest.mark.parametrize("model, options", [
    ("pix2pix", {"in_channels": 3, "ngf": 4, "num_downs": 3, "num_layers_d": 2, "ndf": 4}),
    # unpaired: the source's neighbours come from the source volume; G(target) returns 3 slices
    ("cyclegan", {"in_channels": 3, "ngf": 4, "n_blocks": 1, "num_layers_d": 2, "ndf": 4, "lambda_identity": 0.0}),
])
def test_25d_model_trains_validates_and_translates_a_whole_volume(model, options, tiny_cohort, tmp_path):
    task = {"name": "t1_ct", "kind": "translation", "source": "T1w", "target": "CT"}
    code = main(["train", "--prep-root", str(tiny_cohort["prep"]), "--split", str(tiny_cohort["split"]), "--task-json", json.dumps(task),
                 "--model", model, "--options-json", json.dumps(options), "--out", str(tmp_path / "run"),
                 "--steps", "2", "--batch-size", "2", "--image-every", "0", "--val-every", "2", "--device", "cpu"])
    assert code == 0
    trained = load(tmp_path / "run" / "model.pt")
    assert trained.model.config.in_channels == 3
    assert trained.card.validation["key"] == "val/mae" and trained.card.validation["step"] == 2  # validated on 2.5D sources
    source = tiny_cohort["phantom"] / "nifti" / "sub-001" / "T1w.nii.gz"
    summary = translate_volume(trained, source, tmp_path / "ct.nii.gz", progress=False)
    assert nib.load(str(tmp_path / "ct.nii.gz")).shape == nib.load(str(source)).shape
    assert summary["units"] == "HU"


@pytest.mark.parametrize("model, options, reason", [
    ("cut", {"in_channels": 3, "ngf": 4, "n_blocks": 1, "nce_idt": False}, "PatchNCE encodes the translation"),
    ("fastcut", {"in_channels": 3, "ngf": 4, "n_blocks": 1}, "PatchNCE encodes the translation"),
    ("cyclegan", {"in_channels": 2, "ngf": 4, "n_blocks": 1, "lambda_identity": 0.0}, "odd count"),
    ("cyclegan", {"in_channels": 3, "ngf": 4, "n_blocks": 1}, "lambda_identity > 0 needs in_channels == out_channels"),
])
def test_25d_is_refused_where_a_model_cannot_take_it(model, options, reason, tiny_cohort, tmp_path):
    from medgen.train.engine import TrainConfig
    from medgen.train.run import train_task

    task = {"name": "t1_ct", "kind": "translation", "source": "T1w", "target": "CT"}
    with pytest.raises(ValueError, match=reason):
        train_task(prep_root=tiny_cohort["prep"], split_path=tiny_cohort["split"], task=task, model_name=model,
                   options=options, train_cfg=TrainConfig(out_dir=tmp_path, max_steps=1))
