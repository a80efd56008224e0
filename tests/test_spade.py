"""SPADE: label-map-conditioned generator, multi-scale discriminator, feature matching."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from medgen.models.spade import SPADEConfig, SPADEGAN
from model_helpers import SimpleStepContext, fit

S = 16
INTENSITY = torch.tensor([-0.8, 0.0, 0.8])  # class k -> fixed intensity
TINY = dict(image_size=S, n_labels=3, latent_dim=8, ngf=8, ndf=8, spade_hidden=16, num_d=2, patch_layers=1)


def _label_maps(n: int, g: torch.Generator, size: int = S, dims: int = 2) -> torch.Tensor:
    """(n, 1, size, ...) maps of 3 classes in blocks of size/4 pixels."""
    coarse = torch.randint(0, 3, (n, 1, *([4] * dims)), generator=g)
    return F.interpolate(coarse.float(), size=(size,) * dims, mode="nearest").long()


def _batch(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    labels = _label_maps(n, g)
    return {"image": INTENSITY[labels] + 0.05 * torch.randn(labels.shape, generator=g), "labels": labels}


@pytest.fixture(autouse=True)
def _one_thread():
    """These nets are tiny: one intra-op thread avoids thread contention on shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


@pytest.mark.parametrize(
    "options,shape",
    [
        (dict(), (3, 1, 16, 16)),
        (dict(image_size=32, in_channels=2, adversarial_loss="least_squares", spectral_norm=False), (3, 2, 32, 32)),
        (dict(latent_dim=0), (3, 1, 16, 16)),
        (dict(spatial_dims=3, image_size=8, num_d=1), (3, 1, 8, 8, 8)),
    ],
)
def test_sample_shape_and_range(options, shape):
    torch.manual_seed(0)
    model = SPADEGAN(SPADEConfig(**{**TINY, **options}))
    labels = _label_maps(3, torch.Generator().manual_seed(0), size=shape[-1], dims=len(shape) - 2)
    x = model.sample(3, labels=labels, temperature=3.0)  # large z pushes the pre-tanh activations out
    assert x.shape == shape
    assert torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1
    features, logits = model.discriminate(x, model.one_hot(labels))
    assert len(features) == len(logits) == model.config.num_d


def test_label_map_changes_image_for_same_z():
    torch.manual_seed(0)
    model = SPADEGAN(SPADEConfig(**TINY)).eval()
    g = torch.Generator().manual_seed(1)
    a, b = _label_maps(1, g), _label_maps(1, g)
    assert not torch.equal(a, b)
    z = torch.randn(1, TINY["latent_dim"])
    with torch.no_grad():
        xa = model.generate(z, model.one_hot(a))
        xa_again = model.generate(z, model.one_hot(a))
        xb = model.generate(z, model.one_hot(b))
    assert torch.equal(xa, xa_again)
    assert (xa - xb).abs().mean() > 1e-3


def test_label_map_is_required_and_validated():
    model = SPADEGAN(SPADEConfig(**TINY))
    with pytest.raises(NotImplementedError, match="label map"):  # no unconditional sampling
        model.sample(2)
    with pytest.raises(ValueError, match="label values"):
        model.sample(1, labels=torch.full((1, 1, S, S), 3))
    with pytest.raises(ValueError, match="n = 2"):
        model.sample(2, labels=torch.zeros(1, 1, S, S, dtype=torch.long))
    with pytest.raises(ValueError, match="too small"):
        SPADEConfig(image_size=16, num_d=2, patch_layers=3)
    with pytest.raises(ValueError, match="adversarial_loss"):
        SPADEConfig(adversarial_loss="bce")


@pytest.mark.parametrize("options", [dict(), dict(adversarial_loss="least_squares", latent_dim=0, spectral_norm=False)])
def test_training_steps_keep_losses_finite_and_update_both_networks(options):
    torch.manual_seed(1)
    model = SPADEGAN(SPADEConfig(**{**TINY, **options}))
    g_before, d_before = _params(model.generator), _params(model.discriminator)
    g = torch.Generator().manual_seed(2)
    logs = fit(model, lambda step: _batch(4, g), steps=3)
    assert set(logs[0]) == {"d_loss", "g_loss", "g_adv", "g_fm"}
    assert all(math.isfinite(v) for log in logs for v in log.values())
    assert all(log["g_fm"] >= 0 for log in logs)
    assert _changed(g_before, model.generator) and _changed(d_before, model.discriminator)


def test_feature_matching_is_zero_for_identical_features():
    feats = [[torch.randn(2, 4, 3, 3), torch.randn(2, 8, 2, 2)], [torch.randn(2, 4, 2, 2)]]
    assert SPADEGAN.feature_matching_loss(feats, feats).item() == 0.0
    shifted = [[f + 1.0 for f in fs] for fs in feats]
    assert SPADEGAN.feature_matching_loss(shifted, feats).item() == pytest.approx(1.0)


def test_short_fit_paints_each_label_region_with_its_intensity():
    torch.manual_seed(0)
    model = SPADEGAN(SPADEConfig(**TINY, lr_g=1e-3, lr_d=2e-3))
    g = torch.Generator().manual_seed(0)
    fit(model, lambda step: _batch(8, g), steps=30)
    labels = _label_maps(16, torch.Generator().manual_seed(5))
    x = model.sample(16, labels=labels)
    means = [x[labels == k].mean().item() for k in range(3)]
    # intensities -0.8, 0, 0.8: region means must follow the class order with clear margins
    assert means[1] - means[0] > 0.3, means
    assert means[2] - means[1] > 0.3, means


def test_training_step_under_autocast():
    """The engine runs forward passes under autocast (CUDA AMP); bfloat16 on CPU exercises the
    same mixed-dtype path (fake images in low precision, losses in float32)."""
    torch.manual_seed(3)
    model = SPADEGAN(SPADEConfig(**TINY))
    ctx = SimpleStepContext(model.configure_optimizers())
    ctx.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # type: ignore[method-assign]
    log = model.training_step(_batch(4, torch.Generator().manual_seed(4)), ctx)
    assert all(math.isfinite(v) for v in log.values())
