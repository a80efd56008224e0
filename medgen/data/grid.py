"""Reorientation, resampling and crop/pad of (X, Y, Z) arrays with RAS affines (nibabel and scipy).

The grid is MONAI's: ``Orientation(axcodes="RAS")`` followed by ``Spacing(pixdim, diagonal=False)``
gives the same shape and affine as :func:`to_ras_grid`, and ``ResampleToMatch`` the same values as
:func:`resample_to` (``tests/test_grid.py`` pins both against MONAI). They are written here with
nibabel's orientation tools and ``scipy.ndimage`` because preprocessing runs as one process per
subject: importing MONAI (which loads all of its submodules, and torch) takes about 10 s per process
on the demo's machine, against about 2 s for the whole job without it (benchmarks/bench_preprocess.py).

Coordinates: ``array[i, j, k]`` lies at ``affine @ (i, j, k, 1)`` (RAS mm, voxel centres).
"""

from __future__ import annotations

import numpy as np
from nibabel import orientations
from scipy import ndimage

from medgen.io.nifti import Volume

__all__ = ["to_ras", "spacing_grid", "to_ras_grid", "resample_to", "crop_or_pad"]

#: relative tolerance for "this input corner is the lowest one in the output frame"
_CORNER_TOL = 1e-5


def to_ras(volume: Volume) -> Volume:
    """The same voxels, axes permuted and flipped so that they run towards Right, Anterior, Superior."""
    array = np.asarray(volume.array)
    transform = orientations.ornt_transform(orientations.io_orientation(volume.affine), orientations.axcodes2ornt("RAS"))
    out = orientations.apply_orientation(array, transform)
    affine = np.asarray(volume.affine, dtype=np.float64) @ orientations.inv_ornt_aff(transform, array.shape)
    return Volume(np.ascontiguousarray(out), affine)


def spacing_grid(shape: tuple[int, ...], affine: np.ndarray, spacing: tuple[float, float, float]) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the grid of ``spacing`` mm that covers a ``shape`` grid with ``affine``.

    The axes keep their directions (any shear of ``affine`` is dropped: direction = the orthogonal
    factor of its QR decomposition, with the sign of each axis kept); the first output voxel sits at
    the centre of the input corner voxel that comes first along every output axis, and the grid
    reaches the opposite corner's centre to the nearest voxel. Where no input corner comes first
    along every axis (a sheared input), the two grids share their centre instead.
    """
    affine = np.asarray(affine, dtype=np.float64)
    rzs = affine[:3, :3]
    upper = np.linalg.cholesky(rzs.T @ rzs).T  # rzs = rotation @ upper, upper triangular
    rotation = rzs @ np.linalg.inv(upper)
    out_affine = np.eye(4)
    out_affine[:3, :3] = rotation @ np.diag(np.sign(np.diag(upper)) * np.abs(np.asarray(spacing, dtype=np.float64)))

    in_shape = np.asarray(shape[:3], dtype=np.float64)
    corners = np.array(np.meshgrid(*[(0.0, n - 1.0) for n in in_shape], indexing="ij")).reshape(3, -1)
    corners_h = np.vstack([corners, np.ones((1, corners.shape[1]))])
    in_out = np.linalg.solve(out_affine, affine) @ corners_h  # input corners in output voxel units
    out_shape = np.round(np.ptp(in_out[:3], axis=1) + 1.0)
    world = affine @ corners_h
    origin = None
    for i in range(corners.shape[1]):
        if np.allclose(np.min(in_out[:3] - in_out[:3, i : i + 1], axis=1), 0.0, rtol=_CORNER_TOL):
            origin = world[:3, i]
            break
    if origin is None:
        origin = rzs @ (in_shape / 2.0) + affine[:3, 3] - out_affine[:3, :3] @ (out_shape / 2.0)
    out_affine[:3, 3] = origin
    return tuple(int(n) for n in out_shape), out_affine  # type: ignore[return-value]


def to_ras_grid(volume: Volume, spacing: tuple[float, float, float]) -> Volume:
    """Reorient to RAS and resample (trilinear, edge values outside) to ``spacing`` mm: the reference grid."""
    ras = to_ras(volume)
    shape, affine = spacing_grid(ras.array.shape, ras.affine, spacing)
    return resample_to(ras.array, ras.affine, shape, affine)


def resample_to(array: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray, *, nearest: bool = False) -> Volume:
    """An (X, Y, Z) array with a RAS ``affine``, sampled at the voxel centres of the ``shape`` grid
    with ``target_affine``.

    Images: trilinear, and outside the input's field of view the value of its nearest edge voxel.
    Label maps (``nearest``): the nearest voxel, 0 outside; a point halfway between two voxels takes
    the even index (torch's rounding; MONAI's choice there depends on float rounding, so the two
    agree on every voxel but such ties).
    """
    shape = tuple(int(n) for n in shape[:3])
    target_affine = np.asarray(target_affine, dtype=np.float64)
    to_input = np.linalg.solve(np.asarray(affine, dtype=np.float64), target_affine)  # output voxel -> input voxel
    source = np.asarray(array, dtype=np.float32)
    if not nearest:
        out = ndimage.affine_transform(source, to_input[:3, :3], offset=to_input[:3, 3], output_shape=shape, order=1, mode="nearest", prefilter=False)
        return Volume(out.astype(np.float32, copy=False), target_affine)
    # One output plane at a time: the input coordinates of a whole 1 mm volume at once would take
    # several hundred MB (three float64 and three int64 values per voxel); a plane's take a few MB.
    out = np.zeros(shape, dtype=np.float32)
    j, k = np.meshgrid(np.arange(shape[1], dtype=np.float64), np.arange(shape[2], dtype=np.float64), indexing="ij")
    m, t = to_input[:3, :3], to_input[:3, 3]
    for i in range(shape[0]):
        coords = [np.rint(m[d, 0] * i + m[d, 1] * j + m[d, 2] * k + t[d]).astype(np.int64) for d in range(3)]
        inside = np.ones(j.shape, dtype=bool)
        for c, n in zip(coords, source.shape):
            inside &= (c >= 0) & (c < n)
        out[i][inside] = source[coords[0][inside], coords[1][inside], coords[2][inside]]
    return Volume(out, target_affine)


def crop_or_pad(volume: Volume, start: np.ndarray, size: tuple[int, int, int], value: float) -> Volume:
    """The ``size`` box of ``volume`` whose first voxel is ``start`` (may be negative or run past the
    end), filled with ``value`` outside the volume; the affine moves with the box."""
    start = np.asarray(start, dtype=int)
    size_arr = np.asarray(size, dtype=int)
    array = np.asarray(volume.array)
    shape = np.asarray(array.shape[:3])
    pad_lo = np.maximum(0, -start)
    pad_hi = np.maximum(0, start + size_arr - shape)
    if pad_lo.any() or pad_hi.any():
        array = np.pad(array, list(zip(pad_lo.tolist(), pad_hi.tolist())), mode="constant", constant_values=value)
    begin = start + pad_lo
    box = array[tuple(slice(b, b + n) for b, n in zip(begin, size_arr))]
    shift = np.eye(4)
    shift[:3, 3] = start
    return Volume(np.ascontiguousarray(box), np.asarray(volume.affine, dtype=np.float64) @ shift)
