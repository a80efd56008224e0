"""Slice and patch datasets on subjects written by preprocess_subject: shapes, pairing, selection, determinism."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import RandFlipd

from medgen.data.datasets import CachePolicy, PatchDataset, SliceDataset, subject_nbytes
from medgen.data.preprocess import PreprocessConfig, preprocess_subject
from medgen.io.nifti import save_nifti

SHAPE = (20, 22, 18)
SPACING = 2.0
MODS = ["T1w", "T2w"]
SUBJECTS = ["sub-001", "sub-002"]


def _head(index: int) -> tuple[np.ndarray, np.ndarray]:
    """T1-like image (X, Y, Z) with a gradient in every axis, and integer labels, for subject ``index``."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1).astype(float)
    centre = (np.array(SHAPE) - 1) / 2.0 + [index, -index, 0]
    r = np.sqrt((((ijk - centre) / [7.0 + index, 8.0, 6.0]) ** 2).sum(-1))
    head = (r < 1.0).astype(np.float32)
    t1 = head * (1.0 + 0.05 * ijk[..., 0] + 0.03 * ijk[..., 1] + 0.1 * ijk[..., 2] + index)
    labels = head.astype(np.uint8) + (r < 0.5).astype(np.uint8)
    return t1.astype(np.float32), labels


@pytest.fixture(scope="module")
def prep_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    root = tmp_path_factory.mktemp("prep")
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    cfg = PreprocessConfig(spacing=(SPACING,) * 3, size=SHAPE, mr_norm="zscore")
    for index, subject in enumerate(SUBJECTS):
        t1, labels = _head(index)
        # T2w = 3 x T1w: z-scoring makes the two normalised images identical, voxel by voxel.
        paths = {
            "T1w": save_nifti(raw / f"{subject}_T1w.nii.gz", t1, affine),
            "T2w": save_nifti(raw / f"{subject}_T2w.nii.gz", 3.0 * t1, affine),
        }
        lab = save_nifti(raw / f"{subject}_labels.nii.gz", labels, affine, dtype=np.uint8)
        preprocess_subject(paths, root / subject, cfg, labels=lab)
    return root


def _volume(root: Path, subject: str, name: str) -> np.ndarray:
    return np.asarray(nib.load(str(root / subject / f"{name}.nii.gz")).dataobj)


def test_slice_items_shapes_and_pairing(prep_root: Path) -> None:
    ds = SliceDataset(prep_root, SUBJECTS, MODS, min_mask_fraction=0.05, labels=True)
    assert len(ds) > 0
    for i in range(len(ds)):
        item = ds[i]
        for key in (*MODS, "mask", "labels"):
            assert item[key].shape == (1, *SHAPE[:2]), key
            assert type(item[key]) is torch.Tensor
        assert item["T1w"].dtype == torch.float32 and item["mask"].dtype == torch.float32
        assert item["labels"].dtype == torch.int64
        assert 0.0 <= item["slice_position"] <= 1.0
        assert item["slice_position"] == pytest.approx(item["slice"] / (SHAPE[2] - 1))
        # Paired: both modalities from the same subject and slice ...
        torch.testing.assert_close(item["T2w"], item["T1w"], atol=1e-4, rtol=1e-4)
        # ... and that slice really is the one named.
        for key in ("T1w", "mask", "labels"):
            expected = _volume(prep_root, item["subject"], key)[..., item["slice"]]
            np.testing.assert_allclose(item[key][0].numpy(), expected, atol=1e-6)


def test_slices_below_mask_fraction_are_excluded(prep_root: Path) -> None:
    fraction = 0.25
    ds = SliceDataset(prep_root, SUBJECTS, MODS, min_mask_fraction=fraction)
    expected = set()
    for subject in SUBJECTS:
        cover = (_volume(prep_root, subject, "mask") > 0).mean(axis=(0, 1))
        expected |= {(subject, int(k)) for k in np.flatnonzero(cover >= fraction)}
        assert (cover < fraction).any() and (cover > 0).any()  # the test excludes something
    got = {(ds[i]["subject"], ds[i]["slice"]) for i in range(len(ds))}
    assert got == expected
    assert len(SliceDataset(prep_root, SUBJECTS, MODS, min_mask_fraction=0.0)) == len(SUBJECTS) * SHAPE[2]


def test_slice_transform_applies_to_all_keys(prep_root: Path) -> None:
    flip = RandFlipd(keys=[*MODS, "mask"], prob=1.0, spatial_axis=0)
    plain = SliceDataset(prep_root, SUBJECTS[:1], MODS)
    flipped = SliceDataset(prep_root, SUBJECTS[:1], MODS, transform=flip)
    a, b = plain[3], flipped[3]
    torch.testing.assert_close(b["T1w"], torch.flip(a["T1w"], dims=[1]))
    torch.testing.assert_close(b["T2w"], b["T1w"], atol=1e-4, rtol=1e-4)
    assert b["subject"] == a["subject"] and b["slice"] == a["slice"]


