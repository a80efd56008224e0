"""medgen's DICOM -> NIfTI conversion agrees with the dcm2niix binary (voxels and world geometry).

Both outputs are loaded with nibabel and brought to the closest canonical (RAS) orientation, so
that dcm2niix's row flips and axis order do not matter; voxels must then agree to float32
rounding and affines to 1e-3 mm.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medgen.io.dicom_series import DicomSeriesError, load_series, scan_dicom
from medgen.io.nifti import save_nifti
from medgen.io.dicom_write import write_dicom_series

from test_dicom_series import _enhanced_from_emri, oblique_affine, ramp_volume

def _find_dcm2niix() -> str | None:
    """On PATH, or beside the interpreter (the pip package installs it into the venv's bin/)."""
    beside = Path(sys.executable).parent / "dcm2niix"
    return shutil.which("dcm2niix") or (str(beside) if beside.exists() else None)


DCM2NIIX = _find_dcm2niix()
pytestmark = pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix binary not on PATH")

DICOMDIR_TESTS = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"


def run_dcm2niix(indir: Path, outdir: Path) -> tuple[dict[tuple[int, str], Path], str]:
    """Convert ``indir``; map (SeriesNumber, variant) -> NIfTI path, variant '' / 'Eq' / 'Tilt'.

    dcm2niix names files ``%s`` (series number) plus suffixes for derived outputs
    (``_Eq_1`` equalised spacing, ``_Tilt_1`` tilt-corrected, letters for repeats); the JSON
    sidecar of the main file gives the series number.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([DCM2NIIX, "-z", "n", "-f", "%s", "-o", str(outdir), str(indir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found: dict[tuple[int, str], Path] = {}
    for sidecar in sorted(outdir.glob("*.json")):
        number = int(json.loads(sidecar.read_text())["SeriesNumber"])
        stem = sidecar.with_suffix("")
        found[(number, "")] = stem.with_suffix(".nii")
        for variant in ("Eq", "Tilt"):
            for extra in sorted(outdir.glob(f"{stem.name}_{variant}_*.nii")):
                found[(number, variant)] = extra
    return found, proc.stdout


def canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.get_fdata(dtype=np.float64)), img.affine


def assert_same(ours: Path, theirs: Path, *, atol_value: float = 0.0) -> None:
    a, a_aff = canonical(ours)
    b, b_aff = canonical(theirs)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a_aff, b_aff, atol=1e-3)
    tol = atol_value or float(np.float32(np.abs(b).max()) * np.finfo(np.float32).eps)
    np.testing.assert_allclose(a, b, atol=tol, rtol=0)


def assert_same_along_z(ours: Path, theirs: Path) -> None:
    """Two resamplings of one axial stack onto different uniform z grids (dcm2niix's _Eq_ picks
    its own step): same in-plane grid, and our volume interpolated linearly at their slice
    positions equals theirs. Both interpolate linearly between the same acquired slices, so this
    is exact up to dcm2niix's integer storage (0.5)."""
    a, a_aff = canonical(ours)
    b, b_aff = canonical(theirs)
    assert a.shape[:2] == b.shape[:2]
    np.testing.assert_allclose(a_aff[:3, :2], b_aff[:3, :2], atol=1e-6)
    np.testing.assert_allclose(a_aff[:3, 3], b_aff[:3, 3], atol=1e-3)
    assert np.count_nonzero(a_aff[:2, 2]) == np.count_nonzero(b_aff[:2, 2]) == 0  # axial stacks
    z_theirs = b_aff[2, 3] + b_aff[2, 2] * np.arange(b.shape[2])
    pos = (z_theirs - a_aff[2, 3]) / a_aff[2, 2]
    assert pos.min() > -1e-4 and pos.max() < a.shape[2] - 1 + 1e-4  # float32 header fields
    lo = np.clip(np.floor(pos + 1e-4).astype(int), 0, a.shape[2] - 2)
    w = pos - lo
    ours_at_theirs = a[:, :, lo] * (1 - w) + a[:, :, lo + 1] * w
    np.testing.assert_allclose(ours_at_theirs, b, atol=0.5 + 1e-6)


def medgen_convert(series, out: Path, **kw) -> Path:
    loaded = load_series(series, **kw)
    return save_nifti(out, loaded.array, loaded.affine)


def test_dicomdirtests_series_agree(tmp_path):
    ref, log = run_dcm2niix(DICOMDIR_TESTS, tmp_path / "d2n")
    report = scan_dicom([DICOMDIR_TESTS])
    compared = []
    for (number, variant), nii in sorted(ref.items()):
        if variant or nib.load(str(nii)).shape[2] < 2:
            continue  # single-slice outputs (CR, localizer parts, split pilots) are not volumes
        description = json.loads(nii.with_suffix(".json").read_text())["SeriesDescription"]
        candidates = [s for s in report.series if (s.series_number, s.description) == (number, description)]
        assert len(candidates) == 1, (number, [c.label for c in candidates])
        series = candidates[0]
        if series.description == "Scout":
            # The "45 deg gantry tilt" dcm2niix reports is two orthogonal localizer images: refused.
            assert "gantry tilt of 45 degrees" in log
            with pytest.raises(DicomSeriesError, match="localizer"):
                load_series(series)
            compared.append("Scout refused")
        elif series.description == "Routine Brain":
            # Slices at -99.48, 103.02, 104.27, 105.52 mm: medgen refuses by default; resampled it
            # must match dcm2niix's equalised (_Eq_) output.
            with pytest.raises(DicomSeriesError, match="uneven slice spacing"):
                load_series(series)
            ours = medgen_convert(series, tmp_path / "ours" / f"{number}.nii", on_uneven="resample")
            assert_same_along_z(ours, ref[(number, "Eq")])
            compared.append("Routine Brain resampled")
        else:
            assert_same(medgen_convert(series, tmp_path / "ours" / f"{number}.nii"), nii)
            compared.append(series.description)
    assert sorted(compared) == ["Routine Brain resampled", "Scout refused", "SmartScore - Gated 0.5 sec"], compared


def test_synthetic_oblique_series_agrees(tmp_path):
    vol = ramp_volume((20, 16, 9)) * 3
    write_dicom_series(vol, oblique_affine(), tmp_path / "in", modality="CT", series_description="oblique",
                       series_number=11)
    ref, _ = run_dcm2niix(tmp_path / "in", tmp_path / "d2n")
    (series,) = scan_dicom([tmp_path / "in"]).series
    ours = medgen_convert(series, tmp_path / "ours.nii.gz")
    assert_same(ours, ref[(11, "")])
    np.testing.assert_allclose(nib.load(str(ours)).affine, oblique_affine(), atol=1e-4)


def test_enhanced_multiframe_agrees(tmp_path):
    (tmp_path / "in").mkdir()
    _enhanced_from_emri(tmp_path / "in" / "enh.dcm", [2.0] * 10, reverse=True)
    ref, _ = run_dcm2niix(tmp_path / "in", tmp_path / "d2n")
    (series,) = scan_dicom([tmp_path / "in"]).series
    assert series.multiframe
    assert_same(medgen_convert(series, tmp_path / "ours.nii"), ref[(301, "")])


def test_plain_emri_small_refused_where_dcm2niix_guesses(tmp_path):
    """pydicom-data's emri_small.dcm has no functional groups: dcm2niix writes a 'bogus spatial
    matrix'; medgen refuses. The pixel values still agree with dcm2niix's (geometry aside)."""
    (tmp_path / "in").mkdir()
    shutil.copy(get_testdata_file("emri_small.dcm"), tmp_path / "in")
    ref, log = run_dcm2niix(tmp_path / "in", tmp_path / "d2n")
    assert "Bogus spatial matrix" in log or "Unable to determine spatial orientation" in log
    (series,) = scan_dicom([tmp_path / "in"]).series
    with pytest.raises(DicomSeriesError, match="PlanePositionSequence"):
        load_series(series)
    theirs = np.asarray(nib.load(str(ref[(301, "")])).get_fdata())  # (cols, rows, frames), rows flipped
    frames = pydicom.dcmread(get_testdata_file("emri_small.dcm")).pixel_array.astype(np.float64)
    assert sorted(np.unique(theirs).tolist()) == sorted(np.unique(frames).tolist())
    assert np.isclose(theirs.sum(), frames.sum())


def test_tilted_series_agrees_with_dcm2niix_tilt_correction(tmp_path):
    """A CT stack sheared by a 20 deg gantry tilt, in the usual axial orientation
    (ImageOrientationPatient [1, 0, 0, 0, 1, 0]). Both converters resample it by default onto an
    orthogonal grid holding the whole stack: same grid, axes and spacing. The values are a linear
    ramp, on which linear interpolation is exact: medgen's equal the ramp at each voxel's world
    position (float32 rounding, 1e-3); dcm2niix's sit within half a pixel of them (it shifts
    each slice by a rounded amount: 0.34 px here), i.e. within 10 HU for 20 HU per pixel along y."""
    shape = (24, 20, 8)
    i, j, k = np.indices(shape)
    vol = 200.0 + 30 * i + 20 * j + 5 * k
    aff = np.diag([-0.8, -0.9, 2.0, 1.0])
    aff[1, 2] = -2.0 * np.tan(np.radians(20.0))  # each slice 0.73 mm further posterior
    aff[:3, 3] = [10.0, -5.0, 30.0]
    write_dicom_series(vol, aff, tmp_path / "in", modality="CT", series_description="tilt", series_number=9,
                       extra={"GantryDetectorTilt": 20.0, "PatientPosition": "HFS"})
    ref, log = run_dcm2niix(tmp_path / "in", tmp_path / "d2n")
    assert "gantry tilt" in log.lower() or "Tilt" in log
    (series,) = scan_dicom([tmp_path / "in"]).series
    loaded = load_series(series)  # resampled by default
    assert loaded.corrections["tilt_resampled"] and loaded.corrections["gantry_tilt_deg"] == pytest.approx(20.0, abs=1e-3)
    ours = save_nifti(tmp_path / "ours.nii.gz", loaded.array, loaded.affine)
    a, a_aff = canonical(ours)
    b, b_aff = canonical(ref[(9, "Tilt")])
    assert a.shape == b.shape == (24, 26, 8)  # 20 rows + 5.1 mm of shear (5.66 px) -> 26 rows
    np.testing.assert_allclose(a_aff, b_aff, atol=1e-3)

    fill = float(vol.min())
    idx = np.indices(a.shape).reshape(3, -1)
    src = np.linalg.solve(aff, a_aff @ np.r_[idx, np.ones((1, idx.shape[1]))])[:3]  # (i, j, k) in the sheared stack
    assert np.abs(src[2] - np.round(src[2])).max() < 1e-6  # output slices are the acquired slice planes
    # Voxels inside the acquired field (no extrapolation); 1e-6 px for float rounding of the positions.
    inside = np.all((src > -1e-6) & (src < (np.array(shape) - 1 + 1e-6)[:, None]), axis=0).reshape(a.shape)
    assert inside.sum() >= 24 * 19 * 8  # a fractional shift leaves at most one row of a slice's grid points outside
    truth = (200.0 + 30 * src[0] + 20 * src[1] + 5 * src[2]).reshape(a.shape)
    np.testing.assert_allclose(a[inside], truth[inside], atol=1e-3)
    both = inside & (b != fill)
    assert both.sum() > 0.8 * inside.sum()
    np.testing.assert_array_less(np.abs(a[both] - b[both]), 10.0 + 1e-3)
