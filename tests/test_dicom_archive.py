"""What real archives hold: projection radiographs, single slices, mixed-orientation series,
broken rescale and constant images (medgen.io.dicom_series through medgen.io.ingest)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from medgen.cli import main
from medgen.io import dicom_write
from medgen.io.dicom_series import load_series, plane_of, scan_dicom, split_series
from medgen.io.ingest import IngestOptions, ingest

DICOMDIR_TESTS = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
UID_ROOT = "1.2.826.0.1.3680043.8.498."


def checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def write_projection(path: Path, pixels: np.ndarray, *, series: str, number: int = 1, instance: int = 1, modality: str = "DX",
                     photometric: str = "MONOCHROME2", pixel_spacing=None, imager_spacing=None, window=None,
                     rescale=None, patient: str = "P1") -> Path:
    """A single-frame 2D image without patient geometry (no ImagePositionPatient/Orientation), 12 bits stored."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = f"{series}.{instance}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX_STORAGE, f"{series}.{instance}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = UID_ROOT + "7", series
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.PatientID = modality, number, instance, patient
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_spacing)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def radiograph(seed: int, shape=(40, 36)) -> np.ndarray:
    """A bright ellipse on a dark background with noise: stored values in 12 bits."""
    rng = np.random.default_rng(seed)
    r, c = np.indices(shape)
    inside = ((r - shape[0] / 2) / (shape[0] / 3)) ** 2 + ((c - shape[1] / 2) / (shape[1] / 3.5)) ** 2 < 1
    return (200 + 2500 * inside + rng.integers(0, 100, size=shape)).astype(np.uint16)


# ------------------------------------------------------------------------------------------------
# The whole dicomdirtests tree


def test_dicomdirtests_tree_converts_every_real_image_series(tmp_path):
    """Every real image series of pydicom's dicomdirtests tree converts; every file left out is named.

    The tree holds, per folder: CR1-CR3 one CR radiograph each; CT5N a 5-slice CT; MR1 three
    single-slice MR series; MR2 one single-slice MR series and two 3-plane pilot series (split
    into axial, coronal and sagittal slices); MR700 a radial series of 7 projections, one per
    orientation (7 single slices). Left out, with the reason: CT2 (4 slices of a brain CT with a
    202.5 mm gap: refused until --on-uneven resample), CT2N (a localizer), DICOMDIR files,
    READMEs and the TINY_ALPHA file set (CT headers without pixel data).
    """
    before = checksums(DICOMDIR_TESTS)
    summary = ingest([DICOMDIR_TESTS], tmp_path / "out")
    assert checksums(DICOMDIR_TESTS) == before  # inputs never written to

    folder_of = {c["what"]: c["what"].split(" series ")[0].removeprefix("dicomdirtests/") for c in summary.converted}
    converted = sorted((folder_of[c["what"]], c["name"]) for c in summary.converted)
    assert converted == sorted([
        ("77654033/CR1", "CR"), ("77654033/CR2", "CR_run-2"), ("77654033/CR3", "CR_run-3"),
        ("98892001/CT5N", "CT"),
        ("98892003/MR1", "MR"), ("98892003/MR1", "MR_run-2"), ("98892003/MR1", "MR_run-3"), ("98892003/MR2", "MR_run-4"),
        ("98892003/MR2", "MR_acq-cor"), ("98892003/MR2", "MR_acq-sag"), ("98892003/MR2", "MR_acq-axi"),
        ("98892003/MR2", "MR_acq-cor_run-2"), ("98892003/MR2", "MR_acq-sag_run-2"), ("98892003/MR2", "MR_acq-axi_run-2"),
        ("98892003/MR700", "MR_acq-cor_run-3"), ("98892003/MR700", "MR_acq-cor_run-4"), ("98892003/MR700", "MR_acq-cor_run-5"),
        ("98892003/MR700", "MR_acq-sag_run-3"), ("98892003/MR700", "MR_acq-sag_run-4"), ("98892003/MR700", "MR_acq-sag_run-5"),
        ("98892003/MR700", "MR_acq-sag_run-6"),
    ]), summary.render()
    for item in summary.converted:  # written, one slice unless a volume
        img = nib.load(item["output"])
        assert img.shape == tuple(item["shape"])
        assert img.shape[2] == (5 if item["name"] == "CT" else 1)
    cr = [c for c in summary.converted if c["name"].startswith("CR")]
    for item in cr:
        side = json.loads(Path(item["sidecar"]).read_text())
        assert side["conversion"]["pixel_spacing_source"] == "ImagerPixelSpacing (0018,1164)"
        assert side["conversion"]["photometric"]["source"] == "MONOCHROME1"
        assert item["spacing"][:2] == pytest.approx([0.1, 0.1])
    radial_item = next(c for c in summary.converted if c["name"] == "MR_acq-sag_run-6")
    radial = json.loads(Path(radial_item["sidecar"]).read_text())
    assert radial["conversion"]["acq"] == "sag" and radial["conversion"]["part"] == "orientation 7 of 7, acq-sag"
    split_notes = [n for c in summary.converted for n in c["notes"] if "slice orientations" in n]
    assert len(split_notes) == 3 and any("7 slice orientations" in n for n in split_notes)

    # Every file of the tree is converted or named (itself, or as its refused series' folder and number).
    named = {what: reason for what, reason in summary.skipped + summary.failed}
    refused_series = {"dicomdirtests/77654033/CT2 series 2 (CT)": ("ImagePositionPatient (0020,0032)", "--on-uneven resample"),
                      "dicomdirtests/98892001/CT2N series 4 (CT)": ("ImageType (0008,0008)", "LOCALIZER")}
    for what, needles in refused_series.items():
        assert all(n in named[what] for n in needles), named[what]
    converted_folders = {folder_of[c["what"]] for c in summary.converted}
    refused_folders = {w.split(" series ")[0].removeprefix("dicomdirtests/") for w in refused_series}
    for path in sorted(p for p in DICOMDIR_TESTS.rglob("*") if p.is_file()):
        rel = str(path.relative_to(DICOMDIR_TESTS))
        folder = str(path.parent.relative_to(DICOMDIR_TESTS))
        assert folder in converted_folders | refused_folders or f"dicomdirtests/{rel}" in named, rel
    assert len(summary.skipped) + len(summary.failed) == 8 + 2 + 2 + 50  # DICOMDIRs, 2 series, READMEs, TINY_ALPHA images
    assert summary.exit_code == 0
    # What the summary prints names series by number, never by their descriptions.
    assert "Cervical" not in summary.render() and "PILOT" not in summary.render()


