"""translate_volume and the derived DICOM writer, with toy models whose output is known exactly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from medgen.data.normalise import ct_mapping
from medgen.io.deid import pseudonymise_uid
from medgen.io.dicom_derived import derived_rescale, write_derived_series
from medgen.io.dicom_series import load_series, scan_dicom
from medgen.io.dicom_write import PatientIdentity, write_dicom_series
from medgen.io.nifti import load_nifti, save_nifti
from medgen.synth.translate import MR_UNITS, translate_volume
from medgen.models.artifact import ModelCard, TrainedModel

SHAPE = (40, 44, 20)
SPACING = (0.9, 1.1, 2.5)
GRID_MM = 2.0  # the toy models' training spacing
RADIUS = 15.0  # mm, the "head"
# f = A sin(kx x) cos(ky y) inside the head (HU); smooth so that linear interpolation is accurate.
AMP, LX, LY, MEAN_HU = 300.0, 60.0, 80.0, 40.0
WINDOW = (-1024.0, 3000.0)


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def oblique_affine() -> np.ndarray:
    """15 deg about x and about z, voxels 0.9 x 1.1 x 2.5 mm, centred near the origin."""
    a = np.eye(4)
    a[:3, :3] = _rotation(2, 15.0) @ _rotation(0, 15.0) @ np.diag(SPACING)
    centre = a[:3, :3] @ ((np.array(SHAPE) - 1) / 2)
    a[:3, 3] = np.array([3.0, -5.0, 10.0]) - centre
    return a


def world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(X, Y, Z, 3) RAS mm of every voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def head_ct(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CT (HU) of a sphere of smooth soft tissue in air, and each voxel's distance from the sphere's centre."""
    xyz = world(affine, SHAPE)
    centre = affine[:3, :3] @ ((np.array(SHAPE) - 1) / 2) + affine[:3, 3]
    r = np.linalg.norm(xyz - centre, axis=-1)
    tissue = MEAN_HU + AMP * np.sin(2 * np.pi * xyz[..., 0] / LX) * np.cos(2 * np.pi * xyz[..., 1] / LY)
    return np.where(r < RADIUS, tissue, -1000.0).astype(np.float32), r


def interpolation_bound() -> float:
    """Largest error (HU) of identity translation inside the head, from linear-interpolation theory.

    Output(p) - f(p) = [interpolation on the model grid of the (input-grid interpolated) values
    - the same of f] + [interpolation of f on the model grid - f(p)]; each term is at most
    (1/8) * sum_i h_i^2 * max|d2f| with h the spacings of the input (first) and model (second)
    grid, and |d2f| <= AMP (kx^2 + ky^2) for f = AMP sin(kx x) cos(ky y) in any direction.
    """
    curvature = AMP * ((2 * np.pi / LX) ** 2 + (2 * np.pi / LY) ** 2)
    spacings = np.array(SPACING) ** 2
    return float((spacings.sum() + 3 * GRID_MM**2) / 8 * curvature) + 0.5  # + float32/rounding slack


def interior(r: np.ndarray) -> np.ndarray:
    """Voxels far enough from the head's surface that no interpolation kernel touches air or the mask edge."""
    return r < RADIUS - 2 * GRID_MM - max(SPACING) - 1.0


def meta(*, dims: int = 2, source: str = "CT", target: str = "CT", patch: list[int] | None = None) -> ModelCard:
    mappings = {"CT": ct_mapping(WINDOW), "T1w": {"kind": "linear", "scale": 500.0, "offset": 500.0,
                                                  "clip_normalised": [-1.0, 1.0], "units": "a.u.",
                                                  "source_range": [0.0, 1000.0], "method": "percentile"}}
    return ModelCard(
        model="toy",
        options={},
        task={"name": f"{source}_to_{target}", "kind": "translation", "source": source, "target": target},
        data={
            "spatial_dims": dims, "slice_axis": 2, "spacing": [GRID_MM] * 3, "size": [16, 16, 16], "patch_size": patch,
            "preprocess": {"mr_norm": "percentile", "mr_percentiles": [0.5, 99.5], "ct_window": list(WINDOW)},
            "mappings": mappings, "affine": np.diag([GRID_MM] * 3 + [1.0]).tolist(),
        },
    )


