"""Write a 3D volume as a real single-frame DICOM series (CT or MR Image Storage).

The writer exists so that the phantom cohort (and tests of ingestion) have genuine DICOM input:
one file per slice, Explicit VR Little Endian with a file meta header, exact geometry for oblique
and anisotropic grids, integer pixel data with a rescale slope/intercept, and fake but realistic
patient identifiers so that de-identification has something to remove.

Geometry convention: ``volume[i, j, k]`` lies at ``affine @ (i, j, k, 1)`` in RAS mm (NIfTI).
DICOM patient space is LPS, i.e. ``LPS = diag(-1, -1, 1) @ RAS``. Slice ``k`` holds
``pixel[r, c] = volume[c, r, k]``: the DICOM row direction (along which the column index ``c``
grows) is array axis 0, the column direction is array axis 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from medgen.io.atomic import atomic_write_bytes

__all__ = ["PatientIdentity", "write_dicom_series", "quantise", "default_rescale", "LPS_FROM_RAS"]

#: RAS -> LPS (and back: it is its own inverse), as a 4x4 homogeneous matrix.
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: In-plane axes must be orthogonal to this tolerance (cosine) to be representable in DICOM.
_ORTHO_TOL = 1e-6

_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}
_STORED_DTYPE = {"CT": np.dtype("<i2"), "MR": np.dtype("<u2")}


@dataclass(frozen=True)
class PatientIdentity:
    """Fake patient/study identifiers written into every slice (so de-identification is exercised)."""

    name: str = "DOE^JANE"
    patient_id: str = "MG000001"
    birth_date: str = "19700101"
    sex: str = "F"
    institution: str = "Example General Hospital"
    study_date: str = "20240101"
    accession: str = "ACC0001"
    referring_physician: str = "SMITH^JOHN"
    study_time: str = "093000"


def default_rescale(modality: str) -> tuple[float, float]:
    """Default (slope, intercept): CT stores HU + 1024 (the usual scanner convention), MR stores values as is."""
    return (1.0, -1024.0) if modality == "CT" else (1.0, 0.0)


def quantise(
    volume: np.ndarray, modality: str, rescale: tuple[float, float] | None = None, *, what: str = "volume"
) -> np.ndarray:
    """Stored integer values ``round((v - intercept) / slope)`` as int16 (CT) or uint16 (MR).

    Raises ``ValueError`` naming ``what`` when a value is non-finite, does not fit the stored type,
    or would come back (``stored * slope + intercept``) off by more than ``slope / 2``.
    """
    modality = _check_modality(modality)
    slope, intercept = rescale if rescale is not None else default_rescale(modality)
    if not np.isfinite(slope) or not np.isfinite(intercept) or slope <= 0:
        raise ValueError(f"{what}: rescale slope must be finite and > 0, intercept finite (got {slope}, {intercept})")
    values = np.asarray(volume, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what}: {int((~np.isfinite(values)).sum())} non-finite voxels cannot be stored in DICOM")
    scaled = np.rint((values - intercept) / slope)
    info = np.iinfo(_STORED_DTYPE[modality])
    if values.size and (scaled.min() < info.min or scaled.max() > info.max):
        lo, hi = info.min * slope + intercept, info.max * slope + intercept
        raise ValueError(
            f"{what}: values {values.min():g}..{values.max():g} do not fit {info.dtype.name} with slope {slope:g}, "
            f"intercept {intercept:g} (representable {lo:g}..{hi:g})"
        )
    # Floating-point slack: a value exactly half-way may land a hair beyond slope/2.
    err = np.abs(scaled * slope + intercept - values)
    if values.size and err.max() > slope / 2 * (1 + 1e-9) + 1e-9 * max(1.0, float(np.abs(values).max())):
        raise ValueError(f"{what}: round trip through slope {slope:g} would err by {err.max():g} > slope/2")
    return scaled.astype(_STORED_DTYPE[modality])


def _check_modality(modality: str) -> str:
    if modality not in _SOP_CLASS:
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    return modality


@dataclass(frozen=True)
class _Geometry:
    """Per-series DICOM geometry derived from a RAS affine (LPS mm)."""

    row_dir: np.ndarray  # unit LPS vector along array axis 0
    col_dir: np.ndarray  # unit LPS vector along array axis 1
    normal: np.ndarray  # row_dir x col_dir
    pixel_spacing: tuple[float, float]  # (between rows = |axis 1|, between columns = |axis 0|)
    slice_spacing: float
    origin: np.ndarray  # LPS of voxel (0, 0, 0)
    step: np.ndarray  # LPS displacement from slice k to k+1


def _geometry(affine: np.ndarray, what: str) -> _Geometry:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"{what}: affine must be a finite 4x4 matrix")
    lps = LPS_FROM_RAS @ affine
    norms = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(norms <= 0):
        raise ValueError(f"{what}: affine has a zero-length axis {norms}")
    row_dir, col_dir = lps[:3, 0] / norms[0], lps[:3, 1] / norms[1]
    if abs(float(row_dir @ col_dir)) > _ORTHO_TOL:
        raise ValueError(f"{what}: in-plane axes are not orthogonal (sheared affine); DICOM cannot describe it")
    normal = np.cross(row_dir, col_dir)
    step = lps[:3, 2]
    # Spacing along the slice normal; equals |affine col 2| unless the slices are tilted (gantry tilt).
    slice_spacing = abs(float(step @ normal))
    if slice_spacing <= 1e-6 * norms[2]:
        raise ValueError(f"{what}: slice axis lies in the image plane")
    return _Geometry(row_dir, col_dir, normal, (float(norms[1]), float(norms[0])), slice_spacing, lps[:3, 3], step)


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters that keeps as much precision as fits."""
    for digits in range(16, 0, -1):
        text = f"{value:.{digits}g}"
        if "e" in text:  # DS allows exponents, but fixed notation is friendlier to every reader
            text = np.format_float_positional(float(text), trim="-")
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot write {value!r} as a DICOM decimal string")


