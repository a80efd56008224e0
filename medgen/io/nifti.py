"""NIfTI reading and writing with the checks that keep geometry and values honest.

Reading refuses what would silently land a volume in the wrong place or with the wrong
values: a qform that disagrees with the sform (nibabel and ITK pick different ones), a zero
voxel size, a truncated file, non-finite voxels. Writing always produces float32 data with
qform == sform, a header built from scratch (no text field of the source is carried over),
and an atomic rename so that a reader never sees half a file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from isal import igzip

from medgen.io.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

NonFinitePolicy = Literal["error", "zero", "min"]
FormPolicy = Literal["error", "warn"]

#: Largest disagreement (mm) between qform and sform that is still "the same" geometry.
FORM_TOLERANCE_MM = 1e-3


class NiftiError(ValueError):
    """A NIfTI file that medgen refuses to read; the message names the file and the fault."""


@dataclass
class Volume:
    """A 3D image in world space: ``array[i, j, k]`` lies at ``affine @ (i, j, k, 1)`` (RAS mm)."""

    array: np.ndarray
    affine: np.ndarray
    warnings: list[str] = field(default_factory=list)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def _choose_affine(img: nib.Nifti1Image, path: Path, policy: FormPolicy) -> tuple[np.ndarray, list[str]]:
    hdr = img.header
    qform, qcode = hdr.get_qform(coded=True)
    sform, scode = hdr.get_sform(coded=True)
    notes: list[str] = []
    if qcode and scode:
        # Compare where the corners of the volume land, in mm: that is what a user would see.
        shape = np.array(img.shape[:3]) - 1
        corners = np.array([[i, j, k, 1] for i in (0, shape[0]) for j in (0, shape[1]) for k in (0, shape[2])]).T
        gap = np.abs(qform @ corners - sform @ corners).max()
        if gap > FORM_TOLERANCE_MM:
            msg = (
                f"{path}: qform and sform disagree by up to {gap:.3f} mm at the volume corners; "
                "readers differ on which one they use"
            )
            if policy == "error":
                raise NiftiError(msg + " (--form-mismatch warn / config ingest.form_mismatch: warn uses the sform)")
            notes.append(msg + "; used the sform")
        return sform, notes
    if scode:
        return sform, notes
    if qcode:
        return qform, notes
    notes.append(f"{path}: neither qform nor sform is set; used the voxel sizes only")
    return hdr.get_base_affine(), notes


def _raw_zooms(img: nib.Nifti1Image, path: Path) -> tuple[float, ...]:
    """Voxel sizes as stored: nibabel silently repairs a zero pixdim to 1 when it loads a header."""
    with nib.openers.ImageOpener(str(path)) as fobj:
        raw = type(img.header).from_fileobj(fobj, check=False)
    return tuple(float(z) for z in raw["pixdim"][1:4])


def load_nifti(
    path: Path | str,
    *,
    nonfinite: NonFinitePolicy = "error",
    form_mismatch: FormPolicy = "error",
) -> Volume:
    """Read a 3D NIfTI volume as float32 with its world affine (RAS mm).

    A trailing singleton dimension (X, Y, Z, 1) is squeezed. ``nonfinite`` says what to do with
    NaN/inf voxels: refuse (default), replace by 0, or by the finite minimum; replacements are
    counted in ``Volume.warnings``.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except FileNotFoundError:
        raise
    except Exception as exc:  # nibabel raises several types for damaged files
        raise NiftiError(f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {exc}); the file may be truncated") from exc
    zooms = _raw_zooms(img, path)
    if any(z <= 0 for z in zooms):
        raise NiftiError(f"{path}: voxel size (pixdim) {tuple(float(z) for z in zooms)} has a zero or negative entry")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NiftiError(f"{path}: expected a 3D volume, found shape {data.shape}")
    affine, notes = _choose_affine(img, path, form_mismatch)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])) < 1e-12:
        raise NiftiError(
            f"{path}: the voxel-to-world matrix (sform/qform) is singular or not finite, so the voxels have no place "
            "in space; correct the header (e.g. re-export the image from its source) before using it"
        )
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad:
        if nonfinite == "error":
            raise NiftiError(f"{path}: {n_bad} NaN/inf voxels (--nonfinite zero|min / config ingest.nonfinite: zero|min replaces them)")
        fill = 0.0 if nonfinite == "zero" else float(data[~bad].min()) if n_bad < data.size else 0.0
        data = np.where(bad, np.float32(fill), data)
        notes.append(f"{path}: replaced {n_bad} NaN/inf voxels by {fill}")
    for note in notes:
        log.warning(note)
    return Volume(array=data, affine=np.asarray(affine, dtype=np.float64), warnings=notes)


def nifti_image(array: np.ndarray, affine: np.ndarray, dtype: type = np.float32) -> nib.Nifti1Image:
    """A NIfTI-1 image with a fresh header, qform == sform == ``affine`` (code 1, scanner)."""
    data = np.asarray(array)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"medgen"
    return img


def save_nifti(path: Path | str, array: np.ndarray, affine: np.ndarray, *, dtype: type = np.float32) -> Path:
    """Write ``array`` with ``affine`` atomically (temp file in the same folder, then rename).

    Data are written as float32 unless ``dtype`` says otherwise (labels: uint8/int16); values are
    never rescaled or quantised, and NaN is refused rather than written as 0 by an integer type.
    """
    path = Path(path)
    data = np.asarray(array)
    if np.issubdtype(np.dtype(dtype), np.integer) and np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise ValueError(f"{path}: refusing to write NaN/inf into an integer NIfTI")
        if not np.array_equal(data, np.round(data)):
            raise ValueError(f"{path}: refusing to quantise non-integer values into {np.dtype(dtype).name}")
    payload = nifti_image(data, affine, dtype).to_bytes()
    if path.name.endswith(".gz"):
        # ISA-L's gzip at level 1 writes the same standard gzip stream about 5x faster than
        # nibabel's zlib path; gzip time dominates converting a large series.
        payload = igzip.compress(payload, compresslevel=1)
    return atomic_write_bytes(path, payload)
