"""Find DICOM image series in files and folders and load each as a float32 volume with a RAS affine.

The public entry of medgen's DICOM reading; three steps, so that a caller can decide per series
what to convert, each in a module of its own:

* :func:`scan_dicom` (:mod:`medgen.io.dicom_scan`) reads headers only, groups files by
  SeriesInstanceUID, sets aside non-image objects and reports unreadable or truncated files by
  name, with the geometry of every slice and where its pixels lie.
* :func:`split_series` (:mod:`medgen.io.dicom_split`) cuts a series into what converts on its
  own: one part per slice orientation, one per 2D image without patient geometry; localizer
  frames mixed into a series are dropped and named.
* :func:`load_series` (this module) assembles the volume: the stack checks of
  :mod:`medgen.io.dicom_checks` (orientation, duplicates, spacing, gantry tilt, localizers,
  rescale), the pixels of :mod:`medgen.io.dicom_pixels` (per-slice rescale, MONOCHROME1), the
  resampling of an uneven or tilted stack where asked, and returns ``(X, Y, Z)`` float32 in
  physical units with a voxel -> RAS affine.

Why medgen reads DICOM itself rather than through SimpleITK's ``ImageSeriesReader`` or
dcm2niix (which the tests use as the reference: ``tests/test_dcm2niix_agreement.py``): every
refusal names the series, the file, the DICOM tag and the option that changes the decision;
the decisions a series reader takes on its own defaults with at most a log line (stack an
uneven series, keep a broken rescale, correct a tilt) are medgen's, stated and recorded in the
sidecar; dcm2niix is a separate program
that writes files, not a library that returns an array and what it did; and one header pass
serves scanning, splitting and loading. SimpleITK still resamples tilted stacks
(:mod:`medgen.io.dicom_geometry`) and pydicom parses every header and decodes compressed pixels.

Decisions worth knowing:

* One series with several ImageOrientationPatient values (a 3-plane localizer, a radial series)
  is split into one image per orientation, named by plane (axi/cor/sag), as dcm2niix does;
  :func:`load_series` alone refuses to stack it.
* Projection images (CR, DX, MG, other single-frame 2D images without ImagePositionPatient /
  ImageOrientationPatient) become one slice with PixelSpacing, else ImagerPixelSpacing;
  MONOCHROME1 is inverted to MONOCHROME2 and the VOI window recorded (``LoadedSeries.info``).
* A gantry-tilted (sheared) stack is resampled by default onto an orthogonal grid holding the
  whole stack (SimpleITK), and recorded; ``on_tilt="refuse"`` refuses it instead.
* A RescaleSlope of 0 or not a number, and a volume constant after rescale, are refused.
* Files of one series that share slice positions (echoes, time points) are refused (4D is out of
  scope), naming the count.
* Compressed transfer syntaxes are decoded by pydicom with whatever decoder plugins are installed
  (RLE always; JPEG/JPEG 2000 via Pillow or GDCM where present). Without a decoder the error
  names the transfer syntax and the file; there is no silent fallback to another reader.
* Enhanced multi-frame objects (one file, many frames) are read from the per-frame/shared
  functional groups; a multi-frame object without plane position/orientation is refused.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
from pydicom.dataset import Dataset

from medgen.io import dicom_geometry as geo
from medgen.io.dicom_checks import (
    Stack,
    Tilt,
    check_options,
    check_projection,
    check_rescale,
    check_tilt,
    check_uneven,
    ordered_stack,
    refuse_constant,
    spacing_problem,
)
from medgen.io.dicom_pixels import monochrome2, record_voi_window, stored_values, to_physical
from medgen.io.dicom_scan import (
    DicomFrame,
    DicomSeries,
    DicomSeriesError,
    PixelLayout,
    ScanReport,
    header_number,
    scan_dicom,
    series_frames,
)
from medgen.io.dicom_split import SeriesSplit, is_projection, plane_of, split_series

log = logging.getLogger(__name__)

__all__ = ["DicomSeriesError", "DicomFrame", "PixelLayout", "DicomSeries", "ScanReport", "LoadedSeries", "SeriesSplit",
           "scan_dicom", "split_series", "load_series", "is_projection", "plane_of"]


@dataclass
class LoadedSeries:
    """A converted series: ``array`` (X, Y, Z) float32 physical units, ``affine`` voxel -> RAS mm."""

    array: np.ndarray
    affine: np.ndarray
    header: Dataset
    warnings: list[str] = field(default_factory=list)
    corrections: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # how it was read (spacing source, photometric, VOI window), for the sidecar


def load_series(
    series: DicomSeries,
    *,
    on_tilt: str = "resample",
    on_uneven: str = "refuse",
    min_slices: int = 1,
    allow_constant: bool = False,
) -> LoadedSeries:
    """Load ``series`` as float32 (X, Y, Z) physical values (HU for CT) with a voxel -> RAS affine.

    Slices are ordered by position along the slice normal (not file name or InstanceNumber).
    ``on_tilt`` / ``on_uneven``: "refuse" (DicomSeriesError) or "resample" (onto an orthogonal,
    uniform grid; recorded in ``corrections`` and ``warnings``). A 2D image without patient
    geometry (:func:`is_projection`) becomes one slice with its pixel spacing. Raises
    DicomSeriesError for: fewer than ``min_slices`` slices, ImageType LOCALIZER, a RescaleSlope
    of 0 or not finite, several orientations (see :func:`split_series`), and a volume that is
    constant after rescale unless ``allow_constant``.
    """
    check_options(on_tilt, on_uneven)
    frames = series_frames(series)
    check_rescale(series, frames)
    if is_projection(replace(series, frames=frames)):
        loaded = _load_projection(series, frames)
    else:
        loaded = _load_stack(series, frames, on_tilt=on_tilt, on_uneven=on_uneven, min_slices=min_slices)
    if not allow_constant:
        refuse_constant(series, frames, loaded.array)
    _record_part(series, loaded.info)
    for w in loaded.warnings:
        log.warning(w)
    return loaded


def _record_part(series: DicomSeries, info: dict) -> None:
    """Say which part of a split series this is (nothing for a whole series)."""
    if series.part:
        info["part"] = series.part
        if series.acq:
            info["acq"] = series.acq


def _physical_slices(series: DicomSeries, frames: list[DicomFrame], info: dict) -> np.ndarray:
    """Pixels of ``frames`` in order: physical values as MONOCHROME2, float32 (n, rows, cols); ``info`` records how."""
    slices = monochrome2(to_physical(stored_values(series, frames), frames), frames, series.header, info)
    record_voi_window(series.header, info)
    return slices


def _load_projection(series: DicomSeries, frames: list[DicomFrame]) -> LoadedSeries:
    """One 2D image without patient geometry -> (cols, rows, 1) with its pixel spacing."""
    frame = check_projection(series, frames)
    assert frame.pixel_spacing is not None
    info: dict = {"kind": "projection (2D image without patient geometry)",
                  "pixel_spacing_mm": [float(v) for v in frame.pixel_spacing],
                  "pixel_spacing_source": frame.spacing_source}
    if frame.spacing_source.startswith("ImagerPixelSpacing"):
        info["pixel_spacing_note"] = "spacing at the detector plane: includes the geometric magnification of the projection"
    slices = _physical_slices(series, frames, info)
    info["placement"] = ("no ImagePositionPatient (0020,0032) / ImageOrientationPatient (0020,0037): placed as if "
                         "ImageOrientationPatient = [1, 0, 0, 0, 1, 0] with the first pixel at the origin; the third "
                         "voxel size (1 mm) is nominal")
    orient = geo.orientation_axes(np.array([1.0, 0, 0, 0, 1.0, 0]))
    affine = geo.stack_affine(orient, frame.pixel_spacing, np.zeros(3), 1.0)
    return LoadedSeries(array=slices.transpose(2, 1, 0), affine=affine, header=series.header, info=info)


def _load_stack(series: DicomSeries, frames: list[DicomFrame], *, on_tilt: str, on_uneven: str, min_slices: int) -> LoadedSeries:
    """A slice stack: checks, pixels, slice step, then the resampling of an uneven or tilted stack where asked."""
    stack = ordered_stack(series, frames, min_slices)
    tilt = check_tilt(series, stack, on_tilt)
    check_uneven(series, stack, on_uneven)
    warnings: list[str] = [tilt.note] if tilt.note else []
    corrections: dict = {}
    info: dict = {"kind": "slice stack", "slices": len(stack.frames)}
    volume = _physical_slices(series, stack.frames, info).transpose(2, 1, 0)  # (X=cols, Y=rows, Z): a view, F-contiguous like NIfTI
    step = _slice_step(series, stack, info, warnings)
    positions = stack.positions
    if stack.uneven:
        volume, step, positions = _regrid_uneven(series, stack, volume, corrections, warnings)
    origin = positions[0]
    if tilt.sheared:
        volume, origin = _resample_tilt(series, stack, tilt, volume, positions, corrections, warnings)
    pixel_spacing = stack.frames[0].pixel_spacing
    assert pixel_spacing is not None
    affine = geo.stack_affine(stack.orient, pixel_spacing, origin, step)
    return LoadedSeries(array=volume, affine=affine, header=series.header, warnings=warnings, corrections=corrections, info=info)


def _slice_step(series: DicomSeries, stack: Stack, info: dict, warnings: list[str]) -> float:
    """Third voxel size (mm): the mean step along the normal, or for one slice its header's thickness."""
    dist = stack.dist
    if len(dist) > 1:
        info["slice_step_source"] = "ImagePositionPatient (0020,0032) along the slice normal"
        return float(dist[-1] - dist[0]) / (len(dist) - 1)
    step, source = _single_slice_step(series.header)
    info["slice_step_source"] = source
    if source.startswith("none"):
        warnings.append(f"{series.label}: one slice and neither SliceThickness (0018,0050) nor SpacingBetweenSlices "
                        "(0018,0088): its third voxel size is set to 1 mm")
    return step


