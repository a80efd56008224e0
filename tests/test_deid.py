"""De-identification: pseudonyms, de-identified DICOM copies and whitelisted sidecars."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from medgen.io import deid
from medgen.io.deid import (
    deidentify_dataset,
    has_burned_in_annotation,
    pseudonymise_subject,
    pseudonymise_uid,
    sidecar_from_header,
)

SALT = "test-salt"

#: Every identifying string put into the fixture; none may survive de-identification.
IDENTIFYING = {
    "PatientName": "DOE^JANE",
    "PatientID": "MG000001",
    "PatientBirthDate": "19710203",
    "InstitutionName": "SAINT ELSEWHERE HOSPITAL",
    "StudyDate": "20240305",
    "SeriesDate": "20240306",
    "AcquisitionDate": "20240307",
    "OtherPatientIDs": "OTHERID4242",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "StudyID": "STUDY7777",
    "AccessionNumber": "ACC5555501",
    "DeviceSerialNumber": "SERIAL998877",
    "PatientComments": "LIVES AT ELM STREET",
    "StationName": "MRSCANNERROOM3",
}
PRIVATE_VALUE = "PRIVATEVALUE123"
DESCRIPTION = "t1_mprage_sag JANEDOE"
UIDS = {
    "StudyInstanceUID": "1.2.840.99999.1.1",
    "SeriesInstanceUID": "1.2.840.99999.1.2",
    "FrameOfReferenceUID": "1.2.840.99999.1.3",
}


def identified_dataset(instance: int = 1) -> Dataset:
    """An MR slice header carrying names, IDs, dates, a private tag and descriptions."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.840.99999.2.{instance}"
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = f"1.2.840.99999.2.{instance}"
    for keyword, value in {**IDENTIFYING, **UIDS}.items():
        setattr(ds, keyword, value)
    ds.StudyTime = "101500"
    ds.PatientSex = "F"
    ds.Modality = "MR"
    ds.Manufacturer = "ACME"
    ds.MagneticFieldStrength = "3"
    ds.RepetitionTime = "2300"
    ds.EchoTime = "2.98"
    ds.FlipAngle = "9"
    ds.PixelSpacing = ["1.0", "1.0"]
    ds.SliceThickness = "1.0"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.BitsStored = 12
    ds.BurnedInAnnotation = "NO"
    ds.SeriesDescription = DESCRIPTION
    ds.ProtocolName = DESCRIPTION
    ds.ContrastBolusAgent = "GADOVIST JANE"
    block = ds.private_block(0x0029, "ACME PRIVATE", create=True)
    block.add_new(0x10, "LO", PRIVATE_VALUE)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def assert_clean(blob: bytes) -> None:
    for keyword, value in IDENTIFYING.items():
        assert value.encode() not in blob, f"{keyword} {value!r} survived"
    assert b"DOE" not in blob and b"JANE" not in blob
    for uid in UIDS.values():
        assert uid.encode() not in blob
    assert PRIVATE_VALUE.encode() not in blob


# --------------------------------------------------------------------------- pseudonyms


def test_pseudonymise_uid_consistent_distinct_and_valid():
    a = pseudonymise_uid("1.2.3.4", SALT)
    assert a == pseudonymise_uid("1.2.3.4", SALT)
    assert a != pseudonymise_uid("1.2.3.5", SALT)
    assert a != pseudonymise_uid("1.2.3.4", "other-salt")
    assert "1.2.3.4" not in a
    assert pydicom.uid.UID(a).is_valid


def test_pseudonymise_subject_format_and_keyed():
    label = pseudonymise_subject("MG000001", SALT)
    assert label.startswith("sub-") and len(label) == 14
    assert "MG000001" not in label
    assert label == pseudonymise_subject("MG000001", SALT)
    assert label != pseudonymise_subject("MG000002", SALT)
    assert label != pseudonymise_subject("MG000001", "other-salt")


_CHILD = """
import sys
sys.path.insert(0, {root!r})
from tests.test_deid import identified_dataset, SALT
from medgen.io.deid import deidentify_dataset, pseudonymise_uid, pseudonymise_subject
out = deidentify_dataset(identified_dataset(), SALT)
print(pseudonymise_uid("1.2.3.4", SALT))
print(pseudonymise_subject("MG000001", SALT))
print(out.SeriesInstanceUID, out.SOPInstanceUID, out.StudyInstanceUID, out.FrameOfReferenceUID)
"""


def test_pseudonyms_identical_across_processes():
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    code = _CHILD.format(root=root)
    # PYTHONHASHSEED differs so that nothing may depend on Python's per-process str hash.
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1]
    lines = runs[0].splitlines()
    assert lines[0] == pseudonymise_uid("1.2.3.4", SALT)
    assert lines[1] == pseudonymise_subject("MG000001", SALT)
    here = deidentify_dataset(identified_dataset(), SALT)
    assert lines[2].split() == [here.SeriesInstanceUID, here.SOPInstanceUID, here.StudyInstanceUID, here.FrameOfReferenceUID]


# --------------------------------------------------------------------------- DICOM datasets


