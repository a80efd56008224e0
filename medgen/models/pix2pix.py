"""pix2pix (Isola, Zhu, Zhou & Efros 2017, arXiv:1611.07004): paired source -> target translation.

U-Net generator G (:class:`UNetGenerator`, dropout in the decoder) and a conditional PatchGAN D
that sees the pair concatenated along channels, (source, target) or (source, G(source)) —
MONAI's ``PatchDiscriminator`` with ``in_channels + out_channels`` inputs. Objective (§3):

    L_G = GAN(D(x, G(x))) + λ_L1·|y - G(x)|₁,   λ_L1 = 100
    L_D = ½[BCE(D(x, y), 1) + BCE(D(x, G(x)), 0)]

vanilla (non-saturating) GAN loss by default; Adam lr 2e-4, β (0.5, 0.999); LR constant for the
first half of ``max_steps``, then linear to 0. Each step updates D, then G through the
updated D. Needs registered pairs: ``batch["target"]`` must correspond voxel-wise to
``batch["source"]``.

Spatial sizes must be divisible by ``2**num_downs``. ``translate`` runs in eval mode: dropout
off and batch norm with running statistics (the paper keeps dropout on at test time as noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch.nn import functional as F

from medgen.models.adversarial import gan_optimizers
from medgen.models.base import StepContext
from medgen.models.gan import dcgan_init
from medgen.models.options import TranslationOptions
from medgen.models.translation_base import TranslationModel, set_requires_grad
from medgen.models.translation_generators import UNetGenerator, check_image


@dataclass
class Pix2PixConfig(TranslationOptions):
    """Options of :class:`Pix2Pix` (the YAML ``model:`` section): :class:`TranslationOptions` plus the U-Net's."""

    norm: str = "batch"  # batch | instance (generator and discriminator)
    gan_loss: str = "vanilla"  # vanilla | lsgan | hinge
    num_downs: int = 7  # U-Net depth; inputs must be divisible by 2**num_downs (8 for 256 px in the paper)
    dropout: float = 0.5  # decoder layers next to the bottleneck
    lambda_l1: float = 100.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_downs < 2:
            raise ValueError(f"num_downs must be >= 2, got {self.num_downs}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class Pix2Pix(TranslationModel):
    """Networks ``generator`` and ``discriminator``; optimizers ``"g"`` and ``"d"``."""

    config_class = Pix2PixConfig
    kind = "translation"
    paired = True

    def __init__(self, config: Pix2PixConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        self.generator = UNetGenerator(cfg.spatial_dims, cfg.in_channels, cfg.out_channels, cfg.ngf, cfg.num_downs, cfg.norm, cfg.dropout)
        self.discriminator = self.patch_discriminator(cfg.in_channels + cfg.out_channels)
        dcgan_init(self.generator, cfg.init_std)

    def _translator(self) -> UNetGenerator:
        return self.generator

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        return gan_optimizers(self.generator.parameters(), self.discriminator.parameters(), lr_g=cfg.lr, lr_d=cfg.lr, betas=cfg.betas)

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """D update on (x, y) vs (x, G(x)), then G update (adversarial + λ·L1)."""
        cfg = self.config
        x, y = batch["source"], batch["target"]
        check_image(y, cfg.spatial_dims, cfg.out_channels, 1, "target")
        if x.shape[2:] != y.shape[2:]:
            raise ValueError(f"pix2pix needs registered pairs: source {tuple(x.shape[2:])} and target {tuple(y.shape[2:])} differ")
        with ctx.autocast():
            fake = self.generator(x)
            real_logits = self.discriminator(torch.cat([x, y], dim=1))
            fake_logits = self.discriminator(torch.cat([x, fake.detach()], dim=1))
        d_loss = ctx.backward_and_step("d_loss", self.criterion.d_loss(real_logits, fake_logits), "d")

        set_requires_grad(self.discriminator, False)
        try:
            with ctx.autocast():
                g_logits = self.discriminator(torch.cat([x, fake], dim=1))
            adv = self.criterion.g_loss(g_logits)
            l1 = F.l1_loss(fake.float(), y)
            g_total = adv + cfg.lambda_l1 * l1
        finally:
            set_requires_grad(self.discriminator, True)
        g_loss = ctx.backward_and_step("g_loss", g_total, "g")
        return {"g_loss": g_loss, "d_loss": d_loss, "g_adv": float(adv.detach()), "l1": float(l1.detach())}
