"""The one PatchGAN discriminator of the single-scale models (gan with ``discriminator: patch``,
pix2pix, CycleGAN, CUT, FastCUT).

A thin wrapper of MONAI's ``PatchDiscriminator`` (the 70x70 PatchGAN of pix2pix/CycleGAN for
``num_layers_d=3``: channels ndf, 2, 4, 8·ndf; three stride-2 convs): MONAI returns every
intermediate feature map and the logits as one list and fails deep inside a convolution on too
small inputs; the models need only the logits, and a message that says which option to change.
SPADE's multi-scale discriminator keeps its own (it needs the intermediate features).
"""

from __future__ import annotations

import torch
from monai.networks.nets import PatchDiscriminator
from torch import nn


class PatchDiscriminatorLogits(nn.Module):
    """MONAI ``PatchDiscriminator`` -> logits (N, 1, *patches) only; every spatial size of the
    input must be >= 3·2**num_layers_d. ``norm``: ``instance`` or ``batch``."""

    def __init__(self, spatial_dims: int, in_channels: int, ndf: int = 64, num_layers_d: int = 3, norm: str = "instance", leaky_slope: float = 0.2) -> None:
        super().__init__()
        self.spatial_dims, self.min_size = spatial_dims, 3 * 2**num_layers_d
        self.net = PatchDiscriminator(
            spatial_dims=spatial_dims,
            channels=ndf,
            in_channels=in_channels,
            num_layers_d=num_layers_d,
            activation=("LEAKYRELU", {"negative_slope": leaky_slope}),
            norm=norm.upper(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[2:]) < self.min_size:
            raise ValueError(f"discriminator input {tuple(x.shape[2:])} is too small for num_layers_d: every spatial size must be >= {self.min_size}")
        return self.net(x)[-1]
