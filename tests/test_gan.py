"""DCGAN, conditional GAN and the model registry."""

from __future__ import annotations

import math

import pytest
import torch

from medgen.models.adversarial import generator_bce_loss
from medgen.models.cgan import ConditionalGAN
from medgen.models.gan import DCGAN, MinibatchStd
from medgen.models.glow import Glow
from medgen.models.registry import MODELS, build_model, model_options
from model_helpers import SimpleStepContext, fit

TINY = dict(ngf=8, ndf=8, latent_dim=16)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


@pytest.mark.parametrize(
    "options,image_shape,logit_shape",
    [
        (dict(spatial_dims=2, image_size=32), (3, 1, 32, 32), (3, 1)),
        (dict(spatial_dims=2, image_size=16, residual_blocks=1, upsample="nearest", in_channels=2), (3, 2, 16, 16), (3, 1)),
        (dict(spatial_dims=3, image_size=16), (3, 1, 16, 16, 16), (3, 1)),
        (dict(spatial_dims=2, image_size=32, discriminator="patch", patch_layers=2), (3, 1, 32, 32), (3, 1, 6, 6)),
    ],
)
def test_generator_and_discriminator_shapes_and_range(options, image_shape, logit_shape):
    torch.manual_seed(0)
    model = build_model("gan", **TINY, **options)
    z = 3 * torch.randn(3, 16)  # large z pushes the pre-tanh activations out
    x = model.generate(z)
    assert x.shape == image_shape
    assert x.min() >= -1 and x.max() <= 1
    assert model.sample(3).shape == image_shape
    assert model.discriminate(x).shape == logit_shape


@pytest.mark.parametrize(
    "options",
    [
        dict(),  # bce, non-saturating, batch norm
        dict(adversarial_loss="least_squares", label_smoothing=0.1, residual_blocks=1),
        dict(adversarial_loss="hinge", spectral_norm=True),
        dict(g_loss="minimax", batch_norm=False),
        dict(discriminator="patch", patch_layers=1),
        dict(spatial_dims=3, image_size=8),
    ],
)
def test_training_steps_update_both_networks_with_finite_losses(options):
    torch.manual_seed(1)
    cfg = dict(TINY, image_size=16)
    cfg.update(options)
    model = build_model("gan", **cfg)
    size = (cfg["image_size"],) * cfg.get("spatial_dims", 2)
    data = torch.rand(16, 1, *size) * 2 - 1
    g_before, d_before = _params(model.generator), _params(model.discriminator)
    logs = fit(model, lambda step: {"image": data[step * 8 % 16 :][:8]}, steps=3)
    assert set(logs[-1]) == {"d_loss", "g_loss", "d_real", "d_fake"}
    assert all(math.isfinite(v) for log in logs for v in log.values())
    assert _changed(g_before, model.generator) and _changed(d_before, model.discriminator)


def test_non_saturating_loss_has_larger_gradient_when_fakes_are_confidently_rejected():
    # loss level: d loss / d logit is -(1 - σ(l)) (non-saturating) vs -σ(l) (minimax)
    rejected = torch.full((4, 1), -6.0, requires_grad=True)
    grads = {}
    for kind in ("non_saturating", "minimax"):
        (g,) = torch.autograd.grad(generator_bce_loss(rejected, kind), rejected)
        grads[kind] = g
    assert (grads["non_saturating"] < 0).all() and (grads["minimax"] < 0).all()  # both push D(G(z)) up
    torch.testing.assert_close(grads["non_saturating"], -(1 - torch.sigmoid(rejected.detach())) / 4)
    torch.testing.assert_close(grads["minimax"], -torch.sigmoid(rejected.detach()) / 4)
    assert grads["non_saturating"].abs().min() > 100 * grads["minimax"].abs().max()

    # model level: a discriminator biased to reject everything, same weights, both G losses
    norms = {}
    for kind in ("non_saturating", "minimax"):
        torch.manual_seed(2)
        model = build_model("gan", **TINY, image_size=16, g_loss=kind)
        with torch.no_grad():
            model.discriminator.head.bias.fill_(-8.0)
        z = torch.randn(8, 16)
        model.generator.zero_grad()
        model.generator_loss(model.discriminate(model.generate(z))).backward()
        norms[kind] = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.generator.parameters()))
    assert norms["non_saturating"] > 100 * norms["minimax"]


def test_one_sided_label_smoothing_penalises_overconfident_real_logits():
    confident = torch.full((4, 1), 10.0)
    fake = torch.zeros(4, 1)
    grads = {}
    for smoothing in (0.0, 0.2):
        model = build_model("gan", **TINY, image_size=8, label_smoothing=smoothing)
        real = confident.clone().requires_grad_(True)
        (grads[smoothing],) = torch.autograd.grad(model.discriminator_loss(real, fake), real)
    assert grads[0.0].abs().max() < 1e-4
    torch.testing.assert_close(grads[0.2], torch.full((4, 1), (torch.sigmoid(torch.tensor(10.0)).item() - 0.8) / 4))


