"""Slice-stack geometry for DICOM series: ordering, spacing checks, gantry tilt, affine, resampling.

Conventions: positions and directions are DICOM patient coordinates (LPS, mm). ``row`` is the
unit vector along which the column index grows (first three values of ImageOrientationPatient),
``col`` the one along which the row index grows; ``normal = row x col``. Volumes are indexed
``(X, Y, Z)`` = (column index, row index, slice index), as NIfTI expects, and affines map those
indices to RAS mm.

Pure numpy/scipy/SimpleITK, no DICOM parsing: :mod:`medgen.io.dicom_series` feeds it numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: RAS <-> LPS flip (its own inverse), 4x4 homogeneous.
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: ImageOrientationPatient vectors must be unit and orthogonal to this tolerance. DS values are
#: often written with 6 significant digits (1e-6) and some scanners round harder (1e-4); beyond
#: 1e-3 the "orientation" is not a rotation and any affine built from it would be wrong.
ORIENTATION_TOL = 1e-3

#: Slices closer than this along the normal (mm) are "the same position" (duplicates).
DUPLICATE_TOL_MM = 1e-3

#: A step may differ from the median step by this fraction (or SPACING_ABS_TOL_MM, whichever is
#: larger) and still count as uniform. Table positions are quantised by the scanner (~0.01 mm)
#: and the DS text rounds them; a missing slice doubles a step (100 % off), so 1 % separates
#: the two with a wide margin on both sides while displacing no slice by more than 1 % of a step.
SPACING_REL_TOL = 0.01
SPACING_ABS_TOL_MM = 2e-3

#: Largest in-plane displacement (mm) of any slice from the line through the first slice along
#: the normal before the stack counts as sheared (gantry tilt). An order of magnitude above DS
#: rounding of positions, and far below any pixel (>= 0.1 mm): below it the orthogonal affine
#: misplaces no voxel by more than this.
SHEAR_TOL_MM = 0.02


class GeometryError(ValueError):
    """Inconsistent geometry; the caller adds which series it is."""


@dataclass(frozen=True)
class Orientation:
    """In-plane axes and the slice normal (unit LPS vectors)."""

    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray


def orientation_axes(iop: np.ndarray) -> Orientation:
    """Unit row/column/normal vectors from the 6 ImageOrientationPatient values.

    Raises GeometryError when the two vectors are not (nearly) unit length and orthogonal.
    """
    iop = np.asarray(iop, dtype=np.float64).reshape(6)
    row, col = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if abs(nr - 1) > ORIENTATION_TOL or abs(nc - 1) > ORIENTATION_TOL:
        raise GeometryError(f"ImageOrientationPatient (0020,0037) vectors are not unit length (|row|={nr:.6f}, |col|={nc:.6f})")
    row, col = row / nr, col / nc
    if abs(float(row @ col)) > ORIENTATION_TOL:
        raise GeometryError(f"ImageOrientationPatient (0020,0037) row and column are not orthogonal (cos={row @ col:.6f})")
    # Re-orthogonalise so that the affine is exactly a rotation times spacing.
    col = col - (row @ col) * row
    col /= np.linalg.norm(col)
    return Orientation(row, col, np.cross(row, col))


def same_orientation(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two ImageOrientationPatient 6-vectors describe the same plane axes."""
    return bool(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))) <= ORIENTATION_TOL)


