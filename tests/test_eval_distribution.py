"""Distribution metrics: agreement with torchmetrics, closed forms, edge cases, baseline."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from medgen.eval.distribution import (
    evaluate_distribution,
    fid_from_features,
    frechet_distance,
    gaussian_stats,
    half_sampling_interval,
    half_samples,
    kid,
    poly_mmd2,
    precision_recall_density_coverage,
)


def _sets(n1=200, n2=150, d=16, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    f1 = rng.normal(size=(n1, d)) @ mix
    f2 = rng.normal(loc=0.3, size=(n2, d)) @ (mix * 1.2)
    return f1, f2


class _Passthrough(torch.nn.Module):
    """'Feature extractor' for torchmetrics that returns its input: the inputs *are* the features."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.num_features = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_fid_matches_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    f1, f2 = _sets()
    metric = FrechetInceptionDistance(feature=_Passthrough(f1.shape[1]))
    metric.update(torch.from_numpy(f1), real=True)
    metric.update(torch.from_numpy(f2), real=False)
    expected = float(metric.compute())
    assert fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-9)


def test_fd_closed_form_diagonal():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)


def test_identical_sets_zero():
    f1, _ = _sets()
    assert abs(fid_from_features(f1, f1.copy())) < 1e-8


def test_few_samples_warns_and_regularises():
    rng = np.random.default_rng(1)
    f1, f2 = rng.normal(size=(10, 32)), rng.normal(size=(12, 32))
    with pytest.warns(RuntimeWarning, match="regularised"):
        value = fid_from_features(f1, f2)
    assert np.isfinite(value) and value > 0


def test_wrong_rank():
    with pytest.raises(ValueError):
        fid_from_features(np.zeros(10), np.zeros(10))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((2, 2)), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError):
        kid(np.zeros((4, 2, 2)), np.zeros((4, 2, 2)))


def test_kid_matches_torchmetrics_on_full_sets():
    from torchmetrics.image.kid import KernelInceptionDistance

    f1, f2 = _sets(100, 100)
    torch.manual_seed(0)
    metric = KernelInceptionDistance(feature=_Passthrough(f1.shape[1]), subsets=3, subset_size=100)
    metric.update(torch.from_numpy(f1), real=True)
    metric.update(torch.from_numpy(f2), real=False)
    expected_mean, expected_std = (float(v) for v in metric.compute())
    # subset = whole set: every subset gives the same (permutation-invariant) value.
    mean, std = kid(f1, f2, subset_size=100, n_subsets=3, seed=0)
    assert mean == pytest.approx(expected_mean, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12) and expected_std == pytest.approx(0.0, abs=1e-9)


