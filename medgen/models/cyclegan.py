"""CycleGAN (Zhu, Park, Isola & Efros 2017, arXiv:1703.10593): unpaired source <-> target translation.

Two ResNet generators, ``g_ab`` (source A -> target B) and ``g_ba`` (B -> A), and two PatchGAN
discriminators, ``d_b`` (is this a real B?) and ``d_a``. Generator objective per step:

    L_G = GAN(d_b(g_ab(a))) + GAN(d_a(g_ba(b)))
        + λ_cyc·(|g_ba(g_ab(a)) - a|₁ + |g_ab(g_ba(b)) - b|₁)                      (§3.2)
        + λ_idt·λ_cyc·(|g_ab(b) - b|₁ + |g_ba(a) - a|₁)                             (§5.2)

with λ_cyc = 10 and λ_idt = 0.5 by default; least-squares GAN loss (§4). The discriminators
are trained on fakes drawn from a history of 50 past fakes each (:class:`ImagePool`), with
their loss halved. One Adam (lr 2e-4, β (0.5, 0.999)) for both generators (``"g"``) and one
for both discriminators (``"d"``); LR constant for the first half of ``max_steps``, then linear
to 0 (``lr_decay_start``). Update order per step: generators (discriminators frozen), then
discriminators, as in the paper's reference training loop.

The two image pools are saved in the model's ``state_dict`` (extra state) and restored on resume.
Spatial sizes must be divisible by 4 (the generators downsample twice) and, for the
discriminators during training, be >= 3·2**num_layers_d.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch.nn import functional as F

from medgen.models.adversarial import gan_optimizers
from medgen.models.base import StepContext
from medgen.models.gan import dcgan_init
from medgen.models.image_pool import ImagePool
from medgen.models.options import TranslationOptions
from medgen.models.translation_base import TranslationModel, set_requires_grad
from medgen.models.translation_generators import ResnetGenerator, check_image


@dataclass
class CycleGANConfig(TranslationOptions):
    """Options of :class:`CycleGAN` (the YAML ``model:`` section): :class:`TranslationOptions` plus these."""

    n_blocks: int = 9  # 6 for images of 128 px or smaller in the paper
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5  # times lambda_cycle; needs in_channels == out_channels when > 0
    pool_size: int = 50  # past fakes per discriminator; 0 disables the pool

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_blocks < 0 or self.pool_size < 0:
            raise ValueError("n_blocks and pool_size must be >= 0")
        if self.lambda_identity > 0 and self.in_channels != self.out_channels:
            raise ValueError("lambda_identity > 0 needs in_channels == out_channels (set lambda_identity=0)")


class CycleGAN(TranslationModel):
    """Networks ``g_ab``, ``g_ba``, ``d_a``, ``d_b``; optimizers ``"g"`` and ``"d"``."""

    config_class = CycleGANConfig
    kind = "translation"

    def __init__(self, config: CycleGANConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        d = cfg.spatial_dims
        self.g_ab = ResnetGenerator(d, cfg.in_channels, cfg.out_channels, cfg.ngf, cfg.n_blocks, cfg.norm)
        self.g_ba = ResnetGenerator(d, cfg.out_channels, cfg.in_channels, cfg.ngf, cfg.n_blocks, cfg.norm)
        self.d_a, self.d_b = self.patch_discriminator(cfg.in_channels), self.patch_discriminator(cfg.out_channels)
        dcgan_init(self.g_ab, cfg.init_std)
        dcgan_init(self.g_ba, cfg.init_std)
        self.pool_a, self.pool_b = ImagePool(cfg.pool_size), ImagePool(cfg.pool_size)

    def _translator(self) -> ResnetGenerator:
        return self.g_ab

    def translate_back(self, y: torch.Tensor) -> torch.Tensor:
        """Target (N, out_channels, *S) -> source domain (N, in_channels, *S) in [-1, 1]; eval, no grad."""
        return self._run_eval(self.g_ba, y, self.config.out_channels)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        g_params = [*self.g_ab.parameters(), *self.g_ba.parameters()]
        d_params = [*self.d_a.parameters(), *self.d_b.parameters()]
        return gan_optimizers(g_params, d_params, lr_g=cfg.lr, lr_d=cfg.lr, betas=cfg.betas)

    def _generate(self, a: torch.Tensor, b: torch.Tensor, identity: bool) -> dict[str, torch.Tensor]:
        """Fakes, reconstructions and (optionally) identity mappings. With identity on, each
        generator runs once on [real of its source domain; real of its target domain] (instance
        norm is per image, so batching changes nothing but the speed)."""
        n = a.shape[0]
        if identity:
            out_ab = self.g_ab(torch.cat([a, b]))
            out_ba = self.g_ba(torch.cat([b, a]))
            fake_b, idt_b, fake_a, idt_a = out_ab[:n], out_ab[n:], out_ba[:n], out_ba[n:]
        else:
            fake_b, fake_a = self.g_ab(a), self.g_ba(b)
            idt_b = idt_a = None
        return {"fake_b": fake_b, "fake_a": fake_a, "rec_a": self.g_ba(fake_b), "rec_b": self.g_ab(fake_a), "idt_b": idt_b, "idt_a": idt_a}

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """Generator update (both directions), then discriminator update on pooled fakes."""
        cfg = self.config
        a, b = batch["source"], batch["target"]
        check_image(a, cfg.spatial_dims, cfg.in_channels, 4, "source")
        check_image(b, cfg.spatial_dims, cfg.out_channels, 4, "target")
        identity = cfg.lambda_identity > 0
        set_requires_grad(self.d_a, False)
        set_requires_grad(self.d_b, False)
        try:
            with ctx.autocast():
                out = self._generate(a, b, identity)
                logits_b, logits_a = self.d_b(out["fake_b"]), self.d_a(out["fake_a"])
            adv = self.criterion.g_loss(logits_b) + self.criterion.g_loss(logits_a)
            cycle = F.l1_loss(out["rec_a"].float(), a) + F.l1_loss(out["rec_b"].float(), b)
            idt = F.l1_loss(out["idt_b"].float(), b) + F.l1_loss(out["idt_a"].float(), a) if identity else torch.zeros((), device=a.device)
            g_total = adv + cfg.lambda_cycle * cycle + cfg.lambda_cycle * cfg.lambda_identity * idt
        finally:
            set_requires_grad(self.d_a, True)
            set_requires_grad(self.d_b, True)
        g_loss = ctx.backward_and_step("g_loss", g_total, "g")

        pooled_b, pooled_a = self.pool_b.query(out["fake_b"]), self.pool_a.query(out["fake_a"])
        with ctx.autocast():
            d_b = self.criterion.d_loss(self.d_b(b), self.d_b(pooled_b))
            d_a = self.criterion.d_loss(self.d_a(a), self.d_a(pooled_a))
        d_loss = ctx.backward_and_step("d_loss", d_a + d_b, "d")
        return {
            "g_loss": g_loss,
            "d_loss": d_loss,
            "g_adv": float(adv.detach()),
            "cycle": float(cycle.detach()),
            "identity": float(idt.detach()),
            "d_a": float(d_a.detach()),
            "d_b": float(d_b.detach()),
        }
