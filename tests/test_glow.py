"""Glow: invertibility, exact log-determinants, likelihood fit and sampling (2D and 3D)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from medgen.models.flows import ActNorm, AffineCoupling, InvertibleConv1x1, Squeeze
from medgen.models.glow import Glow, GlowConfig
from model_helpers import fit

# Log-det tolerance: the checks run in float64 (eps 2.2e-16) on at most 64x64 Jacobians, so
# rounding in slogdet and in the sums of O(100) log-scales is ~1e-13; 1e-6 is far above that
# and far below any real mistake (a dropped term or a wrong position count is O(0.1) or more).
LOGDET_TOL = 1e-6


def _perturb(module: torch.nn.Module, scale: float = 0.1) -> None:
    """Move every parameter off its (often identity) initialisation."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _brute_force_logdet(f, x: torch.Tensor) -> float:
    """log|det J| of x -> f(x) for one sample, from the full autograd Jacobian."""
    jac = jacobian(lambda v: f(v.view_as(x)).flatten(), x.flatten())
    return torch.linalg.slogdet(jac)[1].item()


def _glow(spatial_dims: int = 2, **options) -> Glow:
    cfg = dict(spatial_dims=spatial_dims, image_size=8, levels=2, steps_per_level=2, hidden_channels=16, n_bins=None)
    cfg.update(options)
    return Glow(GlowConfig(**cfg))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("layer_type", ["actnorm", "conv1x1", "coupling", "squeeze"])
def test_layer_logdet_matches_brute_force_jacobian(layer_type, spatial_dims):
    torch.manual_seed(0)
    shape = (1, 2, 4, 4) if spatial_dims == 2 else (1, 2, 2, 2, 4)  # 32 dimensions
    layer = {
        "actnorm": lambda: ActNorm(2, spatial_dims),
        "conv1x1": lambda: InvertibleConv1x1(2, spatial_dims),
        "coupling": lambda: AffineCoupling(2, 8, spatial_dims),
        "squeeze": lambda: Squeeze(spatial_dims),
    }[layer_type]().double()
    _perturb(layer, 0.5)
    x = torch.randn(shape, dtype=torch.float64)
    y, logdet = layer(x)
    expected = _brute_force_logdet(lambda v: layer(v)[0], x)
    assert logdet.shape == (1,)
    assert abs(logdet.item() - expected) < LOGDET_TOL
    if layer_type != "squeeze":  # a permutation has log|det| = 0 exactly; the others must not
        assert abs(expected) > 1e-3
    torch.testing.assert_close(layer.inverse(y), x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (1, 2, 4, 4)), (3, (1, 1, 4, 4, 4))])
def test_whole_flow_logdet_matches_brute_force_jacobian(spatial_dims, shape):
    torch.manual_seed(1)
    model = _glow(spatial_dims, in_channels=shape[1], image_size=4).double()
    model.initialize_from_batch({"image": torch.randn(8, *shape[1:], dtype=torch.float64)})
    _perturb(model, 0.1)
    x = torch.randn(shape, dtype=torch.float64)
    _, logdet = model.encode(x)
    expected = _brute_force_logdet(lambda v: torch.cat([z.flatten() for z in model.encode(v)[0]]), x)
    assert abs(logdet.item() - expected) < LOGDET_TOL
    assert abs(expected) > 1e-3


@pytest.mark.parametrize(
    "spatial_dims,shape,levels,steps",
    [(2, (4, 1, 16, 16), 3, 4), (3, (2, 1, 8, 8, 8), 2, 2)],
)
def test_encode_decode_reconstructs(spatial_dims, shape, levels, steps):
    torch.manual_seed(2)
    model = _glow(spatial_dims, image_size=shape[-1], levels=levels, steps_per_level=steps, hidden_channels=32)
    x = torch.rand(shape) * 2 - 1
    model.initialize_from_batch({"image": x})
    _perturb(model, 0.05)  # zero-initialised couplings/priors would make the test trivial
    with torch.no_grad():
        z_list, _ = model.encode(x)
        x_rec = model.decode(z_list)
    assert (x_rec - x).abs().max().item() < 1e-4
    assert (z_list[-1].std() - 1).abs() < 0.9  # z is not x: actnorm-standardised latent scale


