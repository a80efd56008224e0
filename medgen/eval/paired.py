"""Paired (registered ground truth) image metrics: MAE, PSNR, SSIM, MS-SSIM inside a body mask.

Conventions follow the SynthRAD2023 challenge (Huijben et al., "Generating synthetic computed
tomography for radiotherapy: SynthRAD2023 challenge report", Med. Image Anal. 2024):

* CT (HU): MAE on the *unclipped* values inside the mask; PSNR after clipping both volumes to
  [-1024, 3000] HU, data range 4024, MSE over the masked voxels; SSIM on the clipped volumes
  with voxels outside the mask set to -1024 and everything shifted by +1024 (range [0, 4024]),
  computed over the whole volume, the border cropped, and averaged over the mask.
* MR: the same on the normalised scale (default [-1, 1], data range 2, background -1).

SSIM (default ``ssim_window="uniform7"``, SynthRAD2023's evaluation): skimage's
``structural_similarity`` with its defaults — uniform 7-voxel window, K1 0.01, K2 0.03, sample
covariance — ``full=True``; the SSIM map and the mask are cropped by 3 voxels (half the window,
as skimage crops for its own mean) on every side and the map is averaged over the cropped mask.
``ssim_window="gaussian"``: Gaussian weights (sigma 1.5, truncated at 3.5 sigma -> 11 voxels)
and population covariance, the settings of Wang et al. 2004, averaged over the whole mask.

MS-SSIM (Wang et al. 2003; the value of torchmetrics' ``MultiScaleStructuralSimilarityIndexMeasure``,
computed with a separable filter, see ``ms_ssim``) with Gaussian kernel 11, sigma 1.5, and the
scale weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333).
Small volumes use only the first ``n`` scales that fit (weights renormalised to sum 1), and
a volume too small even for two scales raises ``ValueError``. MS-SSIM is the global mean over
the (masked, clipped, shifted) volume, not a mask average (as torchmetrics defines it).

All arithmetic is float64.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity
from skimage.util import crop

from medgen.eval.body_mask import body_mask

Modality = Literal["CT", "MR"]

#: HU window for PSNR/SSIM (SynthRAD2023).
CT_RANGE: tuple[float, float] = (-1024.0, 3000.0)
#: Normalised MR range (network output scale).
MR_RANGE: tuple[float, float] = (-1.0, 1.0)
MS_SSIM_BETAS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_KERNEL = 11
MS_SSIM_SIGMA = 1.5
METRICS = ("mae", "psnr", "ssim", "ms_ssim")
#: SynthRAD2023's SSIM window (voxels per side).
SSIM_WIN = 7


def _check(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
    if pred.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D image, got shape {pred.shape}")
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != pred.shape:
            raise ValueError(f"mask {mask.shape} differs in shape from the images {pred.shape}")
        if not mask.any():
            raise ValueError("the mask is empty: no voxel to evaluate")
    return pred, target, mask


def ms_ssim_scales(shape: Sequence[int], kernel_size: int = MS_SSIM_KERNEL, max_scales: int = len(MS_SSIM_BETAS)) -> int:
    """Largest number of MS-SSIM scales (<= ``max_scales``) that an image of ``shape`` supports.

    A scale fits when every side is >= 2**n, the coarsest level (side / 2**(n-1)) is at least one
    kernel wide, and torchmetrics' own size rule holds (side // (n-1)**2 > kernel - 1).
    """
    for n in range(max_scales, 0, -1):
        ok = all(s >= 2**n and s / 2 ** (n - 1) >= kernel_size and s // max(1, n - 1) ** 2 > kernel_size - 1 for s in shape)
        if ok:
            return n
    return 0


def ms_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> tuple[float, tuple[float, ...]]:
    """MS-SSIM of two 2D/3D images (already clipped/shifted), and the scale weights used.

    The same quantity as torchmetrics' ``MultiScaleStructuralSimilarityIndexMeasure`` (Gaussian
    window of 11 taps, sigma 1.5, reflected borders, ``normalize=None``: the original definition),
    in float64 where torchmetrics works in float32 (``tests/test_eval_paired.py`` compares the two
    on a 3D volume, and with a float64 reference written from the definition). Written
    here because torchmetrics convolves a 3D volume with the full 11^3 kernel (1,331 products per
    voxel and map); the Gaussian is separable, so one 11-tap pass per axis gives the same sums
    with 33 (one 90 x 108 x 90 volume on one core: 4.3 s -> 0.2 s).

    NaN when a scale's term is negative. Raises ``ValueError`` when the image cannot hold two
    scales (smallest side < 22 voxels).
    """
    n = ms_ssim_scales(a.shape)
    if n < 2:
        raise ValueError(f"image {a.shape} is too small for MS-SSIM (needs >= 2 scales with an {MS_SSIM_KERNEL}-voxel kernel: every side >= 22)")
    betas = np.asarray(MS_SSIM_BETAS[:n], dtype=np.float64)
    betas = tuple(float(v) for v in betas / betas.sum())
    # on [0, 1]: SSIM is invariant to the common scaling (C1, C2 scale with data_range^2)
    x = np.asarray(a, dtype=np.float64) / data_range
    y = np.asarray(b, dtype=np.float64) / data_range
    terms = []
    for level in range(n):
        ssim, cs = _ssim_and_contrast(x, y)
        terms.append(cs if level < n - 1 else ssim)
        x, y = _halve(x), _halve(y)
    # A negative term (structure anti-correlated at that scale, e.g. a T1w volume scored as T2w)
    # has no real fractional power: the product is undefined, NaN as torchmetrics returns it.
    value = math.prod(t**beta for t, beta in zip(terms, betas)) if min(terms) >= 0 else math.nan
    return value, betas


def _halve(x: np.ndarray) -> np.ndarray:
    """2 x 2 (x 2) average pooling, an odd last row/column/slice dropped (torch's avg_pool)."""
    x = x[tuple(slice(0, s // 2 * 2) for s in x.shape)]
    blocks = x.reshape([v for s in x.shape for v in (s // 2, 2)])
    return blocks.mean(axis=tuple(range(1, blocks.ndim, 2)))


def _gaussian_filter(x: np.ndarray) -> np.ndarray:
    """Gaussian filter (11 taps, sigma 1.5, normalised) along every axis over reflected borders
    (``mirror``: the border voxel is not repeated, torch's ``reflect``)."""
    taps = np.arange(MS_SSIM_KERNEL, dtype=np.float64) - (MS_SSIM_KERNEL - 1) / 2
    kernel = np.exp(-0.5 * (taps / MS_SSIM_SIGMA) ** 2)
    kernel /= kernel.sum()
    for axis in range(x.ndim):
        x = ndimage.correlate1d(x, kernel, axis=axis, mode="mirror")
    return x


def _ssim_and_contrast(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean SSIM over the whole image and mean contrast-structure term with the kernel's half
    width cropped at every border (torchmetrics' convention for MS-SSIM), on [0, 1] images."""
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = _gaussian_filter(x), _gaussian_filter(y)
    var_x = np.maximum(_gaussian_filter(x * x) - mu_x**2, 0.0)
    var_y = np.maximum(_gaussian_filter(y * y) - mu_y**2, 0.0)
    upper = 2 * (_gaussian_filter(x * y) - mu_x * mu_y) + c2
    lower = var_x + var_y + c2
    ssim = ((2 * mu_x * mu_y + c1) * upper) / ((mu_x**2 + mu_y**2 + c1) * lower)
    pad = MS_SSIM_KERNEL // 2
    inner = (slice(pad, -pad),) * x.ndim
    return float(ssim.mean()), float((upper / lower)[inner].mean())


#: SSIM settings by name, as recorded in the metrics file.
SSIM_WINDOWS = {
    "uniform7": f"uniform {SSIM_WIN} voxels, border {SSIM_WIN // 2} cropped, mean over the mask (SynthRAD2023)",
    "gaussian": "gaussian sigma 1.5 (11 voxels), mean over the mask",
}


def _masked_ssim(target: np.ndarray, pred: np.ndarray, mask: np.ndarray, data_range: float, window: str) -> float:
    """SSIM map of the shifted volumes averaged over ``mask`` (see the module doc for ``window``)."""
    if window == "uniform7":
        _, ssim_map = structural_similarity(target, pred, data_range=data_range, full=True, win_size=SSIM_WIN, gaussian_weights=False)
        pad = SSIM_WIN // 2
        ssim_map, mask = crop(ssim_map, pad), crop(mask, pad)
        if not mask.any():
            raise ValueError(f"the mask lies entirely within {pad} voxels of the border: no voxel for SSIM")
        return float(ssim_map[mask].mean(dtype=np.float64))
    if window == "gaussian":
        _, ssim_map = structural_similarity(target, pred, data_range=data_range, full=True, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        return float(ssim_map[mask].mean(dtype=np.float64))
    raise ValueError(f"ssim_window must be one of {sorted(SSIM_WINDOWS)}, got {window!r}")


def paired_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    modality: Modality = "CT",
    spacing: Sequence[float] | None = None,
    mr_range: tuple[float, float] = MR_RANGE,
    ssim_window: Literal["uniform7", "gaussian"] = "uniform7",
    compute_ms_ssim: bool = True,
) -> dict[str, Any]:
    """Metrics of one subject: ``pred`` vs ``target`` (same 2D/3D shape) inside ``mask``.

    ``modality`` "CT": values in HU; "MR": values on the normalised scale ``mr_range``.
    ``mask`` None -> :func:`medgen.eval.body_mask.body_mask` of the target (CT: > -500 HU).
    ``spacing`` (mm) only sets ``mask_volume_ml``. Returns ``{"mae", "psnr" (dB), "ssim",
    "ms_ssim", "units", "data_range", "mask_voxels", ...settings}``.
    """
    pred, target, mask = _check(pred, target, mask)
    modality_u = modality.upper()
    if modality_u.startswith("CT"):
        lo, hi = CT_RANGE
        units = "HU"
    elif modality_u.startswith("MR"):
        lo, hi = (float(mr_range[0]), float(mr_range[1]))
        units = f"normalised [{lo:g}, {hi:g}]"
    else:
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    if mask is None:
        if modality_u.startswith("CT"):
            mask = body_mask(target, "CT")
        else:
            # Threshold on the original-units scale is not available here: any voxel above the background.
            mask = body_mask(target - lo, "MR")
        if not mask.any():
            raise ValueError("the body mask of the target is empty")
    data_range = hi - lo

    mae = float(np.mean(np.abs(pred[mask] - target[mask])))

    pc, tc = np.clip(pred, lo, hi), np.clip(target, lo, hi)
    mse = float(np.mean((pc[mask] - tc[mask]) ** 2))
    psnr = math.inf if mse == 0.0 else float(10.0 * np.log10(data_range**2 / mse))

    # Background at the lower end of the window, then shift so that the range is [0, data_range].
    ps = np.where(mask, pc, lo) - lo
    ts = np.where(mask, tc, lo) - lo
    ssim = _masked_ssim(ts, ps, mask, data_range, ssim_window)

    out: dict[str, Any] = {
        "mae": mae,
        "psnr": psnr,
        "ssim": ssim,
        "modality": "CT" if modality_u.startswith("CT") else "MR",
        "units": units,
        "clip_range": [lo, hi],
        "data_range": data_range,
        "mask_voxels": int(mask.sum()),
        "ssim_window": SSIM_WINDOWS[ssim_window],
    }
    if spacing is not None:
        if len(spacing) != pred.ndim:
            raise ValueError(f"spacing {tuple(spacing)} does not match a {pred.ndim}D image")
        voxel_mm3 = float(np.prod(np.asarray(spacing, dtype=np.float64)))
        out["spacing_mm"] = [float(s) for s in spacing]
        out["mask_volume_ml"] = out["mask_voxels"] * voxel_mm3 / 1000.0
    if compute_ms_ssim:
        value, betas = ms_ssim(ts, ps, data_range)
        out["ms_ssim"] = value
        out["ms_ssim_betas"] = list(betas)
    return out


def bootstrap_ci(values: Sequence[float], *, n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling subjects)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_bootstrap, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha)))


def aggregate(per_subject: Sequence[dict[str, Any]], *, metrics: Sequence[str] = METRICS, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Summary over subjects: per metric ``{"mean", "std" (ddof=1), "median", "ci95" [lo, hi], "n"}``.

    The CI is a seeded percentile bootstrap of the mean over subjects. Non-finite values
    (e.g. PSNR = inf for identical images) are left out of that metric with a warning.
    """
    out: dict[str, Any] = {"n_subjects": len(per_subject), "n_bootstrap": n_bootstrap, "seed": seed}
    for name in metrics:
        vals = [float(d[name]) for d in per_subject if name in d]
        finite = [v for v in vals if math.isfinite(v)]
        if len(finite) < len(vals):
            warnings.warn(f"{name}: {len(vals) - len(finite)} non-finite value(s) left out of the summary", RuntimeWarning, stacklevel=2)
        if not finite:
            continue
        x = np.asarray(finite, dtype=np.float64)
        out[name] = {
            "mean": float(x.mean()),
            "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
            "median": float(np.median(x)),
            "ci95": list(bootstrap_ci(x, n_bootstrap=n_bootstrap, seed=seed)),
            "n": int(x.size),
        }
    units = {d.get("units") for d in per_subject if "units" in d}
    if len(units) == 1:
        out["units"] = units.pop()
    return out