def test_poly_mmd_direct():
    f1, f2 = _sets(30, 30, d=5)
    g = 1.0 / 5
    k = lambda a, b: (a @ b.T * g + 1.0) ** 3  # noqa: E731
    m = 30
    direct = (
        sum(k(f1, f1)[i, j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        + sum(k(f2, f2)[i, j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        - 2 * k(f1, f2).mean()
    )
    assert poly_mmd2(f1, f2) == pytest.approx(direct, rel=1e-10)


def test_kid_clamps_subset_size():
    f1, f2 = _sets(40, 30)
    with pytest.warns(RuntimeWarning, match="subset_size"):
        mean, std = kid(f1, f2, subset_size=1000, n_subsets=5, seed=1)
    assert mean > 0 and std >= 0
    assert kid(f1, f2, subset_size=20, n_subsets=5, seed=1) == kid(f1, f2, subset_size=20, n_subsets=5, seed=1)


def test_prdc_identical_and_disjoint():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 8))
    same = precision_recall_density_coverage(real, real.copy(), k=5)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = precision_recall_density_coverage(real, real + 1000.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_own_matches_package():
    pytest.importorskip("prdc")
    from medgen.eval.distribution import _prdc_own

    f1, f2 = _sets(80, 70, d=6)
    pkg = precision_recall_density_coverage(f1, f2, k=5)
    own = _prdc_own(f1, f2, 5)
    for key in pkg:
        assert own[key] == pytest.approx(pkg[key], abs=0.02), key


def test_evaluate_distribution_baseline():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(120, 4))
    good = rng.normal(size=(80, 4))
    bad = rng.normal(loc=2.0, size=(80, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # N >= 50 and N > D: no warning expected
        res = evaluate_distribution(real, bad, seed=0, n_resamples=20, kid_subset_size=50, kid_subsets=5)
    assert res["n"] == 60 and res["feature_dim"] == 4 and res["warnings"] == []
    assert res["real_vs_fake"]["fd"] > 5 * res["real_vs_real"]["fd"]
    lo, hi = res["intervals"]["real_vs_fake"]["fd"]
    assert lo <= hi
    assert res["intervals"]["real_vs_real"]["fd"][1] < lo
    assert "without replacement" in res["intervals"]["method"] and res["intervals"]["subset_size"] == 30
    res_good = evaluate_distribution(real, good, seed=0, n_resamples=20, kid_subset_size=50, kid_subsets=5)
    assert res_good["real_vs_fake"]["fd"] < 0.5
    assert res_good == evaluate_distribution(real, good, seed=0, n_resamples=20, kid_subset_size=50, kid_subsets=5)


def test_every_interval_contains_its_estimate():
    # The case: fakes from the real distribution at small N, where resampling with
    # replacement gave KID -0.0036 with [0.039, 0.098] and FD 2.84 with [4.88, 5.98].
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(128, 8)), rng.normal(size=(64, 8))
    res = evaluate_distribution(real, fake, seed=0, n_resamples=50)
    for pair in ("real_vs_fake", "real_vs_real"):
        assert set(res["intervals"][pair]) == {"fd", "kid_mean", "precision", "recall", "density", "coverage"}
        for metric, (lo, hi) in res["intervals"][pair].items():
            assert lo <= res[pair][metric] <= hi, (pair, metric, res[pair][metric], lo, hi)


def test_small_n_is_warned_in_the_result():
    rng = np.random.default_rng(1)
    with pytest.warns(RuntimeWarning, match="samples per set"):
        res = evaluate_distribution(rng.normal(size=(14, 16)), rng.normal(size=(7, 16)), n_resamples=5)
    assert res["n"] == 7
    assert any("< 50" in w for w in res["warnings"]) and any("feature dimension 16" in w for w in res["warnings"])


def test_half_samples_never_repeat_a_sample():
    idx = half_samples(11, 3, 20, np.random.default_rng(0))
    assert idx.shape == (20, 3, 5)
    assert all(len(set(row)) == 5 for row in idx.reshape(-1, 5))


def _coverage(statistic, draw, truth: float, *, draws: int, n: int, n_resamples: int = 100) -> tuple[float, float, float]:
    """Share of ``draws`` seeded experiments whose interval covers ``truth``; the mean interval
    width and the spread (std) of the point estimates over the draws."""
    hits, widths, estimates = 0, [], []
    for r in range(draws):
        rng = np.random.default_rng(10_000 + r)
        x, y = draw(rng)
        estimate = statistic(x, y)
        reps = [statistic(x[i], y[j]) for i, j in half_samples(n, 2, n_resamples, rng)]
        lo, hi = half_sampling_interval(estimate, reps, n=n, m=n // 2)
        assert lo <= estimate <= hi
        hits += lo <= truth <= hi
        widths.append(hi - lo)
        estimates.append(estimate)
    return hits / draws, float(np.mean(widths)), float(np.std(estimates))


def _fd(x, y):
    return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))


def _kid(x, y):
    return poly_mmd2(x, y)


# 200 seeded draws: the Monte Carlo standard error of a 95% coverage is sqrt(.95 * .05 / 200) =
# 0.015. The lower bound 0.89 allows about 3 standard errors plus the method's finite-N
# shortfall (FD is biased upward by O(d/N) and skewed; at N = 100 it measures 0.94 here);
# the upper bound 0.99 (P = 0.01 for an exact 95% interval) catches intervals that are
# merely wide. With resampling *with* replacement the FD coverage falls far below 0.89.
N_SIM, DRAWS = 100, 200


@pytest.mark.slow
def test_interval_coverage_of_a_known_fd():
    shift = np.array([1.0, 0.0])  # N(0, I) vs N(shift, I): FD = |shift|^2 = 1 exactly

    def draw(rng):
        return rng.normal(size=(N_SIM, 2)), rng.normal(size=(N_SIM, 2)) + shift

    coverage, _, _ = _coverage(_fd, draw, 1.0, draws=DRAWS, n=N_SIM)
    assert 0.89 <= coverage <= 0.99, coverage


@pytest.mark.slow
def test_interval_coverage_for_one_distribution():
    # Same distribution: population FD = KID = 0. Both estimators sit at a boundary (FD >= 0,
    # MMD^2 a degenerate U-statistic), where half-sampling is conservative: coverage near 1 is
    # expected (1.0 for both here), so the upper check is on the width: at most 10 spreads of
    # the estimate (measured: about 7.5; an exact normal 95% interval has 3.9).
    def draw(rng):
        return rng.normal(size=(N_SIM, 2)), rng.normal(size=(N_SIM, 2))

    for statistic in (_fd, _kid):
        coverage, width, spread = _coverage(statistic, draw, 0.0, draws=DRAWS // 4, n=N_SIM)
        assert coverage >= 0.93, (statistic.__name__, coverage)
        assert width <= 10 * spread, (statistic.__name__, width, spread)


def test_interval_is_clipped_to_the_range_of_its_statistic():
    # Replicates spread symmetrically about a precision of 0.99: the basic interval reflects them
    # about the estimate and would reach above 1, a value precision cannot take.
    reps = [0.95, 0.97, 0.99, 1.0, 1.0, 1.0]
    lo, hi = half_sampling_interval(0.99, reps, n=40, m=20)
    assert hi > 1.0  # unclipped, the reflection crosses the bound
    lo_c, hi_c = half_sampling_interval(0.99, reps, n=40, m=20, bounds=(0.0, 1.0))
    assert (lo_c, hi_c) == (lo, 1.0)


def test_prdc_intervals_of_near_identical_sets_stay_in_their_range():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(80, 4))
    fake = real[:40] + 1e-3 * rng.normal(size=(40, 4))  # nearly the real samples: precision ~ 1
    out = evaluate_distribution(real, fake, n_resamples=30, kid_subset_size=20, kid_subsets=5)
    for key in ("real_vs_fake", "real_vs_real"):
        for metric in ("precision", "recall", "coverage"):
            lo, hi = out["intervals"][key][metric]
            assert 0.0 <= lo <= out[key][metric] <= hi <= 1.0, (key, metric, lo, hi)
        assert out["intervals"][key]["density"][0] >= 0.0
        assert out["intervals"][key]["fd"][0] >= 0.0
