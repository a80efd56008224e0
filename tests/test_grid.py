"""medgen.data.grid against MONAI's Orientation / Spacing / ResampleToMatch, which define the grid,
and the head mask against MONAI's KeepLargestConnectedComponent / FillHoles; and the promise that
preprocessing does not import MONAI or torch (the reason these functions exist)."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import FillHoles, KeepLargestConnectedComponent, Orientation, ResampleToMatch, Spacing
from scipy import ndimage
from scipy.spatial.transform import Rotation

from medgen.data.grid import crop_or_pad, resample_to, to_ras_grid
from medgen.data.mask import CLOSING_RADIUS, _close, head_mask
from medgen.io.nifti import Volume, save_nifti


def _oblique() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [10.0, -7.0, 25.0], degrees=True).as_matrix() @ np.diag([0.9, 1.1, 2.0])
    affine[:3, 3] = [-50.0, -60.0, -40.0]
    return affine


def _sheared() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = [[1.0, 0.2, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.5]]
    affine[:3, 3] = [5.0, -3.0, 2.0]
    return affine


#: (name, affine, shape): RAS diagonal, LPS-like flips, a permutation of axes, oblique, sheared
INPUTS = [
    ("ras", np.diag([2.0, 2.0, 2.0, 1.0]), (45, 50, 40)),
    ("flipped", np.array([[-1.2, 0, 0, 30], [0, -1.0, 0, 20], [0, 0, 2.5, -10], [0, 0, 0, 1]], dtype=float), (40, 48, 20)),
    ("permuted", np.array([[0, -1.5, 0, 30], [-1.5, 0, 0, 20], [0, 0, -1.5, -10], [0, 0, 0, 1]], dtype=float), (30, 36, 28)),
    ("oblique", _oblique(), (50, 44, 30)),
    ("sheared", _sheared(), (30, 30, 20)),
]
SPACINGS = [(3.75, 3.75, 3.75), (2.0, 2.0, 2.0), (1.0, 1.3, 0.7)]


def _metatensor(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None], affine=torch.as_tensor(affine, dtype=torch.float64))


def _monai_grid(array: np.ndarray, affine: np.ndarray, spacing: tuple[float, float, float]) -> MetaTensor:
    img = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(_metatensor(array, affine))
    return Spacing(pixdim=spacing, mode="bilinear", padding_mode="border")(img)


@pytest.mark.parametrize("name,affine,shape", INPUTS, ids=[case[0] for case in INPUTS])
def test_ras_grid_is_monais_grid(name: str, affine: np.ndarray, shape: tuple[int, int, int]) -> None:
    # Shape and affine exactly; values to float32 rounding (both interpolate trilinearly, scipy
    # in float64 and torch in float32: 2.4e-7 was the largest difference seen on unit normals).
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for spacing in SPACINGS:
        expected = _monai_grid(array, affine, spacing)
        ours = to_ras_grid(Volume(array, affine), spacing)
        assert ours.array.shape == tuple(expected.shape[1:]), spacing
        np.testing.assert_allclose(ours.affine, np.asarray(expected.affine), atol=1e-9)
        np.testing.assert_allclose(ours.array, np.asarray(expected[0]), atol=1e-5)


@pytest.mark.parametrize("name,affine,shape", INPUTS, ids=[case[0] for case in INPUTS])
def test_resampling_onto_another_grid_is_monais(name: str, affine: np.ndarray, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=shape).astype(np.float32)
    labels = rng.integers(0, 10, size=shape).astype(np.float32)
    # the target grid covers more than the input in places: edge values (images), 0 (labels) there
    target_affine = _oblique() @ np.diag([1.7, 1.7, 1.7, 1.0])
    target_affine[:3, 3] = np.asarray(affine)[:3, 3] - 8.0
    target_shape = (25, 30, 22)
    reference = _metatensor(np.zeros(target_shape, dtype=np.float32), target_affine)

    linear = ResampleToMatch(mode="bilinear", padding_mode="border")(_metatensor(image, affine), reference)
    ours = resample_to(image, affine, target_shape, target_affine)
    np.testing.assert_allclose(ours.array, np.asarray(linear[0]), atol=1e-5)

    nearest = np.asarray(ResampleToMatch(mode="nearest", padding_mode="zeros")(_metatensor(labels, affine), reference)[0])
    ours_nearest = resample_to(labels, affine, target_shape, target_affine, nearest=True).array
    # They may differ only where a voxel centre falls (nearly) halfway between input voxels: our
    # tie rule is exact, MONAI computes the position in float32 (errors up to ~5e-4 voxels at
    # indices ~50), so a near-tie may round either way there. Elsewhere they agree exactly.
    to_input = np.linalg.solve(affine, target_affine)
    coords = to_input[:3, :3] @ np.indices(target_shape).reshape(3, -1) + to_input[:3, 3:4]
    tie = np.any(np.abs(coords - np.floor(coords) - 0.5) < 1e-3, axis=0).reshape(target_shape)
    assert tie.mean() < 0.02
    np.testing.assert_array_equal(ours_nearest[~tie], nearest[~tie])
    assert set(np.unique(ours_nearest)) <= set(range(10))
    assert (ours_nearest == 0).mean() > 0.05  # outside the input: 0


def test_label_ties_go_to_the_even_index() -> None:
    # 2 mm -> 3.75 mm: output voxel i lies at input index 1.875 i, halfway at 7.5, 22.5, 37.5
    labels = np.broadcast_to(np.arange(45, dtype=np.float32)[:, None, None], (45, 3, 3)).copy()
    out = resample_to(labels, np.diag([2.0, 2.0, 2.0, 1.0]), (24, 1, 1), np.diag([3.75, 3.75, 3.75, 1.0]), nearest=True)
    picked = out.array[:, 0, 0]
    assert picked[4] == 8 and picked[12] == 22 and picked[20] == 38
    np.testing.assert_array_equal(picked, np.rint(1.875 * np.arange(24)))


def test_crop_or_pad_moves_the_affine_with_the_box() -> None:
    affine = _oblique()
    array = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    start = np.array([-2, 3, 1])
    box = crop_or_pad(Volume(array, affine), start, (5, 6, 4), value=-1.0)
    assert box.array.shape == (5, 6, 4)
    for index in [(0, 0, 0), (2, 0, 0), (4, 3, 3), (3, 5, 2)]:
        source = np.array(index) + start
        world = box.affine @ [*index, 1.0]
        np.testing.assert_allclose(world, affine @ [*source, 1.0], atol=1e-9)
        inside = np.all(source >= 0) and np.all(source < array.shape)
        assert box.array[index] == (array[tuple(source)] if inside else -1.0)


def test_head_mask_matches_monais_component_and_hole_filling() -> None:
    # two blobs (the larger is the head) with a cavity and a notch, noise specks outside
    idx = np.indices((40, 40, 40)).astype(float)
    r = np.sqrt(((idx - 20) ** 2).sum(axis=0))
    array = ((r < 14) & (r > 0) & ~((r < 5) & (idx[0] > 18))).astype(np.float32) * 100.0
    array[(np.sqrt(((idx - 4) ** 2).sum(axis=0)) < 3)] = 100.0  # a smaller blob
    for k in range(29, 34):  # a chain touching the head and itself only at voxel corners ...
        array[k, k, k] = 100.0
    array[34:38, 34:38, 34:38] = 100.0  # ... to a cube: not part of the head with face connectivity
    array[~(r < 14)] += np.random.default_rng(2).random(int((~(r < 14)).sum())).astype(np.float32) * 9.0
    mask, info = head_mask("T1w", array)

    raw = torch.as_tensor(array > info["threshold"])[None].to(torch.uint8)
    largest = KeepLargestConnectedComponent(applied_labels=[1], connectivity=1)(raw)
    closed = _close(np.asarray(largest[0]).astype(bool), CLOSING_RADIUS)
    filled = FillHoles(applied_labels=[1], connectivity=1)(torch.as_tensor(closed[None].astype(np.uint8)))
    np.testing.assert_array_equal(mask, np.asarray(filled[0]).astype(np.uint8))
    assert mask[20, 20, 20] == 1 and mask[4, 4, 4] == 0  # cavity filled, the smaller blob dropped
    assert mask[30, 30, 30] == 0 and mask[36, 36, 36] == 0
    assert ndimage.label(mask)[1] == 1


def test_preprocessing_imports_neither_monai_nor_torch(tmp_path: Path) -> None:
    # Each subject is preprocessed in its own process: importing MONAI would cost it ~10 s.
    idx = np.indices((30, 32, 28)).astype(float)
    head = np.sqrt(((idx - 15) ** 2).sum(axis=0)) < 11
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    subject = tmp_path / "sub-001"
    subject.mkdir()
    save_nifti(subject / "T1w.nii.gz", head.astype(np.float32) * 300.0, affine)
    save_nifti(subject / "CT.nii.gz", np.where(head, 40.0, -1000.0).astype(np.float32), affine)
    out = tmp_path / "prep"
    code = (
        "import sys\n"
        "from medgen.cli import main\n"
        f"main(['preprocess', '--input-dir', {str(subject)!r}, '--modalities', 'T1w', 'CT', '--out', {str(out)!r},\n"
        "      '--settings', '{\"size\": [16, 16, 16], \"spacing\": [4.0, 4.0, 4.0]}'])\n"
        "loaded = sorted(m for m in ('monai', 'torch') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    assert (out / "CT.nii.gz").is_file() and (out / "mask.nii.gz").is_file()


def test_label_resampling_memory_is_bounded_by_a_plane() -> None:
    # A 1 mm label map: the input coordinates of every output voxel at once took about 20x the
    # output's size (348 MB for this 160^3 grid); one plane at a time, the output plus a few MB.
    labels = np.zeros((128, 128, 128), dtype=np.float32)
    labels[32:96, 32:96, 32:96] = 3.0
    shape = (160, 160, 160)
    tracemalloc.start()
    try:
        out = resample_to(labels, np.eye(4), shape, np.diag([0.8, 0.8, 0.8, 1.0]), nearest=True).array
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < out.nbytes + 8 * 2**20, peak / 2**20
    # the cube's edges: input voxel 32 at output 40 (32 / 0.8), input 95 up to output 119 (95.2 / 0.8 rounds to 95)
    assert out[40, 40, 40] == 3.0 and out[39, 60, 60] == 0.0 and out[119, 60, 60] == 3.0 and out[120, 60, 60] == 0.0
