"""PS3.15 Annex E, Table E.1-1: every attribute of the basic profile, filled, then de-identified.

The data set is built from the table itself and pydicom's data dictionary (each attribute gets a
value valid for its VR that carries a unique marker); after :func:`deidentify_dataset` each one must
be removed (X), emptied (Z), replaced by a different non-empty value (D) or by the keyed UID (U).
"""

from __future__ import annotations

import io
from collections import Counter

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from medgen.io.annex_e import BASIC_PROFILE, MEDGEN_ADDITIONS, REMOVED_GROUP_RANGES
from medgen.io.deid import DEIDENTIFICATION_METHOD, deidentify_dataset, pseudonymise_uid

SALT = "annex-e-test-secret"


def _value(vr: str, n: int):
    """A value valid for ``vr`` that is unique to attribute ``n`` where the VR allows text."""
    marker = f"QX{n:04d}"
    return {
        "AE": f"AE{marker}", "AS": "042Y", "CS": f"CS{marker}", "DA": "19610412", "DS": "12.5", "DT": "19610412101500",
        "IS": "7", "LO": f"LO {marker} DOE", "LT": f"LT {marker} DOE", "PN": f"DOE^{marker}", "SH": f"SH{marker}",
        "ST": f"ST {marker} DOE", "TM": "101500", "UC": f"UC {marker}", "UI": f"1.2.826.0.1.3680043.99.{n}",
        "UR": f"http://doe.example/{marker}", "UT": f"UT {marker} DOE", "US": 7, "OB": b"\x01\x02", "UN": b"\x01\x02",
    }[vr]


def _filled() -> tuple[Dataset, dict[int, object]]:
    """A data set holding every attribute of the table (group 0002 in its file meta), plus
    a private tag, an overlay and a curve; and the original value of each."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.SOPClassUID = MRImageStorage
    originals: dict[int, object] = {}
    for n, (tag, keyword, _action) in enumerate(BASIC_PROFILE + MEDGEN_ADDITIONS):
        vr = dictionary_VR(tag).split(" or ")[0]
        if vr == "SQ":
            item = Dataset()
            item.PatientName = f"DOE^NESTED{n:04d}"
            item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.98.{n}"
            value: object = [item]
        else:
            value = _value(vr, n)
        target = ds.file_meta if Tag(tag).group == 0x0002 else ds
        target.add_new(tag, vr, value)
        originals[tag] = value
    block = ds.private_block(0x0029, "ACME PRIVATE", create=True)
    block.add_new(0x10, "LO", "PRIVATE DOE")
    ds.add_new(0x60003000, "OB", b"\x01\x02")  # overlay data (60xx,3000)
    ds.add_new(0x60004000, "LT", "overlay comment DOE")  # overlay comments (60xx,4000)
    ds.add_new(0x50000010, "US", 2)  # a curve group element (50xx,xxxx)
    return ds, originals


def test_the_table_is_the_whole_basic_profile():
    # 617 attributes named by tag in Table E.1-1 (DICOM 2024b); curves, overlays and private
    # tags are the table's other rows, by group.
    assert len(BASIC_PROFILE) == len({tag for tag, _, _ in BASIC_PROFILE}) == 617
    assert Counter(action for _, _, action in BASIC_PROFILE) == {
        "X": 380, "D": 92, "U": 54, "Z": 42, "X/D": 22, "X/Z": 11, "X/Z/D": 8, "Z/D": 6, "X/Z/U*": 2}
    for tag, keyword, _ in BASIC_PROFILE:
        assert pydicom.datadict.keyword_for_tag(tag) == keyword
    for keyword in ("StationName", "StationAETitle", "ClinicalTrialSubjectID", "VisitComments", "PatientAddress", "RegionOfResidence", "CountryOfResidence", "InstitutionName",
                    "PerformedStationAETitle", "DeviceSerialNumber", "PatientComments"):
        assert any(k == keyword for _, k, _ in BASIC_PROFILE), keyword
    assert REMOVED_GROUP_RANGES[0][0] == 0x5000 and REMOVED_GROUP_RANGES[1][0] == 0x6000


def test_every_basic_profile_attribute_is_removed_emptied_or_replaced():
    ds, originals = _filled()
    out = deidentify_dataset(ds, SALT)
    checked = Counter()
    for tag, keyword, action in BASIC_PROFILE + MEDGEN_ADDITIONS:
        where = out.file_meta if Tag(tag).group == 0x0002 else out
        element = where.get(tag)
        original = originals[tag]
        if action.startswith("X"):
            assert element is None, f"{keyword} {Tag(tag)} ({action}) should be removed"
        elif action == "Z" or action == "Z/D":
            assert element is not None and (element.is_empty or element.value != original), f"{keyword} ({action})"
            if action == "Z":
                assert element.is_empty, f"{keyword} {Tag(tag)} (Z) should be empty"
        elif action == "D":
            assert element is not None and not element.is_empty, f"{keyword} {Tag(tag)} (D) needs a dummy value"
            assert element.value != original, f"{keyword} {Tag(tag)} (D) still holds the original"
            if element.VR == "SQ":
                assert all(len(item) == 0 for item in element.value)
        elif action == "U":
            assert element is not None and element.value == pseudonymise_uid(str(original), SALT), keyword
        else:
            pytest.fail(f"unknown action {action} for {keyword}")
        checked[action] += 1
    assert sum(checked.values()) == 617 + len(MEDGEN_ADDITIONS)
    assert not any(e.tag.is_private for e in out.iterall())
    assert 0x60003000 not in out and 0x60004000 not in out and 0x50000010 not in out
    assert out.PatientIdentityRemoved == "YES" and out.DeidentificationMethod == DEIDENTIFICATION_METHOD
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    # nothing of the originals is left anywhere in the encoded file (group 0000 is not file content)
    for tag in [t for t in out.keys() if t.group == 0x0000]:
        del out[tag]
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    blob = buffer.getvalue()
    assert b"DOE" not in blob and b"QX0" not in blob and b"1.2.826.0.1.3680043.9" not in blob


def test_uid_replacement_is_consistent_and_class_uids_stay():
    a, _ = _filled()
    b, _ = _filled()
    out_a, out_b = deidentify_dataset(a, SALT), deidentify_dataset(b, SALT)
    assert out_a.StudyInstanceUID == out_b.StudyInstanceUID == pseudonymise_uid(str(a.StudyInstanceUID), SALT)
    assert out_a.SOPClassUID == MRImageStorage and out_a.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert deidentify_dataset(a, "another secret").StudyInstanceUID != out_a.StudyInstanceUID
