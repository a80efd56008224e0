"""Ingest: inputs of every kind -> out/<subject>/<modality>.nii.gz + .json, with its faults."""

from __future__ import annotations

import gzip
import io
import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medgen.cli import main
from medgen.io import dicom_write
from medgen.io.deid import pseudonymise_subject
from tests.conftest import TEST_SECRET
from medgen.io.ingest import (
    MR_SERIES_PATTERNS,
    IngestOptions,
    IngestSummary,
    classify_series,
    ingest,
    normalise_modality,
)

AFFINE = np.array([[1.5, 0, 0, -10.0], [0, 1.2, 0, 20.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])


# --------------------------------------------------------------------------- helpers


def volume(shape=(6, 5, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1000, size=shape).astype(np.float32)


def write_nifti(path: Path, data: np.ndarray, affine=AFFINE, *, qform=None, zooms=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine if qform is None else qform, code=1)
    if zooms is not None:
        img.header.set_zooms(zooms)
    nib.save(img, str(path))
    return path


def checksums(root: Path) -> dict[str, str]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def output_bytes(out: Path) -> dict[Path, bytes]:
    """Every output file's content, NIfTI decompressed, for grepping."""
    blobs = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blobs[path] = gzip.decompress(data) if path.name.endswith(".gz") else data
    return blobs


def sidecar(out: Path, subject: str, name: str) -> dict:
    return json.loads((out / subject / f"{name}.json").read_text())


# --------------------------------------------------------------------------- naming


def test_classify_series_table():
    def h(modality, **kw):
        ds = pydicom.Dataset()
        ds.Modality = modality
        for k, v in kw.items():
            setattr(ds, k, v)
        return ds

    assert classify_series(h("CT", SeriesDescription="T1 head")) == "CT"
    assert classify_series(h("MR", SeriesDescription="t1_mprage_sag")) == "T1w"
    assert classify_series(h("MR", SeriesDescription="Sag MPRAGE")) == "T1w"
    assert classify_series(h("MR", SeriesDescription="AX FSPGR 3D")) == "T1w"
    assert classify_series(h("MR", SeriesDescription="3D_TFE")) == "T1w"
    assert classify_series(h("MR", SeriesDescription="t2_tse_tra")) == "T2w"
    assert classify_series(h("MR", SeriesDescription="t2_flair_tra")) == "FLAIR"
    assert classify_series(h("MR", SeriesDescription="pd_tse")) == "PDw"
    assert classify_series(h("MR", SeriesDescription="DWI b1000")) == "MR"
    assert classify_series(h("MR", ProtocolName="T2 AX")) == "T2w"
    assert classify_series(h("MR", SequenceName="*tfl3d1_16ns")) == "T1w"
    assert classify_series(h("PT")) == "PT"


def test_classify_series_patterns_extendable(monkeypatch):
    ds = pydicom.Dataset()
    ds.Modality = "MR"
    ds.SeriesDescription = "site42 anatomy"
    assert classify_series(ds) == "MR"
    monkeypatch.setattr("medgen.io.ingest.MR_SERIES_PATTERNS", [(re.compile("site42"), "T1w"), *MR_SERIES_PATTERNS])
    assert classify_series(ds) == "T1w"


def test_normalise_modality():
    assert normalise_modality("t1") == "T1w"
    assert normalise_modality("FLAIR") == "FLAIR"
    assert normalise_modality("Custom") == "Custom"


# --------------------------------------------------------------------------- NIfTI, BIDS, manifest


def test_nifti_file_with_subject(tmp_path):
    data = volume()
    src = write_nifti(tmp_path / "in" / "t1.nii.gz", data)
    before = checksums(src)
    out = tmp_path / "out"
    summary = ingest([src], out, subject="sub-01")
    assert summary.exit_code == 0, summary.render()
    img = nib.load(str(out / "sub-01" / "T1w.nii.gz"))
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    np.testing.assert_allclose(img.affine, AFFINE)
    assert img.get_data_dtype() == np.float32
    meta = sidecar(out, "sub-01", "T1w")
    assert meta["source"] == "nifti"
    assert meta["shape"] == [6, 5, 4]
    assert meta["spacing"] == pytest.approx([1.5, 1.2, 2.0])
    assert checksums(src) == before
    assert summary.converted[0]["source"] == "nifti"
    assert "converted 1, skipped 0, failed 0" in summary.render()


def test_bids_tree_sessions_and_run_naming(tmp_path):
    root = tmp_path / "bids"
    write_nifti(root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz", volume(seed=1))
    write_nifti(root / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz", volume(seed=2))
    write_nifti(root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T2w.nii.gz", volume(seed=3))
    write_nifti(root / "sub-02" / "anat" / "sub-02_CT.nii", volume(seed=4))
    write_nifti(root / "sub-02" / "func" / "sub-02_task-rest_bold.nii.gz", volume(seed=5))
    write_nifti(root / "sub-03" / "T2w.nii.gz", volume(seed=6))  # medgen's own output layout
    before = checksums(root)
    out = tmp_path / "out"
    summary = ingest([root], out)
    names = sorted((c["subject"], c["name"]) for c in summary.converted)
    assert names == [("sub-01", "T1w"), ("sub-01", "T1w_run-2"), ("sub-01", "T2w"), ("sub-02", "CT"), ("sub-03", "T2w")]
    # ses-1 sorts before ses-2: the first session keeps the plain name
    np.testing.assert_array_equal(nib.load(str(out / "sub-01" / "T1w.nii.gz")).get_fdata(), volume(seed=1))
    np.testing.assert_array_equal(nib.load(str(out / "sub-01" / "T1w_run-2.nii.gz")).get_fdata(), volume(seed=2))
    assert "T1w_run-2" in summary.render() and "already taken" in summary.render()
    assert [what for what, _ in summary.skipped] == ["bids/sub-02/func/sub-02_task-rest_bold.nii.gz"]
    assert checksums(root) == before
    # a re-run overwrites its own outputs with the same names
    again = ingest([root], out)
    assert sorted((c["subject"], c["name"]) for c in again.converted) == names


def test_manifest_with_relative_paths(tmp_path):
    base = tmp_path / "study"
    write_nifti(base / "images" / "a.nii.gz", volume(seed=1))
    write_nifti(base / "images" / "b.nii.gz", volume(seed=2))
    manifest = base / "manifest.tsv"
    manifest.write_text(
        "subject\tmodality\tpath\n"
        "P1\tT1w\timages/a.nii.gz\n"
        "P1\tflair\timages/b.nii.gz\n"
        "P2\tT1w\timages/missing.nii.gz\n"
        "P3\tT1w\n"
    )
    out = tmp_path / "out"
    summary = ingest([manifest], out, options=IngestOptions(keep_subject_labels=True))
    assert sorted((c["subject"], c["name"]) for c in summary.converted) == [("P1", "FLAIR"), ("P1", "T1w")]
    failed = dict(summary.failed)
    assert "does not exist" in failed["manifest.tsv row 4"] and "missing.nii.gz" not in failed["manifest.tsv row 4"]
    assert "manifest.tsv row 5" in failed
    # one workflow job per subject: with subject=, only that subject's rows are read
    only = ingest([manifest], tmp_path / "out1", subject="P1", modalities=["T1w", "FLAIR"])
    assert only.exit_code == 0 and not only.failed
    assert sorted(c["name"] for c in only.converted) == ["FLAIR", "T1w"]
    # by default a manifest's subjects become keyed pseudonyms, and the workflow selects rows by them
    pseudonym = pseudonymise_subject("P1", TEST_SECRET)
    default = ingest([manifest], tmp_path / "out2")
    assert sorted({c["subject"] for c in default.converted}) == [pseudonym]
    by_pseudonym = ingest([manifest], tmp_path / "out3", subject=pseudonym, modalities=["T1w", "FLAIR"])
    assert by_pseudonym.exit_code == 0 and "P1" not in by_pseudonym.render()


def test_summary_is_written_beside_the_outputs_as_json(tmp_path):
    from medgen.io.ingest import IngestSummary
    from medgen.layout import ingest_summary

    base = tmp_path / "study"
    write_nifti(base / "a.nii.gz", volume(seed=1))
    manifest = base / "manifest.tsv"
    manifest.write_text("subject\tmodality\tpath\nP1\tT1w\ta.nii.gz\nP1\tCT\tmissing.nii.gz\n")
    out = tmp_path / "nifti"
    summary = ingest([manifest], out, subject="P1", modalities=["T1w", "CT"], options=IngestOptions(keep_subject_labels=True))
    path = Path(ingest_summary(tmp_path, "P1"))
    written = json.loads(path.read_text())
    assert written["exit_code"] == 1 and written["missing"] == summary.missing
    assert written["failed"] == [{"what": "manifest.tsv row 3", "reason": dict(summary.failed)["manifest.tsv row 3"]}]
    assert [(c["subject"], c["name"], c["source"]) for c in written["converted"]] == [("P1", "T1w", "nifti")]
    assert str(tmp_path) not in path.read_text()  # no local path
    assert IngestSummary.from_dict(written).render() == summary.render()
    # without a subject, messages would name the input folders: no summary file
    ingest([manifest], tmp_path / "all", options=IngestOptions(keep_subject_labels=True))
    assert not list((tmp_path / "all").rglob("ingest_summary.json"))


def test_manifest_bad_header_fails(tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text("id,path\n1,x.nii.gz\n")
    summary = ingest([manifest], tmp_path / "out")
    assert summary.exit_code == 1
    assert "header" in dict(summary.failed)["m.tsv"]


def test_user_nifti_header_text_does_not_leak(tmp_path):
    img = nib.Nifti1Image(volume(), AFFINE)
    img.set_qform(AFFINE, code=1)
    img.header["descrip"] = b"DOE^JANE MG000001"
    img.header["aux_file"] = b"SECRETAUX"
    img.header["intent_name"] = b"SECRETINT"
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"EXTENSION COMMENT SECRETEXT"))
    src = tmp_path / "sub-07_T1w.nii.gz"
    nib.save(img, str(src))
    out = tmp_path / "out"
    summary = ingest([src], out)
    assert [c["subject"] for c in summary.converted] == ["sub-07"]
    for path, blob in output_bytes(out).items():
        for secret in (b"DOE", b"MG000001", b"SECRETAUX", b"SECRETINT", b"SECRETEXT"):
            assert secret not in blob, (path, secret)


def test_nifti_form_mismatch_policy(tmp_path):
    qform = AFFINE.copy()
    qform[0, 3] += 5.0
    src = write_nifti(tmp_path / "sub-01_T1w.nii.gz", volume(), qform=qform)
    summary = ingest([src], tmp_path / "out")
    assert summary.exit_code == 1
    assert "qform" in dict(summary.failed)["sub-01_T1w.nii.gz"]
    assert "--form-mismatch warn" in dict(summary.failed)["sub-01_T1w.nii.gz"]  # advice in the user's words
    summary = ingest([src], tmp_path / "out", options=IngestOptions(form_mismatch="warn"))
    assert summary.exit_code == 0
    meta = sidecar(tmp_path / "out", "sub-01", "T1w")
    assert any("qform" in w for w in meta["warnings"])
    assert str(tmp_path) not in json.dumps(meta)  # local paths are scrubbed from sidecars


def test_nifti_nonfinite_policy(tmp_path):
    data = volume()
    data[1, 2, 3] = np.nan
    src = write_nifti(tmp_path / "sub-01_T1w.nii.gz", data)
    summary = ingest([src], tmp_path / "out")
    assert "NaN" in dict(summary.failed)["sub-01_T1w.nii.gz"]
    assert "ingest.nonfinite: zero|min" in dict(summary.failed)["sub-01_T1w.nii.gz"]
    summary = ingest([src], tmp_path / "out", options=IngestOptions(nonfinite="zero"))
    assert summary.exit_code == 0
    assert nib.load(str(tmp_path / "out" / "sub-01" / "T1w.nii.gz")).get_fdata()[1, 2, 3] == 0


def test_nifti_zero_pixdim_fails(tmp_path):
    src = write_nifti(tmp_path / "sub-01_T1w.nii.gz", volume(), zooms=(1.0, 0.0, 1.0))
    summary = ingest([src], tmp_path / "out")
    assert "pixdim" in dict(summary.failed)["sub-01_T1w.nii.gz"]


def test_nifti_trailing_singleton_squeezed(tmp_path):
    src = write_nifti(tmp_path / "sub-01_T2w.nii.gz", volume()[..., None])
    summary = ingest([src], tmp_path / "out")
    assert summary.converted[0]["shape"] == [6, 5, 4]
    assert nib.load(str(tmp_path / "out" / "sub-01" / "T2w.nii.gz")).shape == (6, 5, 4)


def test_truncated_nifti_fails_by_name_others_convert(tmp_path):
    good = write_nifti(tmp_path / "in" / "sub-01_T1w.nii.gz", volume())
    bad = write_nifti(tmp_path / "in" / "sub-01_T2w.nii.gz", volume(shape=(30, 30, 30)))
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    before = checksums(tmp_path / "in")
    summary = ingest([good, bad], tmp_path / "out")
    assert [c["name"] for c in summary.converted] == ["T1w"]
    assert [what for what, _ in summary.failed] == ["sub-01_T2w.nii.gz"]
    assert "sub-01_T2w.nii.gz" in summary.render()
    assert checksums(tmp_path / "in") == before


def test_nifti_without_subject_fails(tmp_path):
    src = write_nifti(tmp_path / "scan.nii.gz", volume())
    summary = ingest([src], tmp_path / "out")
    assert summary.exit_code == 1
    assert "no subject" in dict(summary.failed)["scan.nii.gz"]


def test_missing_modality_names_subject_and_found(tmp_path):
    src = write_nifti(tmp_path / "sub-01_T1w.nii.gz", volume())
    summary = ingest([src], tmp_path / "out", modalities=["T1w", "FLAIR"])
    assert summary.exit_code == 1
    assert summary.missing == ["sub-01: FLAIR not found (found: T1w)"]
    assert (tmp_path / "out" / "sub-01" / "T1w.nii.gz").exists()  # others still converted
    assert "missing sub-01: FLAIR" in summary.render()
    assert ingest([src], tmp_path / "out", modalities=["t1"]).exit_code == 0


def test_missing_input_and_bad_options_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        ingest([tmp_path / "nope"], tmp_path / "out")
    with pytest.raises(ValueError):
        ingest([tmp_path], tmp_path / "out", options=IngestOptions(on_tilt="ignore"))
    with pytest.raises(ValueError):
        ingest([tmp_path], tmp_path / "out", subject="../escape")


def test_summary_exit_code_rules():
    assert IngestSummary().exit_code == 1
    assert IngestSummary(converted=[{"x": 1}]).exit_code == 0
    assert IngestSummary(converted=[{"x": 1}], missing=["s: T1w not found"]).exit_code == 1


def test_cli_ingest_exit_codes(tmp_path, capsys):
    src = write_nifti(tmp_path / "sub-01_T1w.nii.gz", volume())
    out = tmp_path / "out"
    assert main(["ingest", str(src), "--out", str(out)]) == 0
    assert main(["ingest", str(src), "--out", str(out), "--modalities", "T1w", "CT"]) != 0
    assert "sub-01: CT not found" in capsys.readouterr().out
    assert main(["ingest", str(tmp_path / "absent"), "--out", str(out)]) != 0


# --------------------------------------------------------------------------- DICOM


IDENTITY = dicom_write.PatientIdentity(
    name="DOE^JANE",
    patient_id="MG000001",
    birth_date="19710203",
    institution="Saint Elsewhere Hospital",
    study_date="20240305",
    accession="ACC5555501",
    referring_physician="HOUSE^GREGORY",
)
IDENTIFYING = [b"DOE", b"JANE", b"MG000001", b"19710203", b"Saint Elsewhere", b"SAINT ELSEWHERE", b"20240305",
               b"ACC5555501", b"HOUSE", b"GREGORY"]


def write_series(folder: Path, *, modality="MR", description="t1_mprage", number=1, shape=(8, 7, 5), seed=0,
                 identity=IDENTITY, extra=None, names=None) -> list[Path]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 800, size=shape).astype(np.float32)
    if modality == "CT":
        data -= 400
    return dicom_write.write_dicom_series(
        data, AFFINE, folder, modality=modality, series_description=description, series_number=number,
        identity=identity, file_names=names, extra=extra, uid_entropy=[str(folder), str(number), str(seed)],
    )


def test_dicom_identified_series_leaves_no_identifier(tmp_path):
    src = tmp_path / "incoming"
    write_series(src / "a" / "b", description="t1_mprage DOE JANE", extra={"DeviceSerialNumber": "SERIAL998877"})
    before = checksums(src)
    out = tmp_path / "out"
    summary = ingest([src], out, options=IngestOptions(uid_salt="s3cret"))
    assert summary.exit_code == 0, summary.render()
    subject = pseudonymise_subject("MG000001", "s3cret")
    assert [(c["subject"], c["name"], c["source"]) for c in summary.converted] == [(subject, "T1w", "dicom")]
    blobs = output_bytes(out)
    assert {p.name for p in blobs} == {"T1w.nii.gz", "T1w.json"}
    for path, blob in blobs.items():
        for secret in IDENTIFYING + [b"SERIAL998877", b"incoming"]:
            assert secret not in blob, (path.name, secret)
    text = summary.render().encode()
    for secret in IDENTIFYING:
        assert secret not in text
    meta = sidecar(out, subject, "T1w")
    assert meta["source"] == "dicom" and meta["Modality"] == "MR" and meta["n_slices"] == 5
    assert "SeriesDescription" not in meta
    assert checksums(src) == before


def test_dicom_values_and_geometry(tmp_path):
    write_series(tmp_path / "dcm", modality="CT", description="head", number=2)
    out = tmp_path / "out"
    summary = ingest([tmp_path / "dcm"], out, subject="sub-01")
    assert [c["name"] for c in summary.converted] == ["CT"]
    img = nib.load(str(out / "sub-01" / "CT.nii.gz"))
    expected = np.random.default_rng(0).integers(0, 800, size=(8, 7, 5)).astype(np.float32) - 400
    np.testing.assert_allclose(np.asarray(img.dataobj), expected)
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-4)


def test_dicom_mixed_folder_faults(tmp_path):
    src = tmp_path / "mixed"
    write_series(src / "x", description="t1_mprage", number=3, seed=1)
    write_series(src / "x", modality="CT", description="head", number=4, seed=2,
                 names=[f"CT{k}" for k in range(5)])
    write_series(src / "y" / "z", description="localizer", number=1, shape=(8, 7, 2), seed=3)
    # a non-image DICOM object (no pixel data)
    ds = pydicom.dcmread(next((src / "x").glob("IM*")))
    del ds.PixelData
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    ds.SeriesInstanceUID = "1.2.3.4.5.6.7"
    ds.Modality = "SR"
    ds.save_as(src / "report", enforce_file_format=True)
    # a truncated slice of a further series and a text file
    extra = write_series(src / "t", description="t2_tse", number=5, seed=4)
    extra[2].write_bytes(extra[2].read_bytes()[:300])
    (src / "notes.txt").write_text("not dicom")
    write_nifti(src / "y" / "sub-01_FLAIR.nii.gz", volume())  # NIfTI among DICOM: taken as NIfTI
    before = checksums(src)

    summary = ingest([src], tmp_path / "out", subject="sub-01")
    converted = sorted(c["name"] for c in summary.converted)
    assert "T1w" in converted and "CT" in converted and "FLAIR" in converted
    assert "MR" in converted  # the 2-slice series converts by default (min_slices 1)
    reasons = " | ".join(f"{w}: {r}" for w, r in summary.skipped + summary.failed)
    assert "IM00003" in reasons  # the truncated file is named
    assert "series 5" in reasons  # the series that lost a slice is refused with its reason
    assert "report" in reasons  # the non-image object is skipped
    assert checksums(src) == before
    assert summary.exit_code == 0


def test_dicom_refused_series_reason_and_missing(tmp_path):
    write_series(tmp_path / "loc", description="t1 localizer DOE JANE", shape=(8, 7, 2))
    summary = ingest([tmp_path / "loc"], tmp_path / "out", subject="sub-01", modalities=["T1w"], options=IngestOptions(min_slices=3))
    assert summary.exit_code == 1
    assert not summary.converted
    what, reason = summary.skipped[-1]
    assert what == "sub-01 series 1 (MR)" and "2 slice" in reason and "--min-slices 3" in reason  # the input folder is shown as the subject
    assert "JANE" not in summary.render() and str(tmp_path) not in summary.render()
    assert summary.missing == ["sub-01: T1w not found (found: nothing)"]
    assert ingest([tmp_path / "loc"], tmp_path / "out2").exit_code == 0  # two slices convert by default


def test_dicom_same_modality_twice_gets_run_2(tmp_path):
    write_series(tmp_path / "d" / "late", description="t1_mprage", number=7, seed=7)
    write_series(tmp_path / "d" / "early", description="T1 SE", number=3, seed=3)
    out = tmp_path / "out"
    summary = ingest([tmp_path / "d"], out, subject="sub-01")
    assert sorted(c["name"] for c in summary.converted) == ["T1w", "T1w_run-2"]
    first = nib.load(str(out / "sub-01" / "T1w.nii.gz")).get_fdata()
    expected = np.random.default_rng(3).integers(0, 800, size=(8, 7, 5))
    np.testing.assert_allclose(first, expected)  # SeriesNumber 3 comes first
    assert "T1w_run-2" in summary.render()


def test_dicom_manifest_folder_and_burned_in(tmp_path):
    base = tmp_path / "study"
    write_series(base / "dicom" / "s1", description="whatever", extra={"BurnedInAnnotation": "YES"})
    (base / "m.tsv").write_text("subject\tmodality\tpath\nP9\tT2w\tdicom/s1\n")
    out = tmp_path / "out"
    summary = ingest([base / "m.tsv"], out, options=IngestOptions(keep_subject_labels=True))
    assert [(c["subject"], c["name"]) for c in summary.converted] == [("P9", "T2w")]
    meta = sidecar(out, "P9", "T2w")
    assert meta["BurnedInAnnotation"] == "YES"
    assert any("BurnedInAnnotation" in w for w in meta["warnings"])
    assert "BurnedInAnnotation" in summary.render()


def test_dicom_keep_descriptions(tmp_path):
    write_series(tmp_path / "d", description="t2_tse_tra")
    out = tmp_path / "out"
    ingest([tmp_path / "d"], out, subject="sub-01", options=IngestOptions(keep_descriptions=True))
    assert sidecar(out, "sub-01", "T2w")["SeriesDescription"] == "t2_tse_tra"


def test_cli_ingest_dicom_missing_modality(tmp_path, capsys):
    write_series(tmp_path / "d", description="t1_mprage")
    code = main(["ingest", str(tmp_path / "d"), "--out", str(tmp_path / "out"), "--subject", "sub-01",
                 "--modalities", "T1w", "FLAIR"])
    assert code == 1
    assert "sub-01: FLAIR not found (found: T1w)" in capsys.readouterr().out


def test_dicom_uneven_refused_then_resampled(tmp_path):
    files = write_series(tmp_path / "d", description="t2_tse", shape=(8, 7, 6))
    files[3].unlink()  # a missing slice
    summary = ingest([tmp_path / "d"], tmp_path / "out", subject="sub-01")
    assert summary.exit_code == 1
    assert "on_uneven" in summary.skipped[0][1]
    summary = ingest([tmp_path / "d"], tmp_path / "out", subject="sub-01", options=IngestOptions(on_uneven="resample"))
    assert summary.exit_code == 0, summary.render()
    meta = sidecar(tmp_path / "out", "sub-01", "T2w")
    assert meta["corrections"] and meta["n_slices"] == 5
    assert str(tmp_path) not in json.dumps(meta)


# --------------------------------------------------------------------------- one patient per subject, logs


def test_subject_refuses_inputs_of_two_patients_unless_merged(tmp_path, capsys):
    other = dicom_write.PatientIdentity(name="ROE^RICHARD", patient_id="MRN5550199")
    write_series(tmp_path / "in" / "a", description="t1_mprage", number=1, seed=1)
    write_series(tmp_path / "in" / "b", description="t1_mprage", number=2, seed=2, identity=other)
    out = tmp_path / "out"
    code = main(["ingest", str(tmp_path / "in"), "--out", str(out), "--subject", "sub-01"])
    err = capsys.readouterr().err
    assert code == 2 and "2 patients" in err and "--merge-patients" in err and "PatientID (0010,0020)" in err
    assert "MRN5550199" not in err and IDENTITY.patient_id not in err  # the IDs are compared, never shown
    assert not out.exists()  # refused before anything was written
    merged = ingest([tmp_path / "in"], out, subject="sub-01", options=IngestOptions(merge_patients=True))
    assert sorted(c["name"] for c in merged.converted) == ["T1w", "T1w_run-2"]
    # one patient in two series is fine without the flag
    write_series(tmp_path / "one" / "a", number=1, seed=1)
    write_series(tmp_path / "one" / "b", number=2, seed=2)
    assert ingest([tmp_path / "one"], tmp_path / "out2", subject="sub-02").exit_code == 0


def test_every_log_handler_gets_the_redaction_of_the_summary(tmp_path):
    """A reader warning that quotes the SeriesDescription and file paths reaches no log handler as such."""
    import logging

    files = write_series(tmp_path / "DOE_JANE_MRN123" / "s1", description="t1 DOE JANE", shape=(8, 7, 6))
    files[3].unlink()  # a missing slice: the reader warns (naming the series) and resamples
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    try:
        summary = ingest([tmp_path / "DOE_JANE_MRN123"], tmp_path / "out", subject="sub-01",
                         options=IngestOptions(on_uneven="resample"))
    finally:
        logging.getLogger().removeHandler(handler)
    logged = stream.getvalue()
    # the warning was logged, naming the series by number and quoting neither description nor path
    assert summary.exit_code == 0 and "series 1: uneven slice spacing" in logged
    for leak in ("DOE JANE", "DOE_JANE", str(tmp_path)):
        assert leak not in logged and leak not in summary.render(), leak


def test_ingest_by_hand_needs_a_secret_from_the_environment_or_a_file(tmp_path, monkeypatch, capsys):
    write_series(tmp_path / "in", description="t1_mprage")
    monkeypatch.delenv("MEDGEN_UID_SALT")
    code = main(["ingest", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "MEDGEN_UID_SALT" in err and "--uid-salt-file" in err
    assert not (tmp_path / "out").exists()
    secret_file = tmp_path / "secret"
    secret_file.write_text("file-secret\n")
    assert main(["ingest", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--uid-salt-file", str(secret_file)]) == 0
    assert (tmp_path / "out" / pseudonymise_subject(IDENTITY.patient_id, "file-secret") / "T1w.nii.gz").exists()
    monkeypatch.setenv("MEDGEN_UID_SALT", "env-secret")
    assert main(["ingest", str(tmp_path / "in"), "--out", str(tmp_path / "out2")]) == 0
    assert (tmp_path / "out2" / pseudonymise_subject(IDENTITY.patient_id, "env-secret")).is_dir()
    assert "file-secret" not in capsys.readouterr().out
