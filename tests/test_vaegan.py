"""VAE-GAN (Larsen et al. 2016): shapes, the KL term, updates and a short reconstruction fit."""

from __future__ import annotations

import pytest
import torch

from medgen.models.vaegan import VAEGAN, VAEGANConfig, kl_divergence
from model_helpers import fit

TINY = dict(image_size=16, latent_dim=8, ngf=8, ndf=8)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


def _squares(n: int, g: torch.Generator, size: int = 16, side: int = 5) -> torch.Tensor:
    """(n, 1, size, size) images in {-1, 1}: a bright square at a random position."""
    pos = torch.randint(0, size - side + 1, (n, 2), generator=g)
    x = -torch.ones(n, 1, size, size)
    for i, (r, c) in enumerate(pos.tolist()):
        x[i, :, r : r + side, c : c + side] = 1.0
    return x


@pytest.mark.parametrize("options,shape", [(dict(TINY), (3, 1, 16, 16)), (dict(TINY, image_size=32, in_channels=2), (3, 2, 32, 32)), (dict(TINY, spatial_dims=3, image_size=8), (3, 1, 8, 8, 8))])
def test_shapes_and_ranges(options, shape):
    torch.manual_seed(0)
    model = VAEGAN(VAEGANConfig(**options))
    x = torch.rand(shape) * 2 - 1
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, 8)
    rec = model.reconstruct(x)
    assert rec.shape == shape and rec.min() >= -1 and rec.max() <= 1
    s = model.sample(3, temperature=3.0)
    assert s.shape == shape and s.min() >= -1 and s.max() <= 1
    assert model.discriminator(x).shape == (3, 1)
    assert model.disc_features(x).shape[0] == 3


def test_kl_matches_closed_form_and_is_nonnegative():
    mu = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    logvar = torch.tensor([[0.0, 0.0], [0.5, -1.0]])
    # per sample ½ Σ (mu² + σ² - 1 - log σ²): row 0 -> 0, row 1 -> ½[(1 + e^0.5 - 1 - 0.5) + (4 + e^-1 - 1 + 1)]
    row1 = 0.5 * ((1 + torch.e**0.5 - 1 - 0.5) + (4 + torch.e**-1 - 1 + 1))
    assert torch.isclose(kl_divergence(mu, logvar), torch.tensor(row1 / 2))
    assert kl_divergence(torch.zeros(4, 3), torch.zeros(4, 3)) == 0
    torch.manual_seed(0)
    assert kl_divergence(torch.randn(64, 5), torch.randn(64, 5)) >= 0


def test_config_validation():
    with pytest.raises(ValueError):
        VAEGANConfig(image_size=24)
    with pytest.raises(ValueError):
        VAEGANConfig(pixel_loss="l3")
    with pytest.raises(ValueError):
        VAEGANConfig(image_size=16, feature_block=3)


@pytest.mark.parametrize("options", [dict(), dict(pixel_weight=1.0, pixel_loss="mse", feature_block=2, batch_norm=False)])
def test_training_steps_update_all_networks_with_finite_losses(options):
    torch.manual_seed(1)
    model = VAEGAN(VAEGANConfig(**TINY, **options))
    before = {name: _params(getattr(model, name)) for name in ("encoder", "decoder", "discriminator")}
    g = torch.Generator().manual_seed(0)
    logs = fit(model, lambda step: {"image": _squares(4, g)}, steps=3)
    for name, params in before.items():
        assert _changed(params, getattr(model, name)), name
    for log in logs:
        for key in ("kl", "recon_feature", "recon_pixel", "d_loss", "g_adv"):
            assert torch.isfinite(torch.tensor(log[key])), key
        assert log["kl"] >= 0


def test_reconstruction_error_drops_on_a_tiny_dataset():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = _squares(16, g)
    model = VAEGAN(VAEGANConfig(**TINY, pixel_weight=0.1, lr=1e-3))

    def error() -> float:
        return float((model.reconstruct(data) - data).abs().mean())

    start = error()
    logs = fit(model, lambda step: {"image": data}, steps=150)
    end = error()
    assert end < 0.6 * start, (start, end)
    assert sum(log["recon_pixel"] for log in logs[-10:]) < sum(log["recon_pixel"] for log in logs[:10])
