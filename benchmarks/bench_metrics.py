"""Time medgen's distribution metrics, radiomics extraction and memorization search against references.

Usage: python benchmarks/bench_metrics.py [--sizes 1000 10000] [--dim 512] [--quick]

On the same random feature vectors in the same process: FD against torchmetrics'
``FrechetInceptionDistance`` and KID against its ``KernelInceptionDistance`` (both given the
vectors through a pass-through feature module), PRDC against the authors' ``prdc`` package;
values and the time ratio medgen / reference are printed. Then radiomic feature extraction
(slices/s, 64x64, the evaluation's "Original" image type) and the memorization audit's exact
nearest-neighbour search (synthetic x training at 64x64) against scikit-learn's brute-force
``NearestNeighbors``, and 3D MS-SSIM (one head-sized volume) against torchmetrics'
``MultiScaleStructuralSimilarityIndexMeasure``. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from medgen.eval.distribution import _prdc_own, fid_from_features, kid
from medgen.eval.memorization import nearest
from medgen.eval.paired import ms_ssim


class _Passthrough(torch.nn.Module):
    """torchmetrics feature module that returns its input: the inputs are the feature vectors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t


def _torchmetrics_fd(a: np.ndarray, b: np.ndarray) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Passthrough(a.shape[1]))
    metric.update(torch.from_numpy(a), real=True)
    metric.update(torch.from_numpy(b), real=False)
    return float(metric.compute())


def _torchmetrics_kid(a: np.ndarray, b: np.ndarray, subset: int, subsets: int) -> float:
    from torchmetrics.image.kid import KernelInceptionDistance

    metric = KernelInceptionDistance(feature=_Passthrough(a.shape[1]), subset_size=subset, subsets=subsets)
    metric.update(torch.from_numpy(a), real=True)
    metric.update(torch.from_numpy(b), real=False)
    return float(metric.compute()[0])


def _prdc_package(a: np.ndarray, b: np.ndarray, k: int) -> dict[str, float]:
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):
        return compute_prdc(real_features=a, fake_features=b, nearest_k=k)


def bench_distribution(n: int, dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    a = rng.normal(size=(n, dim)) @ mix
    b = (rng.normal(size=(n, dim)) + 0.1) @ mix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, t_ours = _timed(lambda: fid_from_features(a, b))
        ref, t_ref = _timed(lambda: _torchmetrics_fd(a, b))
        print(f"FD   n={n:>6} d={dim}: medgen {ours:.6g} in {t_ours:.2f} s, torchmetrics {ref:.6g} in {t_ref:.2f} s; time ratio medgen/torchmetrics {t_ours / t_ref:.2f}")
        subset, subsets = min(1000, n), 100
        ours, t_ours = _timed(lambda: kid(a, b, subset_size=subset, n_subsets=subsets)[0])
        ref, t_ref = _timed(lambda: _torchmetrics_kid(a, b, subset, subsets))
        print(f"KID  n={n:>6} d={dim} ({subsets} subsets of {subset}): medgen {ours:.4g} in {t_ours:.2f} s, torchmetrics {ref:.4g} in {t_ref:.2f} s; time ratio {t_ours / t_ref:.2f} (random subsets differ)")
        ours, t_ours = _timed(lambda: _prdc_own(a, b, 5))
        ref, t_ref = _timed(lambda: _prdc_package(a, b, 5))
        values = ", ".join(f"{k} {ours[k]:.3f}/{float(ref[k]):.3f}" for k in ours)
        print(f"PRDC n={n:>6} d={dim} k=5: medgen/prdc {values}; {t_ours:.2f} s vs {t_ref:.2f} s, time ratio {t_ours / t_ref:.2f}")


def bench_radiomics(n: int, seed: int) -> None:
    from medgen.eval.radiomics_features import RadiomicsFeatures

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    images = [np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 26**2, 0.2 + 0.3 * rng.random((64, 64)), -1.0).astype(np.float32) for _ in range(n)]
    extractor = RadiomicsFeatures(image_types=["Original"])
    extractor(images[:2])  # imports and extractor set-up outside the timing
    features, seconds = _timed(lambda: extractor(images))
    print(f"radiomics: {n} slices 64x64 -> {features.shape[1]} features each in {seconds:.2f} s: {n / seconds:.1f} slices/s")


def bench_nearest(n_query: int, n_train: int, seed: int) -> None:
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(seed)
    train = rng.normal(size=(n_train, 64 * 64))
    query = rng.normal(size=(n_query, 64 * 64))
    (dist, idx), t_ours = _timed(lambda: nearest(query, train, metric="euclidean"))
    (ref_d, ref_i), t_ref = _timed(lambda: NearestNeighbors(n_neighbors=1, algorithm="brute").fit(train).kneighbors(query))
    agree = float((idx == ref_i[:, 0]).mean())
    print(
        f"memorization NN: {n_query} synthetic x {n_train} training at 64x64: medgen {t_ours:.1f} s, "
        f"scikit-learn brute force {t_ref:.1f} s, time ratio {t_ours / t_ref:.2f}; same neighbour for {agree:.1%}, "
        f"max distance difference {np.abs(dist - ref_d[:, 0]).max():.2g}"
    )


def bench_ms_ssim(shape: tuple[int, ...], seed: int) -> None:
    from scipy import ndimage
    from torchmetrics.image import MultiScaleStructuralSimilarityIndexMeasure

    rng = np.random.default_rng(seed)
    target = ndimage.gaussian_filter(rng.random(shape), 2.0)
    pred = np.clip(target + 0.03 * rng.standard_normal(shape), 0.0, 1.0)
    (ours, betas), t_ours = _timed(lambda: ms_ssim(pred, target, data_range=1.0))
    metric = MultiScaleStructuralSimilarityIndexMeasure(gaussian_kernel=True, kernel_size=11, sigma=1.5, data_range=1.0, betas=betas, normalize=None)
    as_tensor = lambda v: torch.from_numpy(v.astype(np.float32))[None, None]  # noqa: E731
    ref, t_ref = _timed(lambda: float(metric(as_tensor(pred), as_tensor(target))))
    print(
        f"MS-SSIM {'x'.join(map(str, shape))} ({len(betas)} scales): medgen {ours:.7f} in {t_ours:.2f} s (separable, float64), "
        f"torchmetrics {ref:.7f} in {t_ref:.2f} s (11^3 kernel, float32); time ratio medgen/torchmetrics {t_ours / t_ref:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000], help="feature vectors per set (none: skip FD/KID/PRDC)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension")
    parser.add_argument("--radiomics-slices", type=int, default=32, help="slices for the radiomics timing (0: skip it)")
    parser.add_argument("--nn", type=int, nargs=2, default=[10000, 10000], metavar=("SYNTHETIC", "TRAINING"), help="memorization search size at 64x64")
    parser.add_argument("--quick", action="store_true", help="1k vectors, 1k x 1k search, 8 radiomics slices")
    parser.add_argument("--ms-ssim-shape", type=int, nargs=3, default=[90, 108, 90], help="3D volume for MS-SSIM (the demo's 2 mm head grid)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.nn, args.radiomics_slices = [1000], [1000, 1000], 8
    print(f"torch threads: {torch.get_num_threads()}")
    for n in args.sizes:
        bench_distribution(n, args.dim, args.seed)
    if args.radiomics_slices > 0:
        bench_radiomics(args.radiomics_slices, args.seed)
    bench_nearest(args.nn[0], args.nn[1], args.seed)
    bench_ms_ssim(tuple(args.ms_ssim_shape), args.seed)


if __name__ == "__main__":
    main()