def test_uneven_series_of_the_tree_converts_when_asked():
    (series,) = [s for s in scan_dicom([DICOMDIR_TESTS / "77654033" / "CT2"]).series]
    loaded = load_series(series, on_uneven="resample")
    assert loaded.corrections["resampled"] and loaded.array.shape[2] == 165


# ------------------------------------------------------------------------------------------------
# Projection radiography


def test_pydicom_cr_radiograph_spacing_inversion_and_window():
    """CR1/6154: 12-bit MONOCHROME1, RescaleSlope 0.684, intercept 200, ImagerPixelSpacing 0.1 mm."""
    path = DICOMDIR_TESTS / "77654033" / "CR1" / "6154"
    ds = pydicom.dcmread(path)
    (series,) = scan_dicom([path]).series
    loaded = load_series(series)
    assert loaded.array.shape == (16, 16, 1)  # (columns, rows, one slice)
    # The expressible range of 12 stored bits through the rescale is [200, 4095 * 0.684 + 200];
    # MONOCHROME1 -> MONOCHROME2 mirrors each value in it. float32 rounding of values ~3000: 1e-3.
    lo, hi = 200.0, 4095 * 0.684 + 200.0
    physical = ds.pixel_array.astype(np.float64) * 0.684 + 200.0
    np.testing.assert_allclose(loaded.array[:, :, 0].T, lo + hi - physical, atol=1e-3)
    np.testing.assert_allclose(np.sqrt((loaded.affine[:3, :3] ** 2).sum(axis=0)), [0.1, 0.1, 1.0])
    info = loaded.info
    assert info["pixel_spacing_source"] == "ImagerPixelSpacing (0018,1164)"
    assert info["photometric"] == {"source": "MONOCHROME1", "written_as": "MONOCHROME2", "inverted": True,
                                   "rule": "value = lo + hi - original", "lo": lo, "hi": pytest.approx(hi)}
    # The VOI window moves with the inversion (centre 1600 -> lo + hi - 1600), width unchanged.
    assert info["voi_window"]["center"] == [pytest.approx(lo + hi - 1600.0)] and info["voi_window"]["width"] == [2800.0]


