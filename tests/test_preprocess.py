"""preprocess_subject on small synthetic heads: geometry, world alignment, normalisation, registration."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medgen.data.normalise import apply_normalisation, ct_mapping, invert_normalisation
from medgen.data.preprocess import PreprocessConfig, preprocess_subject, register_rigid
from medgen.io.nifti import load_nifti, save_nifti

CENTRE = np.array([2.0, -3.0, 5.0])  # head centre, RAS mm
BLOB = CENTRE + np.array([-8.0, 6.0, -4.0])  # marked world point
VENTRICLE = CENTRE + np.array([5.0, 4.0, 3.0])
# Tissue levels: background, scalp, skull, brain, ventricle, blob
LEVELS = {
    "T1w": (0.0, 1.0, 0.2, 2.0, 0.6, 5.0),
    "T2w": (0.0, 1.0, 0.1, 1.5, 3.0, 5.0),
    "CT": (-1000.0, 40.0, 1000.0, 30.0, 5.0, 2500.0),
}
OUT_SPACING = (2.0, 2.0, 2.0)
OUT_SIZE = (28, 24, 24)  # pads x, crops z


def _soft_inside(points: np.ndarray, centre: np.ndarray, semi_axes: np.ndarray, width: float = 0.06) -> np.ndarray:
    r = np.sqrt((((points - centre) / semi_axes) ** 2).sum(axis=-1))
    return 1.0 / (1.0 + np.exp(-(1.0 - r) / width))


def phantom(points: np.ndarray, modality: str) -> np.ndarray:
    """Intensity of ``modality`` at RAS points (..., 3) mm: head, skull, brain, ventricle, blob."""
    air, scalp, skull, brain, ventricle, blob = LEVELS[modality]
    head_axes = np.array([20.0, 23.0, 18.0])
    value = np.full(points.shape[:-1], air)
    for level, centre, axes in [
        (scalp, CENTRE, head_axes),
        (skull, CENTRE, 0.93 * head_axes),
        (brain, CENTRE, 0.82 * head_axes),
        (ventricle, VENTRICLE, np.array([4.0, 6.0, 3.0])),
        (blob, BLOB, np.array([3.0, 3.0, 3.0])),
    ]:
        value = value + _soft_inside(points, centre, axes) * (level - value)
    return value.astype(np.float32)


def grid_points(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def centred_affine(columns: np.ndarray, shape: tuple[int, int, int], centre: np.ndarray) -> np.ndarray:
    """Affine with the given direction*spacing columns whose central voxel sits at ``centre``."""
    affine = np.eye(4)
    affine[:3, :3] = columns
    affine[:3, 3] = centre - columns @ ((np.array(shape) - 1) / 2.0)
    return affine


# Reference: LPS, anisotropic 1.2 x 1 x 2.5 mm. Second grid: PLI, 1.5 mm, shifted centre.
SHAPE_A = (40, 48, 24)
AFFINE_A = centred_affine(np.diag([-1.2, -1.0, 2.5]), SHAPE_A, CENTRE)
SHAPE_B = (32, 32, 40)
AFFINE_B = centred_affine(np.array([[0, -1.5, 0], [-1.5, 0, 0], [0, 0, -1.5]], dtype=float), SHAPE_B, CENTRE + [1.1, -0.7, 0.9])


def write_modality(path: Path, modality: str, affine: np.ndarray, shape: tuple[int, int, int], transform: np.ndarray | None = None) -> Path:
    """Phantom sampled on a grid; ``transform`` (4x4 RAS) moves the sampling points (rigid motion)."""
    points = grid_points(affine, shape)
    if transform is not None:
        points = points @ transform[:3, :3].T + transform[:3, 3]
    return save_nifti(path, phantom(points, modality), affine)


def rigid(angles_deg: tuple[float, float, float], shift_mm: tuple[float, float, float], centre: np.ndarray) -> np.ndarray:
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rz @ ry @ rx
    m[:3, 3] = centre + np.array(shift_mm) - m[:3, :3] @ centre
    return m


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _world_centroid(path: Path, above: float, mapping: dict | None = None) -> np.ndarray:
    """World (RAS mm) centroid of the voxels above ``above`` (original units when ``mapping`` is given)."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if mapping is not None:
        data = invert_normalisation(data, mapping)
    idx = np.argwhere(data > above).astype(float)
    assert len(idx), f"no voxel above {above} in {path.name}"
    centre = idx.mean(axis=0)
    return img.affine[:3, :3] @ centre + img.affine[:3, 3]


