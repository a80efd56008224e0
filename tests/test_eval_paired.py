"""Paired metrics: known answers (SynthRAD2023 conventions), mask handling, aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from medgen.eval.body_mask import body_mask
from medgen.eval.paired import aggregate, ms_ssim, ms_ssim_scales, paired_metrics


def _phantom(shape=(32, 32, 32), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """CT-like volume (HU): air -1000 outside a ball of soft tissue with texture; and the ball mask."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij"))
    ball = (grid**2).sum(axis=0) < (0.4 * min(shape)) ** 2
    ct = np.full(shape, -1000.0)
    ct[ball] = 40.0 + 200.0 * rng.standard_normal(int(ball.sum()))
    return ct, ball


def test_offset_gives_exact_mae_and_psnr():
    ct, mask = _phantom()
    pred = ct.copy()
    pred[mask] += 100.0
    m = paired_metrics(pred, ct, mask, modality="CT", spacing=(1.0, 1.0, 2.0))
    assert m["mae"] == pytest.approx(100.0, abs=1e-9)
    assert abs(m["psnr"] - 20.0 * math.log10(4024.0 / 100.0)) < 1e-6
    assert m["units"] == "HU" and m["data_range"] == 4024.0
    assert m["mask_volume_ml"] == pytest.approx(mask.sum() * 2.0 / 1000.0)
    assert 0.0 < m["ssim"] < 1.0 and 0.0 < m["ms_ssim"] < 1.0


