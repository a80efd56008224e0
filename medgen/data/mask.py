"""Head/body mask of a volume: threshold, largest component, closing, hole filling."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import numpy as np
import torch
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
    raw = torch.as_tensor(array > threshold)[None]
    info: dict[str, Any] = {"method": how, "threshold": threshold if np.isfinite(threshold) else None}
    if not bool(raw.any()):
        msg = f"{modality}: no voxel above the mask threshold ({how}); the mask is empty"
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        info["voxels"] = 0
        return np.zeros(array.shape, dtype=np.uint8), info
    # imported here: `import monai` loads all of MONAI (about 6 s of CPU per process), and the
    # commands that only need this module's neighbours (split, report) should not pay for it
    from monai.transforms import FillHoles, KeepLargestConnectedComponent

    largest = KeepLargestConnectedComponent(applied_labels=[1], connectivity=1)(raw.to(torch.uint8))
    closed = _close(np.asarray(largest[0]).astype(bool), CLOSING_RADIUS)
    filled = FillHoles(applied_labels=[1], connectivity=1)(torch.as_tensor(closed[None].astype(np.uint8)))
    mask = np.asarray(filled[0]).astype(np.uint8)
    info["voxels"] = int(mask.sum())
    return mask, info