def slice_order(positions: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permutation sorting slices by distance along ``normal`` and those sorted distances (mm).

    positions: (n, 3) ImagePositionPatient. Ties keep input order (stable sort).
    """
    dist = np.asarray(positions, dtype=np.float64) @ normal
    order = np.argsort(dist, kind="stable")
    return order, dist[order]


def duplicate_positions(dist: np.ndarray) -> int:
    """Number of sorted slices that share a position with their predecessor."""
    return int(np.sum(np.diff(dist) < DUPLICATE_TOL_MM))


@dataclass(frozen=True)
class SpacingCheck:
    """Spacing along the normal of a sorted stack."""

    median_step: float  # mm
    steps: np.ndarray  # (n-1,) mm
    uneven: np.ndarray  # indices i where steps[i] (between slice i and i+1) is off the median
    tolerance: float  # mm

    @property
    def uniform(self) -> bool:
        return self.uneven.size == 0

    @property
    def expected_count(self) -> int:
        """Slices a uniform stack with the median step would have over the same extent."""
        extent = float(self.steps.sum())
        return int(round(extent / self.median_step)) + 1


def check_spacing(dist: np.ndarray) -> SpacingCheck:
    """Compare each step between sorted slice distances with the median step."""
    steps = np.diff(np.asarray(dist, dtype=np.float64))
    median = float(np.median(steps))
    tol = max(SPACING_REL_TOL * median, SPACING_ABS_TOL_MM)
    uneven = np.flatnonzero(np.abs(steps - median) > tol)
    return SpacingCheck(median, steps, uneven, tol)


def lateral_offsets(positions: np.ndarray, orient: Orientation) -> np.ndarray:
    """In-plane displacement (mm) of each slice origin from the normal line through slice 0.

    positions: (n, 3) sorted. Returns (n, 2): components along ``row`` and ``col``.
    """
    rel = np.asarray(positions, dtype=np.float64) - positions[0]
    return np.stack([rel @ orient.row, rel @ orient.col], axis=1)


def tilt_angle_deg(positions: np.ndarray, orient: Orientation) -> float:
    """Angle (degrees) between the first-to-last slice vector and the normal; 0 for one slice."""
    step = np.asarray(positions[-1], dtype=np.float64) - positions[0]
    length = np.linalg.norm(step)
    if length == 0:
        return 0.0
    return float(np.degrees(np.arccos(min(1.0, abs(step @ orient.normal) / length))))


def stack_affine(orient: Orientation, pixel_spacing: tuple[float, float], origin: np.ndarray, slice_step: float) -> np.ndarray:
    """Voxel (X, Y, Z) -> RAS affine of an orthogonal stack.

    pixel_spacing: DICOM PixelSpacing (between rows, between columns) in mm; origin: LPS of the
    first slice's first pixel; slice_step: mm along the normal between consecutive slices.
    """
    lps = np.eye(4)
    lps[:3, 0] = orient.row * pixel_spacing[1]
    lps[:3, 1] = orient.col * pixel_spacing[0]
    lps[:3, 2] = orient.normal * slice_step
    lps[:3, 3] = origin
    return RAS_FROM_LPS @ lps


def off_line_mm(offsets_mm: np.ndarray, dist: np.ndarray) -> float:
    """Largest in-plane distance (mm) of a slice origin from the line through the first and last.

    offsets_mm: (n, 2) from :func:`lateral_offsets`; dist: (n,) sorted distances along the
    normal. A gantry-tilted stack is a straight line (0 up to rounding); anything else is not a tilt.
    """
    dist = np.asarray(dist, dtype=np.float64)
    if len(dist) < 3 or dist[-1] == dist[0]:
        return 0.0
    fraction = (dist - dist[0]) / (dist[-1] - dist[0])
    expected = fraction[:, None] * np.asarray(offsets_mm, dtype=np.float64)[-1]
    return float(np.linalg.norm(np.asarray(offsets_mm) - expected, axis=1).max())


def resample_sheared_stack(
    volume: np.ndarray, positions: np.ndarray, orient: Orientation, pixel_spacing: tuple[float, float], fill: float
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a gantry-tilted stack onto an orthogonal grid that holds all of it.

    volume: (X, Y, Z) with uniformly spaced slice origins ``positions`` (Z, 3) (LPS, sorted along
    the normal) on one line oblique to the normal. The output grid keeps the slice axes, pixel
    spacing and slice planes (so each output slice is a resampling of the input slice in the same
    plane: no mixing of slices) and grows in plane to the bounding box of every input pixel.
    Outside the acquired field it is ``fill``. Returns the new (X', Y', Z) volume and the LPS
    position of its first voxel.

    SimpleITK does the resampling: its images accept the sheared (non-orthogonal) direction of
    the acquired stack, so one ``sitk.Resample`` call maps it onto the orthogonal grid (linear).
    """
    import SimpleITK as sitk

    positions = np.asarray(positions, dtype=np.float64)
    nx, ny, nz = volume.shape
    stack = (positions[-1] - positions[0]) / (nz - 1)  # LPS step between consecutive slice origins
    step_len = float(np.linalg.norm(stack))
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)))
    image.SetOrigin(positions[0].tolist())
    image.SetSpacing([float(pixel_spacing[1]), float(pixel_spacing[0]), step_len])
    image.SetDirection(np.stack([orient.row, orient.col, stack / step_len], axis=1).ravel().tolist())
    # In-plane extent of every slice, relative to the first slice origin (mm along row / col).
    rel = positions - positions[0]
    a, b = rel @ orient.row, rel @ orient.col
    width, height = (nx - 1) * pixel_spacing[1], (ny - 1) * pixel_spacing[0]
    a_lo, a_hi = float(a.min()), float(a.max()) + width
    b_lo, b_hi = float(b.min()), float(b.max()) + height
    # 1e-6 pixel slack: an extent that is a whole number of pixels must not gain a column from rounding.
    size_x = int(np.ceil((a_hi - a_lo) / pixel_spacing[1] - 1e-6)) + 1
    size_y = int(np.ceil((b_hi - b_lo) / pixel_spacing[0] - 1e-6)) + 1
    origin = positions[0] + a_lo * orient.row + b_lo * orient.col
    out = sitk.Resample(
        image, [size_x, size_y, nz], sitk.Transform(), sitk.sitkLinear, origin.tolist(),
        [float(pixel_spacing[1]), float(pixel_spacing[0]), float(stack @ orient.normal)],
        np.stack([orient.row, orient.col, orient.normal], axis=1).ravel().tolist(), float(fill), sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0), origin


def regrid_along_normal(volume: np.ndarray, dist: np.ndarray, median_step: float) -> tuple[np.ndarray, float]:
    """Linearly interpolate a stack with uneven sorted slice distances onto a uniform grid.

    The grid spans the first to the last slice with the step closest to ``median_step`` that
    divides the extent evenly. Returns the new (X, Y, Z') volume and its step (mm).
    """
    dist = np.asarray(dist, dtype=np.float64)
    extent = float(dist[-1] - dist[0])
    n_out = max(2, int(round(extent / median_step)) + 1)
    step = extent / (n_out - 1)
    targets = dist[0] + step * np.arange(n_out)
    hi = np.clip(np.searchsorted(dist, targets, side="right"), 1, len(dist) - 1)
    lo = hi - 1
    w = ((targets - dist[lo]) / (dist[hi] - dist[lo])).astype(np.float32)
    out = volume[:, :, lo] * (1 - w) + volume[:, :, hi] * w
    return out.astype(volume.dtype, copy=False), step