@pytest.fixture(scope="module")
def subject(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("raw")
    paths = {
        "T1w": write_modality(root / "T1w.nii.gz", "T1w", AFFINE_A, SHAPE_A),
        "CT": write_modality(root / "CT.nii.gz", "CT", AFFINE_B, SHAPE_B),
    }
    # Labels on the reference grid: 1 brain, 2 ventricle, 5 blob.
    pts = grid_points(AFFINE_A, SHAPE_A)
    lab = np.zeros(SHAPE_A, dtype=np.uint8)
    lab[_soft_inside(pts, CENTRE, 0.82 * np.array([20.0, 23.0, 18.0])) > 0.5] = 1
    lab[_soft_inside(pts, VENTRICLE, np.array([4.0, 6.0, 3.0])) > 0.5] = 2
    lab[_soft_inside(pts, BLOB, np.array([3.0, 3.0, 3.0])) > 0.5] = 5
    paths["labels"] = save_nifti(root / "labels.nii.gz", lab, AFFINE_A, dtype=np.uint8)
    return paths


@pytest.fixture(scope="module")
def prepared(subject: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict[str, str]]:
    out = tmp_path_factory.mktemp("prep")
    before = {k: _sha(p) for k, p in subject.items()}
    cfg = PreprocessConfig(spacing=OUT_SPACING, size=OUT_SIZE, mr_norm="zscore")
    meta = preprocess_subject({"T1w": subject["T1w"], "CT": subject["CT"]}, out, cfg, labels=subject["labels"])
    return out, meta, before


def test_outputs_share_one_ras_grid(prepared: tuple[Path, dict, dict[str, str]]) -> None:
    out, meta, _ = prepared
    affines = []
    for name, dtype in [("T1w", np.float32), ("CT", np.float32), ("mask", np.uint8), ("labels", np.uint8)]:
        img = nib.load(str(out / f"{name}.nii.gz"))
        assert img.shape == OUT_SIZE
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(img.header.get_zooms()[:3], OUT_SPACING, atol=1e-5)
        assert img.get_data_dtype() == dtype
        np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-6)
        affines.append(img.affine)
    for affine in affines[1:]:
        np.testing.assert_allclose(affine, affines[0], atol=1e-5)
    np.testing.assert_allclose(meta["geometry"]["affine"], affines[0], atol=1e-5)
    assert meta["geometry"]["size"] == list(OUT_SIZE)
    stored = json.loads((out / "normalisation.json").read_text())
    assert stored["sources"] == {"T1w": "T1w.nii.gz", "CT": "CT.nii.gz"}
    assert stored["reference"] == "T1w" and set(stored["normalisation"]) == {"T1w", "CT"}


def test_inputs_untouched(subject: dict[str, Path], prepared: tuple[Path, dict, dict[str, str]]) -> None:
    _, _, before = prepared
    assert {k: _sha(p) for k, p in subject.items()} == before


def test_marked_point_keeps_its_world_position(prepared: tuple[Path, dict, dict[str, str]]) -> None:
    out, meta, _ = prepared
    mappings = meta["normalisation"]
    # Reference (reoriented + resampled) and second modality (other grid, resampled onto it).
    for mod, above in [("T1w", 3.5), ("CT", 1750.0)]:
        found = _world_centroid(out / f"{mod}.nii.gz", above, mappings[mod])
        assert np.linalg.norm(found - BLOB) < OUT_SPACING[0], f"{mod}: blob at {found}, expected {BLOB}"
    # The labels' blob (5) lands there too.
    found = _world_centroid(out / "labels.nii.gz", 4.5)
    assert np.linalg.norm(found - BLOB) < OUT_SPACING[0]


def test_mask_covers_head_and_box_is_centred(prepared: tuple[Path, dict, dict[str, str]]) -> None:
    out, _, _ = prepared
    mask = load_nifti(out / "mask.nii.gz")
    assert set(np.unique(mask.array)) == {0.0, 1.0}
    ijk = np.argwhere(mask.array > 0)
    centre_world = mask.affine[:3, :3] @ ((ijk.min(0) + ijk.max(0)) / 2.0) + mask.affine[:3, 3]
    assert np.all(np.abs(centre_world - CENTRE) <= 2 * OUT_SPACING[0])
    # The box (48 mm in z) holds the whole 36 mm head: inside the head is masked, far outside is not
    # (the phantom's edge is soft, so the band around r = 1 may go either way).
    world = grid_points(mask.affine, OUT_SIZE)
    r = np.sqrt((((world - CENTRE) / np.array([20.0, 23.0, 18.0])) ** 2).sum(axis=-1))
    assert np.all(mask.array[r < 0.95] == 1)
    assert np.all(mask.array[r > 1.2] == 0)
    # The padding in x (28 voxels for a 24-voxel field of view) is background.