def test_deidentify_removes_identifiers_from_bytes():
    out = deidentify_dataset(identified_dataset(), SALT)
    assert_clean(to_bytes(out))
    assert DESCRIPTION.encode() not in to_bytes(out)
    assert out.ContrastBolusAgent == "PRESENT"  # free text replaced by a dummy
    assert out.PatientIdentityRemoved == "YES"


def test_deidentify_removes_private_tags_and_comments():
    out = deidentify_dataset(identified_dataset(), SALT)
    assert not any(elem.tag.is_private for elem in out.iterall())
    for keyword in ("DeviceSerialNumber", "PatientComments", "SeriesDescription", "ProtocolName"):
        assert keyword not in out
    assert out.PatientSex == ""


def test_deidentify_keeps_descriptions_on_request():
    out = deidentify_dataset(identified_dataset(), SALT, keep_descriptions=True)
    assert out.SeriesDescription == DESCRIPTION
    assert out.ContrastBolusAgent == "GADOVIST JANE"
    assert "PatientName" in out and str(out.PatientName) != IDENTIFYING["PatientName"]


def test_deidentify_leaves_input_untouched():
    ds = identified_dataset()
    before = to_bytes(copy.deepcopy(ds))
    deidentify_dataset(ds, SALT)
    assert to_bytes(ds) == before


def test_deidentify_uids_consistent_across_files_and_with_pseudonymise_uid():
    a = deidentify_dataset(identified_dataset(1), SALT)
    b = deidentify_dataset(identified_dataset(2), SALT)
    for keyword, uid in UIDS.items():
        assert a.get(keyword) == b.get(keyword) == pseudonymise_uid(uid, SALT)
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert a.SOPClassUID == MRImageStorage  # class UIDs say what, not whom: kept
    assert a.PatientID == b.PatientID == "" and a.StudyDate == b.StudyDate == ""  # Annex E: Z
    assert sidecar_from_header(identified_dataset(), salt=SALT)["SeriesInstanceUID"] == a.SeriesInstanceUID


def test_deidentify_dataset_without_file_meta():
    ds = identified_dataset()
    del ds.file_meta
    out = deidentify_dataset(ds, SALT)
    assert getattr(out, "file_meta", None) is None or len(out.file_meta) == 0
    assert str(out.PatientName) != IDENTIFYING["PatientName"]


def test_burned_in_annotation_flagged(caplog):
    ds = identified_dataset()
    assert not has_burned_in_annotation(ds)
    ds.BurnedInAnnotation = "YES"
    assert has_burned_in_annotation(ds)
    with caplog.at_level("WARNING"):
        deidentify_dataset(ds, SALT)
    assert "BurnedInAnnotation" in caplog.text
    assert deidentify_dataset(ds, SALT).get("PatientIdentityRemoved") != "YES"
    assert sidecar_from_header(ds, salt=SALT)["BurnedInAnnotation"] == "YES"


def test_removal_tables_name_real_attributes():
    for keyword in deid.DESCRIPTION_KEYWORDS + tuple(f[0] for f in deid.SIDECAR_FIELDS):
        assert pydicom.datadict.tag_for_keyword(keyword) is not None, keyword


# --------------------------------------------------------------------------- sidecars


def test_sidecar_has_parameters_and_nothing_identifying():
    ds = identified_dataset()
    sidecar = sidecar_from_header(ds, salt=SALT)
    text = json.dumps(sidecar)
    assert_clean(text.encode())
    assert "GADOVIST" not in text and DESCRIPTION not in text
    assert sidecar["Modality"] == "MR"
    assert sidecar["RepetitionTime"] == pytest.approx(2.3)  # ms -> s, as BIDS
    assert sidecar["EchoTime"] == pytest.approx(0.00298)
    assert sidecar["FlipAngle"] == pytest.approx(9.0)
    assert sidecar["PixelSpacing"] == [1.0, 1.0]
    assert sidecar["BitsStored"] == 12
    assert sidecar["ImageType"] == ["ORIGINAL", "PRIMARY", "M"]
    assert sidecar["ContrastBolusAgentPresent"] is True
    assert set(UIDS) <= set(sidecar)
    assert "BurnedInAnnotation" not in sidecar


def test_sidecar_descriptions_only_on_request():
    sidecar = sidecar_from_header(identified_dataset(), keep_descriptions=True, salt=SALT)
    assert sidecar["SeriesDescription"] == DESCRIPTION
    assert sidecar["ProtocolName"] == DESCRIPTION


def test_sidecar_is_a_whitelist():
    ds = identified_dataset()
    ds.add_new(0x00181030, "LO", "x")  # ProtocolName already; add an unknown public attribute too
    ds.PatientSex = "F"
    ds.PatientAge = "053Y"
    sidecar = sidecar_from_header(ds, salt=SALT)
    allowed = {key for _, key, _ in deid.SIDECAR_FIELDS} | set(deid.SIDECAR_UIDS) | {
        "ContrastBolusAgentPresent",
        "BurnedInAnnotation",
    }
    assert set(sidecar) <= allowed