def _single_slice_step(header: Dataset) -> tuple[float, str]:
    """Third voxel size (mm) of a one-slice image and where it came from.

    SliceThickness (what the slice covers), else SpacingBetweenSlices, else 1 mm.
    """
    for keyword, tag in (("SliceThickness", "(0018,0050)"), ("SpacingBetweenSlices", "(0018,0088)")):
        value = header_number(header.get(keyword), 0.0)
        if value > 0 and math.isfinite(value):
            return value, f"{keyword} {tag}"
    return 1.0, "none (1 mm nominal)"


def _regrid_uneven(
    series: DicomSeries, stack: Stack, volume: np.ndarray, corrections: dict, warnings: list[str]
) -> tuple[np.ndarray, float, np.ndarray]:
    """Unevenly spaced slices -> a uniform grid along the normal (linear); the volume, its step and slice origins."""
    spacing = stack.spacing
    assert spacing is not None
    n = len(stack.frames)
    first, last = stack.positions[0], stack.positions[-1]
    volume, step = geo.regrid_along_normal(volume, stack.dist, spacing.median_step)
    fractions = np.linspace(0.0, 1.0, volume.shape[2])
    positions = first + fractions[:, None] * (last - first)  # the stack is one line (checked when sheared)
    corrections["resampled"] = True
    corrections["uneven_spacing"] = {"median_step_mm": spacing.median_step, "found_slices": n,
                                     "output_slices": int(volume.shape[2]), "output_step_mm": step}
    warnings.append(f"{series.label}: " + spacing_problem(spacing, n)
                    + f"; resampled linearly along the normal to {volume.shape[2]} slices of {step:.4g} mm")
    return volume, step, positions