class Identity2D(nn.Module):
    """translate(x) = x; records input shapes and insists on sides divisible by ``size_multiple``."""

    def __init__(self, size_multiple: int | None = None) -> None:
        super().__init__()
        if size_multiple is not None:
            self.size_multiple = size_multiple
        self.shapes: list[tuple[int, ...]] = []

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        m = getattr(self, "size_multiple", 16)
        assert x.ndim == 4 and x.shape[1] == 1 and x.shape[2] % m == 0 and x.shape[3] % m == 0, x.shape
        self.shapes.append(tuple(x.shape))
        return x.clone()


class Alternating(nn.Module):
    """Ignores its input; +-1.5 alternating along the last axis (beyond the [-1, 1] range on purpose)."""

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        sign = 1.0 - 2.0 * (torch.arange(x.shape[-1], device=x.device) % 2)
        return 1.5 * sign.expand_as(x).to(x.dtype)


class Conv3DIdentity(nn.Module):
    """A real 3D conv with a centred delta kernel (so it is the identity); records window shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1, 1] = 1.0
        self.shapes: list[tuple[int, ...]] = []

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return self.conv(x)


def sha(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture()
def ct_input(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    affine = oblique_affine()
    hu, r = head_ct(affine)
    path = save_nifti(tmp_path / "in" / "ct.nii.gz", hu, affine)
    return path, hu, r


def test_geometry_and_values_round_trip_2d(tmp_path: Path, ct_input: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, hu, r = ct_input
    before = sha([path])
    model = Identity2D()
    out = tmp_path / "out" / "sct.nii.gz"
    summary = translate_volume(TrainedModel(model, meta(), None), path, out, progress=False)

    img = nib.load(str(out))
    assert img.shape == SHAPE
    qform, qcode = img.header.get_qform(coded=True)
    sform, scode = img.header.get_sform(coded=True)
    assert qcode > 0 and scode > 0
    np.testing.assert_allclose(qform, oblique_affine(), atol=1e-4)
    np.testing.assert_allclose(sform, oblique_affine(), atol=1e-4)
    assert summary["shape"] == list(SHAPE) and summary["units"] == "HU"
    assert model.shapes and all(s[2] % 16 == 0 and s[3] % 16 == 0 for s in model.shapes)
    assert all(s[0] <= 8 for s in model.shapes)  # batched by batch_size

    got = load_nifti(out).array
    inside = interior(r)
    assert inside.sum() > 100
    err = np.abs(got[inside] - hu[inside])
    assert err.max() <= interpolation_bound(), (err.max(), interpolation_bound())
    far_outside = r > RADIUS + 2 * GRID_MM + max(SPACING)
    np.testing.assert_allclose(got[far_outside], -1000.0, atol=1e-3)
    assert sha([path]) == before


def test_declared_size_multiple_and_mr_target(tmp_path: Path, ct_input: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, hu, r = ct_input
    model = Identity2D(size_multiple=4)
    out = tmp_path / "t1.nii.gz"
    summary = translate_volume(TrainedModel(model, meta(target="T1w"), None), path, out, progress=False)
    assert summary["units"] == MR_UNITS
    assert any(s[2] % 16 or s[3] % 16 for s in model.shapes)  # padded to 4, not to the default 16
    got = load_nifti(out).array
    # identity in network units: T1w = 500 * x_ct + 500 with x_ct = (HU - 988) / 2012
    expected = 500.0 * (hu - 988.0) / 2012.0 + 500.0
    inside = interior(r)
    assert np.abs(got[inside] - expected[inside]).max() <= interpolation_bound() * 500.0 / 2012.0 + 0.1
    assert np.all(got[r > RADIUS + 2 * GRID_MM + max(SPACING)] == 0.0)


class DivisorIdentity(Identity2D):
    """Declares its constraint as ``divisor`` (as medgen's translation models do)."""

    divisor = 8

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[2] % 8 == 0 and x.shape[3] % 8 == 0, x.shape
        self.shapes.append(tuple(x.shape))
        return x.clone()


def test_divisor_attribute_is_honoured(tmp_path: Path, ct_input: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, _, _ = ct_input
    model = DivisorIdentity()
    translate_volume(TrainedModel(model, meta(), None), path, tmp_path / "d.nii.gz", progress=False)
    assert {s[2:] for s in model.shapes} == {(24, 32)}  # 19 x 25 model-grid slices padded to multiples of 8


def test_other_slice_axis(tmp_path: Path, ct_input: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, hu, r = ct_input
    model = Identity2D()
    out = tmp_path / "axis0.nii.gz"
    translate_volume(TrainedModel(model, meta(), None), path, out, axis=0, batch_size=3, progress=False)
    assert all(s[0] <= 3 for s in model.shapes)
    got = load_nifti(out).array
    inside = interior(r)
    assert np.abs(got[inside] - hu[inside]).max() <= interpolation_bound()


class LeftRightRamp(nn.Module):
    """translate(x) = x + a ramp from -0.1 to 0.1 along the slice's first axis (RAS x for axial
    slices): an error that the left-right mirror image of the input sees reversed."""

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.linspace(-0.1, 0.1, x.shape[-2], dtype=x.dtype).view(1, 1, -1, 1)


def test_mirror_average_cancels_an_error_that_is_not_mirror_symmetric(tmp_path: Path) -> None:
    # a head symmetric about the middle plane of x, given on the model's own grid (no resampling)
    shape = (32, 32, 16)
    affine = np.diag([GRID_MM] * 3 + [1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * GRID_MM
    xyz = world(affine, shape)
    r = np.linalg.norm(xyz, axis=-1)
    hu = np.where(r < RADIUS, MEAN_HU + AMP * np.cos(2 * np.pi * xyz[..., 1] / LY), -1000.0).astype(np.float32)
    path = save_nifti(tmp_path / "ct.nii.gz", hu, affine)
    trained = TrainedModel(LeftRightRamp(), meta(), None)
    plain = translate_volume(trained, path, tmp_path / "plain.nii.gz", progress=False, mirror_average=False)
    averaged = translate_volume(trained, path, tmp_path / "averaged.nii.gz", progress=False)
    assert (plain["mirror_average"], averaged["mirror_average"]) == (False, True)
    a, b = load_nifti(tmp_path / "plain.nii.gz").array, load_nifti(tmp_path / "averaged.nii.gz").array
    inside = r < RADIUS - GRID_MM
    # the ramp rises 0.2 of the normalised range (2,012 HU per unit) over the slice's 32 voxels:
    # 13 HU per voxel, so left and right of the head differ by over 100 HU
    assert np.abs(a - a[::-1])[inside].max() > 100.0
    # averaged with the mirror image's translation the ramp cancels: the output is the input
    np.testing.assert_allclose(b[inside], hu[inside], atol=0.05)
    np.testing.assert_allclose(b[inside], b[::-1][inside], atol=0.05)


def test_ct_output_stays_in_window(tmp_path: Path, ct_input: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, _, r = ct_input
    out = tmp_path / "range.nii.gz"
    summary = translate_volume(TrainedModel(Alternating(), meta(), None), path, out, progress=False)
    got = load_nifti(out).array
    assert got.min() >= WINDOW[0] - 1e-3 and got.max() <= WINDOW[1] + 1e-3
    assert got[interior(r)].max() > 2000.0  # the model's +1 side does reach high HU
    assert summary["output_range"][0] >= WINDOW[0] - 1e-3 and summary["output_range"][1] <= WINDOW[1] + 1e-3


def test_3d_model_sliding_window(tmp_path: Path, ct_input: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, hu, r = ct_input
    model = Conv3DIdentity()
    out = tmp_path / "sct3d.nii.gz"
    summary = translate_volume(TrainedModel(model, meta(dims=3, patch=[16, 16, 16]), None), path, out, progress=False)
    assert len(model.shapes) > 1 and all(s[2:] == (16, 16, 16) for s in model.shapes)
    assert summary["model_grid"]["spatial_dims"] == 3
    got = load_nifti(out).array
    assert got.shape == SHAPE
    inside = interior(r)
    assert np.abs(got[inside] - hu[inside]).max() <= interpolation_bound()


def _identified_source(folder: Path) -> tuple[list[Path], PatientIdentity, np.ndarray]:
    affine = oblique_affine()
    hu, _ = head_ct(affine)
    who = PatientIdentity(name="DOE^JANE", patient_id="MG123456", birth_date="19610203", institution="Example General Hospital",
                          study_date="20230405", accession="ACC98765")
    files = write_dicom_series(np.round(hu), affine, folder, modality="CT", series_description="head CT",
                               series_number=2, identity=who)
    return files, who, np.round(hu)


def test_dicom_in_dicom_out(tmp_path: Path) -> None:
    src_dir = tmp_path / "src"
    files, who, _ = _identified_source(src_dir)
    before = sha(files)
    source = load_series(scan_dicom([src_dir]).series[0])
    trained = TrainedModel(Identity2D(), meta(), None)

    nifti_out = tmp_path / "sct.nii.gz"
    translate_volume(trained, src_dir, nifti_out, progress=False)
    dicom_out = tmp_path / "sct_dicom"
    with pytest.raises(ValueError, match="secret"):
        translate_volume(trained, src_dir, dicom_out, dicom=True, progress=False)
    assert not dicom_out.exists()
    summary = translate_volume(trained, src_dir, dicom_out, dicom=True, progress=False, uid_salt="s3cret")
    assert summary["files"] == SHAPE[2]

    report = scan_dicom([dicom_out])
    assert len(report.series) == 1 and not report.failed
    derived = load_series(report.series[0])
    reference = load_nifti(nifti_out)
    np.testing.assert_allclose(derived.affine, source.affine, atol=1e-3)
    np.testing.assert_allclose(reference.affine, source.affine, atol=1e-3)
    assert np.abs(derived.array - reference.array).max() <= 0.5 + 1e-3  # int16 HU, slope 1

    header = derived.header
    assert list(header.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert header.PatientIdentityRemoved == "YES" and header.DeidentificationMethod
    assert header.SeriesInstanceUID != source.header.SeriesInstanceUID
    assert header.StudyInstanceUID == pseudonymise_uid(source.header.StudyInstanceUID, "s3cret")
    assert header.FrameOfReferenceUID == pseudonymise_uid(source.header.FrameOfReferenceUID, "s3cret")
    secrets = ["s3cret", who.name, "DOE", who.patient_id, who.birth_date, who.institution, who.study_date, who.accession,
               str(source.header.StudyInstanceUID), str(source.header.SeriesInstanceUID)]
    for f in sorted(dicom_out.iterdir()):
        data = f.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, (f.name, secret)
    assert sha(files) == before


def test_dicom_folder_with_two_series_is_refused(tmp_path: Path) -> None:
    src_dir = tmp_path / "src"
    _identified_source(src_dir / "a")
    write_dicom_series(np.zeros((8, 8, 4)), np.eye(4), src_dir / "b", modality="MR", series_description="T1", series_number=3)
    with pytest.raises(ValueError, match="exactly one DICOM image series"):
        translate_volume(TrainedModel(Identity2D(), meta(), None), src_dir, tmp_path / "x.nii.gz", progress=False)
    assert not (tmp_path / "x.nii.gz").exists()


def test_derived_mr_rescale_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    volume = rng.uniform(0.0, 1234.5, size=(12, 10, 5)).astype(np.float32)
    affine = oblique_affine()
    slope, intercept = derived_rescale(volume, "MR")
    assert slope < 0.05 and intercept == 0.0
    write_derived_series(volume, affine, tmp_path / "mr", modality="MR", source_header=None, series_description="synthetic T1w", salt="s")
    back = load_series(scan_dicom([tmp_path / "mr"]).series[0])
    assert np.abs(back.array - volume).max() <= slope / 2 * (1 + 1e-6)
    np.testing.assert_allclose(back.affine, affine, atol=1e-3)
    assert str(back.header.PatientName) == "" and not back.header.PatientID  # Annex E: Z


def test_derived_ct_clips_to_int16(tmp_path: Path) -> None:
    volume = np.full((4, 4, 3), 40.0, dtype=np.float32)
    volume[0, 0, 0], volume[1, 1, 1] = 50000.0, -40000.0
    write_derived_series(volume, np.eye(4), tmp_path / "ct", modality="CT", source_header=None, series_description="sct", salt="s")
    back = load_series(scan_dicom([tmp_path / "ct"]).series[0]).array
    assert back[0, 0, 0] == 32767 - 1024 and back[1, 1, 1] == -32768 - 1024 and back[2, 2, 2] == 40.0
