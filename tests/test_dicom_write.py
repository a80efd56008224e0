"""write_dicom_series produces DICOM that independent readers (GDCM via SimpleITK, dcm2niix) place exactly."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medgen.io.dicom_write import LPS_FROM_RAS, PatientIdentity, quantise, write_dicom_series

SPACING = (0.8, 0.9, 2.5)
SHAPE = (24, 20, 9)
#: Marked voxels (i, j, k) get unique values so their world position can be found after reading.
MARKS = [(0, 0, 0), (23, 0, 0), (0, 19, 0), (5, 7, 8), (23, 19, 8), (11, 3, 4)]


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def oblique_affine() -> np.ndarray:
    """20 degrees about x then 20 degrees about z, anisotropic 0.8 x 0.9 x 2.5 mm, off-centre origin."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation(2, 20) @ _rotation(0, 20) @ np.diag(SPACING)
    affine[:3, 3] = [-12.3, 45.6, -7.8]
    return affine


def ct_volume() -> np.ndarray:
    vol = np.random.default_rng(42).integers(-1000, 2000, SHAPE).astype(np.float32)
    for n, idx in enumerate(MARKS):
        vol[idx] = 3000 + n
    return vol


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray, list[Path]]:
    out = tmp_path_factory.mktemp("ct")
    vol, affine = ct_volume(), oblique_affine()
    paths = write_dicom_series(
        vol, affine, out, modality="CT", series_description="CT head", series_number=3,
        extra={"KVP": 120}, uid_entropy=["test", "subject"],
    )
    return out, vol, affine, paths


def _read_sitk(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    assert len(names) == SHAPE[2]
    reader.SetFileNames(names)
    return reader.Execute()


def _sitk_affine_ras(img: sitk.Image) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    affine[:3, 3] = img.GetOrigin()
    return LPS_FROM_RAS @ affine  # ITK physical space is LPS


def test_files_are_real_dicom_with_identity(ct_series) -> None:
    out, vol, affine, paths = ct_series
    assert [p.name for p in paths] == [f"IM{k:05d}" for k in range(1, SHAPE[2] + 1)]
    sop_uids = set()
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)  # raises on a file without preamble/meta
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert ds.InstanceNumber == k + 1
        assert ds.PixelRepresentation == 1 and ds.Rows == SHAPE[1] and ds.Columns == SHAPE[0]
        sop_uids.add(ds.SOPInstanceUID)
        # byte-identical to what pydicom's own writer makes of the same data set (tag order, meta group)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        assert buffer.getvalue() == path.read_bytes()
        # pixel[r, c] = volume[c, r, k] after rescale
        values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(values, vol[:, :, k].T)
    assert len(sop_uids) == SHAPE[2]
    ident = PatientIdentity()
    assert str(ds.PatientName) == ident.name and ds.PatientID == ident.patient_id
    assert ds.PatientBirthDate == ident.birth_date and ds.PatientSex == ident.sex
    assert ds.InstitutionName == ident.institution and ds.AccessionNumber == ident.accession
    assert str(ds.ReferringPhysicianName) == ident.referring_physician
    for key in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        assert ds[key].value == ident.study_date
    assert ds.StudyTime and ds.BurnedInAnnotation == "NO" and ds.Manufacturer == "medgen phantom"
    assert ds.Modality == "CT" and ds.SeriesNumber == 3 and ds.SeriesDescription == "CT head"
    assert float(ds.KVP) == 120
    assert float(ds.SliceThickness) == pytest.approx(2.5) and float(ds.SpacingBetweenSlices) == pytest.approx(2.5)
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.9, 0.8])


def test_simpleitk_reads_exact_values_and_positions(ct_series) -> None:
    out, vol, affine, _ = ct_series
    img = _read_sitk(out)
    # GDCM may order slices its own way; the affine it reports must still be ours.
    np.testing.assert_allclose(_sitk_affine_ras(img), affine, atol=1e-6)
    array = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # ITK arrays are (z, y, x)
    np.testing.assert_array_equal(array, vol)
    for n, idx in enumerate(MARKS):
        found = tuple(int(v) for v in np.argwhere(array == 3000 + n)[0])
        world_lps = np.array(img.TransformIndexToPhysicalPoint(found))
        expected_lps = (LPS_FROM_RAS @ affine @ np.array([*idx, 1.0]))[:3]
        np.testing.assert_allclose(world_lps, expected_lps, atol=1e-4)


