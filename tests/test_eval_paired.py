"""Paired metrics: known answers (SynthRAD2023 conventions), mask handling, aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medgen.eval.body_mask import body_mask
from medgen.eval.paired import aggregate, ms_ssim_scales, paired_metrics


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