def test_actnorm_data_dependent_init_standardises_and_is_done_once():
    torch.manual_seed(3)
    model = _glow()
    x = 0.3 * torch.randn(16, 1, 8, 8) + 0.5
    model.initialize_from_batch({"image": x})
    first = model.levels[0].steps[0].layers[0]
    h, _ = model.levels[0].squeeze(x)
    with torch.no_grad():
        y, _ = first(h)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    assert all(bool(a.initialized) for a in model.modules() if isinstance(a, ActNorm))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.initialize_from_batch({"image": 5 * x})  # e.g. after resuming: must not re-initialise
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _correlated_gaussian(size: int, rho: float = 0.8, sigma: float = 0.1):
    """A Gaussian on size x size images with covariance sigma^2 rho^(L1 pixel distance)."""
    idx = torch.cartesian_prod(torch.arange(size), torch.arange(size)).double()
    cov = sigma**2 * rho ** torch.cdist(idx, idx, p=1)
    mean = torch.linspace(-0.3, 0.3, size * size, dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    dims = size * size
    entropy_bits = (0.5 * dims * math.log(2 * math.pi * math.e) + 0.5 * torch.logdet(cov).item()) / (dims * math.log(2))

    def draw(n: int) -> torch.Tensor:
        return (mean + torch.randn(n, dims, dtype=torch.float64) @ chol.T).float().view(n, 1, size, size)

    return draw, entropy_bits


def test_fitted_bits_per_dim_approaches_gaussian_entropy():
    """Continuous data: held-out bpd is a cross-entropy, >= the entropy H in expectation.

    H = [D/2 log(2πe) + 1/2 log det Σ] / (D ln 2) ≈ -2.38 bits/dim here. After ActNorm init the
    flow matches only the marginal scales (≈ -1.5 bits/dim, ~0.85 above H); after fitting it must
    be within 0.08 of H (the fit reaches ~0.03; the Monte-Carlo error of the 4096-sample estimate
    is ~0.004), and not below H by more than that noise.
    """
    torch.manual_seed(4)
    draw, entropy = _correlated_gaussian(4)
    model = _glow(image_size=4, levels=2, steps_per_level=2, hidden_channels=16, lr=5e-3)
    model.initialize_from_batch({"image": draw(512)})
    held_out = draw(4096)
    with torch.no_grad():
        bpd_init = model.bits_per_dim(held_out).mean().item()
    logs = fit(model, lambda step: {"image": draw(256)}, steps=250)
    with torch.no_grad():
        bpd_fit = model.bits_per_dim(held_out).mean().item()
    assert all(math.isfinite(log["bpd"]) for log in logs)
    assert bpd_init - entropy > 0.5
    assert entropy - 0.02 < bpd_fit < entropy + 0.08


def test_dequantised_training_step_logs_bpd_and_lowers_it():
    torch.manual_seed(5)
    model = _glow(n_bins=256, lr=2e-3)
    # 8-bit-like images on the grid that the dequantisation assumes
    data = torch.randint(0, 256, (64, 1, 8, 8)).float() / 128 - 1
    data = torch.where(torch.rand(64, 1, 1, 1) < 0.5, data.clamp(-1, -0.5), data.clamp(0.5, 1))
    model.initialize_from_batch({"image": data})
    logs = fit(model, lambda step: {"image": data[torch.randint(0, 64, (32,))]}, steps=40)
    assert set(logs[0]) == {"bpd"}
    first, last = sum(log["bpd"] for log in logs[:5]) / 5, sum(log["bpd"] for log in logs[-5:]) / 5
    assert last < first
    # a discrete distribution on 256 levels has at most 8 bits/dim; the bound sits above 0
    assert 0 < last < 8


def test_temperature_zero_sample_is_the_prior_mean_image():
    torch.manual_seed(6)
    model = _glow(image_size=8, levels=3)
    model.initialize_from_batch({"image": torch.rand(8, 1, 8, 8) * 0.5 - 0.25})
    _perturb(model, 0.05)  # non-zero prior means everywhere
    samples = model.sample(3, temperature=0.0)
    assert samples.shape == (3, 1, 8, 8)
    torch.testing.assert_close(samples[0], samples[1], atol=0, rtol=0)
    assert samples.abs().max() < 1  # not clamped, so re-encoding it is exact
    with torch.no_grad():
        z_list, _ = model.encode(samples)
        # the top latent is the learned top mean, every factored-out latent its conditional mean
        torch.testing.assert_close(z_list[-1], model.top_mean.expand_as(z_list[-1]), atol=1e-4, rtol=0)
        h = samples
        for level, z in zip(model.levels[:-1], z_list[:-1]):
            x = level.squeeze(h)[0]
            for step in level.steps:
                x = step(x)[0]
            keep = x[:, : level.split.n_keep]
            mean, _ = level.split.prior_params(keep)
            torch.testing.assert_close(z, mean, atol=1e-4, rtol=0)
            h = keep
    random = model.sample(3, temperature=1.0)
    assert (random[0] - random[1]).abs().max() > 1e-2


def test_3d_forward_inverse_shapes_and_sampling():
    torch.manual_seed(7)
    model = _glow(3, image_size=8, levels=2, steps_per_level=1, hidden_channels=8)
    x = torch.rand(2, 1, 8, 8, 8) * 2 - 1
    model.initialize_from_batch({"image": x})
    z_list, logdet = model.encode(x)
    assert [tuple(z.shape) for z in z_list] == [(2, 4, 4, 4, 4), (2, 32, 2, 2, 2)]
    assert logdet.shape == (2,)
    assert model.decode(z_list).shape == x.shape
    assert model.log_prob(x).shape == (2,)
    s = model.sample(2, temperature=0.7)
    assert s.shape == (2, 1, 8, 8, 8) and s.min() >= -1 and s.max() <= 1


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="image_size"):
        GlowConfig(image_size=12, levels=3)
    with pytest.raises(ValueError, match="spatial_dims"):
        GlowConfig(spatial_dims=1)
