"""Training a task end to end through `medgen train`, and loading the result back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medgen.cli import main
from medgen.data.splits import read_split
from medgen.data.tasks import GenerationDataset, TranslationDataset
from medgen.errors import ExitCode
from medgen.models.artifact import load, read


def test_generation_dataset_labels_modalities(tiny_cohort):
    train = read_split(tiny_cohort["split"])["train"]
    ds = GenerationDataset(tiny_cohort["prep"], train, ["T1w", "CT"], condition="modality")
    items = [ds[i] for i in range(4)]
    assert [it["label"] for it in items] == [0, 1, 0, 1]
    assert items[0]["image"].shape == (1, 32, 32)
    # the CT item of a slice differs from the T1w item of the same slice
    assert not torch.equal(items[0]["image"], items[1]["image"])
    with pytest.raises(ValueError, match="need condition 'modality'"):
        GenerationDataset(tiny_cohort["prep"], train, ["T1w", "CT"])


def test_slice_bin_labels_follow_position(tiny_cohort):
    train = read_split(tiny_cohort["split"])["train"]
    ds = GenerationDataset(tiny_cohort["prep"], train, ["T1w"], condition="slice_bin", slice_bins=4)
    labels = [ds[i]["label"] for i in range(len(ds))]
    positions = [ds.base[i]["slice_position"] for i in range(len(ds))]
    assert set(labels) <= {0, 1, 2, 3} and len(set(labels)) >= 3
    assert all(lab == min(int(p * 4), 3) for lab, p in zip(labels, positions))


def test_unpaired_translation_pairs_change_with_epoch(tiny_cohort):
    train = read_split(tiny_cohort["split"])["train"]
    paired = TranslationDataset(tiny_cohort["prep"], train, "T1w", "CT", paired=True)
    unpaired = TranslationDataset(tiny_cohort["prep"], train, "T1w", "CT", paired=False, seed=1)
    assert torch.equal(paired[3]["source"], unpaired[3]["source"])
    first = [unpaired[i]["target"] for i in range(6)]
    unpaired.set_epoch(1)
    second = [unpaired[i]["target"] for i in range(6)]
    assert any(not torch.equal(a, b) for a, b in zip(first, second))
    unpaired.set_epoch(0)
    assert all(torch.equal(a, unpaired[i]["target"]) for i, a in enumerate(first))


def test_flip_lr_mirrors_pairs_together_about_half_the_time_per_epoch(tiny_cohort):
    train = read_split(tiny_cohort["split"])["train"]
    plain = TranslationDataset(tiny_cohort["prep"], train, "T1w", "CT", paired=True, context=1)
    mirrored = TranslationDataset(tiny_cohort["prep"], train, "T1w", "CT", paired=True, context=1, flip_lr=True, seed=3)

    def flips(epoch: int) -> list[bool]:
        mirrored.set_epoch(epoch)
        plain.set_epoch(epoch)
        out = []
        for i in range(len(plain)):
            a, b = plain[i], mirrored[i]
            if torch.equal(a["source"], b["source"]) and torch.equal(a["target"], b["target"]):
                out.append(False)
                continue
            # mirrored along X (left-right), source (all 2.5D channels) and target together
            assert torch.equal(b["source"], torch.flip(a["source"], dims=(1,))) and torch.equal(b["target"], torch.flip(a["target"], dims=(1,)))
            out.append(True)
        return out

    first = flips(0)
    n = len(first)
    assert n >= 20 and abs(sum(first) - n / 2) <= 3 * (n / 4) ** 0.5  # binomial(n, 1/2): within 3 SD
    assert flips(1) != first  # a new draw each epoch ...
    assert flips(0) == first  # ... that is a function of (seed, epoch): resume sees the same items


def test_flip_lr_is_refused_for_generation_tasks(tiny_cohort, tmp_path, capsys):
    task = {"name": "t1", "kind": "generation", "modalities": ["T1w"], "flip_lr": True}
    code = main(["train", "--prep-root", str(tiny_cohort["prep"]), "--split", str(tiny_cohort["split"]), "--task-json", json.dumps(task),
                 "--model", "gan", "--out", str(tmp_path / "run"), "--steps", "1", "--device", "cpu"])
    assert code == int(ExitCode.USAGE) and "flip_lr" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.pt").exists()


def test_train_then_load_rebuilds_the_same_model(tiny_cohort, tmp_path):
    task = {"name": "t1", "kind": "generation", "modalities": ["T1w"]}
    code = main(
        ["train", "--prep-root", str(tiny_cohort["prep"]), "--split", str(tiny_cohort["split"]), "--task-json", json.dumps(task),
         "--model", "gan", "--options-json", json.dumps({"ngf": 8, "ndf": 8, "latent_dim": 16}), "--out", str(tmp_path / "run"),
         "--steps", "6", "--batch-size", "4", "--log-every", "2", "--image-every", "0", "--ckpt-every", "3", "--device", "cpu"]
    )
    assert code == 0
    trained = load(tmp_path / "run" / "model.pt")
    card = trained.card
    assert card.model == "gan" and card.options["image_size"] == 32
    assert card.data["spacing"] == [6.0, 6.0, 6.0]
    assert card.data["mappings"]["T1w"]["units"] == "a.u."
    assert card.data["train_subjects"] == read_split(tiny_cohort["split"])["train"]
    torch.manual_seed(0)
    x = trained.model.sample(3)
    assert x.shape == (3, 1, 32, 32) and float(x.abs().max()) <= 1.0
    _, weights = read(tmp_path / "run" / "model.pt")
    for key, value in trained.model.state_dict().items():
        torch.testing.assert_close(value, weights[key])


def test_unknown_model_is_refused_with_the_valid_names(tiny_cohort, tmp_path, capsys):
    code = main(["train", "--prep-root", str(tiny_cohort["prep"]), "--split", str(tiny_cohort["split"]), "--task-json",
                 json.dumps({"name": "t", "kind": "generation", "modalities": ["T1w"]}), "--model", "stylegan9", "--out", str(tmp_path), "--steps", "1"])
    assert code == 2
    assert "valid models: " in capsys.readouterr().err


def test_non_finite_loss_exits_non_zero(tiny_cohort, tmp_path, capsys):
    # A learning rate this large drives the flow's log-determinant to inf within a few steps.
    task = {"name": "t1", "kind": "generation", "modalities": ["T1w"]}
    code = main(["train", "--prep-root", str(tiny_cohort["prep"]), "--split", str(tiny_cohort["split"]), "--task-json", json.dumps(task),
                 "--model", "glow", "--options-json", json.dumps({"levels": 2, "steps_per_level": 2, "hidden_channels": 8, "lr": 1e6}),
                 "--out", str(tmp_path / "run"), "--steps", "30", "--batch-size", "4", "--image-every", "0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "non-finite loss at step" in err
    assert not (tmp_path / "run" / "model.pt").exists()


def test_3d_translation_trains_on_patches_and_translates_a_whole_volume(tiny_cohort, tmp_path):
    """The 3D path end to end: patches for training, a sliding window over the whole volume."""
    import nibabel as nib

    from medgen.synth.translate import translate_volume

    task = {"name": "t1_ct_3d", "kind": "translation", "source": "T1w", "target": "CT"}
    options = {"spatial_dims": 3, "patch_size": [16, 16, 16], "ngf": 4, "num_downs": 4, "num_layers_d": 2, "ndf": 8}
    # fp32: on a CPU with bf16 units the default (bf16 autocast) gave this tiny 3D discriminator a
    # NaN weight gradient at step 1 in 1 of 4 runs of the same seed, which the engine refuses
    # (exit 3); the precision has tests of its own, this one pins the 3D path
    code = main(["train", "--prep-root", str(tiny_cohort["prep"]), "--split", str(tiny_cohort["split"]), "--task-json", json.dumps(task),
                 "--model", "pix2pix", "--options-json", json.dumps(options), "--out", str(tmp_path / "run"),
                 "--steps", "3", "--batch-size", "2", "--image-every", "0", "--device", "cpu", "--precision", "fp32"])
    assert code == 0
    trained = load(tmp_path / "run" / "model.pt")
    assert trained.card.data["spatial_dims"] == 3 and trained.card.data["patch_size"] == [16, 16, 16]
    source = tiny_cohort["phantom"] / "nifti" / "sub-001" / "T1w.nii.gz"
    out = tmp_path / "ct.nii.gz"
    summary = translate_volume(trained, source, out, progress=False)
    src, res = nib.load(str(source)), nib.load(str(out))
    assert res.shape == src.shape
    np.testing.assert_allclose(res.affine, src.affine, atol=1e-5)
    assert summary["units"] == "HU"
    data = res.get_fdata()
    assert np.isfinite(data).all() and -1024.0 - 1e-3 <= data.min() and data.max() <= 3000.0 + 1e-3


def test_label_map_condition_serves_tissue_maps(tiny_cohort):
    train = read_split(tiny_cohort["split"])["train"]
    ds = GenerationDataset(tiny_cohort["prep"], train, ["T1w"], condition="label_map")
    items = [ds[i] for i in range(len(ds))]
    assert all(it["labels"].shape == it["image"].shape == (1, 32, 32) and it["labels"].dtype == torch.int64 for it in items)
    assert max(int(it["labels"].max()) for it in items) >= 7  # GM/WM labels of the phantom present
    # air in the label map is background in the image (normalised T1w near its minimum)
    item = items[len(items) // 2]
    assert float(item["image"][item["labels"] == 0].mean()) < float(item["image"][item["labels"] > 0].mean())