def test_written_dx_images_spacing_source_split_and_refusal(tmp_path):
    uid = UID_ROOT + "100"
    # PixelSpacing (calibrated) wins over ImagerPixelSpacing; MONOCHROME2 stays as it is.
    a = write_projection(tmp_path / "dx" / "a", radiograph(0), series=uid + "1", pixel_spacing=(0.15, 0.2),
                         imager_spacing=(0.3, 0.3), window=(1500, 3000))
    # Only ImagerPixelSpacing; two images in one series: one output each.
    write_projection(tmp_path / "dx" / "b1", radiograph(1), series=uid + "2", number=2, instance=2, imager_spacing=(0.25, 0.25))
    write_projection(tmp_path / "dx" / "b2", radiograph(2), series=uid + "2", number=2, instance=1, imager_spacing=(0.25, 0.25))
    # No pixel size at all: refused, naming both tags and the file.
    write_projection(tmp_path / "dx" / "c", radiograph(3), series=uid + "3", number=3)
    before = checksums(tmp_path / "dx")
    summary = ingest([tmp_path / "dx"], tmp_path / "out", subject="sub-01")
    assert checksums(tmp_path / "dx") == before
    by_name = {c["name"]: c for c in summary.converted}
    assert sorted(by_name) == ["DX", "DX_run-2", "DX_run-3"], summary.render()
    first = json.loads(Path(by_name["DX"]["sidecar"]).read_text())
    assert first["conversion"]["pixel_spacing_source"] == "PixelSpacing (0028,0030)"
    assert "photometric" not in first["conversion"]
    assert first["conversion"]["voi_window"]["center"] == [1500.0]
    assert by_name["DX"]["spacing"] == pytest.approx([0.2, 0.15, 1.0])  # (column spacing, row spacing, nominal)
    np.testing.assert_array_equal(np.asarray(nib.load(by_name["DX"]["output"]).dataobj)[:, :, 0].T, radiograph(0))
    second = json.loads(Path(by_name["DX_run-2"]["sidecar"]).read_text())
    assert second["conversion"]["pixel_spacing_source"] == "ImagerPixelSpacing (0018,1164)"
    # The two images of series 2 come in InstanceNumber order: b2 (instance 1) first.
    np.testing.assert_array_equal(np.asarray(nib.load(by_name["DX_run-2"]["output"]).dataobj)[:, :, 0].T, radiograph(2))
    ((what, reason),) = summary.skipped
    assert "series 3" in what and "sub-01/c" in reason and "PixelSpacing (0028,0030)" in reason and "ImagerPixelSpacing (0018,1164)" in reason
    assert a.exists()


# ------------------------------------------------------------------------------------------------
# Orientation splits


def test_plane_names_follow_the_dominant_normal_axis():
    assert plane_of([1, 0, 0, 0, 1, 0]) == "axi"
    assert plane_of([1, 0, 0, 0, 0, -1]) == "cor"
    assert plane_of([0, 1, 0, 0, 0, -1]) == "sag"
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    assert plane_of([1, 0, 0, 0, c, s]) == "axi"  # 30 deg oblique axial
    assert plane_of([1, 0, 0, 0, s, -c]) == "cor"  # 60 deg: closer to coronal
    h = np.sqrt(0.5)
    assert plane_of([1, 0, 0, 0, h, h]) == "axi"  # an exact tie goes to axial, always


