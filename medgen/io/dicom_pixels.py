"""Pixel values of scanned slices: stored values, rescaled to physical units, shown as MONOCHROME2.

Why not ``pydicom.dcmread(path).pixel_array`` for every file: that parses each header a second
time and builds a Dataset per slice, although the header scan (:mod:`medgen.io.dicom_scan`)
already knows where each file's PixelData lies and how it is stored. For the common case
(single-frame files, native little-endian, 8/16/32-bit greyscale, one layout for the whole
series) :func:`stored_values` reads the pixels straight from that byte offset with numpy and
applies BitsStored itself (sign extension; overlay bits above BitsStored masked off). Everything
else (compressed or big-endian transfer syntaxes, multi-frame objects, mixed layouts) falls back
to pydicom and whatever decoder plugins are installed, with an error naming the file and the
transfer syntax when none can decode it; there is no silent fallback to another reader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medgen.io.dicom_scan import DicomFrame, DicomSeries, series_error

__all__ = ["stored_values", "to_physical", "monochrome2", "record_voi_window"]


def stored_values(series: DicomSeries, frames: list[DicomFrame]) -> np.ndarray:
    """Stored pixel values (n, rows, cols) for the frames in the given order."""
    if all(f.frame is None and f.layout.raw_readable for f in frames):
        layouts = {(f.layout.bits_allocated, f.layout.bits_stored, f.layout.signed) for f in frames}
        if len(layouts) == 1:
            try:
                return _read_raw(frames)
            except (OSError, ValueError) as exc:
                raise series_error(series, f"cannot read pixels: {exc}") from exc
    cache: dict[Path, np.ndarray] = {}
    slices = []
    for f in frames:
        if f.path not in cache:
            cache[f.path] = _decode(series, f.path)
        data = cache[f.path]
        slices.append(data[f.frame or 0])
    return np.stack(slices)


def _read_raw(frames: list[DicomFrame]) -> np.ndarray:
    """Stored values (n, rows, cols) of native little-endian single-frame files, read with numpy."""
    lay = frames[0].layout
    dtype = np.dtype(f"<{'i' if lay.signed else 'u'}{lay.bits_allocated // 8}")
    count = lay.rows * lay.cols
    out = np.empty((len(frames), lay.rows, lay.cols), dtype=dtype)
    for n, f in enumerate(frames):
        out[n] = np.fromfile(f.path, dtype=dtype, count=count, offset=f.layout.value_offset).reshape(lay.rows, lay.cols)
    shift = lay.bits_allocated - lay.bits_stored
    if shift:
        if lay.signed:  # sign-extend the stored bits (two's complement in the low BitsStored bits)
            out = (out << shift) >> shift
        else:  # bits above BitsStored may hold overlays: not part of the value
            out &= dtype.type((1 << lay.bits_stored) - 1)
    return out


def _decode(series: DicomSeries, path: Path) -> np.ndarray:
    """All frames of one file via pydicom (compressed, big endian, multi-frame...): (frames, rows, cols)."""
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as exc:  # decoder plugins raise assorted types
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) if "ds" in locals() else None
        name = f"{UID(str(ts)).name} ({ts})" if ts else "unknown transfer syntax"
        raise series_error(series, f"cannot decode pixels of {path} [transfer syntax {name}]: {type(exc).__name__}: {exc}") from exc
    return arr[np.newaxis] if arr.ndim == 2 else arr


def to_physical(stored: np.ndarray, frames: list[DicomFrame]) -> np.ndarray:
    """Apply each slice's RescaleSlope/Intercept; float32 (n, rows, cols)."""
    slopes = np.array([f.slope for f in frames], dtype=np.float64)
    inters = np.array([f.intercept for f in frames], dtype=np.float64)
    if np.all(slopes == 1) and np.all(inters == np.round(inters)) and np.abs(stored).max(initial=0) < 2**24 - 2**16:
        # Integers below 2**24 are exact in float32: skip the float64 detour (hot path for CT).
        out = stored.astype(np.float32)
        if np.any(inters):
            out += inters.astype(np.float32)[:, None, None]
        return out
    return (stored * slopes[:, None, None] + inters[:, None, None]).astype(np.float32)


def _value_range(frames: list[DicomFrame]) -> tuple[float, float]:
    """Smallest and largest physical value the stored bits can express (BitsStored, sign, rescale)."""
    lows, highs = [], []
    for f in frames:
        bits = f.layout.bits_stored
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if f.layout.signed else (0, 2**bits - 1)
        a, b = lo * f.slope + f.intercept, hi * f.slope + f.intercept
        lows.append(min(a, b))
        highs.append(max(a, b))
    return float(min(lows)), float(max(highs))


def monochrome2(slices: np.ndarray, frames: list[DicomFrame], header: Dataset, info: dict) -> np.ndarray:
    """MONOCHROME1 (low values shown white) -> MONOCHROME2: ``v' = lo + hi - v`` over the expressible range.

    The flip uses the range the stored bits can hold (not the image's own minimum and maximum),
    so it is the same for every image of a scanner and exactly invertible; the sidecar records it.
    """
    photometric = str(header.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric != "MONOCHROME1":
        return slices
    lo, hi = _value_range(frames)
    info["photometric"] = {"source": "MONOCHROME1", "written_as": "MONOCHROME2", "inverted": True,
                           "rule": "value = lo + hi - original", "lo": lo, "hi": hi}
    return ((lo + hi) - slices.astype(np.float64)).astype(np.float32)


def record_voi_window(header: Dataset, info: dict) -> None:
    """Record the VOI window (WindowCenter/Width (0028,1050/1051)) in the values written out."""
    centers = _floats_any(header.get("WindowCenter"))
    widths = _floats_any(header.get("WindowWidth"))
    if not centers or not widths or len(centers) != len(widths):
        if "VOILUTSequence" in header:
            info["voi_window"] = {"voi_lut_sequence": True, "applied": False}
        return
    flip = info.get("photometric")
    if flip:  # the window moves with the inversion; its width does not change
        centers = [flip["lo"] + flip["hi"] - c for c in centers]
    info["voi_window"] = {
        "center": centers, "width": widths,
        "function": str(header.get("VOILUTFunction", "") or "LINEAR"),
        "source": "WindowCenter (0028,1050) / WindowWidth (0028,1051)"
                  + (", centre mirrored with the MONOCHROME1 inversion" if flip else ""),
        "applied": False,
    }


def _floats_any(value: object) -> list[float]:
    if value in (None, ""):
        return []
    items = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    try:
        return [float(v) for v in items]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return []
