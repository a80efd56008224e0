"""DCGAN (Radford, Metz & Chintala 2016, arXiv:1511.06434) for 2D and 3D images in [-1, 1].

Generator: z (latent_dim) -> linear -> (ngf·8, 4, 4[, 4]) -> ``log2(image_size / 4)`` blocks of
2x upsampling (transposed conv k4 s2, or nearest upsampling + conv k3) + batch norm + ReLU, each
followed by ``residual_blocks`` residual blocks -> conv k3 -> tanh.
Discriminator (``discriminator: dcgan``): strided conv k4 s2 blocks (no pooling) + batch norm
(not on the first block) or spectral norm (Miyato et al. 2018) + leaky ReLU, down to 4x4[x4],
flattened to features ``φ(x)`` and one linear logit. ``discriminator: patch`` uses MONAI's
``PatchDiscriminator`` (one logit per patch).

Losses (:mod:`medgen.models.adversarial`, one vocabulary for every GAN in medgen):

* ``adversarial_loss: bce`` (default, alias ``vanilla``). D minimises ``-log σ(D(x)) -
  log(1 - σ(D(G(z))))``, with one-sided label smoothing (Salimans et al. 2016) replacing the
  real target 1 by ``1 - label_smoothing``. G minimises either ``log(1 - σ(D(G(z))))``
  (``g_loss: minimax``, the original game) or ``-log σ(D(G(z)))`` (``g_loss: non_saturating``,
  default): at ``σ(D) ≈ 0`` (fakes confidently rejected) the minimax gradient w.r.t. the logit
  is ``-σ(D)`` ≈ 0 while the non-saturating one is ``-(1 - σ(D))`` ≈ -1.
* ``adversarial_loss: least_squares`` (alias ``lsgan``; Mao et al. 2017) on the raw logits.
* ``adversarial_loss: hinge`` (Lim & Ye 2017) on the raw logits: D ``relu(1 - D(x)) +
  relu(1 + D(G(z)))``, G ``-D(G(z))`` (not MONAI's hinge, which acts on ``tanh`` of the logits).

All loss terms are computed in float32 outside the autocast region. Adam (lr 2e-4, betas
(0.5, 0.999)) and N(0, 0.02) weight init as in DCGAN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

import torch
from monai.networks.layers.factories import Conv, Norm
from monai.networks.utils import eval_mode
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from medgen.models.adversarial import G_FORMS, AdversarialLoss, adversarial_loss_kind, gan_optimizers
from medgen.models.base import GenerativeModel, StepContext
from medgen.models.discriminators import PatchDiscriminatorLogits
from medgen.models.options import GANOptions, check_choice

DISCRIMINATORS = ("dcgan", "patch")
UPSAMPLING = ("transpose", "nearest")


def sample_from_prior(
    name: str, network: nn.Module, decode: Callable[[torch.Tensor], torch.Tensor], latent_dim: int, n: int, labels: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """``decode(z)`` for z ~ N(0, temperature² I) of shape (n, latent_dim), with ``network`` in eval
    mode (batch-norm running statistics) and its mode restored: sampling of unconditional
    latent-variable models."""
    if labels is not None:
        raise ValueError(f"{name} is unconditional; labels must be None")
    device = next(network.parameters()).device
    z = temperature * torch.randn(n, latent_dim, device=device)
    with eval_mode(network):
        return decode(z)


@dataclass
class DCGANConfig(GANOptions):
    """Options of :class:`DCGAN` (filled from the YAML ``model:`` section): :class:`GANOptions` plus these."""

    latent_dim: int = 100
    ngf: int = 64
    ndf: int = 64
    residual_blocks: int = 0  # per generator resolution
    upsample: str = "transpose"  # transpose | nearest (upsample + conv, avoids checkerboards)
    batch_norm: bool = True
    spectral_norm: bool = False  # discriminator: spectral norm instead of batch norm
    minibatch_std: bool = False  # dcgan discriminator: one more feature, the batch's spread (MinibatchStd)
    leaky_slope: float = 0.2
    discriminator: str = "dcgan"  # dcgan | patch
    patch_layers: int = 3  # layers of the MONAI PatchDiscriminator
    adversarial_loss: str = "bce"  # bce | least_squares | hinge (aliases: vanilla, lsgan)
    g_loss: str = "non_saturating"  # non_saturating | minimax (bce only)
    label_smoothing: float = 0.0  # one-sided: real target = 1 - label_smoothing
    lr_g: float = 2e-4
    lr_d: float = 2e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("g_loss", self.g_loss, G_FORMS)
        kind = adversarial_loss_kind("adversarial_loss", self.adversarial_loss)
        check_choice("discriminator", self.discriminator, DISCRIMINATORS)
        check_choice("upsample", self.upsample, UPSAMPLING)
        if self.g_loss == "minimax" and kind != "bce":
            raise ValueError("g_loss 'minimax' is defined for adversarial_loss 'bce' only")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and kind == "hinge":
            raise ValueError("label_smoothing does not apply to adversarial_loss 'hinge'")
        if self.discriminator == "patch" and self.image_size < 4 * 2**self.patch_layers:
            raise ValueError(f"image_size {self.image_size} is too small for patch_layers {self.patch_layers}: needs >= 4·2**patch_layers")
        if self.residual_blocks < 0:
            raise ValueError("residual_blocks must be >= 0")
        if self.minibatch_std and self.discriminator != "dcgan":
            raise ValueError("minibatch_std is an option of discriminator 'dcgan'")


def dcgan_options(options: Any, **overrides: Any) -> DCGANConfig:
    """The :class:`DCGANConfig` that the shared building blocks (:class:`Generator`,
    :class:`DCGANDiscriminator`) read for another model's ``options``: every field the two
    option classes share by name, then ``overrides``; the other DCGAN fields keep their defaults."""
    shared = {f.name: getattr(options, f.name) for f in fields(DCGANConfig) if hasattr(options, f.name)}
    return DCGANConfig(**{**shared, **overrides})


# -- building blocks ---------------------------------------------------------------------------
def _batch_norm(d: int, channels: int, enabled: bool) -> nn.Module:
    return Norm[Norm.BATCH, d](channels) if enabled else nn.Identity()


class ResidualBlock(nn.Module):
    """x + conv3(relu(bn(conv3(relu(bn(x)))))) (pre-activation, He et al. 2016)."""

    def __init__(self, channels: int, spatial_dims: int, batch_norm: bool) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.body = nn.Sequential(
            _batch_norm(spatial_dims, channels, batch_norm),
            nn.ReLU(),
            conv(channels, channels, 3, padding=1, bias=not batch_norm),
            _batch_norm(spatial_dims, channels, batch_norm),
            nn.ReLU(),
            conv(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _upsample_block(c_in: int, c_out: int, cfg: DCGANConfig) -> nn.Sequential:
    d = cfg.spatial_dims
    if cfg.upsample == "transpose":
        up = [Conv[Conv.CONVTRANS, d](c_in, c_out, 4, stride=2, padding=1, bias=not cfg.batch_norm)]
    else:
        up = [nn.Upsample(scale_factor=2, mode="nearest"), Conv[Conv.CONV, d](c_in, c_out, 3, padding=1, bias=not cfg.batch_norm)]
    return nn.Sequential(*up, _batch_norm(d, c_out, cfg.batch_norm), nn.ReLU())


class Generator(nn.Module):
    """(N, in_features) -> (N, C, S, S[, S]) in (-1, 1)."""

    def __init__(self, cfg: DCGANConfig, in_features: int) -> None:
        super().__init__()
        d = cfg.spatial_dims
        n_up = int(math.log2(cfg.image_size)) - 2
        channels = [cfg.ngf * 2 ** max(3 - i, 0) for i in range(n_up + 1)]
        self.base_shape = (channels[0], *([4] * d))
        self.project = nn.Linear(in_features, math.prod(self.base_shape), bias=not cfg.batch_norm)
        self.project_act = nn.Sequential(_batch_norm(d, channels[0], cfg.batch_norm), nn.ReLU())
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks.append(_upsample_block(c_in, c_out, cfg))
            blocks.extend(ResidualBlock(c_out, d, cfg.batch_norm) for _ in range(cfg.residual_blocks))
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Sequential(Conv[Conv.CONV, d](channels[-1], cfg.in_channels, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(z.shape[0], *self.base_shape)
        return self.out(self.blocks(self.project_act(h)))


class MinibatchStd(nn.Module):
    """Appends one channel holding the batch's spread: the standard deviation of every feature over
    the batch, averaged over features and positions (Karras et al. 2018, arXiv:1710.10196, §3).

    A generator that maps every z to nearly one image gives batches of spread near 0, which the
    discriminator can then see and reject; without it each image is judged alone and a collapsed
    generator whose one image is realistic is not penalised. The spread is over the whole batch
    (the original uses groups of 4; the batches here are small) and is 0 for a batch of one.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spread = torch.sqrt(x.float().var(dim=0, unbiased=False) + 1e-8).mean() if x.shape[0] > 1 else x.new_zeros((), dtype=torch.float32)
        return torch.cat([x, spread.to(x.dtype).expand(x.shape[0], 1, *x.shape[2:])], dim=1)


