"""Splitting a series into the parts that convert on their own, as dcm2niix does.

One SeriesInstanceUID may hold several images: a 3-plane localizer or a radial series (one
orientation per slice), projection radiographs (2D images without patient geometry), or
localizer frames mixed into a volume. :func:`split_series` cuts it into parts, each named by
plane (axi/cor/sag) where orientations differ, and says what it did, so that a caller (medgen
ingest) converts each part on its own and lists the dropped files by name. It works on the
header scan only; loading (:func:`medgen.io.dicom_series.load_series`) refuses a series that
still needs splitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from medgen.io.dicom_checks import orientation_groups
from medgen.io.dicom_scan import DicomFrame, DicomSeries, series_frames

__all__ = ["PLANES", "SeriesSplit", "split_series", "plane_of", "is_projection"]


#: Plane label by the LPS axis the slice normal is closest to (x: sagittal, y: coronal, z: axial).
PLANES = ("sag", "cor", "axi")


def plane_of(orientation: Sequence[float]) -> str:
    """``axi`` / ``cor`` / ``sag``: the patient axis closest to the slice normal (obliques included).

    An exact tie (a 45 degree oblique) goes to axial, then coronal: a fixed rule, so that the
    same series always gets the same name.
    """
    iop = np.asarray(orientation, dtype=np.float64).reshape(6)
    weight = np.round(np.abs(np.cross(iop[:3], iop[3:])), 6)
    return PLANES[2 - int(np.argmax(weight[::-1]))]  # argmax takes the first maximum: z, then y, then x


def is_projection(series: DicomSeries) -> bool:
    """Whether ``series`` holds 2D images without patient geometry (CR, DX, MG, secondary capture...).

    Such images have neither ImagePositionPatient (0020,0032) nor ImageOrientationPatient
    (0020,0037) and are single-frame; each converts to a one-slice image of its own.
    """
    frames = series.frames
    return bool(frames) and all(f.position is None and f.orientation is None and f.frame is None for f in frames)


@dataclass
class SeriesSplit:
    """The parts of a series that convert one by one, and what the split did (for the summary)."""

    parts: list[DicomSeries]
    notes: list[str] = field(default_factory=list)
    dropped: list[tuple[Path, str]] = field(default_factory=list)  # files left out, with the reason


def _part(series: DicomSeries, frames: list[DicomFrame], *, acq: str = "", part: str = "") -> DicomSeries:
    files = sorted({f.path for f in frames}, key=str)
    return replace(series, files=files, frames=list(frames), acq=acq, part=part,
                   image_type=frames[0].image_type or series.image_type)


def _first_instance(frames: list[DicomFrame]) -> tuple[float, str]:
    numbers = [f.instance_number for f in frames if f.instance_number is not None]
    return (min(numbers) if numbers else math.inf, min(str(f.path) for f in frames))


def split_series(series: DicomSeries) -> SeriesSplit:
    """Split ``series`` into the parts that convert on their own, as dcm2niix does.

    * 2D images without patient geometry (:func:`is_projection`): one part per image.
    * Frames whose ImageType (0008,0008) says LOCALIZER, in a series that also holds other
      frames: dropped (named in the notes).
    * Several slice orientations (ImageOrientationPatient (0020,0037)): one part per
      orientation, ``acq`` = its plane (:func:`plane_of`), parts ordered by their lowest
      InstanceNumber (then file name, then orientation), so the order never depends on the
      file system. An orientation holding one slice (multi-plane localizer, radial series)
      becomes a single-slice image.

    A series that needs none of this comes back unchanged as the only part.
    """
    frames = series_frames(series)
    if is_projection(replace(series, frames=frames)):
        if len(frames) == 1:
            return SeriesSplit([series])
        ordered = sorted(frames, key=lambda f: _first_instance([f]))
        note = f"{series.label}: {len(frames)} images without patient geometry (projection radiographs), each converted on its own"
        return SeriesSplit([_part(series, [f], part=f"image {k + 1} of {len(frames)}") for k, f in enumerate(ordered)], [note])
    notes: list[str] = []
    localizers = [f for f in frames if "LOCALIZER" in f.image_type]
    if "LOCALIZER" in series.image_type and len(localizers) == len(frames):
        return SeriesSplit([series])  # a localizer series: refused once, as a whole, when loaded
    if localizers and len(localizers) < len(frames):
        frames = [f for f in frames if "LOCALIZER" not in f.image_type]
        dropped = [(path, f"{series.label}: localizer image (ImageType (0008,0008) LOCALIZER) dropped from a series "
                          "that holds other images") for path in sorted({f.path for f in localizers}, key=str)]
        notes.append(f"{series.label}: dropped {len(localizers)} localizer image(s) (ImageType (0008,0008) LOCALIZER)")
    else:
        dropped = []
    if any(f.orientation is None for f in frames):
        return SeriesSplit([_part(series, frames) if dropped else series], notes, dropped)  # loading names the missing tag
    groups = orientation_groups(frames)
    if len(groups) == 1:
        return SeriesSplit([_part(series, frames) if dropped else series], notes, dropped)
    groups.sort(key=lambda g: (*_first_instance(g), tuple(round(v, 4) for v in g[0].orientation)))  # type: ignore[union-attr]
    planes = [plane_of(g[0].orientation) for g in groups]  # type: ignore[arg-type]
    parts = [_part(series, g, acq=plane, part=f"orientation {k + 1} of {len(groups)}, acq-{plane}")
             for k, (g, plane) in enumerate(zip(groups, planes))]
    shown = ", ".join(f"acq-{plane} ({len(g)} slice{'s' if len(g) > 1 else ''})" for g, plane in zip(groups, planes))
    why = ""
    if all(len(g) == 1 for g in groups):
        why = "; each orientation holds one slice (multi-plane localizer or radial series), so each becomes a single-slice image"
    notes.append(f"{series.label}: {len(groups)} slice orientations (ImageOrientationPatient (0020,0037)) split into "
                 f"one image per orientation: {shown}{why}")
    return SeriesSplit(parts, notes, dropped)
