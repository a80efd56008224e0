"""Write a model output as a new, de-identified DERIVED DICOM series next to its source study.

The series is new (fresh SeriesInstanceUID and SOPInstanceUIDs) but, when a source header is
given, its StudyInstanceUID and FrameOfReferenceUID are the source's passed through
:func:`medgen.io.deid.pseudonymise_uid` with the same salt as ingest/de-identification: a viewer
then files the synthetic series into the de-identified source study and overlays it on the
source images. Nothing else is taken from the source header: no names, IDs, dates or
institution. The header then goes through :func:`medgen.io.deid.deidentify_dataset`, the one
Annex E path (which replaces the source UIDs and sets ``PatientIdentityRemoved``).

Stored values:

* CT: int16 with RescaleSlope 1 and RescaleIntercept -1024 (HU survive to within 0.5 HU); HU
  outside the representable range -33792..31743 are clipped (a model bounded by its CT window
  never gets there).
* MR: uint16 with an intercept at or below the minimum and a slope chosen so that the maximum
  fits; every float value comes back to within slope / 2.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medgen.io.deid import deidentify_dataset
from medgen.io.dicom_write import PatientIdentity, write_dicom_series

__all__ = ["write_derived_series", "derived_rescale", "ANONYMOUS_IDENTITY", "CT_INTERCEPT"]

#: CT storage: HU = stored + CT_INTERCEPT (the usual scanner convention).
CT_INTERCEPT = -1024.0
_INT16 = np.iinfo(np.int16)
_UINT16 = np.iinfo(np.uint16)

#: Identifiers written into every derived slice: nothing that names or dates a person.
ANONYMOUS_IDENTITY = PatientIdentity(
    name="ANONYMOUS", patient_id="", birth_date="", sex="", institution="", study_date="",
    accession="", referring_physician="", study_time="",
)


def _round_up_sig(value: float, digits: int = 4) -> float:
    """``value`` rounded up to ``digits`` significant digits, so that a DS string holds it exactly."""
    exponent = math.floor(math.log10(value)) - digits + 1
    step = 10.0**exponent
    return float(f"{math.ceil(value / step - 1e-9) * step:.{digits}g}")


def derived_rescale(volume: np.ndarray, modality: str) -> tuple[float, float]:
    """(slope, intercept) for storing ``volume``: CT (1, -1024); MR a uint16 range covering min..max."""
    if modality == "CT":
        return 1.0, CT_INTERCEPT
    lo, hi = float(np.min(volume)), float(np.max(volume))
    intercept = float(math.floor(min(lo, 0.0)))  # 0 for the usual non-negative MR; an integer otherwise
    span = hi - intercept
    # Leave a few stored values of headroom so that rounding the slope never pushes hi past 65535.
    slope = _round_up_sig(span / (_UINT16.max - 8)) if span > 0 else 1.0
    return slope, intercept


def _stored_range_clip(volume: np.ndarray, modality: str) -> np.ndarray:
    """CT clipped to what int16 with intercept -1024 can hold (HU); MR unchanged."""
    if modality != "CT":
        return volume
    return np.clip(volume, _INT16.min + CT_INTERCEPT, _INT16.max + CT_INTERCEPT)


def _study_uids(source_header: Dataset | None) -> tuple[str | None, str | None]:
    """The source's (study, frame of reference) UIDs, replaced by the de-identification path; None: fresh ones."""
    if source_header is None:
        return None, None
    study = str(source_header.get("StudyInstanceUID", "") or "").strip()
    frame = str(source_header.get("FrameOfReferenceUID", "") or "").strip()
    return study or None, frame or None


def write_derived_series(
    volume: np.ndarray,
    affine: np.ndarray,
    out_dir: Path,
    *,
    modality: str,
    source_header: Dataset | None,
    series_description: str,
    salt: str,
    series_number: int = 9001,
) -> list[Path]:
    """Write ``volume`` (X, Y, Z; HU for CT, a.u. for MR) with RAS ``affine`` as a DERIVED series.

    ``modality`` is "CT" or "MR". ``source_header`` (a header of the series the volume was derived
    from, or None) supplies only the study and frame-of-reference UIDs, pseudonymised with
    ``salt``. Returns the written paths in slice order; refuses to overwrite existing files.
    """
    if modality not in ("CT", "MR"):
        raise ValueError(f"derived DICOM modality must be 'CT' or 'MR', got {modality!r}")
    values = np.asarray(volume, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{series_description!r}: {int((~np.isfinite(values)).sum())} non-finite voxels cannot be stored")
    values = _stored_range_clip(values, modality)
    study_uid, frame_uid = _study_uids(source_header)
    extra = {"Manufacturer": "medgen", "BurnedInAnnotation": "NO"}
    return write_dicom_series(
        values, affine, Path(out_dir), modality=modality, series_description=series_description,
        series_number=series_number, identity=ANONYMOUS_IDENTITY, study_uid=study_uid,
        frame_of_reference_uid=frame_uid, rescale=derived_rescale(values, modality),
        image_type=("DERIVED", "SECONDARY"), extra=extra,
        # medgen wrote the description itself (model and task), so it is kept
        deidentify=lambda header: deidentify_dataset(header, salt, keep_descriptions=True),
    )