def _resample_tilt(
    series: DicomSeries, stack: Stack, tilt: Tilt, volume: np.ndarray, positions: np.ndarray,
    corrections: dict, warnings: list[str],
) -> tuple[np.ndarray, np.ndarray]:
    """A sheared (gantry-tilted) stack -> an orthogonal grid holding all of it (SimpleITK, linear); volume and origin."""
    assert tilt.angle_deg is not None
    pixel_spacing = stack.frames[0].pixel_spacing
    assert pixel_spacing is not None
    before = volume.shape
    volume, origin = geo.resample_sheared_stack(volume, positions, stack.orient, pixel_spacing, fill=float(volume.min()))
    corrections["gantry_tilt_deg"] = round(tilt.angle_deg, 4)
    corrections["tilt_resampled"] = True
    corrections["tilt"] = {"method": "SimpleITK linear resampling onto an orthogonal grid holding the whole sheared stack",
                           "input_shape": [int(n) for n in before], "output_shape": [int(n) for n in volume.shape],
                           "GantryDetectorTilt_deg": tilt.header_deg}
    warnings.append(f"{series.label}: gantry tilt {tilt.angle_deg:.2f} deg corrected by resampling onto an orthogonal grid "
                    f"holding the whole stack ({before[0]}x{before[1]} -> {volume.shape[0]}x{volume.shape[1]} "
                    "pixels per slice, linear); --on-tilt refuse (ingest.on_tilt: refuse) refuses such series instead")
    return volume, origin
