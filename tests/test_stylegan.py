"""StyleGAN-style generator: shapes, mapping, style mixing, noise, truncation, training."""

from __future__ import annotations

import math
import random

import pytest
import torch

from medgen.models.stylegan import StyleGAN, StyleGANConfig
from model_helpers import fit

TINY = dict(image_size=16, latent_dim=16, w_dim=16, fmaps=8, ndf=8, mapping_layers=2)


def _model(**options) -> StyleGAN:
    torch.manual_seed(0)
    return StyleGAN(StyleGANConfig(**{**TINY, **options}))


def _set_noise_strength(model: StyleGAN, value: float) -> None:
    with torch.no_grad():
        for layer in model.synthesis.styles:
            layer.noise_strength.fill_(value)


def test_shapes_and_range():
    model = _model(in_channels=2)
    assert model.n_layers == 2 * int(math.log2(16)) - 2 == 6
    z = 3 * torch.randn(3, 16)
    w = model.map(z)
    assert w.shape == (3, 16)
    x = model.synthesize(model.broadcast(w))
    assert x.shape == (3, 2, 16, 16)
    assert x.min() >= -1 and x.max() <= 1
    s = model.sample(4)
    assert s.shape == (4, 2, 16, 16) and s.min() >= -1 and s.max() <= 1
    assert model.discriminator(x).shape == (3, 1)
    assert model.w_avg.shape == (16,)


def test_config_validation():
    with pytest.raises(ValueError, match="spatial_dims"):
        StyleGANConfig(spatial_dims=3)
    with pytest.raises(ValueError, match="image_size"):
        StyleGANConfig(image_size=24)
    assert StyleGANConfig(lr=1e-3).lr_mapping == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="unconditional"):
        _model().sample(2, labels=torch.zeros(2, dtype=torch.long))


def test_style_mixing_equals_synthesis_with_split_ws():
    model = _model()
    _set_noise_strength(model, 0.5)
    w1, w2 = model.map(torch.randn(2, 16)), model.map(torch.randn(2, 16))
    noise = model.synthesis.make_noise(2)
    for k in (1, 3, 5):
        ws = torch.cat([w1.unsqueeze(1).expand(-1, k, -1), w2.unsqueeze(1).expand(-1, model.n_layers - k, -1)], dim=1)
        mixed = model.mix(w1, w2, k)
        assert torch.equal(mixed, ws)
        assert torch.allclose(model.synthesize(mixed, noise), model.synthesize(ws, noise))
    # ws from different z give different images
    a = model.synthesize(model.broadcast(w1), noise)
    b = model.synthesize(model.broadcast(w2), noise)
    assert (a - b).abs().max() > 1e-3
    # every layer's w matters: changing only the last (finest) row still changes the image
    ws = model.broadcast(w1).clone()
    ws[:, -1] = w2
    assert (model.synthesize(ws, noise) - a).abs().max() > 1e-5


def test_noise_injection():
    model = _model()
    ws = model.broadcast(model.map(torch.randn(2, 16)))
    # noise strength starts at 0 (StyleGAN init): noise has no effect
    assert torch.equal(model.synthesize(ws), model.synthesize(ws))
    _set_noise_strength(model, 0.5)
    noise = model.synthesis.make_noise(2)
    assert torch.equal(model.synthesize(ws, noise), model.synthesize(ws, noise))
    assert (model.synthesize(ws, noise) - model.synthesize(ws, model.synthesis.make_noise(2))).abs().max() > 1e-4
    assert (model.synthesize(ws) - model.synthesize(ws)).abs().max() > 1e-4


def test_truncation_psi_zero_gives_mean_w_image():
    model = _model()
    with torch.no_grad():
        model.w_avg.copy_(torch.randn(16))
    x = model.sample(4, temperature=0.0)  # noise strength 0: deterministic given w
    expected = model.synthesize(model.broadcast(model.w_avg.expand(1, -1)))
    # batched vs single-image convolutions may differ in the last float bits
    assert torch.allclose(x, expected.expand_as(x), atol=1e-5)
    assert torch.allclose(x, x[:1].expand_as(x), atol=1e-5)
    w = model.map(torch.randn(3, 16))
    assert torch.allclose(model.truncate(w, 0.5), model.w_avg + 0.5 * (w - model.w_avg))
    assert torch.equal(model.truncate(w, 1.0), w)
    untruncated = model.sample(4)
    assert (untruncated[0] - untruncated[1]).abs().max() > 1e-4


@pytest.mark.parametrize("options", [dict(), dict(r1_gamma=1.0, mixing_prob=1.0)])
def test_training_steps_update_networks_with_finite_losses(options):
    model = _model(**options)
    random.seed(0)
    before = {name: [p.detach().clone() for p in getattr(model, name).parameters()] for name in ("mapping", "synthesis", "discriminator")}
    w_avg = model.w_avg.clone()
    data = torch.rand(4, 1, 16, 16) * 2 - 1
    logs = fit(model, lambda step: {"image": data}, steps=3)
    for name, params in before.items():
        assert any(not torch.equal(b, p) for b, p in zip(params, getattr(model, name).parameters())), name
    assert not torch.equal(w_avg, model.w_avg)
    expected = {"d_loss", "g_loss"} | ({"r1"} if options.get("r1_gamma") else set())
    for log in logs:
        assert set(log) == expected
        assert all(math.isfinite(v) for v in log.values())


def test_optimizer_groups_and_state_dict():
    model = _model(lr=1e-3)
    opts = model.configure_optimizers()
    assert set(opts) == {"g", "d"}
    assert [g["lr"] for g in opts["g"].param_groups] == pytest.approx([1e-5, 1e-3])
    assert opts["g"].defaults["betas"] == (0.0, 0.99)
    assert "w_avg" in model.state_dict()
    clone = StyleGAN(model.config)
    clone.load_state_dict(model.state_dict())
