"""Distribution metrics on feature vectors: Fréchet distance, KID, precision/recall/density/coverage.

Features in, numbers out: every function takes ``(N, D)`` arrays from any extractor in
:mod:`medgen.eval.features`. All arithmetic is float64.

* Fréchet distance (Heusel et al. 2017, "GANs trained by a two time-scale update rule"):
  ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``, the trace term from a symmetric
  eigendecomposition (see :func:`frechet_distance`).
* KID (Binkowski et al. 2018, "Demystifying MMD GANs"): unbiased MMD^2 with the polynomial
  kernel ``(x.y / d + 1)^3``, averaged over random subsets.
* PRDC (Naeem et al. 2020, "Reliable fidelity and diversity metrics for generative models").
* :func:`evaluate_distribution`: all of them real-vs-fake *and* real-vs-real at the same N,
  with bootstrap intervals, because the values depend strongly on N and on the features.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from typing import Any

import numpy as np

#: Largest tolerated imaginary part on the diagonal of sqrtm(S1 S2) (as pytorch-fid).


def _features(f: Any, name: str) -> np.ndarray:
    arr = np.asarray(f, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) feature array, got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance matrix (negative round-off eigenvalues set to 0)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, *, eps: float = 0.0) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); ``mu`` (D,), ``sigma`` (D, D).

    d² = |mu1 - mu2|² + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^½), in float64. The trace
    term is computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
    sigma1^½ sigma2 sigma1^½, which has the same eigenvalues as sigma1 sigma2: unlike a general
    ``sqrtm(sigma1 @ sigma2)`` (pytorch-fid, torchmetrics), it cannot produce an imaginary part
    and stays stable when the covariances are rank-deficient (N <= D); round-off eigenvalues
    below zero are set to zero. ``eps`` adds eps * I to both covariances (default none).
    """
    mu1 = np.asarray(mu1, dtype=np.float64)
    mu2 = np.asarray(mu2, dtype=np.float64)
    sigma1 = np.asarray(sigma1, dtype=np.float64)
    sigma2 = np.asarray(sigma2, dtype=np.float64)
    if mu1.ndim != 1 or mu2.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be 1-D of equal length, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    for s, name in ((sigma1, "sigma1"), (sigma2, "sigma2")):
        if s.shape != (d, d):
            raise ValueError(f"{name} must be ({d}, {d}), got {s.shape}")
    if eps:
        sigma1, sigma2 = sigma1 + eps * np.eye(d), sigma2 + eps * np.eye(d)
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    trace_covmean = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)


