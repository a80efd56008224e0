"""Memorization audit: is a synthetic image a (near) copy of a training image?

For every synthetic sample the distance to its nearest *training* sample is compared with the
same nearest-train distance of *real test* samples, which the generator never saw: a synthetic
sample is a likely copy when it is closer to the training set than the ``alpha``-quantile
(default 1st percentile) of the test-to-train distances, i.e. closer than almost any genuinely
new real image gets (cf. the nearest-neighbour "copy" tests of Carlini et al. 2023, "Extracting
training data from diffusion models", and Akbar et al. 2023 for medical images) **and** no farther
from its nearest training sample than that training sample is from its own nearest training
neighbour (the per-neighbour rule behind the authenticity score of Alaa et al. 2022, "How faithful
is your synthetic data?"). The second condition keeps dense regions of the training set (e.g. many
nearly blank edge slices, each a hair from the next) from flagging every sample that lands there:
near such a slice a new image is close to the training set without copying any one image.
``authenticity`` is the share of samples that the per-neighbour rule alone does not call close;
the same share for the real test samples is its reference level (genuinely new real images are
not all "authentic" by it either).

Pixel-space distance (``pixel_metric``):
* "rmse" (default): normalised L2, ``||a - b||_2 / sqrt(P)`` over the P pixels/voxels — the
  root-mean-square difference, in image units;
* "ncc": ``1 - NCC(a, b)`` (Pearson correlation of the flattened images), insensitive to
  global intensity shifts and scaling.
Feature space (``feature_fn`` given): Euclidean distance between ``feature_fn(images)`` rows.
All distances are float64.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medgen.io.atomic import atomic_write_bytes

PixelMetric = Literal["rmse", "ncc"]


def _flat(images: Any, name: str) -> np.ndarray:
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty stack (N, ...) of images, got shape {arr.shape}")
    return arr.reshape(arr.shape[0], -1)


def _zrows(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1, keepdims=True)
    return centred / np.where(norm > 0, norm, 1.0)  # constant images: zero vector (NCC 0)


def nearest(
    query: np.ndarray, reference: np.ndarray, *, metric: str = "euclidean", chunk: int = 256, exclude_self: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest ``reference`` row of each ``query`` row: (distances (Nq,), indices (Nq,)).

    ``metric``: "euclidean", "rmse" (euclidean / sqrt(P)) or "ncc" (1 - Pearson correlation).
    ``exclude_self``: ``query`` is ``reference`` and row i may not pick itself (the nearest *other*
    row; needs at least two rows). Computed in chunks of ``chunk`` query rows to bound memory.
    """
    if exclude_self and (query.shape[0] != reference.shape[0] or query.shape[0] < 2):
        raise ValueError("exclude_self needs the reference itself as the query, with at least two rows")
    if query.shape[1] != reference.shape[1]:
        raise ValueError(f"size mismatch: {query.shape[1]} vs {reference.shape[1]} values per sample")
    if metric == "ncc":
        query, reference = _zrows(query), _zrows(reference)
    ref_sq = (reference**2).sum(axis=1)
    dist = np.empty(query.shape[0])
    index = np.empty(query.shape[0], dtype=np.int64)
    for start in range(0, query.shape[0], chunk):
        q = query[start : start + chunk]
        if metric == "ncc":
            d = 1.0 - q @ reference.T
        else:
            # |q - r|^2 = |q|^2 + |r|^2 - 2 q.r, clipped at 0 against round-off.
            d = np.sqrt(np.maximum((q**2).sum(axis=1)[:, None] + ref_sq[None, :] - 2.0 * q @ reference.T, 0.0))
            if metric == "rmse":
                d = d / np.sqrt(query.shape[1])
            elif metric != "euclidean":
                raise ValueError(f"unknown metric {metric!r}")
        if exclude_self:
            rows = np.arange(d.shape[0])
            d[rows, start + rows] = np.inf
        j = d.argmin(axis=1)
        index[start : start + chunk] = j
        dist[start : start + chunk] = d[np.arange(d.shape[0]), j]
    return dist, index


def _space(train: np.ndarray, test: np.ndarray, synthetic: np.ndarray, metric: str, alpha: float, threshold: float | None, top_k: int) -> dict[str, Any]:
    syn_d, syn_j = nearest(synthetic, train, metric=metric)
    test_d, test_j = nearest(test, train, metric=metric)
    # each training sample's distance to its nearest other training sample: its neighbourhood's scale
    train_d = nearest(train, train, metric=metric, exclude_self=True)[0] if train.shape[0] > 1 else np.full(1, np.inf)
    thr = float(np.quantile(test_d, alpha)) if threshold is None else float(threshold)
    syn_close = syn_d <= train_d[syn_j]
    copies = np.flatnonzero((syn_d < thr) & syn_close)
    order = np.argsort(syn_d, kind="stable")[:top_k]
    return {
        "metric": metric,
        "threshold": thr,
        "threshold_from": f"{alpha:g}-quantile of test-to-train NN distances" if threshold is None else "given",
        "likely_copies": copies.tolist(),
        "likely_copy_share": float(copies.size / synthetic.shape[0]),
        "synthetic_nn_distance": syn_d.tolist(),
        "synthetic_nn_train_index": syn_j.tolist(),
        "test_nn_distance": test_d.tolist(),
        "test_nn_train_index": test_j.tolist(),
        "train_nn_distance": train_d.tolist(),
        "authenticity": float(1.0 - syn_close.mean()),
        "test_authenticity": float(1.0 - (test_d <= train_d[test_j]).mean()),
        "closest_pairs": [{"synthetic": int(i), "train": int(syn_j[i]), "distance": float(syn_d[i])} for i in order],
        "summary": {
            "synthetic_median": float(np.median(syn_d)),
            "test_median": float(np.median(test_d)),
            "synthetic_min": float(syn_d.min()),
            "test_min": float(test_d.min()),
        },
    }


