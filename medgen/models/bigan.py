"""BiGAN / ALI (Donahue, Krähenbühl & Darrell 2017, "Adversarial Feature Learning",
arXiv:1605.09782; Dumoulin et al. 2017, "Adversarially Learned Inference", arXiv:1606.00704)
for 2D (and 3D) images in [-1, 1].

* ``generator`` G: the DCGAN :class:`~medgen.models.gan.Generator`, z (N, latent_dim) ->
  x (N, C, S, S) in (-1, 1).
* ``encoder`` E: deterministic, a DCGAN conv body (strided conv k4 s2 down to 4x4) + linear,
  x -> z (N, latent_dim).
* ``discriminator`` D(x, z): conv features of x (DCGAN discriminator body, flattened)
  concatenated with an MLP embedding of z, then an MLP -> one logit (N, 1).

D learns to tell the pairs (x, E(x)), x from the data, from (G(z), z), z ~ N(0, I):
``d_loss = -log σ(D(x, E(x))) - log(1 - σ(D(G(z), z)))``. G and E are trained jointly
(optimizer ``"ge"``) with the non-saturating form of the inverted labels:
``ge_loss = -log(1 - σ(D(x, E(x)))) - log σ(D(G(z), z))``. At the optimum E = G⁻¹ (BiGAN
Theorem 2), which is what :meth:`BiGAN.encode` is for.

Adam (lr 2e-4, betas (0.5, 0.999)) and N(0, 0.02) initialisation as in DCGAN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from medgen.models.adversarial import bce_with_logits
from medgen.models.base import GenerativeModel, StepContext
from medgen.models.gan import DCGANConfig, DCGANDiscriminator, Generator, dcgan_init, dcgan_options, sample_from_prior
from medgen.models.options import GANOptions


@dataclass
class BiGANConfig(GANOptions):
    """Options of :class:`BiGAN` (filled from the YAML ``model:`` section): :class:`GANOptions` plus these."""

    image_size: int = 32  # power of two, >= 8
    latent_dim: int = 32
    z_hidden: int = 256  # width of D's MLP on z and of its joint MLP
    batch_norm: bool = True  # generator and encoder
    d_dropout: float = 0.2  # dropout in D's MLPs (ALI uses dropout in D instead of batch norm)
    leaky_slope: float = 0.2
    lr: float = 2e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.d_dropout < 1.0:
            raise ValueError(f"d_dropout must be in [0, 1), got {self.d_dropout}")


class Encoder(nn.Module):
    """E: (N, C, S, S[, S]) -> z (N, latent_dim); a DCGAN discriminator body + linear."""

    def __init__(self, cfg: DCGANConfig, latent_dim: int) -> None:
        super().__init__()
        trunk = DCGANDiscriminator(cfg)
        self.body = trunk.body
        self.head = nn.Linear(trunk.n_features, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


class JointDiscriminator(nn.Module):
    """D(x, z): x (N, C, S, S[, S]) and z (N, latent_dim) -> logit (N, 1).

    The x branch is a DCGAN discriminator body without batch norm: D scores real and fake
    pairs in separate batches, and batch statistics of one kind of pair would leak into the
    score of each. Dropout in the MLPs follows ALI.
    """

    def __init__(self, cfg: BiGANConfig) -> None:
        super().__init__()
        trunk = DCGANDiscriminator(dcgan_options(cfg, batch_norm=False))
        self.x_net = trunk.body
        act = lambda: nn.LeakyReLU(cfg.leaky_slope)  # noqa: E731
        self.z_net = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.z_hidden), act(), nn.Dropout(cfg.d_dropout),
            nn.Linear(cfg.z_hidden, cfg.z_hidden), act(), nn.Dropout(cfg.d_dropout),
        )
        self.joint = nn.Sequential(
            nn.Linear(trunk.n_features + cfg.z_hidden, cfg.z_hidden), act(), nn.Dropout(cfg.d_dropout),
            nn.Linear(cfg.z_hidden, 1),
        )

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.joint(torch.cat([self.x_net(x).flatten(1), self.z_net(z)], dim=1))


class BiGAN(GenerativeModel):
    """BiGAN / ALI with submodules ``generator``, ``encoder`` and ``discriminator``; optimizers
    ``"ge"`` (generator and encoder, jointly) and ``"d"``."""

    config_class = BiGANConfig
    kind = "generation"

    def __init__(self, config: BiGANConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or self.config_class()
        self.generator = Generator(dcgan_options(cfg), cfg.latent_dim)
        self.encoder = Encoder(dcgan_options(cfg), cfg.latent_dim)
        self.discriminator = JointDiscriminator(cfg)
        for net in (self.generator, self.encoder, self.discriminator):
            dcgan_init(net, cfg.init_std)

    # -- networks --------------------------------------------------------------------------
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """G: z (N, latent_dim) -> images (N, C, *spatial) in (-1, 1)."""
        return self.generator(z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """E: images (N, C, *spatial) -> z (N, latent_dim)."""
        return self.encoder(x)

    def discriminate(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """D(x, z) -> logits (N, 1)."""
        return self.discriminator(x, z)

    @torch.no_grad()
    def sample(self, n: int, *, labels: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images G(z), z ~ N(0, temperature² I), generator in eval mode; (n, C, *spatial)."""
        return sample_from_prior("BiGAN", self.generator, self.generate, self.config.latent_dim, n, labels, temperature)

    # -- engine interface ------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        ge_params = list(self.generator.parameters()) + list(self.encoder.parameters())
        return {
            "ge": torch.optim.Adam(ge_params, lr=cfg.lr, betas=cfg.betas),
            "d": torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr, betas=cfg.betas),
        }

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """One D update on detached pairs, then one joint G/E update through the updated D."""
        real = batch["image"]
        z = torch.randn(real.shape[0], self.config.latent_dim, device=real.device)
        with ctx.autocast():
            z_real = self.encode(real)
            x_fake = self.generate(z)
            real_logits = self.discriminate(real, z_real.detach())
            fake_logits = self.discriminate(x_fake.detach(), z)
        d_loss = bce_with_logits(real_logits.float(), 1.0) + bce_with_logits(fake_logits.float(), 0.0)
        d_value = ctx.backward_and_step("d_loss", d_loss, "d")

        # G and E have not changed, so z_real and x_fake still carry their graphs.
        with ctx.autocast():
            ge_real = self.discriminate(real, z_real)
            ge_fake = self.discriminate(x_fake, z)
        # non-saturating with inverted labels: -log(1 - σ(l_real)) - log σ(l_fake)
        ge_loss = F.softplus(ge_real.float()).mean() + F.softplus(-ge_fake.float()).mean()
        ge_value = ctx.backward_and_step("ge_loss", ge_loss, "ge")
        return {
            "d_loss": d_value,
            "ge_loss": ge_value,
            "d_real": float(torch.sigmoid(real_logits.detach().float()).mean()),
            "d_fake": float(torch.sigmoid(fake_logits.detach().float()).mean()),
        }
