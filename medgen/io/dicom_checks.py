"""Stack checks: whether the slices of a series form one volume medgen can place exactly, else why not.

Each check raises :class:`~medgen.io.dicom_scan.DicomSeriesError` naming the series, one file,
the DICOM tag at fault and the option or config key that changes the decision. They run on the
geometry of the header scan, before any pixel is read, except :func:`refuse_constant`.

Why not leave this to a library's series reader: SimpleITK's ``ImageSeriesReader`` (GDCM) and
dcm2niix order slices well, but what they do with a missing slice, a duplicated position, a
damaged RescaleSlope or a tilted gantry is their own default, reported (if at all) in a log.
medgen trains on what it ingests, so each of these is a decision with a stated default (refuse,
or resample and record it in the sidecar), an option to change it (``on_tilt``, ``on_uneven``,
``min_slices``, ``allow_constant``), the same decision in every job, and an error message a
user can act on. The geometry itself (ordering along the normal, spacing, shear) is plain
numbers in :mod:`medgen.io.dicom_geometry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medgen.io import dicom_geometry as geo
from medgen.io.dicom_scan import DicomFrame, DicomSeries, series_error

__all__ = ["Stack", "Tilt", "check_options", "check_rescale", "check_projection", "ordered_stack", "check_tilt",
           "check_uneven", "spacing_problem", "refuse_constant", "orientation_groups"]

#: Values of ``on_tilt`` / ``on_uneven``.
ON_FAULT = ("refuse", "resample")


@dataclass
class Stack:
    """The slices of a series ordered along the slice normal, with the geometry the checks found.

    positions: (n, 3) ImagePositionPatient, LPS mm, in slice order; dist: (n,) mm along the
    normal; spacing: None for a single slice.
    """

    frames: list[DicomFrame]
    positions: np.ndarray
    dist: np.ndarray
    orient: geo.Orientation
    spacing: geo.SpacingCheck | None

    @property
    def uneven(self) -> bool:
        """Whether the slice spacing is not uniform."""
        return self.spacing is not None and not self.spacing.uniform


@dataclass(frozen=True)
class Tilt:
    """Whether a stack is sheared (gantry tilt) and what the header says.

    angle_deg: the tilt the positions show (None when not sheared); header_deg:
    GantryDetectorTilt (0018,1120), 0 when absent; note: a warning for a header tilt that the
    slice positions do not show.
    """

    sheared: bool
    shear_mm: float
    angle_deg: float | None
    header_deg: float
    note: str | None = None


def check_options(on_tilt: str, on_uneven: str) -> None:
    """Refuse an ``on_tilt`` / ``on_uneven`` other than "refuse" or "resample"."""
    for name, value in (("on_tilt", on_tilt), ("on_uneven", on_uneven)):
        if value not in ON_FAULT:
            raise ValueError(f"{name} must be 'refuse' or 'resample', got {value!r}")


def check_rescale(series: DicomSeries, frames: list[DicomFrame]) -> None:
    """Refuse a RescaleSlope that is 0 or not finite, or a RescaleIntercept that is not finite."""
    for f in frames:
        where = f"{f.path}" + (f" frame {f.frame + 1}" if f.frame is not None else "")
        if not math.isfinite(f.slope) or f.slope == 0:
            what = "0" if f.slope == 0 else "not a finite number"
            raise series_error(series, f"RescaleSlope (0028,1053) is {what} in {where}: stored values cannot be turned into "
                                       "physical values (a zero slope makes every voxel equal the intercept); the header is "
                                       "damaged: correct it or leave this series out")
        if not math.isfinite(f.intercept):
            raise series_error(series, f"RescaleIntercept (0028,1052) is not a finite number in {where}; the header is damaged: "
                                       "correct it or leave this series out")


def check_projection(series: DicomSeries, frames: list[DicomFrame]) -> DicomFrame:
    """The one greyscale image with a pixel spacing of a series without patient geometry."""
    if len(frames) != 1:
        raise series_error(series, f"holds {len(frames)} images without patient geometry (no ImagePositionPatient (0020,0032) / "
                                   "ImageOrientationPatient (0020,0037)); they cannot be stacked: split it first (split_series; "
                                   "medgen ingest does this)")
    frame = frames[0]
    if frame.layout.samples != 1:
        raise series_error(series, f"is a colour image (SamplesPerPixel (0028,0002) > 1) in {frame.path}; only greyscale images "
                                   "are supported")
    if frame.pixel_spacing is None:
        raise series_error(series, f"{frame.path} has neither PixelSpacing (0028,0030) nor ImagerPixelSpacing (0018,1164): "
                                   "no pixel size to place the image")
    return frame


def ordered_stack(series: DicomSeries, frames: list[DicomFrame], min_slices: int) -> Stack:
    """``frames`` as one stack ordered by position along the slice normal (not file name or InstanceNumber).

    Refuses localizers, fewer than ``min_slices`` slices, colour, missing geometry, differing
    sizes, orientations or pixel spacings, and slices that share a position.
    """
    _refuse_non_volumes(series, frames, min_slices)
    orient = _common_orientation(series, frames)
    positions = np.array([f.position for f in frames], dtype=np.float64)
    order, dist = geo.slice_order(positions, orient.normal)
    _refuse_duplicates(series, dist)
    spacing = geo.check_spacing(dist) if len(dist) > 1 else None
    return Stack([frames[i] for i in order], positions[order], dist, orient, spacing)


def check_tilt(series: DicomSeries, stack: Stack, on_tilt: str) -> Tilt:
    """Shear of the slice origins off the normal through the first one (gantry tilt).

    Refuses origins that are not on one line, and a sheared stack when ``on_tilt`` is "refuse".
    """
    offsets = geo.lateral_offsets(stack.positions, stack.orient)
    shear_mm = float(np.linalg.norm(offsets, axis=1).max())
    header_tilt = series.gantry_tilt_deg or 0.0
    if shear_mm <= geo.SHEAR_TOL_MM:
        note = None
        if abs(header_tilt) > 0.01:
            note = (f"{series.label}: GantryDetectorTilt (0018,1120) = {header_tilt:g} deg but the slices lie along "
                    "their normal (tilt already in ImageOrientationPatient); no correction needed")
        return Tilt(False, shear_mm, None, header_tilt, note)
    angle = geo.tilt_angle_deg(stack.positions, stack.orient)
    off_line = geo.off_line_mm(offsets, stack.dist)
    if off_line > geo.SHEAR_TOL_MM:
        raise series_error(series, f"slice positions (ImagePositionPatient (0020,0032)) are not on one line: up to {off_line:.3g} mm "
                                   "off the line through the first and last slice; neither a straight nor a tilted stack")
    if on_tilt == "refuse":
        raise series_error(series, f"gantry tilt of {angle:.2f} deg: slice positions (ImagePositionPatient (0020,0032)) are "
                                   f"sheared off the slice normal by up to {shear_mm:.3g} mm (GantryDetectorTilt (0018,1120) = "
                                   f"{header_tilt:g} deg); refused as asked (--on-tilt refuse / ingest.on_tilt: refuse); "
                                   "--on-tilt resample (ingest.on_tilt: resample) resamples it onto an orthogonal grid")
    return Tilt(True, shear_mm, angle, header_tilt)


def check_uneven(series: DicomSeries, stack: Stack, on_uneven: str) -> None:
    """Refuse uneven slice spacing when ``on_uneven`` is "refuse"."""
    if stack.uneven and on_uneven == "refuse":
        assert stack.spacing is not None
        raise series_error(series, spacing_problem(stack.spacing, len(stack.frames))
                           + "; --on-uneven resample (config ingest.on_uneven: resample) interpolates onto a uniform grid")


def spacing_problem(check: geo.SpacingCheck, n: int) -> str:
    """What is uneven about a stack of ``n`` slices, for the refusal or the warning of a resampling."""
    bad = check.steps[check.uneven]
    return (f"uneven slice spacing along the normal (ImagePositionPatient (0020,0032)): expected "
            f"{check.median_step:.4g} mm between all slices, found {len(bad)} step(s) of "
            f"{', '.join(f'{s:.4g}' for s in bad[:5])} mm; {n} slices found, a uniform stack over the same extent "
            f"would have {check.expected_count} (missing slice?)")


def refuse_constant(series: DicomSeries, frames: list[DicomFrame], volume: np.ndarray) -> None:
    """Refuse a volume whose voxels all hold one value after rescale."""
    if volume.size and float(volume.min()) == float(volume.max()):
        slopes = sorted({f.slope for f in frames})
        inters = sorted({f.intercept for f in frames})
        raise series_error(series, f"every voxel is {float(volume.min()):g} after rescale (RescaleSlope (0028,1053) "
                                   f"{', '.join(f'{v:g}' for v in slopes[:3])}, RescaleIntercept (0028,1052) "
                                   f"{', '.join(f'{v:g}' for v in inters[:3])}; first file {frames[0].path}): a constant image "
                                   "holds nothing to learn from and is usually a damaged export; if it is intended, pass "
                                   "--allow-constant (config ingest.allow_constant: true)")


def orientation_groups(frames: list[DicomFrame]) -> list[list[DicomFrame]]:
    """``frames`` grouped by ImageOrientationPatient (within the geometry tolerance), in order of appearance."""
    groups: list[list[DicomFrame]] = []
    for f in frames:
        for group in groups:
            if geo.same_orientation(f.orientation, group[0].orientation):  # type: ignore[arg-type]
                group.append(f)
                break
        else:
            groups.append([f])
    return groups


def _refuse_non_volumes(series: DicomSeries, frames: list[DicomFrame], min_slices: int) -> None:
    """Localizers, too few slices, colour and images without geometry."""
    if "LOCALIZER" in series.image_type:
        raise series_error(series, "is a localizer (ImageType (0008,0008) contains LOCALIZER), not a volume")
    if len(frames) < min_slices:
        raise series_error(series, f"has {len(frames)} slice(s), fewer than the {min_slices} asked for "
                                   f"(--min-slices {min_slices} / ingest.min_slices: {min_slices})")
    if any(f.layout.samples != 1 for f in frames):
        raise series_error(series, "is a colour image (SamplesPerPixel (0028,0002) > 1); only greyscale volumes are supported")
    for attr, tag in (("position", "ImagePositionPatient (0020,0032)"), ("orientation", "ImageOrientationPatient (0020,0037)"),
                      ("pixel_spacing", "PixelSpacing (0028,0030)")):
        missing = [f for f in frames if getattr(f, attr) is None]
        if missing:
            where = "per-frame/shared functional groups" if series.multiframe else "header"
            if series.multiframe:
                tag += {"position": " / PlanePositionSequence (0020,9113)", "orientation": " / PlaneOrientationSequence (0020,9116)",
                        "pixel_spacing": " / PixelMeasuresSequence (0028,9110)"}[attr]
            raise series_error(series, f"{len(missing)} of {len(frames)} slices lack {tag} in the {where} (first: {missing[0].path}): "
                                       "no geometry to place them")
    dims = {(f.layout.rows, f.layout.cols) for f in frames}
    if len(dims) > 1:
        raise series_error(series, f"slices differ in size (Rows, Columns) (0028,0010/0011): {sorted(dims)}")


def _common_orientation(series: DicomSeries, frames: list[DicomFrame]) -> geo.Orientation:
    """The one slice orientation and pixel spacing of ``frames``, as axes; refuses mixtures."""
    distinct = [g[0].orientation for g in orientation_groups(frames)]
    if len(distinct) > 1:
        shown = "; ".join("[" + ", ".join(f"{v:.4g}" for v in d) + "]" for d in distinct[:4])  # type: ignore[union-attr]
        raise series_error(series, f"mixes {len(distinct)} slice orientations (ImageOrientationPatient (0020,0037): {shown}); "
                                   "split it first (split_series; medgen ingest does this) into one image per orientation")
    spacings = {f.pixel_spacing for f in frames}
    if len(spacings) > 1:
        raise series_error(series, f"slices differ in PixelSpacing (0028,0030): {sorted(spacings)[:4]}")
    try:
        return geo.orientation_axes(np.array(distinct[0]))
    except geo.GeometryError as exc:
        raise series_error(series, f"{exc} in {frames[0].path}") from None


def _refuse_duplicates(series: DicomSeries, dist: np.ndarray) -> None:
    """Refuse slices that share a position along the normal (echoes, time points: 4D is out of scope)."""
    dups = geo.duplicate_positions(dist)
    if dups:
        raise series_error(series, f"{dups} slice(s) share a position with another slice (ImagePositionPatient (0020,0032)); "
                                   "several echoes/time points/acquisitions in one series are not supported")
