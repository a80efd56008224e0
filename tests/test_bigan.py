"""BiGAN / ALI (Donahue et al. 2017; Dumoulin et al. 2017): shapes, updates and inversion."""

from __future__ import annotations

import pytest
import torch

from medgen.models.bigan import BiGAN, BiGANConfig
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
