"""Memorization audit: copies of training images are flagged, genuinely new images are not."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medgen.eval.memorization import closest_pairs_figure, memorization_audit, nearest


def _pool(n: int, seed: int = 0) -> np.ndarray:
    """n distinct 'real' images (32, 32): smoothed noise, each scaled to zero mean and unit std."""
    rng = np.random.default_rng(seed)
    imgs = np.stack([ndimage.gaussian_filter(rng.standard_normal((32, 32)), 2.0) for _ in range(n)])
    imgs -= imgs.mean(axis=(1, 2), keepdims=True)
    return imgs / imgs.std(axis=(1, 2), keepdims=True)


@pytest.fixture(scope="module")
def split():
    pool = _pool(100)
    return pool[:40], pool[40:80], pool[80:]  # train, test, held-out "new" images


@pytest.mark.parametrize("metric", ["rmse", "ncc"])
def test_copies_flagged_exactly(split, metric):
    train, test, new = split
    rng = np.random.default_rng(1)
    copied_from = [3, 17, 29]
    copies = train[copied_from] + 0.02 * rng.standard_normal((3, 32, 32))
    synthetic = np.concatenate([new[:4], copies, new[4:10]])  # copies at 4, 5, 6
    audit = memorization_audit(train, test, synthetic, pixel_metric=metric, top_k=3)
    assert audit["likely_copies"] == [4, 5, 6]
    assert audit["pixel"]["likely_copy_share"] == pytest.approx(3 / 13)
    assert [p["synthetic"] for p in audit["pixel"]["closest_pairs"]] == sorted([4, 5, 6], key=lambda i: audit["pixel"]["synthetic_nn_distance"][i])
    assert sorted(p["train"] for p in audit["pixel"]["closest_pairs"]) == copied_from
    assert len(audit["pixel"]["test_nn_distance"]) == 40 and len(audit["pixel"]["synthetic_nn_distance"]) == 13


def test_novel_images_not_flagged(split):
    train, test, new = split
    audit = memorization_audit(train, test, new, alpha=0.01)
    assert audit["likely_copy_share"] <= 0.1


def test_feature_space(split):
    train, test, new = split
    synthetic = np.concatenate([train[:2] + 0.01, new[:5]])
    feature_fn = lambda x: np.asarray(x).reshape(len(x), -1)[:, ::7]  # noqa: E731  (toy features)
    audit = memorization_audit(train, test, synthetic, feature_fn=feature_fn)
    assert audit["feature"]["likely_copies"] == [0, 1] and audit["likely_copies"] == [0, 1]


def test_nearest_rmse_known_value():
    a = np.zeros((1, 4))
    b = np.array([[2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    d, j = nearest(a, b, metric="rmse")
    assert j[0] == 1 and d[0] == pytest.approx(1.0)


def test_figure(split, tmp_path):
    train, test, new = split
    audit = memorization_audit(train, test, np.concatenate([train[:1], new[:3]]), top_k=2)
    path = closest_pairs_figure(train, np.concatenate([train[:1], new[:3]]), audit["pixel"]["closest_pairs"], tmp_path / "pairs.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs(split):
    train, test, new = split
    with pytest.raises(ValueError):
        memorization_audit(train, test, new[:, :16], alpha=0.01)
    with pytest.raises(ValueError):
        memorization_audit(train, test, new, alpha=1.5)
