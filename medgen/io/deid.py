"""De-identification of DICOM headers (after the PS3.15 Annex E basic confidentiality profile).

Three jobs:

* **Consistent pseudonyms.** :func:`pseudonymise_uid` and :func:`pseudonymise_subject` are keyed
  hashes (HMAC-SHA256 with a secret salt): the same original value and salt give the same
  pseudonym in any process, on any machine, so series split across jobs still line up, while
  nobody without the salt can go back from a pseudonym to the original.
* **De-identified DICOM** (:func:`deidentify_dataset`), the one path every DICOM that medgen
  writes from data goes through: PS3.15 Annex E Table E.1-1 (:mod:`medgen.io.annex_e`) applied
  attribute by attribute, UIDs replaced through :func:`pseudonymise_uid` (so a UID in a DICOM
  output equals the one in a JSON sidecar), private tags and overlays removed, descriptions
  removed unless asked to keep them.
* **JSON sidecars** (:func:`sidecar_from_header`): a whitelist of acquisition parameters, so
  that an attribute nobody thought about is left out rather than let through.

Sidecar keys follow BIDS where BIDS has a name for the attribute; times (RepetitionTime,
EchoTime, InversionTime) are converted from DICOM milliseconds to BIDS seconds.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import logging
from typing import Any, Callable

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from medgen.io.annex_e import BASIC_PROFILE, MEDGEN_ADDITIONS, REMOVED_GROUP_RANGES, effective_action

log = logging.getLogger(__name__)

#: Descriptions typed at the scanner: often harmless, sometimes a name or a date. Removed (Annex E
#: action X) unless the caller asks to keep them; with them the contrast agent's name is kept too.
DESCRIPTION_KEYWORDS: tuple[str, ...] = (
    "SeriesDescription", "StudyDescription", "ProtocolName", "ProcedureCodeSequence",
    "PerformedProtocolCodeSequence", "RequestedProcedureCodeSequence",
)

#: Dummy values chosen instead of emptying where the table allows D: contrast given or not stays known.
_DUMMY_OVERRIDES: dict[str, str] = {"ContrastBolusAgent": "PRESENT"}

#: Annex E code written into DeidentificationMethodCodeSequence (CID 7050).
_BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
DEIDENTIFICATION_METHOD = "PS3.15 E.1-1 basic profile (medgen); keyed-hash UIDs"  # LO: <= 64

_ACTIONS: dict[int, str] = {tag: effective_action(action) for tag, _, action in BASIC_PROFILE + MEDGEN_ADDITIONS}
_RAW_ACTIONS: dict[int, str] = {tag: action for tag, _, action in BASIC_PROFILE + MEDGEN_ADDITIONS}
_REMOVED_GROUPS = frozenset(g for r in REMOVED_GROUP_RANGES for g in r)
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT", "UI"})
#: VRs whose D dummy is a keyed hash of the original value (consistent across files, length <= 14).
_HASHED_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_FIXED_DUMMIES: dict[str, Any] = {
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "DS": "0", "IS": "0", "AS": "000D",
    "US": 0, "SS": 0, "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0, "OB": b"\0\0", "OW": b"\0\0", "UN": b"\0\0",
    "UR": "urn:anonymous",
}


def _keyed_hex(salt: str, kind: str, value: str) -> str:
    """HMAC-SHA256 of ``kind:value`` keyed by ``salt``; ``kind`` keeps the pseudonym spaces apart."""
    return hmac.new(salt.encode("utf-8"), f"{kind}:{value}".encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonymise_uid(uid: str, salt: str) -> str:
    """A new valid UID determined by ``uid`` and ``salt`` only (same in every process)."""
    return str(generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[_keyed_hex(salt, "uid", str(uid).strip())]))


def pseudonymise_subject(patient_id: str, salt: str) -> str:
    """A subject label ``sub-<10 hex>`` from a keyed hash of ``patient_id`` (never the ID itself)."""
    return "sub-" + _keyed_hex(salt, "subject", str(patient_id).strip())[:10]


def has_burned_in_annotation(ds: Dataset) -> bool:
    """True when the header says that the pixels contain burned-in text (BurnedInAnnotation YES)."""
    return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"


# --------------------------------------------------------------------------- DICOM datasets


def _is_class_uid(keyword: str) -> bool:
    """Class UIDs and the transfer syntax say what kind of object, not whose: kept."""
    return keyword.endswith("ClassUID") or keyword in ("TransferSyntaxUID", "SOPClassesInStudy")


def _dummy(element: pydicom.DataElement, salt: str) -> Any:
    """Annex E action D: a non-empty value valid for the VR; text becomes a keyed hash of the original."""
    keyword = element.keyword or ""
    if keyword in _DUMMY_OVERRIDES:
        return _DUMMY_OVERRIDES[keyword]
    if element.VR == "SQ":
        return [Dataset()]  # one empty item: a non-empty sequence that says nothing
    if element.VR == "UI":
        return pseudonymise_uid(str(element.value), salt)
    if element.VR in _HASHED_VRS:
        return "ANON" + _keyed_hex(salt, "dummy", str(element.value)).upper()[:10]
    return _FIXED_DUMMIES.get(element.VR, b"\0\0")


def _empty(element: pydicom.DataElement) -> Any:
    """Annex E action Z: a zero-length value."""
    if element.VR == "SQ":
        return []
    return "" if element.VR in _TEXT_VRS else None


def _replace_uid(element: pydicom.DataElement, salt: str) -> None:
    if isinstance(element.value, pydicom.multival.MultiValue):
        element.value = [pseudonymise_uid(v, salt) for v in element.value]
    elif element.value:
        element.value = pseudonymise_uid(str(element.value), salt)


def _apply_profile(ds: Dataset, salt: str, kept: frozenset[str]) -> None:
    """Apply Table E.1-1 to every element of ``ds`` and, recursively, of its sequence items.

    Private tags and overlay/curve groups are removed; a UID not in the table (other than class
    UIDs) is replaced like a ``U`` entry, so no instance-identifying UID slips through.
    """
    for element in list(ds):
        tag = int(element.tag)
        keyword = element.keyword or ""
        if element.tag.is_private or element.tag.group in _REMOVED_GROUPS:
            del ds[tag]
            continue
        action = None if keyword in kept else _ACTIONS.get(tag)
        if action == "X":
            del ds[tag]
            continue
        if action == "Z" and keyword in _DUMMY_OVERRIDES and _RAW_ACTIONS[tag] == "Z/D" and not element.is_empty:
            action = "D"
        if action == "Z":
            element.value = _empty(element)
        elif action == "D":
            element.value = _dummy(element, salt)
        elif action == "U" or (element.VR == "UI" and keyword not in kept and not _is_class_uid(keyword)):
            _replace_uid(element, salt)
        if element.VR == "SQ":
            for item in element.value or []:
                _apply_profile(item, salt, kept)


def _add_method(ds: Dataset, identity_removed: bool) -> None:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = _BASIC_PROFILE_CODE[0], "DCM", _BASIC_PROFILE_CODE[1]
    ds.DeidentificationMethodCodeSequence = [item]
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    ds.PatientIdentityRemoved = "YES" if identity_removed else "NO"


def deidentify_dataset(ds: Dataset, salt: str, *, keep_descriptions: bool = False) -> Dataset:
    """A copy of ``ds`` de-identified by the PS3.15 Annex E basic profile (the input is untouched).

    Every attribute of Table E.1-1 (:data:`medgen.io.annex_e.BASIC_PROFILE`) is removed, emptied
    or replaced as the table says, in the data set, its file meta and every sequence item; UIDs
    become :func:`pseudonymise_uid` (the same in every file and job with the same ``salt``, and
    equal to those in ingest's sidecars); private tags, overlays and curves are removed.
    ``keep_descriptions`` keeps :data:`DESCRIPTION_KEYWORDS` and the contrast agent's name.
    This one function is the de-identification path of every DICOM medgen writes from data.

    dicognito (an Annex E implementation) is not used: it shifts dates and keeps attributes where
    Table E.1-1 says to empty or remove them, and the table is easier to audit in one place.
    Pixels are not inspected: ``BurnedInAnnotation`` YES is logged and leaves
    ``PatientIdentityRemoved`` at NO.
    """
    out = copy.deepcopy(ds)
    kept = frozenset(DESCRIPTION_KEYWORDS) | {"ContrastBolusAgent"} if keep_descriptions else frozenset()
    _apply_profile(out, salt, kept)
    meta = getattr(out, "file_meta", None)
    if meta is not None:
        _apply_profile(meta, salt, frozenset())
    burned_in = has_burned_in_annotation(out)
    _add_method(out, identity_removed=not burned_in)
    if burned_in:
        log.warning("BurnedInAnnotation is YES: the pixels may show identifying text that header de-identification cannot remove")
    return out


# --------------------------------------------------------------------------- JSON sidecars


def _number(value: Any) -> float | int | None:
    if isinstance(value, int) and not isinstance(value, bool):  # IS, US: keep integers integral
        return int(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _ms_to_s(value: Any) -> float | None:
    x = _number(value)
    return None if x is None else round(float(x) / 1000.0, 9)


def _numbers(value: Any) -> list[float] | None:
    items = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    out = [_number(v) for v in items]
    return None if any(v is None for v in out) else [float(v) for v in out]  # type: ignore[arg-type]


def _strings(value: Any) -> list[str] | str:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [str(v) for v in value]
    return str(value)


def _text(value: Any) -> str:
    return str(value).strip()


Converter = Callable[[Any], Any]

#: The sidecar whitelist: (DICOM keyword, sidecar key, converter). Only these are copied; every
#: entry is an acquisition parameter that describes the scanner set-up, not the person.
SIDECAR_FIELDS: tuple[tuple[str, str, Converter], ...] = (
    ("Modality", "Modality", _text),
    ("Manufacturer", "Manufacturer", _text),
    ("ManufacturerModelName", "ManufacturersModelName", _text),
    ("MagneticFieldStrength", "MagneticFieldStrength", _number),
    ("ImagingFrequency", "ImagingFrequency", _number),
    ("ReceiveCoilName", "ReceiveCoilName", _text),
    ("MRAcquisitionType", "MRAcquisitionType", _text),
    ("ScanningSequence", "ScanningSequence", _strings),
    ("SequenceVariant", "SequenceVariant", _strings),
    ("ScanOptions", "ScanOptions", _strings),
    ("SequenceName", "SequenceName", _text),
    ("RepetitionTime", "RepetitionTime", _ms_to_s),
    ("EchoTime", "EchoTime", _ms_to_s),
    ("InversionTime", "InversionTime", _ms_to_s),
    ("FlipAngle", "FlipAngle", _number),
    ("EchoTrainLength", "EchoTrainLength", _number),
    ("PixelBandwidth", "PixelBandwidth", _number),
    ("SliceThickness", "SliceThickness", _number),
    ("SpacingBetweenSlices", "SpacingBetweenSlices", _number),
    ("PixelSpacing", "PixelSpacing", _numbers),
    ("KVP", "KVP", _number),
    ("XRayTubeCurrent", "XRayTubeCurrent", _number),
    ("ExposureTime", "ExposureTime", _number),
    ("ConvolutionKernel", "ConvolutionKernel", _strings),
    ("ReconstructionDiameter", "ReconstructionDiameter", _number),
    ("ImageType", "ImageType", _strings),
    ("BodyPartExamined", "BodyPartExamined", _text),
    ("PatientPosition", "PatientPosition", _text),
    ("PhotometricInterpretation", "PhotometricInterpretation", _text),
    ("BitsStored", "BitsStored", _number),
    ("RescaleType", "RescaleType", _text),
)

#: Free-text descriptions: only copied with ``keep_descriptions``.
DESCRIPTION_FIELDS: tuple[tuple[str, str], ...] = (
    ("SeriesDescription", "SeriesDescription"),
    ("ProtocolName", "ProtocolName"),
)

#: UIDs copied in pseudonymised form, so outputs can be grouped by series/study/frame of reference.
SIDECAR_UIDS: tuple[str, ...] = ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")


def sidecar_from_header(ds: Dataset, *, salt: str, keep_descriptions: bool = False) -> dict[str, Any]:
    """A BIDS-like sidecar of the whitelisted acquisition parameters in ``ds``.

    Never names, IDs, dates, times, institution, addresses or serial numbers; UIDs only
    pseudonymised with ``salt``; contrast agent only as present/absent (the agent's name is free
    text); ``BurnedInAnnotation`` only when it is YES.
    """
    out: dict[str, Any] = {}
    for keyword, key, convert in SIDECAR_FIELDS:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        converted = convert(value)
        if converted not in (None, "", []):
            out[key] = converted
    if keep_descriptions:
        for keyword, key in DESCRIPTION_FIELDS:
            if ds.get(keyword):
                out[key] = _text(ds.get(keyword))
    for keyword in SIDECAR_UIDS:
        if ds.get(keyword):
            out[keyword] = pseudonymise_uid(str(ds.get(keyword)), salt)
    if "ContrastBolusAgent" in ds or "ContrastBolusAgentSequence" in ds:
        out["ContrastBolusAgentPresent"] = bool(ds.get("ContrastBolusAgent") or ds.get("ContrastBolusAgentSequence"))
    if has_burned_in_annotation(ds):
        out["BurnedInAnnotation"] = "YES"
    return out
