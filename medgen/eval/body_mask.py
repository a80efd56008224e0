"""Body mask for paired evaluation, the SynthRAD2023 way.

SynthRAD2023 evaluates inside a body contour obtained from the CT: threshold (CT > -500 HU),
keep the largest connected component, close small gaps and fill holes. This is exactly what
:func:`medgen.data.mask.head_mask` does (6-connectivity largest component, 3D binary closing
with a radius-2 cross-shaped structuring element, **3D** hole filling), so it is reused here
rather than re-implemented; a mask saved by preprocessing (``mask.nii.gz``) can be passed to
the metrics instead.
"""

from __future__ import annotations

import numpy as np

from medgen.data.mask import head_mask


def body_mask(volume: np.ndarray, modality: str = "CT") -> np.ndarray:
    """Boolean body mask of a 3D ``volume`` (X, Y, Z) in original units (HU for CT).

    CT: voxels > -500 HU; MR: voxels > 0.1 x 99th percentile. Then largest connected component,
    3D closing (radius 2) and 3D hole filling. 2D input (X, Y) is treated as one slice.
    """
    arr = np.asarray(volume, dtype=np.float32)
    if arr.ndim == 2:
        mask, _ = head_mask(modality, arr[..., None])
        return mask[..., 0].astype(bool)
    if arr.ndim != 3:
        raise ValueError(f"body_mask expects a 2D or 3D array, got shape {arr.shape}")
    mask, _ = head_mask(modality, arr)
    return mask.astype(bool)