def memorization_audit(
    train: Any,
    test: Any,
    synthetic: Any,
    *,
    feature_fn: Callable[[Any], np.ndarray] | None = None,
    alpha: float = 0.01,
    threshold: float | None = None,
    pixel_metric: PixelMetric = "rmse",
    top_k: int = 8,
) -> dict[str, Any]:
    """Nearest-training-sample audit of ``synthetic`` images against the ``test`` baseline.

    Inputs: stacks of images of one shape, (N, H, W) or (N, C, ...), on the same intensity scale.
    ``alpha``: quantile of the test-to-train NN distances below which a synthetic sample is a
    likely copy, provided it is also no farther from its nearest training sample than that sample
    is from its own nearest training neighbour (``threshold`` overrides the quantile with a fixed
    distance, pixel space only). Returns
    ``{"pixel": {...}, "feature": {...} (with feature_fn), "likely_copies": indices flagged in any
    space, "likely_copy_share", "n_train", "n_test", "n_synthetic", "alpha", "warnings"}``; each space holds
    the threshold, flagged indices and share, all NN distances (for histograms), the
    ``authenticity`` of the synthetic and the real test samples and the ``top_k`` closest
    synthetic-train pairs.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if pixel_metric not in ("rmse", "ncc"):
        raise ValueError(f"pixel_metric must be 'rmse' or 'ncc', got {pixel_metric!r}")
    tr, te, sy = _flat(train, "train"), _flat(test, "test"), _flat(synthetic, "synthetic")
    out: dict[str, Any] = {"n_train": tr.shape[0], "n_test": te.shape[0], "n_synthetic": sy.shape[0], "alpha": alpha}
    out["pixel"] = _space(tr, te, sy, pixel_metric, alpha, threshold, top_k)
    flagged = set(out["pixel"]["likely_copies"])
    if feature_fn is not None:
        feats = [np.asarray(feature_fn(x), dtype=np.float64) for x in (train, test, synthetic)]
        out["feature"] = _space(*[f.reshape(f.shape[0], -1) for f in feats], "euclidean", alpha, None, top_k)
        flagged |= set(out["feature"]["likely_copies"])
    out["likely_copies"] = sorted(flagged)
    out["likely_copy_share"] = len(flagged) / sy.shape[0]
    out["warnings"] = audit_warnings(te.shape[0], sy.shape[0], alpha)
    return out


def audit_warnings(n_test: int, n_synthetic: int, alpha: float) -> list[str]:
    """Why a share may mean little: too few test samples to resolve the ``alpha``-quantile
    threshold, or too few synthetic samples for a share."""
    out = []
    if n_test * alpha < 1.0:
        out.append(
            f"the threshold is the {alpha:g}-quantile of only {n_test} test-to-train distances (fewer than {math.ceil(1 / alpha)}): "
            "it is interpolated from the few smallest distances, so the share of likely copies is uncertain"
        )
    if n_synthetic < 50:
        out.append(f"only {n_synthetic} synthetic samples: one flagged sample moves the share by {100 / n_synthetic:.1f} percentage points")
    return out


def _show(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    while img.ndim > 2:  # channel-first (1, H, W) or a volume: first channel / middle slice
        img = img[0] if img.shape[0] == 1 else img[..., img.shape[-1] // 2]
    return img


def closest_pairs_figure(
    train: Sequence[np.ndarray] | np.ndarray,
    synthetic: Sequence[np.ndarray] | np.ndarray,
    pairs: Sequence[dict[str, Any]],
    out_path: Path | str,
    *,
    max_pairs: int = 8,
    title: str = "closest synthetic | training pairs",
) -> Path:
    """PNG with one row per pair: synthetic image | its nearest training image (distance in the title).

    ``pairs``: ``audit["pixel"]["closest_pairs"]`` (or the feature-space list). 3D images show
    their middle slice along the last axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(pairs)[:max_pairs]
    if not pairs:
        raise ValueError("no pairs to draw")
    fig, axes = plt.subplots(len(pairs), 2, figsize=(4, 2 * len(pairs)), squeeze=False)
    for row, pair in enumerate(pairs):
        s, t = _show(synthetic[pair["synthetic"]]), _show(train[pair["train"]])
        lo, hi = float(min(s.min(), t.min())), float(max(s.max(), t.max()))
        for col, (img, label) in enumerate(((s, f"synthetic {pair['synthetic']}"), (t, f"train {pair['train']}"))):
            ax = axes[row, col]
            ax.imshow(img.T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.set_title(f"{label}\nd = {pair['distance']:.4g}" if col == 0 else label, fontsize=7)
            ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return atomic_write_bytes(Path(out_path), buffer.getvalue())