def test_localizer_images_inside_a_series_are_dropped_and_named(tmp_path):
    vol = np.arange(6 * 5 * 4, dtype=np.float64).reshape(6, 5, 4) * 3
    series_uid = UID_ROOT + "55"
    study = UID_ROOT + "56"
    dicom_write.write_dicom_series(vol, np.diag([-1.0, -1.0, 2.0, 1.0]), tmp_path / "s", modality="MR", series_description="x",
                                   series_number=6, study_uid=study, extra={"SeriesInstanceUID": series_uid})
    # A coronal localizer image in the same series (as some scanners store it).
    coronal = np.array([[-1.0, 0, 0, 0], [0, 0, 2.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    dicom_write.write_dicom_series(vol[:, :, :1] + 1, coronal, tmp_path / "s", modality="MR", series_description="x",
                                   series_number=6, study_uid=study, file_names=["LOC1"], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                                   extra={"SeriesInstanceUID": series_uid})
    (series,) = scan_dicom([tmp_path / "s"]).series
    split = split_series(series)
    assert len(split.parts) == 1 and len(split.parts[0].frames) == 4 and split.parts[0].acq == ""
    assert [p.name for p, _ in split.dropped] == ["LOC1"] and "LOCALIZER" in split.dropped[0][1]
    summary = ingest([tmp_path / "s"], tmp_path / "out", subject="sub-01")
    assert [c["name"] for c in summary.converted] == ["MR"] and summary.converted[0]["shape"] == [6, 5, 4]
    assert [w for w, _ in summary.skipped] == ["sub-01/LOC1"]  # the input folder is shown as its subject


def test_a_split_part_is_not_the_requested_modality(tmp_path):
    """`--modalities MR` needs a whole MR image; the parts of a 3-plane pilot do not count."""
    summary = ingest([DICOMDIR_TESTS / "98892003" / "MR2"], tmp_path / "out", subject="sub-01", modalities=["MR"])
    assert summary.missing == []  # MR2 also holds a single-slice series: that is an MR image
    for name in ("4950", "4981", "5011"):  # the files of one 3-plane pilot series only
        (tmp_path / "pilot").mkdir(exist_ok=True)
        (tmp_path / "pilot" / name).write_bytes((DICOMDIR_TESTS / "98892003" / "MR2" / name).read_bytes())
    summary = ingest([tmp_path / "pilot"], tmp_path / "out2", subject="sub-01", modalities=["MR"])
    assert sorted(c["name"] for c in summary.converted) == ["MR_acq-axi", "MR_acq-cor", "MR_acq-sag"]
    assert summary.missing == ["sub-01: MR not found (found: nothing)"] and summary.exit_code == 1


# ------------------------------------------------------------------------------------------------
# Rescale and constant images


def _ct_series(folder: Path, *, number: int, values=None) -> list[Path]:
    vol = np.arange(6 * 5 * 4, dtype=np.float64).reshape(6, 5, 4) * 7 - 300 if values is None else values
    return dicom_write.write_dicom_series(vol, np.diag([-1.0, -1.0, 2.0, 1.0]), folder, modality="CT", series_description="ct",
                                          series_number=number, uid_entropy=[str(folder), str(number)])


@pytest.mark.parametrize("slope,what", [("0", "is 0"), ("nan", "is not a finite number"), ("abc", "is not a finite number")])
def test_zero_or_non_finite_rescale_slope_is_refused_by_name(tmp_path, slope, what):
    bad = _ct_series(tmp_path / "in" / "bad", number=4)
    _ct_series(tmp_path / "in" / "good", number=5)
    ds = pydicom.dcmread(bad[2])
    ds.RescaleSlope = "9.75"  # then replaced on disk by the same number of bytes: a DS that pydicom cannot write
    ds.save_as(bad[2])
    raw = bad[2].read_bytes()
    assert raw.count(b"9.75") == 1
    bad[2].write_bytes(raw.replace(b"9.75", slope.ljust(4).encode()))
    before = checksums(tmp_path / "in")
    summary = ingest([tmp_path / "in"], tmp_path / "out", subject="sub-01")
    assert checksums(tmp_path / "in") == before
    assert [c["name"] for c in summary.converted] == ["CT"] and "good" in summary.converted[0]["what"]
    ((where, reason),) = summary.skipped
    assert "series 4" in where and f"RescaleSlope (0028,1053) {what}" in reason and "sub-01/bad/IM00003" in reason


def test_constant_volume_is_refused_unless_allowed_and_then_preprocess_accepts_it(tmp_path, capsys):
    _ct_series(tmp_path / "in", number=8, values=np.full((6, 5, 4), 40.0))
    summary = ingest([tmp_path / "in"], tmp_path / "out", subject="sub-01")
    assert not summary.converted
    ((where, reason),) = summary.skipped
    assert "series 8" in where and "every voxel is 40 after rescale" in reason and "RescaleSlope (0028,1053)" in reason
    assert "--allow-constant" in reason and "ingest.allow_constant: true" in reason
    assert main(["ingest", str(tmp_path / "in"), "--out", str(tmp_path / "out2"), "--subject", "sub-01", "--allow-constant"]) == 0
    side = json.loads((tmp_path / "out2" / "sub-01" / "CT.json").read_text())
    assert side["constant_allowed"] is True and any("allow_constant" in w for w in side["warnings"])
    # Preprocess accepts the constant image only because ingest marked it; unmarked, it refuses.
    from medgen.data.preprocess import PreprocessConfig, preprocess_subject

    cfg = PreprocessConfig(spacing=(2.0, 2.0, 2.0), size=(8, 8, 8))
    meta = preprocess_subject({"CT": tmp_path / "out2" / "sub-01" / "CT.nii.gz"}, tmp_path / "prep", cfg)
    assert any("constant_allowed" in w for w in meta["warnings"])
    (tmp_path / "out2" / "sub-01" / "CT.json").write_text(json.dumps({k: v for k, v in side.items() if k != "constant_allowed"}))
    with pytest.raises(ValueError, match=r"every voxel is 40: .*--allow-constant"):
        preprocess_subject({"CT": tmp_path / "out2" / "sub-01" / "CT.nii.gz"}, tmp_path / "prep2", cfg)


def test_constant_nifti_is_refused_at_ingest(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), np.eye(4))
    nib.save(img, tmp_path / "sub-01_T1w.nii.gz")
    summary = ingest([tmp_path / "sub-01_T1w.nii.gz"], tmp_path / "out")
    ((where, reason),) = summary.skipped
    assert "sub-01_T1w.nii.gz" in where and "every voxel is 0" in reason and "--allow-constant" in reason
    assert ingest([tmp_path / "sub-01_T1w.nii.gz"], tmp_path / "out2", options=IngestOptions(allow_constant=True)).exit_code == 0


def test_bad_option_names_the_flag_and_config_key(tmp_path):
    with pytest.raises(ValueError, match=r"--on-tilt \(ingest\.on_tilt\) must be one of refuse, resample"):
        ingest([tmp_path], tmp_path / "out", options=IngestOptions(on_tilt="ignore"))


# ------------------------------------------------------------------------------------------------
# A 2D generation task on a cohort of radiographs


def test_a_gan_trains_on_one_slice_radiographs(tmp_path):
    """DX radiographs -> ingest -> preprocess (one slice each) -> split -> `medgen train` (gan, 2D)."""
    from medgen.data.datasets import SliceDataset
    from medgen.data.preprocess import PreprocessConfig, preprocess_subject
    from medgen.data.splits import make_split, write_split

    subjects = [f"sub-{k:02d}" for k in range(4)]
    cfg = PreprocessConfig(spacing=(1.0, 1.0, 1.0), size=(32, 32, 1))
    for k, subject in enumerate(subjects):
        write_projection(tmp_path / "raw" / subject / "im", radiograph(k), series=UID_ROOT + f"9{k}", imager_spacing=(1.0, 1.0),
                         photometric="MONOCHROME1")
        summary = ingest([tmp_path / "raw" / subject], tmp_path / "nifti", subject=subject, modalities=["DX"])
        assert summary.exit_code == 0, summary.render()
        preprocess_subject({"DX": tmp_path / "nifti" / subject / "DX.nii.gz"}, tmp_path / "prep" / subject, cfg)
    ds = SliceDataset(tmp_path / "prep", subjects, ["DX"])
    assert len(ds) == 4 and ds[0]["DX"].shape == (1, 32, 32)
    write_split(make_split(subjects, fractions=(0.5, 0.25, 0.25), seed=0), tmp_path / "splits.json")
    task = {"name": "xr", "kind": "generation", "modalities": ["DX"]}
    code = main(["train", "--prep-root", str(tmp_path / "prep"), "--split", str(tmp_path / "splits.json"), "--task-json", json.dumps(task),
                 "--model", "gan", "--options-json", json.dumps({"ngf": 8, "ndf": 8, "latent_dim": 16}), "--out", str(tmp_path / "run"),
                 "--steps", "3", "--batch-size", "2", "--log-every", "1", "--image-every", "0", "--ckpt-every", "3", "--device", "cpu"])
    assert code == 0 and (tmp_path / "run" / "model.pt").is_file()
