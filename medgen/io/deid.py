"""De-identification of DICOM headers (after the PS3.15 Annex E basic confidentiality profile).

Three jobs:

* **Consistent pseudonyms.** :func:`pseudonymise_uid` and :func:`pseudonymise_subject` are keyed
  hashes (HMAC-SHA256 with a secret salt): the same original value and salt give the same
  pseudonym in any process, on any machine, so series split across jobs still line up, while
  nobody without the salt can go back from a pseudonym to the original.
* **De-identified DICOM** (:func:`deidentify_dataset`), for stages that write DICOM. dicognito's
  :class:`~dicognito.anonymizer.Anonymizer` replaces names, IDs, addresses and institution, and
  shifts dates; medgen adds what it leaves: UIDs replaced through :func:`pseudonymise_uid` (so a
  UID in a DICOM output equals the one in a JSON sidecar), private tags, overlays, free-text
  comments, device serial numbers and other Annex E "remove" attributes, and descriptions unless
  asked to keep them.
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
from typing import Any, Callable, Iterator

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

log = logging.getLogger(__name__)

#: Attributes removed from de-identified DICOM on top of what dicognito replaces: the Annex E
#: "X" (remove) entries that dicognito keeps, limited to those seen in imaging series.
REMOVED_KEYWORDS: tuple[str, ...] = (
    # patient characteristics and free text about the patient
    "PatientAge", "PatientSize", "PatientWeight", "PatientSexNeutered", "EthnicGroup",
    "SmokingStatus", "PregnancyStatus", "AdditionalPatientHistory", "PatientComments",
    "MedicalAlerts", "Allergies", "PatientState", "SpecialNeeds", "PatientTransportArrangements",
    "OtherPatientIDsSequence", "IssuerOfPatientIDQualifiersSequence", "ReferencedPatientSequence",
    "PatientBirthTime", "AdmissionID", "IssuerOfAdmissionID", "ServiceEpisodeID",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "ReasonForStudy",
    "ReasonForTheRequestedProcedure", "ResponsiblePerson", "ResponsiblePersonRole",
    # people and places (names are PN and replaced; their contact details are removed)
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence", "PhysiciansOfRecordIdentificationSequence",
    "PerformingPhysicianIdentificationSequence", "PhysiciansReadingStudyIdentificationSequence",
    "OperatorIdentificationSequence", "PersonAddress", "PersonTelephoneNumbers",
    "PerformedLocation", "ScheduledStudyLocation", "ScheduledStudyLocationAETitle",
    "InstitutionCodeSequence", "InstitutionalDepartmentTypeCodeSequence",
    # equipment that identifies a site
    "DeviceSerialNumber", "DetectorID", "GantryID", "PlateID", "CassetteID",
    "AcquisitionDeviceProcessingDescription", "ContributingEquipmentSequence",
    # free-text comments, requests and audit trails
    "ImageComments", "StudyComments", "InterpretationText", "TextComments", "FrameComments",
    "AcquisitionComments", "RequestAttributesSequence", "RequestedProcedureDescription",
    "PerformedProcedureStepDescription", "ScheduledProcedureStepDescription",
    "ReferencedStudySequence", "ReferencedPerformedProcedureStepSequence",
    "OriginalAttributesSequence", "ModifiedAttributesSequence", "EncryptedAttributesSequence",
    "DigitalSignaturesSequence", "MACParametersSequence", "DerivationDescription",
)

#: Annex E "Z" attributes that dicognito keeps: type 2, so emptied rather than removed.
EMPTIED_KEYWORDS: tuple[str, ...] = ("PatientSex",)

#: Descriptions typed at the scanner: often harmless, sometimes a name or a date. Removed unless
#: the caller asks to keep them.
DESCRIPTION_KEYWORDS: tuple[str, ...] = (
    "SeriesDescription", "StudyDescription", "ProtocolName", "ProcedureCodeSequence",
    "PerformedProtocolCodeSequence", "RequestedProcedureCodeSequence",
)

#: Even groups 0x5000-0x50FF (curves, retired) and 0x6000-0x60FF (overlays) can carry burned-in
#: text drawn on top of the image.
_DRAWING_GROUPS = (range(0x5000, 0x5100, 2), range(0x6000, 0x6100, 2))

#: Annex E codes written into DeidentificationMethodCodeSequence (CID 7050).
_BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
_MODIFIED_DATES_CODE = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")


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


class _ConsistentUIDs:
    """dicognito element handler: replace UIDs with :func:`pseudonymise_uid` instead of its own hash.

    Class UIDs (what kind of object, not which) and the transfer syntax are kept, as dicognito does.
    """

    def __init__(self, salt: str) -> None:
        self._salt = salt

    def __call__(self, dataset: Dataset, element: pydicom.DataElement) -> bool:
        if element.VR != "UI" or not element.value:
            return False
        keyword = element.keyword or ""
        if keyword.endswith("ClassUID") or keyword == "TransferSyntaxUID":
            return False
        if isinstance(element.value, pydicom.multival.MultiValue):
            element.value = [pseudonymise_uid(v, self._salt) for v in element.value]
        else:
            element.value = pseudonymise_uid(element.value, self._salt)
        return True

    def describe_actions(self) -> Iterator[str]:
        yield "Replace all UI elements with keyed-hash UIDs (medgen pseudonymise_uid)"


def _remove_keywords(ds: Dataset, keywords: set[str]) -> None:
    """Delete the elements named in ``keywords`` at every nesting level."""
    tags = {pydicom.datadict.tag_for_keyword(k) for k in keywords}

    def visit(dataset: Dataset, element: pydicom.DataElement) -> None:
        if element.tag in tags:
            del dataset[element.tag]

    ds.walk(visit)


def _remove_drawings(ds: Dataset) -> None:
    """Delete overlay and curve groups (they may hold burned-in text)."""
    groups = {g for r in _DRAWING_GROUPS for g in r}
    for tag in [t for t in ds.keys() if t.group in groups]:
        del ds[tag]


def _anonymizer_seed(ds: Dataset, salt: str) -> str:
    """Seed for dicognito: per patient, so date shifts differ between patients but not between files."""
    return _keyed_hex(salt, "dicognito", str(ds.get("PatientID", "")).strip())


def _add_method_codes(ds: Dataset) -> None:
    codes = []
    for value, meaning in (_BASIC_PROFILE_CODE, _MODIFIED_DATES_CODE):
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        codes.append(item)
    ds.DeidentificationMethodCodeSequence = codes
    ds.LongitudinalTemporalInformationModified = "MODIFIED"


def deidentify_dataset(ds: Dataset, salt: str, *, keep_descriptions: bool = False) -> Dataset:
    """A de-identified copy of ``ds`` (the input is left untouched).

    Names, IDs, addresses and institution are replaced by dicognito (consistent per salt and
    patient), dates are shifted by a per-patient offset, UIDs become :func:`pseudonymise_uid`,
    private tags, overlays and :data:`REMOVED_KEYWORDS` are removed, :data:`EMPTIED_KEYWORDS`
    emptied, and so are
    :data:`DESCRIPTION_KEYWORDS` unless ``keep_descriptions`` (which also keeps the contrast
    agent's name; otherwise it becomes "PRESENT"). Pixels are not inspected: a
    ``BurnedInAnnotation`` of YES is logged as a warning (see :func:`has_burned_in_annotation`).
    """
    from dicognito.anonymizer import Anonymizer

    out = copy.deepcopy(ds)
    had_meta = getattr(out, "file_meta", None) is not None
    if not had_meta:
        out.file_meta = FileMetaDataset()  # dicognito walks the file meta too
    out.remove_private_tags()
    _remove_drawings(out)
    _remove_keywords(out, set(REMOVED_KEYWORDS) | (set() if keep_descriptions else set(DESCRIPTION_KEYWORDS)))
    for keyword in EMPTIED_KEYWORDS:
        if keyword in out:
            out[keyword].value = ""
    if not keep_descriptions and out.get("ContrastBolusAgent"):
        # Free text typed at the scanner; a dummy value keeps "contrast was given" (Annex E action D).
        out.ContrastBolusAgent = "PRESENT"
    anonymizer = Anonymizer(seed=_anonymizer_seed(ds, salt))
    anonymizer.add_element_handler(_ConsistentUIDs(salt))
    anonymizer.anonymize(out)
    _add_method_codes(out)
    if not had_meta and len(out.file_meta) == 0:
        del out.file_meta
    if has_burned_in_annotation(out):
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


def sidecar_from_header(ds: Dataset, *, keep_descriptions: bool = False, salt: str = "medgen") -> dict[str, Any]:
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
