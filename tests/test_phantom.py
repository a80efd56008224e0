"""The phantom cohort: determinism, anatomy and tissue values, and NIfTI == DICOM on the same grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from medgen.data.phantom import SEQUENCES, generate_cohort, make_subject, output_grid
from medgen.data.tissues import LABELS
from medgen.io.dicom_write import LPS_FROM_RAS

SEED = 7
COARSE_MM = 4.0  # cohort written to disk: fewer slices keep DICOM checks fast
NIFTI_NAMES = ("T1w", "T2w", "CT")
BONE = (3, 4, 5)
SHELLS_OUTWARD = (6, 5, 4, 3, 2, 1)  # CSF, inner table, diploe, outer table, fat, skin


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    assert generate_cohort(out, 3, SEED, spacing_mm=COARSE_MM) == ["sub-001", "sub-002", "sub-003"]
    return out


@pytest.fixture(scope="module")
def subject():
    """One subject at the default 2 mm, in memory."""
    return make_subject(np.random.SeedSequence(SEED).spawn(2)[1], 1, 2.0)


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


# -- determinism ------------------------------------------------------------------------------


def test_same_seed_same_subject_other_seed_differs(subject) -> None:
    again = make_subject(np.random.SeedSequence(SEED).spawn(2)[1], 1, 2.0)
    for name in NIFTI_NAMES:
        np.testing.assert_array_equal(again.images[name], subject.images[name])
    np.testing.assert_array_equal(again.labels, subject.labels)
    assert again.params == subject.params and again.identity == subject.identity
    other = make_subject(np.random.SeedSequence(SEED + 1).spawn(2)[1], 1, 2.0)
    assert not np.array_equal(other.labels, subject.labels)
    assert not np.array_equal(other.images["T1w"], subject.images["T1w"])
    assert other.identity != subject.identity


def test_only_gives_the_same_subject_and_reruns_replace(cohort: Path, tmp_path: Path) -> None:
    for _ in range(2):  # the second run replaces the first without complaint
        assert generate_cohort(tmp_path, 3, SEED, spacing_mm=COARSE_MM, only=["sub-003"]) == ["sub-003"]
    assert sorted(p.name for p in (tmp_path / "nifti").iterdir()) == ["sub-003"]
    for name in (*NIFTI_NAMES, "labels"):
        a, aff_a = _load(cohort / "nifti" / "sub-003" / f"{name}.nii.gz")
        b, aff_b = _load(tmp_path / "nifti" / "sub-003" / f"{name}.nii.gz")
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(aff_a, aff_b)
    full, alone = cohort / "dicom" / "sub-003", tmp_path / "dicom" / "sub-003"
    names = sorted(p.name for p in full.iterdir())
    assert names == sorted(p.name for p in alone.iterdir())
    assert all((full / n).read_bytes() == (alone / n).read_bytes() for n in names)  # UIDs too
    with pytest.raises(ValueError, match="sub-004"):
        generate_cohort(tmp_path, 3, SEED, spacing_mm=COARSE_MM, only=["sub-004"])


def test_subjects_differ(cohort: Path) -> None:
    a, _ = _load(cohort / "nifti" / "sub-001" / "labels.nii.gz")
    b, _ = _load(cohort / "nifti" / "sub-002" / "labels.nii.gz")
    assert (a != b).mean() > 0.01


# -- anatomy and values -----------------------------------------------------------------------


def test_label_set_and_partial_volume_free_values(subject) -> None:
    labels, images = subject.labels, subject.images
    present = set(np.unique(labels).tolist())
    assert set(range(9)) <= present <= set(LABELS)
    assert (9 in present) == bool(subject.params["lesions"])
    # Eroded masks keep voxels away from tissue borders, so partial volume and the PSF do not
    # move the medians; 2000+ voxels make the median's noise (sigma <= 12 HU) well under 1 HU.
    core = {lab: ndi.binary_erosion(labels == lab) for lab in (0, 7, 8)}
    wm_ct = np.median(images["CT"][core[8]])
    assert abs(wm_ct - 30) < 3, wm_ct
    assert abs(np.median(images["CT"][core[0]]) + 1000) < 1
    bone_ct = np.median(images["CT"][np.isin(labels, BONE)])
    assert bone_ct > 700, bone_ct
    t1 = {lab: np.median(images["T1w"][labels == lab]) for lab in (6, 7, 8)}
    assert t1[8] > t1[7] > t1[6], t1  # T1w: WM > GM > CSF
    t2 = {lab: np.median(images["T2w"][labels == lab]) for lab in range(9)}
    assert max(t2, key=t2.get) == 6, t2  # T2w: CSF brightest of all tissues
    for name in NIFTI_NAMES:  # stored as integers, exactly like the DICOM
        assert np.array_equal(images[name], np.round(images[name]))
    assert images["T1w"].min() >= 0 and images["T2w"].max() < 4000


def test_shells_surround_the_brain(subject) -> None:
    labels, ct = subject.labels, subject.images["CT"]
    centre = np.round(np.argwhere(np.isin(labels, (7, 8))).mean(axis=0)).astype(int)
    for axis in range(3):
        for direction in (1, -1):
            index = [slice(c, c + 1) for c in centre]
            index[axis] = slice(centre[axis], None) if direction == 1 else slice(centre[axis], None, -1)
            ray, ray_ct = labels[tuple(index)].ravel(), ct[tuple(index)].ravel()
            where = lambda labs: np.flatnonzero(np.isin(ray, labs))  # noqa: E731
            last_brain, bone, skin, air = where((7, 8)).max(), where(BONE), where((1,)), where((0,))
            assert bone.size and skin.size, (axis, direction, ray)
            # brain, then skull, then scalp, then air all the way to the border
            assert last_brain < bone.min() and bone.max() < skin.max() < air.min(), (axis, direction, ray)
            assert np.all(ray[air.min():] == 0) and ray_ct[bone].max() > 700
            # between brain and air the shells come in order (a thin one may vanish in the labels)
            rank = [SHELLS_OUTWARD.index(lab) for lab in ray[last_brain + 1:air.min()]]
            assert rank == sorted(rank), (axis, direction, ray)
    borders = [np.take(labels, i, axis=a) for a in range(3) for i in (0, -1)]
    assert all(np.all(b == 0) for b in borders)  # the padding leaves room for the whole head


def test_parameters_vary_and_are_recorded(subject) -> None:
    p = subject.params
    assert set(p["sequences"]) == set(SEQUENCES) and p["sequences"]["T1w"]["tr_ms"] == 500
    thick = p["shell_base_thickness_mm"]
    assert set(thick) == {"csf", "bone_inner_table", "diploe", "bone_outer_table", "fat", "skin_muscle"}
    for lesion in p["lesions"]:
        assert {"centre_mm", "semi_axes_mm", "t1_ms", "t2_ms", "pd", "hu"} <= set(lesion)
    json.dumps(p)  # JSON-ready


# -- files and DICOM --------------------------------------------------------------------------


def test_nifti_files_and_sidecar(cohort: Path) -> None:
    shape, affine = output_grid(COARSE_MM)
    folder = cohort / "nifti" / "sub-002"
    for name in NIFTI_NAMES:
        img = nib.load(folder / f"{name}.nii.gz")
        assert img.shape == shape and img.get_data_dtype() == np.float32
        np.testing.assert_allclose(img.affine, affine)
    assert nib.load(folder / "labels.nii.gz").get_data_dtype() == np.uint8
    sidecar = (folder / "phantom.json").read_text()
    ds = pydicom.dcmread(next((cohort / "dicom" / "sub-002").iterdir()))
    for value in (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.InstitutionName, ds.AccessionNumber):
        assert value not in sidecar


def _sitk_affine_ras(img: sitk.Image) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    affine[:3, 3] = img.GetOrigin()
    return LPS_FROM_RAS @ affine


def test_dicom_series_read_back_equal_nifti(cohort: Path) -> None:
    folder = cohort / "dicom" / "sub-001"
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    assert len(series) == 3
    by_description = {"T1w SE": "T1w", "T2w SE": "T2w", "CT head": "CT"}
    seen = set()
    for uid in series:
        files = reader.GetGDCMSeriesFileNames(str(folder), uid)
        first = pydicom.dcmread(files[0])
        name = by_description[first.SeriesDescription]
        seen.add(name)
        assert first.Modality == ("CT" if name == "CT" else "MR")
        if name != "CT":
            assert float(first.RepetitionTime) == SEQUENCES[name]["tr_ms"]
            assert float(first.EchoTime) == SEQUENCES[name]["te_ms"]
            assert float(first.MagneticFieldStrength) == 3
        else:
            assert float(first.KVP) > 0
        reader.SetFileNames(files)
        img = reader.Execute()
        array, affine = _load(cohort / "nifti" / "sub-001" / f"{name}.nii.gz")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img).transpose(2, 1, 0), array)
        np.testing.assert_allclose(_sitk_affine_ras(img), affine, atol=1e-4)
    assert seen == set(NIFTI_NAMES)


def test_dicom_names_shuffled_and_identities_differ(cohort: Path) -> None:
    identities = []
    for sub in ("sub-001", "sub-002"):
        files = sorted((cohort / "dicom" / sub).iterdir())
        assert all(p.suffix == "" for p in files)
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
        order = [(int(h.SeriesNumber), int(h.InstanceNumber)) for h in headers]
        assert order != sorted(order)  # name order is neither series nor slice order
        assert len({h.SeriesNumber for h in headers[:10]}) > 1  # the series are interleaved
        assert len({h.StudyInstanceUID for h in headers}) == 1
        assert len({h.SOPInstanceUID for h in headers}) == len(headers)
        identities.append((str(headers[0].PatientName), headers[0].PatientID, headers[0].AccessionNumber))
    assert identities[0][1:] != identities[1][1:] and all(identities[0])