def test_padding_is_air_for_ct(prepared: tuple[Path, dict, dict[str, str]]) -> None:
    out, meta, _ = prepared
    start_x = meta["crop_start_voxel"][0]
    assert start_x < 0, "the x axis (24 voxels) is padded to 28"
    ct = load_nifti(out / "CT.nii.gz").array
    air = apply_normalisation(np.array([-1000.0]), meta["normalisation"]["CT"])[0]
    np.testing.assert_allclose(ct[: -start_x], air, atol=1e-6)


def test_ct_normalisation_inverts_to_hu(prepared: tuple[Path, dict, dict[str, str]]) -> None:
    out, meta, _ = prepared
    mapping = meta["normalisation"]["CT"]
    assert mapping["units"] == "HU" and mapping["clip_normalised"] == [-1.0, 1.0]
    assert mapping["source_range"] == [-1024.0, 3000.0]
    ct = load_nifti(out / "CT.nii.gz")
    assert ct.array.min() >= -1.0 and ct.array.max() <= 1.0
    hu = invert_normalisation(ct.array, mapping)
    # Deep brain, away from edges, ventricle and blob: 30 HU.
    world = ct.affine[:3, :3] @ np.array(np.meshgrid(*[np.arange(n) for n in OUT_SIZE], indexing="ij")).reshape(3, -1) + ct.affine[:3, 3:4]
    deep = np.linalg.norm((world.T - CENTRE) / np.array([20.0, 23.0, 18.0]), axis=1) < 0.3
    deep &= np.linalg.norm(world.T - VENTRICLE, axis=1) > 9.0
    deep &= np.linalg.norm(world.T - BLOB, axis=1) > 8.0
    assert deep.sum() > 10
    np.testing.assert_allclose(hu.reshape(-1)[deep], 30.0, atol=2.0)


def test_ct_mapping_round_trip() -> None:
    mapping = ct_mapping((-1024.0, 3000.0))
    hu = np.array([-3000.0, -1024.0, -1000.0, -0.5, 0.0, 40.25, 1234.5, 3000.0, 5000.0], dtype=np.float32)
    back = invert_normalisation(apply_normalisation(hu, mapping), mapping)
    inside = (hu >= -1024.0) & (hu <= 3000.0)
    np.testing.assert_allclose(back[inside], hu[inside], atol=4024.0 * np.finfo(np.float32).eps * 2)
    np.testing.assert_array_equal(back[~inside], np.clip(hu[~inside], -1024.0, 3000.0))


def test_mr_percentile_maps_to_unit_range(subject: dict[str, Path], tmp_path: Path) -> None:
    cfg = PreprocessConfig(spacing=OUT_SPACING, size=OUT_SIZE, mr_norm="percentile", mr_percentiles=(1.0, 99.0))
    t2 = write_modality(tmp_path / "T2w.nii.gz", "T2w", AFFINE_B, SHAPE_B)
    meta = preprocess_subject({"T1w": subject["T1w"], "T2w": t2}, tmp_path / "out", cfg)
    for mod in ("T1w", "T2w"):
        data = load_nifti(tmp_path / "out" / f"{mod}.nii.gz").array
        assert np.isfinite(data).all()
        assert data.min() >= -1.0 and data.max() <= 1.0
        assert np.isclose(data.max(), 1.0) and np.isclose(data.min(), -1.0)
        mapping = meta["normalisation"][mod]
        lo, hi = mapping["source_range"]
        np.testing.assert_allclose(apply_normalisation(np.array([lo, hi]), mapping), [-1.0, 1.0], atol=1e-6)
        assert mapping["units"] == "a.u." and mapping["clip_normalised"] == [-1.0, 1.0]


