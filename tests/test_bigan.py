"""BiGAN / ALI (Donahue et al. 2017; Dumoulin et al. 2017): shapes, updates and inversion."""

from __future__ import annotations

import pytest
import torch

from medgen.models.bigan import BiGAN, BiGANConfig, Encoder
from medgen.models.gan import dcgan_init
from model_helpers import fit

TINY = dict(image_size=16, latent_dim=8, ngf=8, ndf=8, z_hidden=32)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


def _squares(n: int, g: torch.Generator, size: int = 16, side: int = 5) -> torch.Tensor:
    """(n, 1, size, size) images in {-1, 1}: a bright square whose position is the 2D parameter."""
    pos = torch.randint(0, size - side + 1, (n, 2), generator=g)
    x = -torch.ones(n, 1, size, size)
    for i, (r, c) in enumerate(pos.tolist()):
        x[i, :, r : r + side, c : c + side] = 1.0
    return x


@pytest.mark.parametrize("options,shape", [(dict(TINY), (3, 1, 16, 16)), (dict(TINY, image_size=32, in_channels=2), (3, 2, 32, 32)), (dict(TINY, spatial_dims=3, image_size=8), (3, 1, 8, 8, 8))])
def test_shapes_and_ranges(options, shape):
    torch.manual_seed(0)
    model = BiGAN(BiGANConfig(**options))
    z = 3 * torch.randn(3, 8)
    x = model.generate(z)
    assert x.shape == shape and x.min() >= -1 and x.max() <= 1
    s = model.sample(3, temperature=2.0)
    assert s.shape == shape and s.min() >= -1 and s.max() <= 1
    assert model.encode(x).shape == (3, 8)
    assert model.discriminate(x, z).shape == (3, 1)
    with pytest.raises(ValueError):
        model.sample(2, labels=torch.zeros(2))


def test_training_steps_update_all_networks_with_finite_losses():
    torch.manual_seed(1)
    model = BiGAN(BiGANConfig(**TINY))
    before = {name: _params(getattr(model, name)) for name in ("generator", "encoder", "discriminator")}
    g = torch.Generator().manual_seed(0)
    logs = fit(model, lambda step: {"image": _squares(4, g)}, steps=3)
    for name, params in before.items():
        assert _changed(params, getattr(model, name)), name
    for log in logs:
        assert torch.isfinite(torch.tensor([log["d_loss"], log["ge_loss"]])).all()


def _linear_probe_r2(model: BiGAN, encoder: torch.nn.Module) -> float:
    """R² of z from E(G(z)) for held-out z: a linear map (handles sign and permutation of the
    latent axes) fitted on 256 pairs and scored on 256 others."""
    g = torch.Generator().manual_seed(123)
    z = torch.randn(512, model.config.latent_dim, generator=g)
    model.eval()
    encoder.eval()
    with torch.no_grad():
        z_hat = encoder(model.generate(z))
    model.train()
    a = torch.cat([z_hat, torch.ones(len(z_hat), 1)], dim=1)
    w = torch.linalg.lstsq(a[:256], z[:256]).solution
    residual = ((a[256:] @ w - z[256:]) ** 2).sum()
    return float(1 - residual / ((z[256:] - z[256:].mean(0)) ** 2).sum())


@pytest.mark.slow
def test_encoder_inverts_the_generator_better_than_an_untrained_encoder():
    """Seeded (seed 0 here; on other seeds 400 steps are not always enough for the margin)."""
    torch.manual_seed(0)
    model = BiGAN(BiGANConfig(image_size=16, latent_dim=2, ngf=8, ndf=8, z_hidden=64, lr=1e-3))
    g = torch.Generator().manual_seed(0)
    fit(model, lambda step: {"image": _squares(32, g)}, steps=400)
    trained = _linear_probe_r2(model, model.encoder)
    # baseline: the same trained generator with a fresh, untrained encoder
    torch.manual_seed(99)
    fresh = Encoder(model.config.dcgan(), model.config.latent_dim)
    dcgan_init(fresh, model.config.init_std)
    baseline = _linear_probe_r2(model, fresh)
    assert trained > baseline + 0.1, (trained, baseline)