class DCGANDiscriminator(nn.Module):
    """(N, C, S, S[, S]) -> logit (N, 1); ``features(x)`` gives the flattened φ(x) (N, F)."""

    def __init__(self, cfg: DCGANConfig) -> None:
        super().__init__()
        d = cfg.spatial_dims
        use_bn = cfg.batch_norm and not cfg.spectral_norm
        sn = _spectral_norm if cfg.spectral_norm else (lambda m: m)
        n_down = int(math.log2(cfg.image_size)) - 2
        layers: list[nn.Module] = []
        c_in, c_out = cfg.in_channels, cfg.ndf
        for i in range(n_down):
            norm = use_bn and i > 0  # DCGAN: no batch norm on the first layer
            layers += [
                sn(Conv[Conv.CONV, d](c_in, c_out, 4, stride=2, padding=1, bias=not norm)),
                _batch_norm(d, c_out, norm),
                nn.LeakyReLU(cfg.leaky_slope),
            ]
            c_in, c_out = c_out, min(2 * c_out, 8 * cfg.ndf)
        if cfg.minibatch_std:
            layers.append(MinibatchStd())
            c_in += 1
        self.body = nn.Sequential(*layers)
        self.n_features = c_in * 4**d
        self.head = sn(nn.Linear(self.n_features, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def dcgan_init(module: nn.Module, std: float = 0.02) -> None:
    """Conv/linear weights ~ N(0, std), batch-norm scales ~ N(1, std), biases 0 (DCGAN §4)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
            weight = m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight
            nn.init.normal_(weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


class DCGAN(GenerativeModel):
    """Unconditional DCGAN; ``generator`` and ``discriminator`` are the two submodules,
    optimised by the optimizers ``"g"`` and ``"d"``."""

    config_class = DCGANConfig
    kind = "generation"

    def __init__(self, config: DCGANConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or self.config_class()
        self.generator = self._build_generator(cfg)
        self.discriminator = self._build_discriminator(cfg)
        dcgan_init(self.generator, cfg.init_std)
        dcgan_init(self.discriminator, cfg.init_std)
        self.adversarial = AdversarialLoss(cfg.adversarial_loss, real_label=1.0 - cfg.label_smoothing, g_form=cfg.g_loss)

    # -- overridden by the conditional GAN -------------------------------------------------
    def _build_generator(self, cfg: DCGANConfig) -> nn.Module:
        return Generator(cfg, cfg.latent_dim)

    def _build_discriminator(self, cfg: DCGANConfig) -> nn.Module:
        if cfg.discriminator == "patch":
            norm = "batch" if cfg.batch_norm else "instance"
            return PatchDiscriminatorLogits(cfg.spatial_dims, cfg.in_channels, cfg.ndf, cfg.patch_layers, norm, cfg.leaky_slope)
        return DCGANDiscriminator(cfg)

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z (N, latent_dim) -> images (N, C, *spatial)."""
        return self.generator(z)

    def discriminate(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images -> logits (N, 1) (dcgan) or (N, 1, *patches) (patch)."""
        return self.discriminator(x)

    def _labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        return None

    # -- losses ----------------------------------------------------------------------------
    def discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return self.adversarial.d_loss(real_logits, fake_logits)

    def generator_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return self.adversarial.g_loss(fake_logits)

    # -- engine interface ------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        return gan_optimizers(self.generator.parameters(), self.discriminator.parameters(), lr_g=cfg.lr_g, lr_d=cfg.lr_d, betas=cfg.betas)

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """One D update on (real, G(z).detach()), then one G update through the updated D."""
        real = batch["image"]
        labels = self._labels(batch)
        z = torch.randn(real.shape[0], self.config.latent_dim, device=real.device)
        with ctx.autocast():
            fake = self.generate(z, labels)
            real_logits = self.discriminate(real, labels)
            fake_logits = self.discriminate(fake.detach(), labels)
        d_loss = ctx.backward_and_step("d_loss", self.discriminator_loss(real_logits, fake_logits), "d")
        with ctx.autocast():
            g_logits = self.discriminate(fake, labels)
        g_loss = ctx.backward_and_step("g_loss", self.generator_loss(g_logits), "g")
        return {"d_loss": d_loss, "g_loss": g_loss, "d_real": self.adversarial.score(real_logits), "d_fake": self.adversarial.score(fake_logits)}

    def _latents(self, n: int, temperature: float) -> torch.Tensor:
        device = next(self.generator.parameters()).device
        return temperature * torch.randn(n, self.config.latent_dim, device=device)

    @torch.no_grad()
    def sample(self, n: int, *, labels: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images in [-1, 1], generator in eval mode (batch-norm running statistics);
        ``temperature`` scales z (truncation-like)."""
        if labels is not None:
            raise ValueError("DCGAN is unconditional; labels must be None (use 'cgan')")
        return self._sample(self._latents(n, temperature), None)

    def _sample(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        with eval_mode(self.generator):
            return self.generate(z, labels)
