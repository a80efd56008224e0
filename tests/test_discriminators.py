"""The one PatchGAN wrapper: logits only, a readable error for too small inputs, one class for every model."""

from __future__ import annotations

import pytest
import torch

from medgen.models.discriminators import PatchDiscriminatorLogits
from medgen.models.registry import build_model


@pytest.mark.parametrize("spatial_dims,size,patches", [(2, 32, (2, 2)), (3, 24, (1, 1, 1))])
def test_logits_only(spatial_dims, size, patches):
    net = PatchDiscriminatorLogits(spatial_dims, in_channels=2, ndf=4, num_layers_d=3, norm="batch")
    out = net(torch.randn(3, 2, *([size] * spatial_dims)))
    assert out.shape == (3, 1, *patches)


def test_too_small_input_names_the_option():
    net = PatchDiscriminatorLogits(2, in_channels=1, ndf=4, num_layers_d=3)
    with pytest.raises(ValueError, match="too small for num_layers_d: every spatial size must be >= 24"):
        net(torch.randn(1, 1, 16, 32))


def test_every_single_scale_model_uses_it():
    models = [
        build_model("gan", discriminator="patch", ngf=8, ndf=8).discriminator,
        build_model("pix2pix", ngf=8, ndf=8, num_downs=3).discriminator,
        build_model("cut", ngf=8, ndf=8, n_blocks=1).discriminator,
        build_model("cyclegan", ngf=8, ndf=8, n_blocks=1).d_a,
    ]
    assert all(type(m) is PatchDiscriminatorLogits for m in models)
    # gan: batch norm unless batch_norm is off, its own leaky slope
    gan = build_model("gan", discriminator="patch", batch_norm=False, leaky_slope=0.1, ngf=8, ndf=8).discriminator
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in gan.modules())
    assert any(isinstance(m, torch.nn.LeakyReLU) and m.negative_slope == 0.1 for m in gan.modules())