def gaussian_stats(f: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), float64."""
    arr = _features(f, "features")
    return arr.mean(axis=0), np.cov(arr, rowvar=False, ddof=1).reshape(arr.shape[1], arr.shape[1])


def fid_from_features(f1: Any, f2: Any, *, eps: float = 1e-6) -> float:
    """Fréchet distance between the Gaussians fitted to features ``f1`` (N1, D) and ``f2`` (N2, D).

    With fewer samples than dimensions (N <= D) the covariance is singular: a warning is given
    and ``eps * I`` is added to both covariances (a regularised value, not comparable with
    unregularised ones).
    """
    a, b = _features(f1, "f1"), _features(f2, "f2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    mu1, s1 = gaussian_stats(a)
    mu2, s2 = gaussian_stats(b)
    n_min, d = min(a.shape[0], b.shape[0]), a.shape[1]
    if n_min <= d:
        warnings.warn(
            f"Fréchet distance with N={n_min} samples <= feature dimension {d}: singular covariance; adding {eps:g} * I (regularised value)",
            RuntimeWarning,
            stacklevel=2,
        )
        s1 = s1 + np.eye(d) * eps
        s2 = s2 + np.eye(d) * eps
    return frechet_distance(mu1, s1, mu2, s2)


def poly_mmd2(x: np.ndarray, y: np.ndarray, *, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> float:
    """Unbiased MMD^2 with kernel ``(gamma x.y + coef)^degree`` (gamma default 1/D); x, y (m, D).

    Within-set sums leave out the diagonal (1/(m(m-1))); the cross term uses all m^2 pairs, as in
    Binkowski et al. 2018 and its reference code (equal subset sizes).
    """
    m = x.shape[0]
    if y.shape[0] != m:
        raise ValueError("poly_mmd2 needs subsets of equal size")
    g = 1.0 / x.shape[1] if gamma is None else gamma
    kxx = (x @ x.T * g + coef) ** degree
    kyy = (y @ y.T * g + coef) ** degree
    kxy = (x @ y.T * g + coef) ** degree
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.sum() / m**2)


def kid(f1: Any, f2: Any, *, subset_size: int = 1000, n_subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) of unbiased poly-kernel MMD^2 over random subsets.

    Each subset draws ``subset_size`` samples without replacement from each set (seeded numpy
    ``default_rng``). ``subset_size`` larger than min(N1, N2) is clamped with a warning. The std
    is the population std over subsets (as torchmetrics).
    """
    a, b = _features(f1, "f1"), _features(f2, "f2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    n_max = min(a.shape[0], b.shape[0])
    if subset_size > n_max:
        warnings.warn(f"KID subset_size {subset_size} > min(N1, N2) = {n_max}; using {n_max}", RuntimeWarning, stacklevel=2)
        subset_size = n_max
    if subset_size < 2:
        raise ValueError("KID needs subset_size >= 2")
    rng = np.random.default_rng(seed)
    scores = np.empty(n_subsets, dtype=np.float64)
    for i in range(n_subsets):
        ia = rng.choice(a.shape[0], subset_size, replace=False)
        ib = rng.choice(b.shape[0], subset_size, replace=False)
        scores[i] = poly_mmd2(a[ia], b[ib])
    return float(scores.mean()), float(scores.std())


def _prdc_own(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    # Fallback when the `prdc` package is missing: the four estimators of Naeem et al. 2020
    # (eqs. 1-4) written directly on float64 Euclidean distances.
    from scipy.spatial.distance import cdist

    d_rr = cdist(real, real)
    d_ff = cdist(fake, fake)
    d_rf = cdist(real, fake)
    # k-th neighbour excluding self: index k in the sorted row (index 0 is the point itself);
    # a partial sort finds it in O(N) per row.
    r_real = np.partition(d_rr, k, axis=1)[:, k]
    r_fake = np.partition(d_ff, k, axis=1)[:, k]
    inside = d_rf < r_real[:, None]  # (real i, fake j): fake j inside the ball of real i
    return {
        "precision": float(inside.any(axis=0).mean()),
        "recall": float((d_rf < r_fake[None, :]).any(axis=1).mean()),
        "density": float(inside.sum(axis=0).mean() / k),
        "coverage": float((d_rf.min(axis=1) < r_real).mean()),
    }


def precision_recall_density_coverage(real: Any, fake: Any, *, k: int = 5) -> dict[str, float]:
    """Precision, recall, density, coverage (Naeem et al. 2020) with k nearest neighbours.

    Uses the authors' ``prdc`` package when installed (its distances are float32), else an
    equivalent float64 implementation. Needs more than ``k`` samples in each set.
    """
    a, b = _features(real, "real"), _features(fake, "fake")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if min(a.shape[0], b.shape[0]) <= k:
        raise ValueError(f"PRDC with k={k} needs more than {k} samples per set, got {a.shape[0]} real and {b.shape[0]} fake")
    try:
        from prdc import compute_prdc
    except ImportError:
        return _prdc_own(a, b, k)
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints the set sizes
        out = compute_prdc(real_features=a, fake_features=b, nearest_k=k)
    return {key: float(out[key]) for key in ("precision", "recall", "density", "coverage")}


#: Below this many samples per set the distribution metrics are dominated by sampling noise;
#: the metrics file and the report carry a warning beside the numbers.
MIN_SAMPLES_PER_SET = 50

#: How the intervals of :func:`evaluate_distribution` are made (written into every metrics file).
INTERVAL_METHOD = (
    "half-sampling without replacement (delete-d jackknife, d = n - m): each replicate draws m = n // 2 "
    "of the n samples of every set without replacement and recomputes the metric; the 95% interval is "
    "the point estimate minus the 97.5% and 2.5% percentiles of the replicate deviations from their mean, "
    "scaled by sqrt(m / (n - m)) (basic interval; contains the point estimate by construction)"
)


def small_n_warnings(n: int, feature_dim: int) -> list[str]:
    """Warnings for a comparison of ``n`` samples per set in a ``feature_dim``-dimensional space."""
    out = []
    if n < MIN_SAMPLES_PER_SET:
        out.append(f"only {n} samples per set (< {MIN_SAMPLES_PER_SET}): FD, KID and PRDC are dominated by sampling noise; compare with the real-vs-real baseline and the interval")
    if n <= feature_dim:
        out.append(f"{n} samples per set <= feature dimension {feature_dim}: the covariance is singular and FD is regularised (1e-6 * I), not comparable with FDs at other N")
    return out


def half_sampling_interval(
    estimate: float, replicates: Any, *, n: int, m: int, level: float = 0.95, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> list[float]:
    """Basic interval of ``estimate`` from replicate values on half-samples (see ``INTERVAL_METHOD``).

    ``replicates``: the statistic on subsets of ``m`` of the ``n`` samples drawn without
    replacement. Their deviations from their own mean (which removes the shift a
    sample-size-dependent bias, as FD's, gives at m < n) times sqrt(m / (n - m)) estimate the
    sampling distribution of ``estimate - value`` (for m = n/2 the factor is 1: a half-sample's
    variance about the full-sample value, sigma^2 (1/m - 1/n), equals the full-sample variance
    sigma^2 / n). Non-finite replicates are left out; none finite gives [nan, nan]. The interval is
    clipped to ``bounds``, the range the statistic can take (e.g. [0, 1] for precision): the basic
    interval reflects the replicates about the estimate and can otherwise cross a bound the
    statistic never does.
    """
    values = np.asarray(replicates, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0 or not math.isfinite(estimate) or not 0 < m < n:
        return [math.nan, math.nan]
    deviations = (values - values.mean()) * math.sqrt(m / (n - m))
    alpha = (1.0 - level) / 2.0
    lo = estimate - float(np.quantile(deviations, 1.0 - alpha))
    hi = estimate - float(np.quantile(deviations, alpha))
    # The deviations have mean 0, so their quantiles straddle 0; min/max only absorb round-off.
    low, high = bounds
    return [max(min(lo, estimate), low), min(max(hi, estimate), high)]


def half_samples(n: int, n_sets: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Indices ``(n_resamples, n_sets, n // 2)``: per replicate and set, n // 2 of ``range(n)`` drawn
    without replacement (no sample ever appears twice in a replicate)."""
    m = n // 2
    out = np.empty((n_resamples, n_sets, m), dtype=np.int64)
    for i in range(n_resamples):
        for j in range(n_sets):
            out[i, j] = rng.choice(n, m, replace=False)
    return out


def _pair_metrics(x: np.ndarray, y: np.ndarray, *, kid_subset_size: int, kid_subsets: int, k: int, seed: int) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the N vs D condition is reported once by the caller
        fd = fid_from_features(x, y)
        subset = min(kid_subset_size, x.shape[0], y.shape[0])
        # A subset as large as both sets is the whole set whatever the draw: one subset is the value.
        n_subsets = 1 if subset == min(x.shape[0], y.shape[0]) else kid_subsets
        kid_mean, kid_std = kid(x, y, subset_size=subset, n_subsets=n_subsets, seed=seed)
    out = {"fd": fd, "kid_mean": kid_mean, "kid_std": kid_std}
    if min(x.shape[0], y.shape[0]) > k:
        # The float64 estimators (they agree with the `prdc` package, see the tests): recomputed
        # on every half-sample, where the package's import and float32 distances cost more.
        out.update(_prdc_own(x, y, k))
    return out


#: metrics that get an interval
INTERVAL_METRICS = ("fd", "kid_mean", "precision", "recall", "density", "coverage")

#: the range each metric can take (intervals are clipped to it). KID's unbiased estimator can be
#: negative; density is a mean neighbour count over k and can exceed 1.
METRIC_BOUNDS: dict[str, tuple[float, float]] = {
    "fd": (0.0, math.inf),
    "kid_mean": (-math.inf, math.inf),
    "precision": (0.0, 1.0),
    "recall": (0.0, 1.0),
    "density": (0.0, math.inf),
    "coverage": (0.0, 1.0),
}


def evaluate_distribution(
    real_features: Any,
    fake_features: Any,
    *,
    seed: int = 0,
    n_resamples: int = 100,
    k: int = 5,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
) -> dict[str, Any]:
    """Real-vs-fake and real-vs-real (baseline) FD, KID and PRDC at the same N, with 95% intervals.

    The real set (seeded permutation) is split into two disjoint halves A and B; N = min(|A|,
    |fake|). ``real_vs_fake`` compares A[:N] with N fakes (subsampled without replacement);
    ``real_vs_real`` compares A[:N] with B[:N] — the value a perfect generator would get at this
    N. Intervals (``"intervals"``): ``n_resamples`` half-samples without replacement of each of
    the three sets, every metric recomputed, see :data:`INTERVAL_METHOD` (no sample is ever
    duplicated: duplicates bias FD and KID upward and collapse PRDC's k-NN radii). Output holds
    ``n``, the feature dimension and ``warnings`` (small N, N <= D).
    """
    real, fake = _features(real_features, "real_features"), _features(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    if real.shape[0] < 4:
        raise ValueError(f"need at least 4 real samples for a real-vs-real baseline, got {real.shape[0]}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(real.shape[0])
    half = real.shape[0] // 2
    n = min(half, fake.shape[0])
    a = real[perm[:n]]
    b = real[perm[half : half + n]]
    f = fake[rng.choice(fake.shape[0], n, replace=False)]
    d = real.shape[1]
    notes = small_n_warnings(n, d)
    for note in notes:
        warnings.warn(f"evaluate_distribution: {note}", RuntimeWarning, stacklevel=2)

    opts = {"kid_subset_size": kid_subset_size, "kid_subsets": kid_subsets, "k": k, "seed": seed}
    result: dict[str, Any] = {
        "n": int(n),
        "n_real_total": int(real.shape[0]),
        "n_fake_total": int(fake.shape[0]),
        "feature_dim": int(d),
        "seed": seed,
        "k": k,
        "kid_subset_size": int(min(kid_subset_size, n)),
        "kid_subsets": kid_subsets,
        "warnings": notes,
        "real_vs_fake": _pair_metrics(a, f, **opts),
        "real_vs_real": _pair_metrics(a, b, **opts),
    }
    m = n // 2
    replicates: dict[str, dict[str, list[float]]] = {"real_vs_fake": {}, "real_vs_real": {}}
    # Fewer KID subsets per replicate keep the cost bounded; the resampling supplies the spread.
    rep_opts = {**opts, "kid_subsets": max(1, min(kid_subsets, 10))}
    for i, (ia, ib, jf) in enumerate(half_samples(n, 3, n_resamples if m >= 2 else 0, rng)):
        for key, (x, y) in (("real_vs_fake", (a[ia], f[jf])), ("real_vs_real", (a[ia], b[ib]))):
            values = _pair_metrics(x, y, **{**rep_opts, "seed": seed + 1 + i})
            for metric in INTERVAL_METRICS:
                if metric in values and metric in result[key]:
                    replicates[key].setdefault(metric, []).append(values[metric])
    result["intervals"] = {
        "method": INTERVAL_METHOD,
        "n_resamples": n_resamples,
        "subset_size": int(m),
        "level": 0.95,
        **{
            key: {metric: half_sampling_interval(result[key][metric], reps, n=n, m=m, bounds=METRIC_BOUNDS[metric])
            for metric, reps in per_metric.items()}
            for key, per_metric in replicates.items()
        },
    }
    return result
