"""The generators of the image-to-image translation models (CycleGAN, CUT, pix2pix).

* :class:`ResnetGenerator` (Johnson et al. 2016, as used by CycleGAN, Zhu et al. 2017, and CUT,
  Park et al. 2020): reflection-padded 7^d stem, two stride-2 downsamplings, ``n_blocks``
  residual blocks, two transposed-conv upsamplings, 7^d conv and tanh. Hand-written: MONAI has
  no CycleGAN-style ResNet generator, and CUT needs the encoder's intermediate features by name.
* :class:`UNetGenerator` (pix2pix, Isola et al. 2017): k4 s2 convolutions down to a bottleneck,
  transposed convolutions up with skip concatenation, dropout in the deepest decoder layers.

Layers come from MONAI's ``Conv`` / ``Norm`` factories (instance norm without affine parameters or
running statistics, as in CycleGAN); reflection padding (which MONAI's ``Pad``
factory lacks) from torch, which has it in 2D and 3D, so both dimensionalities pad alike. All
generators are fully convolutional: any spatial size divisible by their ``divisor`` (4 for the
ResNet generator, ``2**num_downs`` for the U-Net) works at inference.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.layers.factories import Conv, Norm
from torch import nn


def check_image(x: torch.Tensor, spatial_dims: int, channels: int, divisor: int, what: str = "input") -> None:
    """Raise ValueError unless ``x`` is (N, channels, *spatial) with every spatial size divisible by ``divisor``."""
    if x.ndim != spatial_dims + 2 or x.shape[1] != channels:
        raise ValueError(f"{what} must have shape (N, {channels}, {', '.join('S' * spatial_dims)}), got {tuple(x.shape)}")
    bad = [s for s in x.shape[2:] if s % divisor]
    if bad:
        raise ValueError(
            f"{what} spatial size {tuple(x.shape[2:])} is not divisible by {divisor} (the generator's total "
            f"downsampling factor); pad or crop every spatial dimension to a multiple of {divisor}"
        )


def reflection_pad(d: int, p: int) -> nn.Module:
    """Reflection padding by ``p`` in 2D or 3D (MONAI's ``Pad`` factory has only constant and replication padding)."""
    return nn.ReflectionPad2d(p) if d == 2 else nn.ReflectionPad3d(p)


class ResnetBlock(nn.Module):
    """x + [pad, conv3, norm, ReLU, pad, conv3, norm](x), channel count kept (He et al. 2016)."""

    def __init__(self, channels: int, d: int, norm: str, dropout: float = 0.0) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, d]
        bias = norm != "instance"  # a bias before non-affine instance norm is removed by it
        layers: list[nn.Module] = [reflection_pad(d, 1), conv(channels, channels, 3, bias=bias), Norm[norm, d](channels), nn.ReLU(True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [reflection_pad(d, 1), conv(channels, channels, 3, bias=bias), Norm[norm, d](channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """(N, in_channels, *S) -> (N, out_channels, *S) in (-1, 1); every S divisible by 4.

    Encoder stages, each addressable by its layer id for feature extraction (CUT):
    ``"input"`` (the image itself), ``"stem"`` (7^d conv, ngf), ``"down1"`` (2·ngf, S/2),
    ``"down2"`` (4·ngf, S/4), ``"res1"`` ... ``"res<n_blocks>"`` (4·ngf, S/4); features are the
    stage outputs (after norm and ReLU / after the residual sum).
    """

    divisor = 4  # two stride-2 downsamplings

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, ngf: int = 64, n_blocks: int = 9, norm: str = "instance", dropout: float = 0.0) -> None:
        super().__init__()
        d = spatial_dims
        conv, up = Conv[Conv.CONV, d], Conv[Conv.CONVTRANS, d]
        bias = norm != "instance"
        self.spatial_dims, self.in_channels, self.out_channels = d, in_channels, out_channels
        stages: dict[str, nn.Module] = {
            "stem": nn.Sequential(reflection_pad(d, 3), conv(in_channels, ngf, 7, bias=bias), Norm[norm, d](ngf), nn.ReLU(True)),
        }
        channels = {"input": in_channels, "stem": ngf}
        c = ngf
        for i in (1, 2):
            stages[f"down{i}"] = nn.Sequential(conv(c, 2 * c, 3, stride=2, padding=1, bias=bias), Norm[norm, d](2 * c), nn.ReLU(True))
            c *= 2
            channels[f"down{i}"] = c
        for i in range(1, n_blocks + 1):
            stages[f"res{i}"] = ResnetBlock(c, d, norm, dropout)
            channels[f"res{i}"] = c
        self.encoder = nn.ModuleDict(stages)  # ordered: iteration follows the data flow
        decoder: list[nn.Module] = []
        for _ in (1, 2):
            decoder += [up(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias), Norm[norm, d](c // 2), nn.ReLU(True)]
            c //= 2
        decoder += [reflection_pad(d, 3), conv(c, out_channels, 7), nn.Tanh()]
        self.decoder = nn.Sequential(*decoder)
        self.feature_channels: dict[str, int] = channels
        self.layer_ids: tuple[str, ...] = tuple(channels)

    def check_layers(self, layers: Sequence[str]) -> None:
        unknown = [name for name in layers if name not in self.feature_channels]
        if unknown:
            raise ValueError(f"unknown generator layer id(s) {unknown}; valid: {', '.join(self.layer_ids)}")

    def _run_encoder(self, x: torch.Tensor, layers: Sequence[str], stop_early: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        wanted = set(layers)
        found: dict[str, torch.Tensor] = {"input": x} if "input" in wanted else {}
        h = x
        for name, stage in self.encoder.items():
            if stop_early and len(found) == len(wanted):
                break  # deeper stages are not needed for the requested features
            h = stage(h)
            if name in wanted:
                found[name] = h
        return h, [found[name] for name in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.spatial_dims, self.in_channels, self.divisor)
        h, _ = self._run_encoder(x, (), stop_early=False)
        return self.decoder(h)

    def forward_with_features(self, x: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output and the encoder features at ``layers`` (in that order) from one pass."""
        check_image(x, self.spatial_dims, self.in_channels, self.divisor)
        h, feats = self._run_encoder(x, layers, stop_early=False)
        return self.decoder(h), feats

    def encode(self, x: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
        """Encoder features at ``layers``; stops after the deepest requested stage."""
        check_image(x, self.spatial_dims, self.in_channels, self.divisor)
        return self._run_encoder(x, layers, stop_early=True)[1]


class UNetGenerator(nn.Module):
    """pix2pix U-Net: (N, in_channels, *S) -> (N, out_channels, *S) in (-1, 1); S divisible by 2**num_downs.

    Level i (0 = outermost) has ``ngf·min(2**i, 8)`` channels. Encoder: k4 s2 conv, LeakyReLU 0.2
    before every conv but the first, norm after every conv but the first and the innermost.
    Decoder: ReLU, k4 s2 transposed conv, norm (tanh at the outermost), dropout on the up-convs
    of the three levels next to the bottleneck; each decoder output is concatenated with the
    encoder feature of the same resolution. Hand-written rather than MONAI's ``BasicUNet`` /
    ``UNet``: those apply dropout in every block (encoder included), end without tanh, and use
    different down/up blocks than the paper's.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, ngf: int = 64, num_downs: int = 7, norm: str = "batch", dropout: float = 0.5) -> None:
        super().__init__()
        if num_downs < 2:
            raise ValueError(f"num_downs must be >= 2, got {num_downs}")
        d = spatial_dims
        conv, up = Conv[Conv.CONV, d], Conv[Conv.CONVTRANS, d]
        bias = norm != "batch"  # batch norm has its own shift
        self.spatial_dims, self.in_channels, self.divisor = d, in_channels, 2**num_downs
        ch = [ngf * min(2**i, 8) for i in range(num_downs)]
        inner = num_downs - 1
        downs: list[nn.Module] = [conv(in_channels, ch[0], 4, stride=2, padding=1, bias=True)]
        for i in range(1, num_downs):
            layers: list[nn.Module] = [nn.LeakyReLU(0.2, True), conv(ch[i - 1], ch[i], 4, stride=2, padding=1, bias=bias or i == inner)]
            if i != inner:
                layers.append(Norm[norm, d](ch[i]))
            downs.append(nn.Sequential(*layers))
        ups: list[nn.Module] = []
        for i in range(num_downs):
            c_in = ch[i] if i == inner else 2 * ch[i]
            if i == 0:
                ups.append(nn.Sequential(nn.ReLU(True), up(c_in, out_channels, 4, stride=2, padding=1), nn.Tanh()))
                continue
            layers = [nn.ReLU(True), up(c_in, ch[i - 1], 4, stride=2, padding=1, bias=bias), Norm[norm, d](ch[i - 1])]
            if dropout > 0 and inner - 3 <= i < inner:
                layers.append(nn.Dropout(dropout))
            ups.append(nn.Sequential(*layers))
        self.downs, self.ups = nn.ModuleList(downs), nn.ModuleList(ups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.spatial_dims, self.in_channels, self.divisor)
        skips = []
        h = x
        for down in self.downs:
            h = down(h)
            skips.append(h)
        h = self.ups[-1](skips[-1])
        for i in range(len(self.ups) - 2, -1, -1):
            h = self.ups[i](torch.cat([skips[i], h], dim=1))
        return h
