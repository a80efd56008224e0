"""Per-modality intensity mappings to the network range, and their exact inverses.

Every mapping is linear: ``x_norm = (x - offset) / scale``, optionally clipped to
``clip_normalised``; the inverse ``x = x_norm * scale + offset`` is exact inside the unclipped
range. A mapping is a plain JSON-able dict so that it can be stored in ``normalisation.json``::

    {"kind": "linear", "scale": a, "offset": b, "clip_normalised": [lo, hi] or None,
     "units": "HU" | "a.u.", "source_range": [x_lo, x_hi], "method": "ct_window" | ...}

``source_range`` is the interval of original values that maps onto ``clip_normalised`` (for the
clipped mappings) or the range of original values seen inside the mask (z-score).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

Mapping = dict[str, Any]
MrMethod = Literal["percentile", "zscore"]

#: Background value (original units) used to pad each kind of modality.
CT_AIR_HU = -1000.0
MR_BACKGROUND = 0.0


def is_ct(modality: str) -> bool:
    """True for "CT" and names starting with "CT" (e.g. "CTbone"), the modalities measured in HU."""
    return modality.upper().startswith("CT")


def background_value(modality: str) -> float:
    """Value (original units) of "nothing there": air for CT (-1000 HU), 0 for MR."""
    return CT_AIR_HU if is_ct(modality) else MR_BACKGROUND


def _warn(message: str) -> None:
    # Both channels: logging for pipeline logs, warnings so that tests and notebooks see it.
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _linear(scale: float, offset: float, clip: tuple[float, float] | None, units: str, source_range: list[float], method: str) -> Mapping:
    return {
        "kind": "linear",
        "scale": float(scale),
        "offset": float(offset),
        "clip_normalised": None if clip is None else [float(clip[0]), float(clip[1])],
        "units": units,
        "source_range": [float(v) for v in source_range],
        "method": method,
    }


def ct_mapping(window: tuple[float, float]) -> Mapping:
    """HU window ``(lo, hi)`` -> [-1, 1], clipped outside the window."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"CT window must have high > low, got {window}")
    return _linear((hi - lo) / 2.0, (hi + lo) / 2.0, (-1.0, 1.0), "HU", [lo, hi], "ct_window")


def _masked_values(array: np.ndarray, mask: np.ndarray | None, name: str) -> np.ndarray:
    if mask is None:
        return array.ravel()
    values = array[mask.astype(bool)]
    if values.size == 0:
        _warn(f"{name}: the mask is empty; intensity statistics use the whole image")
        return array.ravel()
    return values


def mr_percentile_mapping(array: np.ndarray, mask: np.ndarray | None, percentiles: tuple[float, float], name: str = "MR") -> Mapping:
    """Map the (p_low, p_high) percentiles inside ``mask`` to [-1, 1], clipped.

    A constant image (p_low == p_high) gets scale 1 and offset p_low, so that it maps to 0
    everywhere, and a warning.
    """
    p_lo, p_hi = percentiles
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise ValueError(f"MR percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    values = _masked_values(array, mask, name).astype(np.float64)
    lo, hi = (float(v) for v in np.percentile(values, [p_lo, p_hi]))
    if not hi > lo:
        _warn(f"{name}: intensities inside the mask are constant ({lo:g}); normalised image is 0 everywhere")
        return _linear(1.0, lo, (-1.0, 1.0), "a.u.", [lo - 1.0, lo + 1.0], "percentile")
    return _linear((hi - lo) / 2.0, (hi + lo) / 2.0, (-1.0, 1.0), "a.u.", [lo, hi], "percentile")


def mr_zscore_mapping(array: np.ndarray, mask: np.ndarray | None, name: str = "MR") -> Mapping:
    """(x - mean) / std over the voxels inside ``mask``; not clipped. Constant image: std taken as 1."""
    values = _masked_values(array, mask, name).astype(np.float64)
    mean, std = float(values.mean()), float(values.std())
    source_range = [float(values.min()), float(values.max())]
    if not std > 0.0:
        _warn(f"{name}: intensities inside the mask are constant ({mean:g}); normalised image is 0 everywhere")
        std = 1.0
    return _linear(std, mean, None, "a.u.", source_range, "zscore")


def make_mapping(modality: str, array: np.ndarray, mask: np.ndarray | None, *, mr_norm: MrMethod, mr_percentiles: tuple[float, float], ct_window: tuple[float, float]) -> Mapping:
    """The mapping for ``modality`` (CT by name, everything else MR) fitted on ``array`` inside ``mask``."""
    if is_ct(modality):
        values = _masked_values(array, mask, modality)
        if values.size and float(values.max()) == float(values.min()):
            _warn(f"{modality}: intensities inside the mask are constant ({float(values.min()):g} HU)")
        return ct_mapping(ct_window)
    if mr_norm == "percentile":
        return mr_percentile_mapping(array, mask, mr_percentiles, modality)
    if mr_norm == "zscore":
        return mr_zscore_mapping(array, mask, modality)
    raise ValueError(f"unknown MR normalisation {mr_norm!r} (expected 'percentile' or 'zscore')")


def _check(mapping: Mapping) -> tuple[float, float, list[float] | None]:
    if mapping.get("kind") != "linear":
        raise ValueError(f"unsupported normalisation kind {mapping.get('kind')!r}")
    scale = float(mapping["scale"])
    if not np.isfinite(scale) or scale == 0.0:
        raise ValueError(f"normalisation scale must be finite and non-zero, got {scale}")
    return scale, float(mapping["offset"]), mapping.get("clip_normalised")


def apply_normalisation(array: np.ndarray, mapping: Mapping) -> np.ndarray:
    """Original units -> normalised (float32), clipped to ``clip_normalised`` when it is set."""
    scale, offset, clip = _check(mapping)
    out = (np.asarray(array, dtype=np.float64) - offset) / scale
    if clip is not None:
        out = np.clip(out, clip[0], clip[1])
    return out.astype(np.float32)


def invert_normalisation(array: np.ndarray, mapping: Mapping) -> np.ndarray:
    """Normalised -> original units (float32), e.g. network output back to HU.

    Values outside ``clip_normalised`` are clipped first, so an out-of-range prediction lands on
    the window edge rather than beyond what the mapping was fitted on.
    """
    scale, offset, clip = _check(mapping)
    x = np.asarray(array, dtype=np.float64)
    if clip is not None:
        x = np.clip(x, clip[0], clip[1])
    return (x * scale + offset).astype(np.float32)
