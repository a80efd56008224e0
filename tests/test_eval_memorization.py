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


def test_a_dense_training_region_flags_only_real_copies(split):
    # Ten nearly blank training slices (like the empty slices at a volume's ends), each a hair
    # (rmse ~0.014) from the next, beside distinct images (rmse ~1.4 apart). A new nearly blank
    # sample lands 0.05 from the blank slices: under every genuinely new image's distance to the
    # training set (the test threshold), but three times farther than the blank slices are from
    # each other, so it copies none of them. A copy of a distinct image (0.02 from it, 70x closer
    # than that image's own nearest neighbour) is flagged.
    train, test, new = split
    rng = np.random.default_rng(2)
    blank = 0.01 * rng.standard_normal((10, 32, 32))
    train = np.concatenate([train, blank])
    blank_sample = 0.05 * rng.standard_normal((1, 32, 32))
    copy = train[7:8] + 0.02 * rng.standard_normal((1, 32, 32))
    synthetic = np.concatenate([new[:3], blank_sample, copy])
    audit = memorization_audit(train, test, synthetic)
    pixel = audit["pixel"]
    assert pixel["synthetic_nn_distance"][3] < pixel["threshold"]  # the global threshold alone would flag it
    assert pixel["synthetic_nn_train_index"][3] >= 40 and pixel["train_nn_distance"][pixel["synthetic_nn_train_index"][3]] < 0.03
    assert audit["likely_copies"] == [4]
    # authenticity: only the copy is closer to its training image than that image's neighbour;
    # the real test images' share by the same rule is the reference level
    assert pixel["authenticity"] == pytest.approx(4 / 5)
    test_d, train_d = np.array(pixel["test_nn_distance"]), np.array(pixel["train_nn_distance"])
    assert pixel["test_authenticity"] == pytest.approx(np.mean(test_d > train_d[pixel["test_nn_train_index"]]))


def test_nearest_other_row_excludes_the_row_itself():
    x = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    d, j = nearest(x, x, exclude_self=True, chunk=2)  # chunks of 2 rows: the diagonal in each chunk
    assert j.tolist() == [1, 0, 1] and d.tolist() == [1.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="exclude_self"):
        nearest(x, x[:2], exclude_self=True)
