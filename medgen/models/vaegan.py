"""VAE-GAN (Larsen, Sønderby, Larochelle & Winther 2016, "Autoencoding beyond pixels using a
learned similarity metric", arXiv:1512.09300) for 2D (and 3D) images in [-1, 1].

Three networks, each a submodule with its own optimizer, as in the paper (Algorithm 1):

* ``encoder`` q(z|x): DCGAN-style strided conv k4 s2 blocks down to 4x4 -> linear ->
  ``(mu, logvar)``, each (N, latent_dim).
* ``decoder`` p(x|z): the DCGAN :class:`~medgen.models.gan.Generator`, (N, latent_dim) ->
  (N, C, S, S) in (-1, 1) (tanh).
* ``discriminator`` D: the DCGAN :class:`~medgen.models.gan.DCGANDiscriminator`; the output of
  its conv block ``feature_block`` (default: the one before the last) is the learned feature
  space D_l in which reconstructions are compared.

Losses (per sample sums over latent / feature / pixel elements, mean over the batch):

* ``kl`` = L_prior = KL(q(z|x) || N(0, I)) = ½ Σ_k (mu² + exp(logvar) - 1 - logvar).
* ``recon_feature`` = L_llike = ½ Σ (D_l(x) - D_l(x̃))², the negative log-likelihood of a
  unit-variance Gaussian in D's feature space, x̃ = Dec(z), z ~ q(z|x).
* ``recon_pixel`` = Σ |x - x̃| (``pixel_loss: l1``) or ½ Σ (x - x̃)² (``mse``), weighted by
  ``pixel_weight`` (0 = the paper's pure feature-space VAE-GAN; the term is logged either way).
* L_GAN on x (real) versus x̃ and Dec(z_p), z_p ~ N(0, I) (both fake), with logits through
  ``softplus`` as in :mod:`medgen.models.gan`.

Updates per training step, each through ``ctx.backward_and_step``:

1. ``"discriminator"``: L_GAN (bce on x vs x̃ and x_p, the two fake terms averaged so that the
   real and fake halves weigh the same).
2. ``"encoder"``: ``beta_kl · kl + recon_feature + pixel_weight · recon_pixel``.
3. ``"decoder"``: ``gamma · recon_feature + g_adv + pixel_weight · recon_pixel`` with the
   non-saturating generator loss ``g_adv = -log σ(D(x̃)) - log σ(D(x_p))`` (averaged), i.e.
   the paper's ``γ L_llike - L_GAN``. L_llike is not propagated into D (paper §2.2).

Adam (``lr``, ``betas``) for all three; N(0, 0.02) initialisation as in DCGAN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from monai.networks.utils import eval_mode

from medgen.models.adversarial import bce_with_logits, generator_bce_loss
from medgen.models.base import GenerativeModel, StepContext
from medgen.models.gan import DCGANConfig, DCGANDiscriminator, Generator, dcgan_init, dcgan_options, sample_from_prior
from medgen.models.options import GANOptions, check_choice

PIXEL_LOSSES = ("l1", "mse")


@dataclass
class VAEGANConfig(GANOptions):
    """Options of :class:`VAEGAN` (filled from the YAML ``model:`` section): :class:`GANOptions` plus these."""

    batch_norm: bool = True
    feature_block: int = 0  # conv block of D whose output is D_l (1-based); 0 = the one before the last
    beta_kl: float = 1.0  # weight of L_prior in the encoder loss
    gamma: float = 1e-2  # weight of L_llike against L_GAN in the decoder loss
    pixel_weight: float = 0.0  # weight of the pixel reconstruction term (encoder and decoder)
    pixel_loss: str = "l1"  # l1 | mse
    lr: float = 2e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("pixel_loss", self.pixel_loss, PIXEL_LOSSES)
        n_blocks = int(math.log2(self.image_size)) - 2
        if not 0 <= self.feature_block <= n_blocks:
            raise ValueError(f"feature_block must be in [0, {n_blocks}] for image_size {self.image_size}, got {self.feature_block}")
        if self.beta_kl < 0 or self.gamma < 0 or self.pixel_weight < 0:
            raise ValueError("beta_kl, gamma and pixel_weight must be >= 0")


class Encoder(nn.Module):
    """Gaussian q(z|x): (N, C, S, S[, S]) -> (mu, logvar), each (N, latent_dim).

    The conv body is a DCGAN discriminator body (strided conv k4 s2, batch norm, leaky ReLU,
    down to 4x4); one linear layer gives mu and logvar.
    """

    def __init__(self, cfg: DCGANConfig, latent_dim: int) -> None:
        super().__init__()
        trunk = DCGANDiscriminator(cfg)
        self.body = trunk.body
        self.head = nn.Linear(trunk.n_features, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.body(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dims, mean over the batch (>= 0)."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1).mean()


class VAEGAN(GenerativeModel):
    """VAE-GAN with submodules ``encoder``, ``decoder`` and ``discriminator``, optimised by the
    optimizers ``"encoder"``, ``"decoder"`` and ``"discriminator"``."""

    config_class = VAEGANConfig
    kind = "generation"

    def __init__(self, config: VAEGANConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or self.config_class()
        dc = dcgan_options(cfg)
        self.encoder = Encoder(dc, cfg.latent_dim)
        self.decoder = Generator(dc, cfg.latent_dim)
        self.discriminator = DCGANDiscriminator(dc)
        for net in (self.encoder, self.decoder, self.discriminator):
            dcgan_init(net, cfg.init_std)
        n_blocks = int(math.log2(cfg.image_size)) - 2
        # each DCGAN discriminator block is (conv, norm, leaky ReLU): D_l ends after 3·block layers
        self._feature_block = cfg.feature_block or max(n_blocks - 1, 1)

    # -- networks --------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, C, *spatial) -> (mu, logvar), each (N, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, latent_dim) -> images (N, C, *spatial) in (-1, 1)."""
        return self.decoder(z)

    def disc_features(self, x: torch.Tensor) -> torch.Tensor:
        """D_l(x): the flattened output of D's conv block ``feature_block``, (N, F_l)."""
        return self.discriminator.body[: 3 * self._feature_block](x).flatten(1)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + exp(logvar / 2) · ε, ε ~ N(0, I)."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Dec(mu(x)) in eval mode (batch-norm running statistics), (N, C, *spatial)."""
        with eval_mode(self):
            mu, _ = self.encode(x)
            return self.decode(mu)

    @torch.no_grad()
    def sample(self, n: int, *, labels: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images Dec(z), z ~ N(0, temperature² I), decoder in eval mode; (n, C, *spatial)."""
        return sample_from_prior("VAEGAN", self.decoder, self.decode, self.config.latent_dim, n, labels, temperature)

    # -- losses ----------------------------------------------------------------------------
    def feature_recon(self, real: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """L_llike = ½ Σ (D_l(x) - D_l(x̃))², mean over the batch. x and x̃ go through D in one
        batch so that D's batch norm normalises both with the same statistics (separate
        batches would let a constant x̃ match x after normalisation)."""
        n = real.shape[0]
        feats = self.disc_features(torch.cat([real, recon], dim=0)).float()
        return 0.5 * (feats[:n] - feats[n:]).pow(2).sum(dim=1).mean()

    def pixel_recon(self, real: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Σ |x - x̃| (l1) or ½ Σ (x - x̃)² (mse) per sample, mean over the batch."""
        diff = (real.float() - recon.float()).flatten(1)
        if self.config.pixel_loss == "l1":
            return diff.abs().sum(dim=1).mean()
        return 0.5 * diff.pow(2).sum(dim=1).mean()

    # -- engine interface ------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        return {
            name: torch.optim.Adam(getattr(self, name).parameters(), lr=cfg.lr, betas=cfg.betas)
            for name in ("encoder", "decoder", "discriminator")
        }

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """Discriminator, then encoder, then decoder update (Larsen et al. 2016, Algorithm 1)."""
        cfg = self.config
        real = batch["image"]
        n = real.shape[0]
        z_p = torch.randn(n, cfg.latent_dim, device=real.device)

        with ctx.autocast():
            mu, logvar = self.encode(real)
            z = self.reparameterize(mu.float(), logvar.float())
            recon = self.decode(z)
            prior = self.decode(z_p)
            real_logits = self.discriminator(real)
            fake_logits = self.discriminator(torch.cat([recon.detach(), prior.detach()], dim=0))
        d_loss = bce_with_logits(real_logits.float(), 1.0) + bce_with_logits(fake_logits.float(), 0.0)
        d_value = ctx.backward_and_step("d_loss", d_loss, "discriminator")

        # Encoder: the graph real -> z -> recon is still valid (only D has changed so far).
        with ctx.autocast():
            feat = self.feature_recon(real, recon)
        kl = kl_divergence(mu, logvar)
        pixel = self.pixel_recon(real, recon)
        enc_loss = cfg.beta_kl * kl + feat + cfg.pixel_weight * pixel
        ctx.backward_and_step("enc_loss", enc_loss, "encoder")

        # Decoder: a fresh decoder pass, since the encoder backward freed the first graph; z is
        # detached because the encoder has already taken its step.
        with ctx.autocast():
            recon = self.decode(z.detach())
            prior = self.decode(z_p)
            feat_dec = self.feature_recon(real, recon)
            g_logits = self.discriminator(torch.cat([recon, prior], dim=0))
        g_adv = generator_bce_loss(g_logits.float(), "non_saturating")
        pixel_dec = self.pixel_recon(real, recon)
        dec_loss = cfg.gamma * feat_dec + g_adv + cfg.pixel_weight * pixel_dec
        dec_value = ctx.backward_and_step("dec_loss", dec_loss, "decoder")

        return {
            "d_loss": d_value,
            "g_adv": float(g_adv.detach()),
            "kl": float(kl.detach()),
            "recon_feature": float(feat.detach()),
            "recon_pixel": float(pixel.detach()),
            "dec_loss": dec_value,
            "d_real": float(torch.sigmoid(real_logits.detach().float()).mean()),
            "d_fake": float(torch.sigmoid(fake_logits.detach().float()).mean()),
        }