def test_patches_shapes_pairing_and_place(prep_root: Path) -> None:
    size = (8, 10, 6)
    ds = PatchDataset(prep_root, SUBJECTS, MODS, patch_size=size, samples_per_volume=3, seed=0, labels=True)
    assert len(ds) == 6
    for i in range(len(ds)):
        item = ds[i]
        assert item["subject"] == SUBJECTS[i // 3] and item["sample"] == i % 3
        for key in (*MODS, "mask", "labels"):
            assert item[key].shape == (1, *size), key
        assert item["T1w"].dtype == torch.float32 and item["labels"].dtype == torch.int64
        torch.testing.assert_close(item["T2w"], item["T1w"], atol=1e-4, rtol=1e-4)
        i0, j0, k0 = item["patch_start"]
        block = _volume(prep_root, item["subject"], "T1w")[i0 : i0 + size[0], j0 : j0 + size[1], k0 : k0 + size[2]]
        np.testing.assert_allclose(item["T1w"][0].numpy(), block, atol=1e-6)
        centre = tuple(s // 2 for s in size)
        assert item["mask"][(0, *centre)] == 1.0  # centres drawn inside the mask


def test_patches_deterministic_with_seed(prep_root: Path) -> None:
    kwargs = dict(patch_size=(8, 8, 8), samples_per_volume=4)
    a = PatchDataset(prep_root, SUBJECTS, MODS, seed=7, **kwargs)
    b = PatchDataset(prep_root, SUBJECTS, MODS, seed=7, **kwargs)
    forward = [a[i]["patch_start"] for i in range(len(a))]
    backward = [b[i]["patch_start"] for i in reversed(range(len(b)))][::-1]
    assert forward == backward
    torch.testing.assert_close(a[5]["T1w"], b[5]["T1w"])
    other = PatchDataset(prep_root, SUBJECTS, MODS, seed=8, **kwargs)
    assert [other[i]["patch_start"] for i in range(len(other))] != forward
    a.set_epoch(1)
    assert [a[i]["patch_start"] for i in range(len(a))] != forward


def test_patch_larger_than_volume_is_padded(prep_root: Path) -> None:
    ds = PatchDataset(prep_root, SUBJECTS[:1], MODS, patch_size=(24, 24, 24), samples_per_volume=1)
    item = ds[0]
    assert item["T1w"].shape == (1, 24, 24, 24)
    assert item["mask"].sum() == (_volume(prep_root, SUBJECTS[0], "mask") > 0).sum()


def test_missing_inputs_raise(prep_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="sub-404"):
        SliceDataset(prep_root, ["sub-404"], MODS)
    with pytest.raises(FileNotFoundError, match="FLAIR"):
        PatchDataset(prep_root, SUBJECTS, ["FLAIR"])


def _assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


@pytest.mark.filterwarnings("error:Corrupt cache")  # every disk-cached item must load weights-only
def test_cache_budget_keeps_subjects_beyond_it_on_disk_with_the_same_items(prep_root: Path, tmp_path: Path) -> None:
    all_ram = SliceDataset(prep_root, SUBJECTS, MODS, labels=True)
    assert all_ram.volumes.in_ram == 2 and all_ram.volumes.disk is None
    per_subject = subject_nbytes({k: str(prep_root / SUBJECTS[0] / f) for k, f in
                                  {"T1w": "T1w.nii.gz", "T2w": "T2w.nii.gz", "mask": "mask.nii.gz", "labels": "labels.nii.gz"}.items()},
                                 ["T1w", "T2w", "mask", "labels"])
    assert per_subject == 4 * 4 * int(np.prod(SHAPE))  # four float32 volumes
    # a budget of 1.5 subjects: the first subject in RAM, the second in the disk cache
    cache = CachePolicy(ram_mb=1.5 * per_subject / 2**20, dir=tmp_path / "cache")
    bounded = SliceDataset(prep_root, SUBJECTS, MODS, labels=True, cache=cache)
    assert bounded.volumes.in_ram == 1 and len(bounded.volumes.ram) == 1
    assert len(bounded) == len(all_ram)
    for i in range(len(all_ram)):
        _assert_items_equal(bounded[i], all_ram[i])
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # one file for the disk-cached subject
    # worker processes read the same items from both caches
    loader = torch.utils.data.DataLoader(bounded, batch_size=4, num_workers=2)
    serial = torch.utils.data.DataLoader(all_ram, batch_size=4, num_workers=0)
    for a, b in zip(loader, serial):
        _assert_items_equal(a, b)
    # patches too (same seed, same draws)
    patches = PatchDataset(prep_root, SUBJECTS, MODS, patch_size=(8, 8, 8), samples_per_volume=2, seed=4, cache=CachePolicy(ram_mb=0))
    reference = PatchDataset(prep_root, SUBJECTS, MODS, patch_size=(8, 8, 8), samples_per_volume=2, seed=4)
    assert patches.volumes.in_ram == 0
    for i in range(len(reference)):
        _assert_items_equal(patches[i], reference[i])
