"""Tests of DICOM series scanning and loading (medgen.io.dicom_series)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless

from medgen.io.dicom_series import DicomSeriesError, load_series, scan_dicom, split_series
from medgen.io.dicom_write import quantise, write_dicom_series

TEST_FILES = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
DICOMDIR_TESTS = TEST_FILES / "dicomdirtests"


def _rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def oblique_affine(spacing=(0.7, 0.9, 2.5), origin=(-40.0, 25.0, 10.0)) -> np.ndarray:
    """An oblique, anisotropic RAS affine (rotation about a skew axis)."""
    aff = np.eye(4)
    aff[:3, :3] = _rotation([1, 2, 3], 27.0) @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def ramp_volume(shape=(12, 10, 8)) -> np.ndarray:
    """Integer HU values that differ per voxel and per slice."""
    i, j, k = np.indices(shape)
    return (i * 3 + j * 7 + k * 50 - 200).astype(np.float64)


def write(tmp: Path, volume=None, affine=None, **kw) -> list[Path]:
    volume = ramp_volume() if volume is None else volume
    affine = oblique_affine() if affine is None else affine
    kw.setdefault("modality", "CT")
    kw.setdefault("series_description", "synthetic")
    kw.setdefault("series_number", 3)
    return write_dicom_series(volume, affine, tmp, **kw)


def only_series(folder: Path):
    report = scan_dicom([folder])
    assert len(report.series) == 1, [s.label for s in report.series]
    return report.series[0]


def test_slice_order_ignores_file_names_and_instance_numbers(tmp_path):
    vol, aff = ramp_volume(), oblique_affine()
    rng = np.random.default_rng(0)
    names = [f"x{n:03d}" for n in rng.permutation(vol.shape[2])]
    paths = write(tmp_path, vol, aff, file_names=names)
    wrong = rng.permutation(len(paths)) + 1
    for path, inst in zip(paths, wrong):  # our own fixture files: safe to edit
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = int(inst)
        ds.save_as(path)
    loaded = load_series(only_series(tmp_path))
    np.testing.assert_array_equal(loaded.array, vol.astype(np.float32))
    np.testing.assert_allclose(loaded.affine, aff, atol=1e-6)
    assert loaded.array.dtype == np.float32


def test_world_coordinates_agree_with_simpleitk_and_monai(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    monai_data = pytest.importorskip("monai.data")
    vol = np.full((12, 10, 8), -1000.0)
    marks = [(1, 2, 0), (10, 7, 3), (5, 9, 7), (0, 0, 5)]
    for n, idx in enumerate(marks):
        vol[idx] = 100.0 * (n + 1)
    aff = oblique_affine()
    write(tmp_path, vol, aff)
    loaded = load_series(only_series(tmp_path))
    ours = {idx: (loaded.affine @ [*idx, 1])[:3] for idx in marks}
    for n, idx in enumerate(marks):
        assert loaded.array[idx] == 100.0 * (n + 1)
        np.testing.assert_allclose(ours[idx], (aff @ [*idx, 1])[:3], atol=1e-4)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    image = reader.Execute()
    arr = sitk.GetArrayFromImage(image)  # (z, y, x)
    for n, idx in enumerate(marks):
        # SimpleITK's indices are (x, y, z) = ours; its physical points are LPS.
        lps = np.array(image.TransformIndexToPhysicalPoint([int(v) for v in idx]))
        np.testing.assert_allclose(lps * [-1, -1, 1], ours[idx], atol=1e-4)
        assert arr[idx[2], idx[1], idx[0]] == 100.0 * (n + 1)

    # MONAI's ITKReader needs the `itk` package (not installed); its PydicomReader is independent
    # of our code and of SimpleITK and reports the affine in RAS.
    reader_m = monai_data.PydicomReader(affine_lps_to_ras=True)
    data, meta = reader_m.get_data(reader_m.read(str(tmp_path)))
    monai_affine = np.asarray(meta["affine"], dtype=np.float64)
    for n, idx in enumerate(marks):
        np.testing.assert_allclose((monai_affine @ [*idx, 1])[:3], ours[idx], atol=1e-4)
        assert data[idx] == 100.0 * (n + 1)


def test_rescale_applied_per_slice(tmp_path):
    vol = ramp_volume((6, 5, 4))
    aff = np.diag([0.8, 0.8, 2.0, 1.0])
    rescales = [(1.0, -1024.0), (0.5, -100.0), (2.0, 7.0), (0.25, 0.0)]
    for k, rescale in enumerate(rescales):
        slab_aff = aff.copy()
        slab_aff[:3, 3] = aff[:3, :3] @ [0, 0, k]
        write(tmp_path, vol[:, :, k:k + 1], slab_aff, rescale=rescale, file_names=[f"s{k}"], uid_entropy=["fixed"])
    series = only_series(tmp_path)
    assert {f.slope for f in series.frames} == {1.0, 0.5, 2.0, 0.25}
    loaded = load_series(series)
    expected = np.stack([quantise(vol[:, :, k], "CT", r) * r[0] + r[1] for k, r in enumerate(rescales)], axis=2)
    assert not np.array_equal(expected, vol)  # the rounding differs per slice: rescale really is per slice
    np.testing.assert_allclose(loaded.array, expected, atol=1e-5)
    assert loaded.array.dtype == np.float32


def test_missing_slice_refused_then_resampled(tmp_path):
    vol = ramp_volume((6, 5, 10))
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    paths = write(tmp_path, vol, aff)
    paths[4].unlink()
    series = only_series(tmp_path)
    with pytest.raises(DicomSeriesError) as err:
        load_series(series)
    msg = str(err.value)
    # The series by number and a file, never by its free-text description; the fix in the user's words.
    assert "series 3 (" in msg and "synthetic" not in msg and "expected 2 mm" in msg and "4 mm" in msg
    assert "--on-uneven resample" in msg and "ingest.on_uneven: resample" in msg
    assert "9 slices found" in msg and "would have 10" in msg and "(0020,0032)" in msg
    loaded = load_series(series, on_uneven="resample")
    assert loaded.array.shape == (6, 5, 10)
    np.testing.assert_allclose(loaded.array, vol, atol=1e-4)  # the ramp is linear along z: exact
    assert loaded.corrections["resampled"] is True
    assert loaded.corrections["uneven_spacing"]["output_slices"] == 10
    assert any("resampled" in w for w in loaded.warnings)
    np.testing.assert_allclose(loaded.affine, aff, atol=1e-6)


def test_small_spacing_jitter_is_accepted(tmp_path):
    """Positions off by less than the tolerance (1 % of a step) are not a missing slice."""
    vol = ramp_volume((4, 4, 6))
    paths = write(tmp_path, vol, np.diag([1.0, 1.0, 3.0, 1.0]))
    ds = pydicom.dcmread(paths[2])
    ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [float(ds.ImagePositionPatient[2]) + 0.01]
    ds.save_as(paths[2])
    assert load_series(only_series(tmp_path)).array.shape == (4, 4, 6)


def tilted_affine(tilt_deg: float = 45.0) -> np.ndarray:
    """1 mm pixels, slices 1 mm apart along the normal, each shifted along +A by tan(tilt) mm."""
    aff = np.eye(4)
    aff[1, 2] = np.tan(np.radians(tilt_deg))
    return aff


def test_gantry_tilt_refused_then_resampled(tmp_path):
    vol = np.full((9, 12, 5), -1000.0)
    vol[4, 2, :] = 500.0  # one bright voxel per slice: on the sheared grid they form an oblique line
    write(tmp_path, vol, tilted_affine(45.0), extra={"GantryDetectorTilt": 45.0})
    series = only_series(tmp_path)
    with pytest.raises(DicomSeriesError, match=r"gantry tilt of 45\.00 deg") as err:
        load_series(series, on_tilt="refuse")
    assert "(0018,1120)" in str(err.value) and "series 3 (" in str(err.value) and "--on-tilt refuse" in str(err.value)
    loaded = load_series(series)  # resampled by default
    assert loaded.corrections["tilt_resampled"] is True
    # The grid holds the whole sheared stack: 12 rows + 4 mm of shear over the 5 slices = 16 rows,
    # and every acquired pixel lands on a grid pixel (whole-pixel shifts), so none is lost.
    assert loaded.array.shape == (9, 16, 5)
    assert np.count_nonzero(loaded.array != -1000.0) == 5 and np.count_nonzero(loaded.array == -1000.0) == 9 * 16 * 5 - 5
    assert loaded.corrections["gantry_tilt_deg"] == pytest.approx(45.0, abs=1e-3)
    rot = loaded.affine[:3, :3]
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-9)  # orthogonal, no shear left
    for k in range(5):
        world = tilted_affine(45.0) @ [4, 2, k, 1]
        idx = np.linalg.solve(loaded.affine, world)[:3]
        np.testing.assert_allclose(idx, np.round(idx), atol=1e-6)
        assert loaded.array[tuple(np.round(idx).astype(int))] == 500.0
    assert np.count_nonzero(loaded.array == 500.0) == 5


def test_gantry_tilt_with_a_missing_slice_resampled_along_the_tilted_line(tmp_path):
    """Uneven spacing is filled in along the (tilted) line of slice origins first, then the tilt is
    removed: every slice, the interpolated one too, lands where the sheared stack put it."""
    vol = np.full((9, 12, 6), -1000.0)
    vol[4, 2, :] = 500.0
    paths = write(tmp_path, vol, tilted_affine(45.0), extra={"GantryDetectorTilt": 45.0})
    paths[2].unlink()
    series = only_series(tmp_path)
    with pytest.raises(DicomSeriesError, match="uneven slice spacing"):
        load_series(series)
    loaded = load_series(series, on_uneven="resample")
    assert loaded.corrections["tilt_resampled"] and loaded.corrections["resampled"]
    assert loaded.array.shape == (9, 12 + 5, 6)
    for k in range(6):  # slice 2 is the mean of slices 1 and 3: the bright voxel stays at (4, 2) of its slice
        world = tilted_affine(45.0) @ [4, 2, k, 1]
        idx = np.round(np.linalg.solve(loaded.affine, world)[:3]).astype(int)
        np.testing.assert_allclose(loaded.affine @ [*idx, 1], world, atol=1e-6)
        assert loaded.array[tuple(idx)] == 500.0


def test_header_tilt_without_shear_only_warns(tmp_path):
    write(tmp_path, extra={"GantryDetectorTilt": 12.0})
    loaded = load_series(only_series(tmp_path))
    assert not loaded.corrections
    assert any("GantryDetectorTilt" in w for w in loaded.warnings)


def test_pydicom_tilted_series_is_a_two_plane_scout():
    """dcm2niix reports a 45 deg gantry tilt for dicomdirtests/98892001/CT2N (series 4 "Scout"):
    its two images are a sagittal and a coronal localizer 265 mm apart in x and y. medgen skips it
    as a localizer and, without the LOCALIZER flag, would split it by orientation, never stack it."""
    series = [s for s in scan_dicom([DICOMDIR_TESTS / "98892001" / "CT2N"]).series]
    assert len(series) == 1 and series[0].label == "series 4"
    assert split_series(series[0]).parts == [series[0]]  # a localizer series stays whole and is refused once
    with pytest.raises(DicomSeriesError, match="LOCALIZER"):
        load_series(series[0])
    series[0].image_type = ("ORIGINAL", "PRIMARY", "AXIAL")  # even without the LOCALIZER flag
    with pytest.raises(DicomSeriesError, match="orientations"):
        load_series(series[0])
    for frame in series[0].frames:
        object.__setattr__(frame, "image_type", ("ORIGINAL", "PRIMARY", "AXIAL"))
    parts = split_series(series[0]).parts
    assert [p.acq for p in parts] == ["sag", "cor"]  # InstanceNumber 1 is the sagittal image
    assert [load_series(p).array.shape for p in parts] == [(16, 16, 1), (16, 16, 1)]


def test_several_series_in_one_folder(tmp_path):
    study = "1.2.826.0.1.3680043.8.498.1"  # one study: series then sort by SeriesNumber
    write(tmp_path, series_number=7, series_description="second", file_names=[f"b{k}" for k in range(8)], study_uid=study)
    write(tmp_path, series_number=2, series_description="first", modality="MR", rescale=(1.0, 0.0), study_uid=study,
          volume=ramp_volume() + 300, file_names=[f"a{k}" for k in range(8)])
    report = scan_dicom([tmp_path])
    assert [s.label for s in report.series] == ["series 2", "series 7"]
    assert [s.modality for s in report.series] == ["MR", "CT"]
    assert all(len(s.files) == 8 for s in report.series)
    assert load_series(report.series[0]).array.min() == ramp_volume().min() + 300


def test_mixed_orientations_split_one_image_per_plane():
    """The two three-plane pilot series of dicomdirtests/98892003/MR2 split into axial, coronal and
    sagittal single slices, each placed where its own header says (as dcm2niix does)."""
    report = scan_dicom([DICOMDIR_TESTS / "98892003" / "MR2"])
    pilots = [s for s in report.series if "PILOT" in s.description]
    assert len(pilots) == 2
    for s in pilots:
        with pytest.raises(DicomSeriesError, match=r"mixes 3 slice orientations .*\(0020,0037\)"):
            load_series(s)  # never stacked
        split = split_series(s)
        assert sorted(p.acq for p in split.parts) == ["axi", "cor", "sag"]
        assert "3 slice orientations" in split.notes[0] and "single-slice" in split.notes[0]
        for part in split.parts:
            ds = pydicom.dcmread(part.files[0])
            loaded = load_series(part)
            assert loaded.array.shape == (16, 16, 1)
            np.testing.assert_array_equal(loaded.array[:, :, 0].T, ds.pixel_array)
            iop = np.array(ds.ImageOrientationPatient, dtype=float)
            ras = np.diag([-1.0, -1.0, 1.0])
            # First pixel at ImagePositionPatient, axes along ImageOrientationPatient (RAS = LPS with x, y negated).
            np.testing.assert_allclose(loaded.affine[:3, 3], ras @ np.array(ds.ImagePositionPatient, float), atol=1e-4)
            np.testing.assert_allclose(loaded.affine[:3, 0], ras @ iop[:3] * float(ds.PixelSpacing[1]), atol=1e-6)
            np.testing.assert_allclose(loaded.affine[:3, 1], ras @ iop[3:] * float(ds.PixelSpacing[0]), atol=1e-6)
            # Third voxel size: SliceThickness (10 mm here).
            assert np.linalg.norm(loaded.affine[:3, 2]) == pytest.approx(float(ds.SliceThickness))
            assert loaded.info["slice_step_source"] == "SliceThickness (0018,0050)"


def test_localizer_and_too_few_slices(tmp_path):
    write(tmp_path / "loc", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    with pytest.raises(DicomSeriesError, match="localizer"):
        load_series(only_series(tmp_path / "loc"))
    write(tmp_path / "two", volume=ramp_volume((5, 5, 2)))
    assert load_series(only_series(tmp_path / "two")).array.shape == (5, 5, 2)  # two slices convert by default
    with pytest.raises(DicomSeriesError, match=r"2 slice\(s\), fewer than the 3 asked for \(--min-slices 3"):
        load_series(only_series(tmp_path / "two"), min_slices=3)


def _enhanced_from_emri(path: Path, slopes: list[float], reverse: bool) -> tuple[np.ndarray, np.ndarray]:
    """emri_small with enhanced functional groups added; returns expected (X, Y, Z) values and RAS affine."""
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    n = int(ds.NumberOfFrames)
    row, col = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])  # sagittal, LPS
    normal = np.cross(row, col)
    spacing = (1.1, 0.9)  # between rows, between columns
    origin = np.array([-20.0, -30.0, 40.0])
    step = 1.2
    shared = pydicom.Dataset()
    meas, ori = pydicom.Dataset(), pydicom.Dataset()
    meas.PixelSpacing = list(spacing)
    meas.SliceThickness = step
    ori.ImageOrientationPatient = [*row, *col]
    shared.PixelMeasuresSequence = [meas]
    shared.PlaneOrientationSequence = [ori]
    ds.SharedFunctionalGroupsSequence = [shared]
    slice_of_frame = list(range(n))[::-1] if reverse else list(range(n))
    per_frame = []
    for f in range(n):
        item, pos, pvt = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
        pos.ImagePositionPatient = [float(v) for v in origin + slice_of_frame[f] * step * normal]
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slopes[f], -5.0, "US"
        item.PlanePositionSequence = [pos]
        item.PixelValueTransformationSequence = [pvt]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.save_as(path)
    stored = ds.pixel_array.astype(np.float64)  # (frames, rows, cols)
    physical = stored * np.array(slopes)[:, None, None] - 5.0
    by_slice = np.empty_like(physical)
    by_slice[slice_of_frame] = physical
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * spacing[1], col * spacing[0], normal * step, origin
    return by_slice.transpose(2, 1, 0), np.diag([-1.0, -1, 1, 1]) @ lps


def test_enhanced_multiframe(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(get_testdata_file("emri_small.dcm"), plain / "emri_small.dcm")
    series = only_series(plain)
    assert series.multiframe and len(series.frames) == 10 and len(series.files) == 1
    # The pydicom-data file carries no functional groups at all: no geometry, refused by name.
    with pytest.raises(DicomSeriesError, match=r"PlanePositionSequence \(0020,9113\)"):
        load_series(series)

    (tmp_path / "mf").mkdir()
    slopes = [1.0 + 0.25 * f for f in range(10)]
    expected, affine = _enhanced_from_emri(tmp_path / "mf" / "enh.dcm", slopes, reverse=True)
    loaded = load_series(only_series(tmp_path / "mf"))
    np.testing.assert_allclose(loaded.array, expected, atol=1e-4)
    np.testing.assert_allclose(loaded.affine, affine, atol=1e-6)


def _copy_test_file(name: str, dest: Path) -> Path:
    src = Path(get_testdata_file(name)) if name != "DICOMDIR" else DICOMDIR_TESTS / "DICOMDIR"
    return Path(shutil.copy(src, dest / Path(name).stem))  # no extension on purpose


def test_non_image_and_broken_files_do_not_stop_the_rest(tmp_path):
    write(tmp_path / "good" / "deep" / "er")
    mixed = tmp_path / "good"
    for name in ("test-SR.dcm", "rtplan.dcm", "rtstruct.dcm", "waveform_ecg.dcm", "DICOMDIR"):
        _copy_test_file(name, mixed)
    for name in ("MR_truncated.dcm", "rtplan_truncated.dcm"):
        _copy_test_file(name, mixed)
    (mixed / "notes.txt").write_text("not DICOM\n")
    (mixed / "empty").write_bytes(b"")
    report = scan_dicom([mixed])
    skipped = {p.name: why for p, why in report.skipped}
    failed = {p.name: why for p, why in report.failed}
    assert set(skipped) == {"test-SR", "rtplan", "rtstruct", "waveform_ecg", "DICOMDIR"}
    assert "structured report" in skipped["test-SR"] and "waveform" in skipped["waveform_ecg"]
    assert "DICOMDIR" in skipped["DICOMDIR"] and "RT Plan" in skipped["rtplan"]
    assert set(failed) == {"MR_truncated", "rtplan_truncated", "notes.txt", "empty"}
    assert "truncated" in failed["MR_truncated"] and "(7FE0,0010)" in failed["MR_truncated"]
    assert "truncated" in failed["rtplan_truncated"]
    assert failed["empty"] == "empty file" and "not a DICOM file" in failed["notes.txt"]
    assert len(report.series) == 1
    assert load_series(report.series[0]).array.shape == ramp_volume().shape


def _checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_input_files_are_never_modified(tmp_path):
    shutil.copytree(DICOMDIR_TESTS, tmp_path / "in")
    write(tmp_path / "in" / "synthetic")
    before = _checksums(tmp_path / "in")
    report = scan_dicom([tmp_path / "in"])
    for s in report.series:
        for kw in ({}, {"on_tilt": "resample", "on_uneven": "resample", "min_slices": 1}):
            try:
                load_series(s, **kw)
            except DicomSeriesError:
                pass
    assert _checksums(tmp_path / "in") == before


def test_rle_compressed_matches_uncompressed(tmp_path):
    paths = write(tmp_path / "plain", volume=ramp_volume((8, 6, 4)))
    (tmp_path / "rle").mkdir()
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless)
        ds.save_as(tmp_path / "rle" / p.name)
    plain = load_series(only_series(tmp_path / "plain"))
    rle = load_series(only_series(tmp_path / "rle"))
    np.testing.assert_array_equal(plain.array, rle.array)
    np.testing.assert_array_equal(plain.affine, rle.affine)


def test_undecodable_transfer_syntax_is_named(tmp_path):
    paths = write(tmp_path, volume=ramp_volume((8, 6, 3)))
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder for it
        ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
        ds["PixelData"].VR = "OB"
        ds.save_as(p, enforce_file_format=True)
    series = only_series(tmp_path)
    with pytest.raises(DicomSeriesError, match=r"MPEG2.*1\.2\.840\.10008\.1\.2\.4\.100"):
        load_series(series)


def test_raw_reader_matches_pydicom_for_12_bit_signed(tmp_path):
    vol = ramp_volume((6, 5, 3))
    paths = write(tmp_path, vol)
    for p in paths:  # 12 stored bits with junk in the top nibble of positive values
        ds = pydicom.dcmread(p)
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = (ds.pixel_array | np.int16(0x4000)).astype("<i2").tobytes()
        ds.save_as(p)
    loaded = load_series(only_series(tmp_path))
    expected = np.stack([pydicom.dcmread(p).pixel_array.T for p in paths], axis=2) - 1024.0
    np.testing.assert_array_equal(expected, vol)  # pydicom ignores the junk bits
    np.testing.assert_array_equal(loaded.array, expected)


def test_hidden_files_in_a_folder_are_not_candidates(tmp_path):
    from medgen.io.dicom_scan import _iter_files

    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "IM1").write_bytes(b"x")
    (tmp_path / "series" / ".snakemake_timestamp").write_bytes(b"")
    (tmp_path / "series" / ".cache").mkdir()
    (tmp_path / "series" / ".cache" / "IM2").write_bytes(b"x")
    assert [p.name for p in _iter_files([tmp_path / "series"])] == ["IM1"]
    assert [p.name for p in _iter_files([tmp_path / "series" / ".snakemake_timestamp"])] == [".snakemake_timestamp"]
