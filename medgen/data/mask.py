"""Head/body mask of a volume: threshold, largest component, closing, hole filling."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from medgen.data.normalise import is_ct

log = logging.getLogger(__name__)

MaskMethod = Literal["auto", "otsu"]

#: CT voxels above this (HU) are tissue rather than air.
CT_BODY_HU = -500.0
#: MR voxels above this fraction of the robust maximum (99th percentile) are tissue.
MR_FRACTION = 0.1
#: Closing radius (voxels) that bridges thin gaps such as a dark skull or sinus in MR.
CLOSING_RADIUS = 2


def threshold_for(modality: str, array: np.ndarray, method: MaskMethod = "auto") -> tuple[float, str]:
    """Threshold (original units) separating the head/body from background, and how it was chosen."""
    if method == "otsu":
        finite = array[np.isfinite(array)]
        if finite.size == 0 or finite.min() == finite.max():
            return float("inf"), "otsu (constant image)"
        return float(threshold_otsu(finite)), "otsu"
    if method != "auto":
        raise ValueError(f"unknown mask method {method!r} (expected 'auto' or 'otsu')")
    if is_ct(modality):
        return CT_BODY_HU, f"CT > {CT_BODY_HU:g} HU"
    robust_max = float(np.percentile(array, 99.0))
    if robust_max <= 0.0:
        return float("inf"), "MR fraction of robust max (no positive signal)"
    return MR_FRACTION * robust_max, f"MR > {MR_FRACTION:g} x 99th percentile"


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    # scipy's closing erodes from the array border; padding keeps a head touching the edge intact.
    ball = ndimage.iterate_structure(ndimage.generate_binary_structure(3, 1), radius)
    padded = np.pad(mask, radius + 1)
    closed = ndimage.binary_closing(padded, structure=ball)
    inner = tuple(slice(radius + 1, -(radius + 1)) for _ in range(3))
    return closed[inner]


def head_mask(modality: str, array: np.ndarray, method: MaskMethod = "auto") -> tuple[np.ndarray, dict[str, Any]]:
    """Binary mask (uint8, same shape as ``array`` (X, Y, Z)) of the head/body, plus a description.

    An empty result (constant or blank image) gives a warning and an all-zero mask.
    """
    threshold, how = threshold_for(modality, array, method)
    raw = np.asarray(array > threshold)
    info: dict[str, Any] = {"method": how, "threshold": threshold if np.isfinite(threshold) else None}
    if not raw.any():
        msg = f"{modality}: no voxel above the mask threshold ({how}); the mask is empty"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        info["voxels"] = 0
        return np.zeros(array.shape, dtype=np.uint8), info
    # scipy rather than MONAI's KeepLargestConnectedComponent and FillHoles (same definitions, face
    # connectivity): this runs in every preprocessing job, which would otherwise import MONAI for it
    # (medgen/data/grid.py says what that costs).
    faces = ndimage.generate_binary_structure(3, 1)
    components, _ = ndimage.label(raw, structure=faces)
    largest = components == np.argmax(np.bincount(components.ravel())[1:]) + 1
    closed = _close(largest, CLOSING_RADIUS)
    mask = ndimage.binary_fill_holes(closed, structure=faces).astype(np.uint8)
    info["voxels"] = int(mask.sum())
    return mask, info