def _elem(keyword: str, value: Any) -> DataElement:
    return DataElement(keyword, dictionary_VR(keyword), value)


def _window(stored: np.ndarray, modality: str, slope: float, intercept: float) -> tuple[float, float]:
    if modality == "CT":
        return 40.0, 400.0  # head soft-tissue window (HU)
    lo, hi = np.percentile(stored, [0.5, 99.5]) * slope + intercept
    return float((lo + hi) / 2), float(max(hi - lo, slope))


def _uid(entropy: Sequence[str] | None, *parts: str) -> str:
    return generate_uid(entropy_srcs=[*entropy, *parts]) if entropy is not None else generate_uid()


def _series_elements(
    *,
    modality: str,
    shape: tuple[int, int, int],
    geom: _Geometry,
    identity: PatientIdentity,
    series_description: str,
    series_number: int,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    slope: float,
    intercept: float,
    window: tuple[float, float],
    image_type: Sequence[str],
    extra: Mapping[str, Any],
) -> list[DataElement]:
    """Data elements shared by every slice of the series (built once: the writer is on a hot path)."""
    date, time = identity.study_date, identity.study_time
    values: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 100",
        "ImageType": list(image_type),
        "SOPClassUID": _SOP_CLASS[modality],
        "StudyDate": date,
        "SeriesDate": date,
        "AcquisitionDate": date,
        "ContentDate": date,
        "StudyTime": time,
        "SeriesTime": time,
        "AcquisitionTime": time,
        "ContentTime": time,
        "AccessionNumber": identity.accession,
        "Modality": modality,
        "Manufacturer": "medgen phantom",
        "InstitutionName": identity.institution,
        "ReferringPhysicianName": identity.referring_physician,
        "SeriesDescription": series_description,
        "PatientName": identity.name,
        "PatientID": identity.patient_id,
        "PatientBirthDate": identity.birth_date,
        "PatientSex": identity.sex,
        "BurnedInAnnotation": "NO",
        "SliceThickness": _ds(geom.slice_spacing),
        "SpacingBetweenSlices": _ds(geom.slice_spacing),
        "PatientPosition": "HFS",
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "StudyID": "1",
        "SeriesNumber": int(series_number),
        "AcquisitionNumber": 1,
        "ImageOrientationPatient": [_ds(v) for v in (*geom.row_dir, *geom.col_dir)],
        "FrameOfReferenceUID": frame_uid,
        "PositionReferenceIndicator": "",
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": int(shape[1]),
        "Columns": int(shape[0]),
        "PixelSpacing": [_ds(v) for v in geom.pixel_spacing],
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
        "PixelRepresentation": 1 if modality == "CT" else 0,
        "WindowCenter": _ds(window[0]),
        "WindowWidth": _ds(window[1]),
        "RescaleIntercept": _ds(intercept),
        "RescaleSlope": _ds(slope),
    }
    if modality == "CT":
        values.update({"KVP": "", "RescaleType": "HU"})
    else:  # type 1/2 attributes of the MR Image module; callers override through ``extra``
        values.update(
            {"ScanningSequence": "SE", "SequenceVariant": "NONE", "ScanOptions": "", "MRAcquisitionType": "2D",
             "EchoTrainLength": 1}
        )
    values.update(extra)
    elements = []
    for keyword, value in values.items():
        if isinstance(value, float):
            value = _ds(value) if dictionary_VR(keyword) == "DS" else value
        elements.append(_elem(keyword, value))
    return elements


