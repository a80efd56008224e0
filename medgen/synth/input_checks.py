"""Checks that an input fits the model before it is translated: its modality, field of view and intensities.

A T1w -> CT model given a CT volume still writes a plausible-looking "CT": the only defence is
to know what the input is. Its modality comes from the caller (``--source-modality``), else a
DICOM series' Modality (and, for MR, the sequence the series description names), else the JSON
sidecar beside a NIfTI file (``Modality``, as ``medgen ingest`` and BIDS write it). A mismatch
with the model's source is refused unless forced; the outcome goes into the output's sidecar.
An input whose field of view or intensity range lies far from the training data's gets a
warning that names the figures (the model may still be right, but it was not trained on that).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from medgen.data.normalise import is_ct
from medgen.errors import CorruptFileError, ModalityMismatchError
from medgen.io.atomic import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["ModalityCheck", "check_modality", "sidecar_path", "range_warnings", "write_sidecar", "FAR_FACTOR"]

#: MR sequence labels (medgen's canonical spellings); "MR" alone says only that it is MR.
MR_LABELS = frozenset({"MR", "T1w", "T2w", "FLAIR", "PDw", "T2starw"})
#: A field of view or intensity span this many times larger or smaller than the training data's is "far".
FAR_FACTOR = 2.0
#: The same for an intensity span (MR scales vary a lot between scanners, and are normalised per subject).
FAR_INTENSITY_FACTOR = 10.0


@dataclass
class ModalityCheck:
    """What was found out about the input's modality, as recorded in the output's sidecar."""

    model_source: str
    input_modality: str | None
    found_in: str | None
    agrees: bool | None
    forced: bool

    def record(self) -> dict[str, Any]:
        return asdict(self)


def _canonical(label: str) -> str:
    from medgen.io.ingest import normalise_modality

    return normalise_modality(str(label))


def _family(label: str) -> str:
    """CT, MR or the DICOM code: what can be told apart from a DICOM Modality alone."""
    if is_ct(label):
        return "CT"
    return "MR" if label in MR_LABELS or label.upper().startswith("MR") else label.upper()


def agrees(found: str, source: str) -> bool:
    """Whether an input labelled ``found`` can be the model's ``source``: the same label, or plain
    "MR" for an MR sequence (the DICOM code does not tell T1w from T2w)."""
    found, source = _canonical(found), _canonical(source)
    if found == source:
        return True
    if _family(found) != _family(source):
        return False
    return "MR" in (found.upper(), source.upper())


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar of a NIfTI file: ``x.nii.gz`` / ``x.nii`` -> ``x.json``."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    return path.with_suffix(".json")


def _from_sidecar(input_path: Path) -> tuple[str | None, str | None]:
    sidecar = sidecar_path(input_path)
    if not sidecar.is_file():
        return None, None
    try:
        doc = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{sidecar}: the input's sidecar is not valid JSON ({exc}); fix or move it, or pass --source-modality") from None
    value = doc.get("Modality") if isinstance(doc, dict) else None
    return (str(value), f"sidecar {sidecar.name} (Modality)") if value else (None, None)


def _from_dicom(header: Any) -> tuple[str | None, str | None]:
    from medgen.io.ingest import classify_series

    code = str(header.get("Modality", "") or "").strip()
    if not code:
        return None, None
    label = classify_series(header)
    return label, "DICOM Modality" if label == code.upper() else "DICOM Modality and series description"


def check_modality(input_path: Path, header: Any, source: str, target: str, *, given: str | None = None, force: bool = False) -> ModalityCheck:
    """Find the input's modality and compare it with the model's ``source``.

    Raises :class:`~medgen.errors.ModalityMismatchError` on a mismatch unless ``force``.
    ``header``: the first DICOM header of a DICOM input, else None.
    """
    if given:
        found, where = _canonical(given), "--source-modality"
    elif header is not None:
        found, where = _from_dicom(header)
    else:
        found, where = _from_sidecar(Path(input_path))
    if found is None:
        log.info("%s: no modality recorded (no sidecar JSON with Modality); taken to be %s; pass --source-modality to have it checked", input_path, source)
        return ModalityCheck(source, None, None, None, force)
    ok = agrees(found, source)
    check = ModalityCheck(source, found, where, ok, force and not ok)
    if ok:
        return check
    problem = f"{input_path}: the input is {found} (from {where}) but this model translates {source} -> {target}"
    if not force:
        remedy = f"pass a {source} image" + ("" if where == "--source-modality" else f", or --source-modality {source} if the {where} is wrong")
        raise ModalityMismatchError(f"{problem}; {remedy}, or --force to translate it anyway (recorded in the output's sidecar)")
    log.warning("%s; translating anyway (--force), as the output's sidecar records", problem)
    return check


def _extent_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask)
    return (idx.max(axis=0) - idx.min(axis=0) + 1) * spacing


def range_warnings(ras: np.ndarray, mask: np.ndarray, data: Mapping[str, Any], source: str) -> list[str]:
    """Warnings for an input (RAS, at the model's spacing; ``mask``: its head mask) far outside the
    training field of view or intensity range (``data``: the model card's data section); each
    names the figures. Also logged."""
    spacing = np.asarray(data["spacing"], dtype=np.float64)
    warnings: list[str] = []
    train_fov = np.asarray(data.get("size") or ras.shape, dtype=np.float64) * spacing
    fov = np.asarray(ras.shape, dtype=np.float64) * spacing
    head = _extent_mm(mask, spacing) if mask.any() else fov

    def mm(v: np.ndarray) -> str:
        return "x".join(f"{x:.0f}" for x in v) + " mm"

    if np.any(head > FAR_FACTOR * train_fov) or np.any(fov < train_fov / FAR_FACTOR):
        warnings.append(
            f"the input's field of view is far from the training data's: input {mm(fov)} (head {mm(head)}), "
            f"training crop {mm(train_fov)}; the model never saw an image of that extent"
        )
    mapping = (data.get("mappings") or {}).get(source) or {}
    train_range = mapping.get("source_range")
    values = ras[mask.astype(bool)] if mask.any() else ras.ravel()
    if train_range and values.size:
        lo, hi = (float(v) for v in train_range)
        p_lo, p_hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
        width, span = hi - lo, p_hi - p_lo
        far = width > 0 and (span > FAR_INTENSITY_FACTOR * width or span < width / FAR_INTENSITY_FACTOR
                             or p_hi < lo - width or p_lo > hi + width)
        if far:
            units = mapping.get("units", "")
            warnings.append(
                f"the input's intensities are far from the training data's: input {p_lo:.4g} to {p_hi:.4g} {units} "
                f"(0.5th-99.5th percentile in the head), training {lo:.4g} to {hi:.4g} {units}"
                + ("; is it in HU (RescaleSlope/Intercept applied)?" if is_ct(source) else "")
            )
    for text in warnings:
        log.warning(text)
    return warnings


def write_sidecar(output_path: Path, dicom: bool, record: dict[str, Any]) -> Path:
    """The translation's sidecar beside the output (``out.json`` for ``out.nii.gz``; ``DIR.json`` for a DICOM folder)."""
    output_path = Path(output_path)
    path = output_path.with_name(output_path.name + ".json") if dicom else sidecar_path(output_path)
    return atomic_write_text(path, json.dumps(record, indent=2) + "\n")