def test_constant_images_are_refused_unless_ingest_allowed_them(tmp_path: Path) -> None:
    zeros = save_nifti(tmp_path / "T1w.nii.gz", np.zeros(SHAPE_A, np.float32), AFFINE_A)
    flat = save_nifti(tmp_path / "T2w.nii.gz", np.full(SHAPE_B, 7.0, np.float32), AFFINE_B)
    cfg = PreprocessConfig(spacing=OUT_SPACING, size=OUT_SIZE)
    with pytest.raises(ValueError, match=r"T1w\.nii\.gz: every voxel is 0: .*--allow-constant"):
        preprocess_subject({"T1w": zeros, "T2w": flat}, tmp_path / "refused", cfg)
    assert not (tmp_path / "refused").exists()
    # Ingest with --allow-constant marks them in their sidecars; then they pass, warned and finite.
    for name in ("T1w", "T2w"):
        (tmp_path / f"{name}.json").write_text('{"constant_allowed": true}')
    with pytest.warns(RuntimeWarning, match="constant|empty"):
        meta = preprocess_subject({"T1w": zeros, "T2w": flat}, tmp_path / "out", cfg)
    for mod in ("T1w", "T2w"):
        data = load_nifti(tmp_path / "out" / f"{mod}.nii.gz").array
        assert data.shape == OUT_SIZE and np.isfinite(data).all()
        assert data.min() >= -1.0 and data.max() <= 1.0
        assert np.median(data) == 0.0  # inside the field of view; padding may map elsewhere
        assert meta["normalisation"][mod]["scale"] == 1.0
    assert load_nifti(tmp_path / "out" / "mask.nii.gz").array.sum() == 0
    assert any("constant" in w or "empty" in w for w in meta["warnings"])


def test_labels_keep_integer_values(prepared: tuple[Path, dict, dict[str, str]]) -> None:
    out, meta, _ = prepared
    labels = np.asarray(nib.load(str(out / "labels.nii.gz")).dataobj)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 5}
    assert meta["labels"]["values"] == [0, 1, 2, 5]


def _rotation_error_deg(m: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(m[:3, :3]) - 1.0) / 2.0, -1.0, 1.0))))


def test_registration_recovers_rigid_motion(tmp_path: Path) -> None:
    # The CT is acquired with the head moved by `motion`: what sits at reference point p
    # appears at motion^-1(p) in the CT, so the registration should find fixed->moving = motion^-1.
    motion = rigid((2.0, -1.5, 4.0), (3.0, -1.5, 1.0), CENTRE)
    fixed_path = write_modality(tmp_path / "T1w.nii.gz", "T1w", AFFINE_A, SHAPE_A)
    moving_path = write_modality(tmp_path / "CT.nii.gz", "CT", AFFINE_B, SHAPE_B, transform=motion)
    cfg = PreprocessConfig(spacing=OUT_SPACING, size=OUT_SIZE, register=True, register_iterations=100)
    fixed, moving = load_nifti(fixed_path), load_nifti(moving_path)
    params = register_rigid(fixed, moving, cfg)
    error = np.array(params["fixed_to_moving_ras"]) @ motion  # identity when recovered
    assert _rotation_error_deg(error) < 1.0, params
    corners = np.array([[x, y, z] for x in (-20, 20) for y in (-23, 23) for z in (-18, 18)]) + CENTRE
    moved = corners @ error[:3, :3].T + error[:3, 3]
    assert np.linalg.norm(moved - corners, axis=1).max() < 1.0, params
    # Without registration the motion is visible (sanity check of the test itself).
    assert np.linalg.norm(corners @ motion[:3, :3].T + motion[:3, 3] - corners, axis=1).max() > 3.0


def test_registered_pipeline_puts_moved_blob_back(tmp_path: Path) -> None:
    motion = rigid((0.0, 0.0, 4.0), (3.0, 0.0, 0.0), CENTRE)
    t1 = write_modality(tmp_path / "T1w.nii.gz", "T1w", AFFINE_A, SHAPE_A)
    ct = write_modality(tmp_path / "CT.nii.gz", "CT", AFFINE_B, SHAPE_B, transform=motion)
    cfg = PreprocessConfig(spacing=OUT_SPACING, size=OUT_SIZE, register=True, register_iterations=100)
    meta = preprocess_subject({"T1w": t1, "CT": ct}, tmp_path / "out", cfg)
    assert meta["registration"]["T1w"] is None
    assert meta["registration"]["CT"]["rotation_deg"] == pytest.approx(4.0, abs=1.0)
    found = _world_centroid(tmp_path / "out" / "CT.nii.gz", 1750.0, meta["normalisation"]["CT"])
    assert np.linalg.norm(found - BLOB) < OUT_SPACING[0]


def test_bad_inputs_raise(subject: dict[str, Path], tmp_path: Path) -> None:
    cfg = PreprocessConfig(spacing=OUT_SPACING, size=OUT_SIZE, reference="T2w")
    with pytest.raises(ValueError, match="reference"):
        preprocess_subject({"T1w": subject["T1w"]}, tmp_path, cfg)
    with pytest.raises(FileNotFoundError):
        preprocess_subject({"T1w": tmp_path / "missing.nii.gz"}, tmp_path, PreprocessConfig(spacing=OUT_SPACING, size=OUT_SIZE))
    with pytest.raises(ValueError):
        PreprocessConfig(spacing=(2.0, 0.0, 2.0), size=OUT_SIZE)
