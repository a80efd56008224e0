"""StyleGAN-style generator (Karras, Laine & Aila 2019, "A Style-Based Generator Architecture for
Generative Adversarial Networks", arXiv:1812.04948) for 2D images in [-1, 1].

Generator:

* **Mapping network** ``f``: z (N, latent_dim) -> pixel norm -> ``mapping_layers`` x
  (linear + leaky ReLU 0.2) -> w (N, w_dim).
* **Synthesis network** ``g``: a learned constant (fmaps, 4, 4), then one block per resolution
  4, 8, ..., ``image_size``. The 4x4 block is ``const -> noise -> AdaIN -> conv3 -> noise ->
  AdaIN``; every later block is ``bilinear 2x upsample -> conv3 -> noise -> AdaIN -> conv3 ->
  noise -> AdaIN``. Each "noise" adds per-pixel Gaussian noise (N, 1, H, W) times a learned
  per-channel scale (initialised to 0, as in the paper), then a bias and leaky ReLU 0.2.
  **AdaIN** (StyleGAN v1, not StyleGAN2's modulated/demodulated convolution) instance-normalises
  each channel and applies ``y_s·x + y_b`` with ``(y_s, y_b)`` a learned affine map of that
  layer's w (scale bias initialised to 1). A 1x1 toRGB conv + tanh at the last resolution gives
  the image. ``n_layers = 2·log2(image_size) - 2`` style inputs: ``synthesize`` takes
  ws (N, n_layers, w_dim), one w per AdaIN layer, coarse (low resolution) first.
* **Equalised learning rate** (Karras et al. 2018, ProGAN §4.1): weights ~ N(0, 1), scaled at
  run time by ``1/sqrt(fan_in)``, in the mapping net, convs, affines and toRGB.
* **Style-mixing regularisation**: during training, with probability ``mixing_prob`` two
  latents z1, z2 are mapped and ws rows ``< k`` use w1, rows ``>= k`` use w2, k uniform in
  [1, n_layers).
* **Truncation trick**: ``sample(temperature=ψ)`` uses ``w' = w_avg + ψ(w - w_avg)`` on every
  layer, with ``w_avg`` an EMA (decay ``w_avg_beta``) of the ws seen in training, a buffer.
  ψ=1 is no truncation, ψ=0 gives the mean-w image for every z.
* Mapping network learning rate ``lr_mapping`` (default ``0.01·lr``), Adam betas (0, 0.99).

Discriminator: :class:`medgen.models.gan.DCGANDiscriminator` (strided convs, leaky ReLU, no
batch norm) with the non-saturating logistic loss (softplus form from ``gan.py``), optionally
with the R1 gradient penalty ``γ/2·E[‖∇_x D(x)‖²]`` on reals (Mescheder et al. 2018), applied
every step. ``r1_gamma`` defaults to 0 (off) to keep CPU training cheap; StyleGAN uses 10.

Not included: progressive growing, blur in up/downsampling, StyleGAN2's modulated convolutions,
skip/residual toRGB outputs, path length regularisation, lazy regularisation, minibatch stddev,
per-layer truncation cut-off (truncation applies to all layers), 3D images.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from medgen.models.adversarial import bce_with_logits, generator_bce_loss
from medgen.models.base import GenerativeModel, StepContext
from medgen.models.gan import DCGANConfig, DCGANDiscriminator, dcgan_init
from medgen.models.options import ImageOptions


@dataclass
class StyleGANConfig(ImageOptions):
    """Options of :class:`StyleGAN` (filled from the YAML ``model:`` section): :class:`ImageOptions`
    (``spatial_dims`` 2 only) plus these."""

    latent_dim: int = 128  # z
    w_dim: int = 128  # w
    mapping_layers: int = 4
    fmaps: int = 64  # synthesis channels at every resolution
    ndf: int = 32  # discriminator base width
    mixing_prob: float = 0.9
    r1_gamma: float = 0.0  # 0 disables the R1 penalty (StyleGAN: 10)
    w_avg_beta: float = 0.995  # EMA decay of the tracked mean w
    lr: float = 2e-3  # synthesis network and discriminator
    lr_mapping: float | None = None  # None -> 0.01 * lr
    betas: tuple[float, float] = (0.0, 0.99)

    def __post_init__(self) -> None:
        if self.spatial_dims != 2:
            raise ValueError(f"stylegan supports spatial_dims=2 only, got {self.spatial_dims}")
        super().__post_init__()
        if self.mapping_layers < 1:
            raise ValueError("mapping_layers must be >= 1")
        if not 0.0 <= self.mixing_prob <= 1.0:
            raise ValueError(f"mixing_prob must be in [0, 1], got {self.mixing_prob}")
        if self.r1_gamma < 0:
            raise ValueError("r1_gamma must be >= 0")
        if not 0.0 <= self.w_avg_beta < 1.0:
            raise ValueError("w_avg_beta must be in [0, 1)")
        if self.lr_mapping is None:
            self.lr_mapping = 0.01 * self.lr
        self.betas = tuple(self.betas)  # YAML gives a list


# -- equalised-learning-rate layers ------------------------------------------------------------
class EqualLinear(nn.Module):
    """Linear layer with weights ~ N(0, 1) scaled by ``1/sqrt(in_features)`` at run time
    (ProGAN's equalised learning rate): (N, in) -> (N, out)."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.scale = 1.0 / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class EqualConv2d(nn.Module):
    """2D convolution (stride 1, 'same' padding, no bias) with equalised learning rate."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, padding=self.padding)


# -- networks ----------------------------------------------------------------------------------
class MappingNetwork(nn.Module):
    """f: z (N, latent_dim) -> w (N, w_dim): pixel norm, then MLP with leaky ReLU 0.2."""

    def __init__(self, latent_dim: int, w_dim: int, n_layers: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers += [EqualLinear(latent_dim if i == 0 else w_dim, w_dim), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)  # pixel norm
        return self.net(z)


class StyleLayer(nn.Module):
    """Epilogue of one synthesis layer: noise injection, bias, leaky ReLU, AdaIN.

    x (N, C, H, W), w (N, w_dim), noise (N, 1, H, W) or None (fresh N(0, 1) noise).
    """

    def __init__(self, channels: int, w_dim: int) -> None:
        super().__init__()
        # per-channel noise strength, zero at init as in StyleGAN
        self.noise_strength = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.affine = EqualLinear(w_dim, 2 * channels)
        with torch.no_grad():  # y_s starts at 1, y_b at 0: AdaIN is plain instance norm at init
            self.affine.bias[:channels] = 1.0

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        x = F.leaky_relu(x + self.noise_strength * noise + self.bias, 0.2)
        # AdaIN; instance norm computed in float32 for stability under autocast
        x = F.instance_norm(x.float(), eps=1e-5).to(x.dtype)
        y_s, y_b = self.affine(w).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return y_s * x + y_b


class SynthesisNetwork(nn.Module):
    """g: ws (N, n_layers, w_dim) -> images (N, C, S, S) in (-1, 1)."""

    def __init__(self, cfg: StyleGANConfig) -> None:
        super().__init__()
        c = cfg.fmaps
        self.n_blocks = int(math.log2(cfg.image_size)) - 1  # resolutions 4 .. image_size
        self.n_layers = 2 * self.n_blocks
        self.const = nn.Parameter(torch.randn(1, c, 4, 4))
        # convs[0] is the 4x4 block's only conv; convs[2i-1], convs[2i] belong to block i >= 1
        self.convs = nn.ModuleList(EqualConv2d(c, c, 3) for _ in range(self.n_layers - 1))
        self.styles = nn.ModuleList(StyleLayer(c, cfg.w_dim) for _ in range(self.n_layers))
        self.to_rgb = EqualConv2d(c, cfg.in_channels, 1)
        self.rgb_bias = nn.Parameter(torch.zeros(1, cfg.in_channels, 1, 1))

    def resolutions(self) -> list[int]:
        """Spatial size of each of the ``n_layers`` style layers."""
        return [4 * 2 ** (i // 2) for i in range(self.n_layers)]

    def make_noise(self, n: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """One N(0, 1) noise map (n, 1, r, r) per style layer (to fix noise across calls)."""
        device = device if device is not None else self.const.device
        return [torch.randn(n, 1, r, r, device=device, dtype=dtype) for r in self.resolutions()]

    def forward(self, ws: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        if ws.dim() != 3 or ws.shape[1] != self.n_layers:
            raise ValueError(f"ws must be (N, {self.n_layers}, w_dim), got {tuple(ws.shape)}")
        noise = list(noise) if noise is not None else [None] * self.n_layers
        if len(noise) != self.n_layers:
            raise ValueError(f"noise must hold {self.n_layers} maps, got {len(noise)}")
        x = self.const.expand(ws.shape[0], -1, -1, -1).to(ws.dtype)
        x = self.styles[0](x, ws[:, 0], noise[0])
        for i in range(1, self.n_layers):
            if i % 2 == 0:  # first layer of a new block: 2x upsampling
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.styles[i](self.convs[i - 1](x), ws[:, i], noise[i])
        return torch.tanh(self.to_rgb(x) + self.rgb_bias)


class StyleGAN(GenerativeModel):
    """Unconditional StyleGAN-style GAN. Submodules ``mapping``, ``synthesis`` (optimizer
    ``"g"``, two parameter groups with learning rates ``lr_mapping`` and ``lr``) and
    ``discriminator`` (optimizer ``"d"``); buffer ``w_avg`` (w_dim,), the tracked mean w."""

    config_class = StyleGANConfig
    kind = "generation"

    def __init__(self, config: StyleGANConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or self.config_class()
        self.mapping = MappingNetwork(cfg.latent_dim, cfg.w_dim, cfg.mapping_layers)
        self.synthesis = SynthesisNetwork(cfg)
        self.n_layers = self.synthesis.n_layers
        d_cfg = DCGANConfig(
            spatial_dims=2, image_size=cfg.image_size, in_channels=cfg.in_channels, ndf=cfg.ndf, batch_norm=False, leaky_slope=0.2
        )
        self.discriminator = DCGANDiscriminator(d_cfg)
        dcgan_init(self.discriminator)
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    # -- generator pieces ------------------------------------------------------------------
    def map(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, latent_dim) -> w (N, w_dim)."""
        return self.mapping(z)

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """w (N, w_dim) -> ws (N, n_layers, w_dim), the same w for every layer."""
        return w.unsqueeze(1).expand(-1, self.n_layers, -1)

    def mix(self, w1: torch.Tensor, w2: torch.Tensor, cutoff: int) -> torch.Tensor:
        """Style mixing: ws (N, n_layers, w_dim) with rows ``< cutoff`` from w1 (N, w_dim)
        (coarse layers) and rows ``>= cutoff`` from w2 (fine layers)."""
        layer = torch.arange(self.n_layers, device=w1.device).view(1, -1, 1)
        return torch.where(layer < cutoff, w1.unsqueeze(1), w2.unsqueeze(1))

    def truncate(self, w: torch.Tensor, psi: float) -> torch.Tensor:
        """Truncation trick: ``w_avg + ψ (w - w_avg)`` for w (..., w_dim)."""
        return torch.lerp(self.w_avg.to(w.dtype), w, psi)

    def synthesize(self, ws: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """ws (N, n_layers, w_dim) -> images (N, C, S, S) in (-1, 1); ``noise``: one map
        (N, 1, r, r) per layer (see ``synthesis.make_noise``), None for fresh noise."""
        return self.synthesis(ws, noise)

    def _training_ws(self, n: int, device: torch.device) -> torch.Tensor:
        """ws for a training batch with style-mixing regularisation; updates ``w_avg``."""
        cfg = self.config
        w = self.map(torch.randn(n, cfg.latent_dim, device=device))
        with torch.no_grad():
            self.w_avg.lerp_(w.detach().float().mean(0), 1.0 - cfg.w_avg_beta)
        # the mixing decision is one per batch (as in the official implementation's default)
        if self.n_layers > 1 and random.random() < cfg.mixing_prob:
            w2 = self.map(torch.randn(n, cfg.latent_dim, device=device))
            return self.mix(w, w2, random.randint(1, self.n_layers - 1))
        return self.broadcast(w)

    # -- engine interface ------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        groups = [
            {"params": list(self.mapping.parameters()), "lr": cfg.lr_mapping},
            {"params": list(self.synthesis.parameters()), "lr": cfg.lr},
        ]
        return {
            "g": torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas),
            "d": torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr, betas=cfg.betas),
        }

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """One D update (logistic loss, + R1 on reals when ``r1_gamma > 0``) on
        (real, G(z).detach()), then one G update (non-saturating loss) through the updated D."""
        cfg = self.config
        real = batch["image"]
        use_r1 = cfg.r1_gamma > 0
        if use_r1:
            real = real.detach().requires_grad_(True)
        with ctx.autocast():
            fake = self.synthesize(self._training_ws(real.shape[0], real.device))
            real_logits = self.discriminator(real)
            fake_logits = self.discriminator(fake.detach())
        d_loss = bce_with_logits(real_logits.float(), 1.0) + bce_with_logits(fake_logits.float(), 0.0)
        logs: dict[str, float] = {}
        if use_r1:
            # R1 = E[||∇_x D(x)||²] on reals; create_graph so the penalty trains D
            (grad,) = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
            r1 = grad.float().pow(2).flatten(1).sum(1).mean()
            d_loss = d_loss + 0.5 * cfg.r1_gamma * r1
            logs["r1"] = float(r1.detach())
        logs["d_loss"] = ctx.backward_and_step("d_loss", d_loss, "d")
        with ctx.autocast():
            g_logits = self.discriminator(fake)
        logs["g_loss"] = ctx.backward_and_step("g_loss", generator_bce_loss(g_logits.float(), "non_saturating"), "g")
        return logs

    @torch.no_grad()
    def sample(self, n: int, *, labels: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images (n, C, S, S) in [-1, 1] with fresh noise; ``temperature`` is the
        truncation ψ around ``w_avg`` (1: none, 0: the mean-w image for every z)."""
        if labels is not None:
            raise ValueError("StyleGAN is unconditional; labels must be None")
        device = self.w_avg.device
        w = self.map(torch.randn(n, self.config.latent_dim, device=device))
        if temperature != 1.0:
            w = self.truncate(w, temperature)
        return self.synthesize(self.broadcast(w))