def write_dicom_series(
    volume: np.ndarray,
    affine: np.ndarray,
    out_dir: Path,
    *,
    modality: str,
    series_description: str,
    series_number: int,
    identity: PatientIdentity | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    file_names: Sequence[str] | None = None,
    rescale: tuple[float, float] | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    extra: Mapping[str, Any] | None = None,
    uid_entropy: Sequence[str] | None = None,
    deidentify: Callable[[Dataset], Dataset] | None = None,
) -> list[Path]:
    """Write ``volume`` (X, Y, Z; physical units, HU for CT) as one DICOM file per slice ``k``.

    ``affine`` maps voxel indices to RAS mm (may be oblique/anisotropic; in-plane axes must be
    orthogonal). Files go to ``out_dir/<file_names[k]>`` (default ``IM00001`` ...). ``rescale`` is
    (slope, intercept), default CT (1, -1024), MR (1, 0). ``extra`` sets further DICOM keywords on
    every slice. ``uid_entropy`` makes every generated UID a function of it (deterministic output).
    ``deidentify`` (e.g. :func:`medgen.io.deid.deidentify_dataset` with a salt) is applied to the
    header shared by every slice before anything is written; per slice only a fresh
    SOPInstanceUID, the instance number, the position and the pixels are added.
    Raises ``ValueError`` if a value cannot be stored exactly enough and ``FileExistsError`` if any
    target file exists (checked before anything is written). Returns the paths in slice order.
    """
    what = f"series {series_number} ({series_description!r})"
    modality = _check_modality(modality)
    volume = np.asarray(volume)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"{what}: expected a non-empty 3D volume, got shape {volume.shape}")
    geom = _geometry(affine, what)
    n_slices = volume.shape[2]
    names = list(file_names) if file_names is not None else [f"IM{k + 1:05d}" for k in range(n_slices)]
    if len(names) != n_slices or len(set(names)) != n_slices:
        raise ValueError(f"{what}: need {n_slices} distinct file names, got {len(names)} ({len(set(names))} distinct)")
    if any(not n or os.sep in n or (os.altsep and os.altsep in n) or n in (".", "..") for n in names):
        raise ValueError(f"{what}: file names must be plain names without directories")
    out_dir = Path(out_dir)
    paths = [out_dir / n for n in names]
    existing = [p for p in paths if p.exists()]
    if existing:
        raise FileExistsError(
            f"{what}: {len(existing)} target file(s) already exist, e.g. {existing[0]}; refusing to overwrite"
        )

    slope, intercept = rescale if rescale is not None else default_rescale(modality)
    stored = quantise(volume, modality, (slope, intercept), what=what)
    entropy = list(uid_entropy) if uid_entropy is not None else None
    tag = [modality, str(series_number), series_description]
    study_uid = study_uid or _uid(entropy, "study")
    frame_uid = frame_of_reference_uid or _uid(entropy, "frame-of-reference")
    series_uid = _uid(entropy, "series", *tag)
    common = _series_elements(
        modality=modality, shape=volume.shape, geom=geom, identity=identity or PatientIdentity(),
        series_description=series_description, series_number=series_number, study_uid=study_uid,
        series_uid=series_uid, frame_uid=frame_uid, slope=float(slope), intercept=float(intercept),
        window=_window(stored, modality, float(slope), float(intercept)), image_type=image_type, extra=extra or {},
    )
    if deidentify is not None:
        header = Dataset()
        for element in common:
            header.add(element)
        common = list(deidentify(header))

    # Each file is the series-common elements, encoded once, merged in tag order with the few
    # per-slice ones: pydicom's dcmwrite would re-encode ~60 identical elements for every slice,
    # which made DICOM writing the slowest step of the phantom cohort.
    encodings = convert_encodings(["ISO_IR 100"])
    encoded_common = [(int(e.tag), _encode([e], encodings)) for e in common]
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(paths):
        sop_uid = _uid(entropy, "instance", *tag, str(k))
        position = geom.origin + k * geom.step
        per_slice = [
            _elem("SOPInstanceUID", sop_uid),
            _elem("InstanceNumber", k + 1),
            _elem("ImagePositionPatient", [_ds(v) for v in position]),
            _elem("SliceLocation", _ds(float(position @ geom.normal))),
            DataElement("PixelData", "OW", np.ascontiguousarray(stored[:, :, k].T).tobytes()),
        ]
        body = sorted(encoded_common + [(int(e.tag), _encode([e], encodings)) for e in per_slice])
        data = b"\0" * 128 + b"DICM" + _file_meta(modality, sop_uid) + b"".join(b for _, b in body)
        atomic_write_bytes(path, data, exclusive=True)  # a file that appeared meanwhile is never overwritten
    return paths


def _encode(elements: Sequence[DataElement], encodings: list[str]) -> bytes:
    """Explicit VR Little Endian encoding of ``elements`` (in the given order)."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    for elem in elements:
        write_data_element(fp, elem, encodings)
    return fp.getvalue()


def _file_meta(modality: str, sop_uid: str) -> bytes:
    """Encoded File Meta Information group (pydicom adds group length and version)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASS[modality]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta, enforce_standard=True)
    return fp.getvalue()