def test_cgan_labels_change_the_output_for_the_same_z():
    torch.manual_seed(3)
    model = build_model("cgan", **TINY, image_size=16, n_classes=3)
    z = torch.randn(4, 16)
    outs = [model.sample_with_latents(z, label) for label in range(3)]
    # an untrained generator's output is small, so compare with the effect of changing z
    z_effect = (model.sample_with_latents(torch.randn(4, 16), 0) - outs[0]).abs().mean()
    for a in range(3):
        for b in range(a + 1, 3):
            assert (outs[a] - outs[b]).abs().mean() > 0.2 * z_effect
    torch.testing.assert_close(model.sample_with_latents(z, 1), outs[1])  # deterministic given z, y
    assert model.sample(5, labels=torch.tensor([0, 1, 2, 0, 1])).shape == (5, 1, 16, 16)
    assert model.discriminate(outs[0], torch.zeros(4, dtype=torch.long)).shape == (4, 1)
    with pytest.raises(ValueError, match="labels"):
        model.sample(2, labels=torch.tensor([0, 3]))


def test_cgan_fit_orders_sample_brightness_by_label():
    """Class 0: dark images (-0.6), class 1: bright (+0.6). If the label were ignored (or the
    classes swapped) both classes' samples would have the same mean; after 100 steps the
    class means typically sit at ≈ ∓0.65."""
    torch.manual_seed(0)
    model = build_model("cgan", image_size=16, ngf=16, ndf=16, latent_dim=16, embed_dim=8)

    def batch(step: int, n: int = 32) -> dict[str, torch.Tensor]:
        labels = torch.randint(0, 2, (n,))
        level = torch.where(labels == 1, 0.6, -0.6).view(n, 1, 1, 1)
        return {"image": (level + 0.15 * torch.randn(n, 1, 16, 16)).clamp(-1, 1), "label": labels}

    logs = fit(model, batch, steps=100)
    assert all(math.isfinite(v) for log in logs for v in log.values())
    dark, bright = model.sample(64, labels=0).mean().item(), model.sample(64, labels=1).mean().item()
    assert bright - dark > 0.6
    assert dark < -0.2 and bright > 0.2


def test_minibatch_std_shows_the_discriminator_a_collapsed_batch():
    torch.manual_seed(0)
    varied = torch.randn(8, 4, 4, 4)
    collapsed = varied[:1].expand(8, -1, -1, -1)
    out_varied, out_collapsed = MinibatchStd()(varied), MinibatchStd()(collapsed)
    assert out_varied.shape == (8, 5, 4, 4)
    torch.testing.assert_close(out_varied[:, :4], varied)
    # spread of unit normals over 8 samples: sqrt of the biased variance, about 0.9; of copies: 0
    assert 0.6 < out_varied[:, 4].mean().item() < 1.1 and out_varied[:, 4].std().item() < 1e-6
    assert out_collapsed[:, 4].abs().max().item() < 1e-3
    assert MinibatchStd()(varied[:1])[:, 4].abs().max().item() == 0.0
    # the feature reaches the projection discriminator: a collapsed batch scores differently
    model = build_model("cgan", **TINY, image_size=16, n_classes=3, minibatch_std=True).eval()  # batch norm per image
    images, labels = torch.randn(6, 1, 16, 16), torch.zeros(6, dtype=torch.long)
    copies = images[:1].expand(6, -1, -1, -1)
    assert not torch.allclose(model.discriminate(copies, labels)[0], model.discriminate(images, labels)[0])
    with pytest.raises(ValueError, match="minibatch_std"):
        build_model("gan", **TINY, image_size=32, discriminator="patch", patch_layers=2, minibatch_std=True)


def test_registry_builds_every_model_and_names_errors():
    assert set(MODELS) >= {"glow", "gan", "cgan"}
    assert model_options("gan")["lr_g"] == 2e-4 and model_options("cgan")["n_classes"] == 2
    assert isinstance(build_model("glow", image_size=8, levels=2, steps_per_level=1, hidden_channels=8), Glow)
    assert type(build_model("gan", **TINY, image_size=8)) is DCGAN
    assert isinstance(build_model("cgan", **TINY, image_size=8, n_classes=4), ConditionalGAN)
    with pytest.raises(KeyError, match="valid names: " + ", ".join(sorted(MODELS))):
        build_model("vae")
    with pytest.raises(TypeError, match="'laten_dim'.*valid options: .*latent_dim"):
        build_model("gan", laten_dim=64)
    with pytest.raises(ValueError, match="g_loss"):
        build_model("gan", g_loss="wasserstein")
    with pytest.raises(ValueError, match="discriminator"):
        build_model("cgan", discriminator="patch")
    with pytest.raises(ValueError, match="image_size"):
        build_model("gan", image_size=48)


def test_optimizers_follow_dcgan_defaults():
    model = build_model("cgan", **TINY, image_size=8, betas=[0.5, 0.999])
    opts = model.configure_optimizers()
    assert set(opts) == {"g", "d"}
    for opt in opts.values():
        assert opt.param_groups[0]["lr"] == 2e-4 and opt.param_groups[0]["betas"] == (0.5, 0.999)
    g_params = {id(p) for p in model.generator.parameters()}
    assert g_params == {id(p) for group in opts["g"].param_groups for p in group["params"]}
    ctx = SimpleStepContext(opts)
    with pytest.raises(Exception, match="d_loss"):
        model.training_step({"image": torch.full((4, 1, 8, 8), float("nan")), "label": torch.zeros(4, dtype=torch.long)}, ctx)