def _dcm2niix() -> str:
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    if not Path(exe).exists():
        pytest.skip("dcm2niix not installed")
    subprocess.run([exe, "-h"], check=True, capture_output=True)  # "-v" exits 3 by design
    return exe


def test_dcm2niix_agrees(ct_series, tmp_path: Path) -> None:
    out, vol, affine, _ = ct_series
    subprocess.run([_dcm2niix(), "-z", "n", "-b", "n", "-f", "out", "-o", str(tmp_path), str(out)], check=True,
                   capture_output=True)
    converted = nib.as_closest_canonical(nib.load(tmp_path / "out.nii"))
    reference = nib.as_closest_canonical(nib.Nifti1Image(vol, affine))
    np.testing.assert_array_equal(np.asarray(converted.dataobj, dtype=np.float64), reference.get_fdata())
    np.testing.assert_allclose(converted.affine, reference.affine, atol=1e-3)


def test_mr_is_unsigned_and_honours_names_and_rescale(tmp_path: Path) -> None:
    vol = np.random.default_rng(1).uniform(0, 100, SHAPE).round(1)
    names = [f"x{k}" for k in range(SHAPE[2])][::-1]
    paths = write_dicom_series(
        vol, oblique_affine(), tmp_path, modality="MR", series_description="T1w SE", series_number=1,
        file_names=names, rescale=(0.1, 0.0), extra={"RepetitionTime": 500, "EchoTime": 15},
    )
    assert [p.name for p in paths] == names
    ds = pydicom.dcmread(paths[4])
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage and ds.PixelRepresentation == 0
    assert float(ds.RepetitionTime) == 500 and float(ds.EchoTime) == 15
    array = sitk.GetArrayFromImage(_read_sitk(tmp_path)).transpose(2, 1, 0)
    # slope 0.1 keeps one decimal; float error of the stored slope is far below 1e-6
    np.testing.assert_allclose(array, vol, atol=1e-6)


def test_refuses_overwrite_and_unrepresentable_values(ct_series, tmp_path: Path) -> None:
    out, vol, affine, _ = ct_series
    with pytest.raises(FileExistsError):
        write_dicom_series(vol, affine, out, modality="CT", series_description="again", series_number=4)
    with pytest.raises(ValueError, match="too big"):
        write_dicom_series(np.full(SHAPE, 40000.0), affine, tmp_path, modality="CT", series_description="too big",
                           series_number=5)
    with pytest.raises(ValueError, match="negative MR"):
        write_dicom_series(np.full(SHAPE, -1.0), affine, tmp_path, modality="MR", series_description="negative MR",
                           series_number=6)
    with pytest.raises(ValueError, match="non-finite"):
        quantise(np.array([np.nan]), "MR")
    assert not any(tmp_path.iterdir())  # nothing half-written after a refusal


def test_uids_are_deterministic_with_entropy(tmp_path: Path) -> None:
    vol, affine = ct_volume(), oblique_affine()
    kwargs = dict(modality="CT", series_description="CT head", series_number=3, uid_entropy=["test", "subject"])
    a = write_dicom_series(vol, affine, tmp_path / "a", **kwargs)
    b = write_dicom_series(vol, affine, tmp_path / "b", **kwargs)
    c = write_dicom_series(vol, affine, tmp_path / "c", **{**kwargs, "uid_entropy": ["other"]})
    uid = lambda p: (pydicom.dcmread(p).SOPInstanceUID, pydicom.dcmread(p).SeriesInstanceUID)  # noqa: E731
    assert [uid(p) for p in a] == [uid(p) for p in b]
    assert not set(uid(a[0])) & set(uid(c[0]))