def test_identical_images():
    ct, mask = _phantom()
    m = paired_metrics(ct, ct, mask, modality="CT")
    assert m["mae"] == 0.0
    assert m["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert m["ms_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert math.isinf(m["psnr"])


def test_outside_mask_does_not_matter():
    ct, mask = _phantom()
    pred = ct + np.random.default_rng(1).normal(0, 30, ct.shape)
    base = paired_metrics(pred, ct, mask, modality="CT")
    wild_pred, wild_target = pred.copy(), ct.copy()
    rng = np.random.default_rng(2)
    wild_pred[~mask] = rng.uniform(-5000, 5000, int((~mask).sum()))
    wild_target[~mask] = rng.uniform(-5000, 5000, int((~mask).sum()))
    other = paired_metrics(wild_pred, wild_target, mask, modality="CT")
    for key in ("mae", "psnr", "ssim"):
        assert other[key] == pytest.approx(base[key], rel=1e-12, abs=1e-12), key
    assert other["ms_ssim"] == pytest.approx(base["ms_ssim"], abs=1e-6)  # float32


def test_clipping_applies_to_psnr_not_mae():
    ct, mask = _phantom()
    pred = ct.copy()
    pred[mask] = 5000.0  # far above the 3000 HU window
    target = ct.copy()
    target[mask] = 3000.0
    m = paired_metrics(pred, target, mask, modality="CT", compute_ms_ssim=False)
    assert m["mae"] == pytest.approx(2000.0)
    assert math.isinf(m["psnr"])  # identical after clipping


def test_mr_units_and_range():
    ct, mask = _phantom()
    mr = np.clip((ct + 1000.0) / 600.0 - 1.0, -1, 1)
    pred = mr.copy()
    pred[mask] += 0.1
    m = paired_metrics(pred, mr, mask, modality="MR")
    assert m["units"] == "normalised [-1, 1]" and m["data_range"] == 2.0
    assert m["mae"] == pytest.approx(0.1)


def test_default_mask_is_body_mask():
    ct, ball = _phantom()
    ct[ball] = 40.0
    ct[16, 16, 16] = -1000.0  # an air pocket inside: filled
    mask = body_mask(ct)
    assert mask[16, 16, 16] and mask.sum() == ball.sum()
    a = paired_metrics(ct + 10.0, ct, None, modality="CT", compute_ms_ssim=False)
    assert a["mask_voxels"] == ball.sum() and a["mae"] == pytest.approx(10.0)


def test_small_volume_ms_ssim_error_and_scales():
    assert ms_ssim_scales((32, 32, 32)) == 2
    assert ms_ssim_scales((256, 256)) == 5
    small = np.zeros((16, 16, 16))
    small[4:12, 4:12, 4:12] = 100.0
    with pytest.raises(ValueError, match="too small"):
        paired_metrics(small, small, small > 0, modality="CT")
    assert "ms_ssim" not in paired_metrics(small, small, small > 0, modality="CT", compute_ms_ssim=False)


def test_shape_mismatch_and_empty_mask():
    ct, mask = _phantom()
    with pytest.raises(ValueError):
        paired_metrics(ct[:-1], ct, mask[:-1])
    with pytest.raises(ValueError, match="empty"):
        paired_metrics(ct, ct, np.zeros_like(mask))


def test_aggregate():
    subjects = [{"mae": v, "psnr": 30.0 + v, "units": "HU"} for v in (1.0, 2.0, 3.0, 4.0)]
    agg = aggregate(subjects, n_bootstrap=200, seed=3)
    assert agg["mae"]["mean"] == 2.5 and agg["mae"]["median"] == 2.5
    assert agg["mae"]["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    lo, hi = agg["mae"]["ci95"]
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    assert agg == aggregate(subjects, n_bootstrap=200, seed=3)  # seeded
    assert agg["units"] == "HU" and "ssim" not in agg


def _ct_pair(shape, seed=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CT-like target with a bone shell and values beyond the HU window, a prediction with
    structured error, and the ball mask."""
    target, mask = _phantom(shape, seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(axis=0))
    shell = mask & (radius > 0.32 * min(shape))
    target[shell] = 1200.0
    target[tuple(s // 2 for s in shape)] = 3500.0  # above the window: clipped for PSNR and SSIM
    rng = np.random.default_rng(seed + 1)
    pred = target + rng.normal(0.0, 250.0, shape) + 300.0 * np.sin(grid[0] / 3.0)
    return pred, target, mask


def _synthrad_inputs(pred, target, mask):
    """SynthRAD2023's preprocessing, written out here: clip to [-1024, 3000] HU, background
    -1024, shift by +1024."""
    p, t = np.clip(pred, -1024, 3000), np.clip(target, -1024, 3000)
    return np.where(mask, p, -1024) + 1024, np.where(mask, t, -1024) + 1024


def test_ssim_is_synthrad2023s():
    from skimage.metrics import structural_similarity

    pred, target, mask = _ct_pair((40, 36, 24))
    ps, ts = _synthrad_inputs(pred, target, mask)
    _, full = structural_similarity(ts, ps, win_size=7, gaussian_weights=False, full=True, data_range=4024.0)
    expected = full[3:-3, 3:-3, 3:-3][mask[3:-3, 3:-3, 3:-3]].mean()
    m = paired_metrics(pred, target, mask, modality="CT", compute_ms_ssim=False)
    # Same float64 arithmetic on the same arrays: equal up to summation-order round-off.
    assert m["ssim"] == pytest.approx(expected, rel=1e-12)
    # The settings matter at this precision: a Gaussian window, no border crop, the whole
    # volume instead of the mask, or a data range 4x off each move the value.
    assert abs(expected - full[mask].mean()) > 1e-4
    assert abs(expected - full[3:-3, 3:-3, 3:-3].mean()) > 1e-4
    _, wrong_range = structural_similarity(ts, ps, win_size=7, gaussian_weights=False, full=True, data_range=4 * 4024.0)
    assert abs(expected - wrong_range[3:-3, 3:-3, 3:-3][mask[3:-3, 3:-3, 3:-3]].mean()) > 1e-4
    assert "uniform 7" in m["ssim_window"]


def test_psnr_is_pinned():
    from skimage.metrics import peak_signal_noise_ratio

    pred, target, mask = _ct_pair((40, 36, 24))
    ps, ts = _synthrad_inputs(pred, target, mask)
    expected = peak_signal_noise_ratio(ts[mask], ps[mask], data_range=4024.0)
    m = paired_metrics(pred, target, mask, modality="CT", compute_ms_ssim=False)
    assert m["psnr"] == pytest.approx(expected, rel=1e-12)  # float64 both ways
    assert m["mae"] == pytest.approx(np.abs(pred - target)[mask].mean(), rel=1e-12)  # unclipped


def _gauss_filter(x: np.ndarray) -> np.ndarray:
    """Normalised 11-tap Gaussian (sigma 1.5) along every axis, mirrored borders (same size)."""
    from scipy.ndimage import correlate1d

    taps = np.arange(11) - 5.0
    kernel = np.exp(-0.5 * (taps / 1.5) ** 2)
    kernel /= kernel.sum()
    for axis in range(x.ndim):
        x = correlate1d(x, kernel, axis=axis, mode="mirror")
    return x


def _ms_ssim_reference(a: np.ndarray, b: np.ndarray, betas: tuple[float, ...]) -> float:
    """MS-SSIM of Wang et al. 2003 on [0, 1] images, written from the definition: per scale the
    mean contrast-structure term (borders of 5 cropped), the full SSIM at the coarsest scale,
    2x2 average pooling between scales."""
    c1, c2 = 0.01**2, 0.03**2
    value = 1.0
    for level, beta in enumerate(betas):
        mu_a, mu_b = _gauss_filter(a), _gauss_filter(b)
        var_a = np.maximum(_gauss_filter(a * a) - mu_a**2, 0.0)
        var_b = np.maximum(_gauss_filter(b * b) - mu_b**2, 0.0)
        cov = _gauss_filter(a * b) - mu_a * mu_b
        cs = (2 * cov + c2) / (var_a + var_b + c2)
        if level < len(betas) - 1:
            value *= cs[(slice(5, -5),) * cs.ndim].mean() ** beta
            even = tuple(slice(0, s // 2 * 2) for s in a.shape)
            halved = [v for s in a[even].shape for v in (s // 2, 2)]
            a = a[even].reshape(halved).mean(axis=tuple(range(1, 2 * a.ndim, 2)))
            b = b[even].reshape(halved).mean(axis=tuple(range(1, 2 * b.ndim, 2)))
        else:
            value *= (((2 * mu_a * mu_b + c1) * cs) / (mu_a**2 + mu_b**2 + c1)).mean() ** beta
    return float(value)


def test_ms_ssim_is_pinned():
    pred, target, mask = _ct_pair((64, 64))
    ps, ts = _synthrad_inputs(pred, target, mask)
    m = paired_metrics(pred, target, mask, modality="CT")
    betas = np.array([0.0448, 0.2856, 0.3001])  # 64 px hold three 11-tap scales
    betas = tuple(betas / betas.sum())
    assert m["ms_ssim_betas"] == pytest.approx(betas, rel=1e-12)
    expected = _ms_ssim_reference(ts / 4024.0, ps / 4024.0, betas)
    # both float64: equal to round-off, while a wrong window, scale count or weight moves the
    # value by > 1e-3
    assert m["ms_ssim"] == pytest.approx(expected, abs=1e-9)
    assert 0.5 < expected < 0.99


def _torchmetrics_ms_ssim(pred: np.ndarray, target: np.ndarray, betas: tuple[float, ...]) -> float:
    """torchmetrics' MS-SSIM (11-tap Gaussian, sigma 1.5, original definition) of [0, 1] images."""
    from torchmetrics.image import MultiScaleStructuralSimilarityIndexMeasure

    metric = MultiScaleStructuralSimilarityIndexMeasure(gaussian_kernel=True, kernel_size=11, sigma=1.5, data_range=1.0, betas=betas, normalize=None)
    as_tensor = lambda v: torch.from_numpy(v.astype(np.float32))[None, None]  # noqa: E731
    return float(metric(as_tensor(pred), as_tensor(target)))


def test_ms_ssim_in_3d_equals_the_definition_and_torchmetrics():
    """medgen's separable MS-SSIM is the definition's value on a 3D volume, and torchmetrics'
    (full 11^3 kernel, float32) to its round-off."""
    rng = np.random.default_rng(4)
    target = ndimage.gaussian_filter(rng.random((48, 52, 44)), 2.0)
    pred = np.clip(target + 0.05 * ndimage.gaussian_filter(rng.standard_normal(target.shape), 1.0), 0.0, 1.0)
    value, betas = ms_ssim(pred, target, data_range=1.0)
    assert len(betas) == 3  # 44 voxels hold three 11-tap scales (44 / 4 = 11)
    assert value == pytest.approx(_ms_ssim_reference(target, pred, betas), abs=1e-9)
    expected = _torchmetrics_ms_ssim(pred, target, betas)
    # torchmetrics sums 1,331 float32 products per voxel (relative round-off ~1e-5 here, 6.8e-6
    # measured); a border, pooling or weight error moves the value by > 1e-3
    assert value == pytest.approx(expected, abs=2e-5)
    assert 0.3 < expected < 0.999


def test_ms_ssim_of_anti_correlated_structure_is_nan_as_in_torchmetrics():
    """Inverted contrast gives negative contrast-structure terms: no real MS-SSIM (torchmetrics: NaN)."""
    target = ndimage.gaussian_filter(np.random.default_rng(5).random((48, 48, 48)), 2.0)
    target = (target - target.min()) / (target.max() - target.min())
    value, betas = ms_ssim(1.0 - target, target, data_range=1.0)
    assert math.isnan(value) and math.isnan(_torchmetrics_ms_ssim(1.0 - target, target, betas))
