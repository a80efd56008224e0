"""Class-conditional GAN: G(z | y) and D(x | y) for an integer label y (a modality, a
slice-position bin, lesion present/absent, ...).

* Generator: the label's learned embedding (``embed_dim``) is concatenated to z
  (Mirza & Osindero 2014) and fed to the DCGAN generator of :mod:`medgen.models.gan`.
* Discriminator: projection discriminator (Miyato & Koyama 2018, arXiv:1802.05637),
  ``D(x, y) = ψ(φ(x)) + <e_y, φ(x)>`` with ``φ`` the DCGAN discriminator's flattened features,
  ``ψ`` its linear head and ``e_y`` a learned class embedding of the feature size (spectrally
  normalised too when ``spectral_norm`` is set). It therefore needs ``discriminator: dcgan``.

Losses, optimizers and the training step are those of :class:`medgen.models.gan.DCGAN`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from medgen.models.gan import DCGAN, DCGANConfig, DCGANDiscriminator, Generator


@dataclass
class ConditionalGANConfig(DCGANConfig):
    """:class:`DCGANConfig` plus the label options."""

    n_classes: int = 2
    embed_dim: int = 32  # generator label embedding, concatenated to z

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")
        if self.discriminator != "dcgan":
            raise ValueError("the conditional GAN's projection discriminator needs discriminator 'dcgan'")


class ConditionalGenerator(nn.Module):
    """(z (N, latent_dim), y (N,)) -> images; y enters as an embedding concatenated to z."""

    def __init__(self, cfg: ConditionalGANConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.n_classes, cfg.embed_dim)
        self.net = Generator(cfg, cfg.latent_dim + cfg.embed_dim)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self.embed(labels).to(z.dtype)], dim=1))


class ProjectionDiscriminator(nn.Module):
    """(x, y) -> logit (N, 1) = ψ(φ(x)) + <e_y, φ(x)>."""

    def __init__(self, cfg: ConditionalGANConfig) -> None:
        super().__init__()
        self.base = DCGANDiscriminator(cfg)
        embed = nn.Embedding(cfg.n_classes, self.base.n_features)
        nn.init.normal_(embed.weight, 0.0, cfg.init_std)  # like the other D weights; N(0, 1) swamps ψ
        self.embed = _spectral_norm(embed) if cfg.spectral_norm else embed

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        phi = self.base.features(x)
        projection = (self.embed(labels).to(phi.dtype) * phi).sum(dim=1, keepdim=True)
        return self.base.head(phi) + projection


def as_labels(labels: torch.Tensor | int | list[int], n: int, n_classes: int, device: torch.device) -> torch.Tensor:
    """Labels as a (n,) long tensor; a scalar is repeated n times. Values must be in [0, n_classes)."""
    y = torch.as_tensor(labels, device=device).long().flatten()
    if y.numel() == 1:
        y = y.expand(n)
    if y.numel() != n:
        raise ValueError(f"expected {n} labels, got {y.numel()}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got {y.min().item()}..{y.max().item()}")
    return y


class ConditionalGAN(DCGAN):
    """DCGAN conditioned on ``batch["label"]`` (integers in [0, n_classes))."""

    batch_keys = ("image", "label")
    config_class = ConditionalGANConfig
    kind = "generation"
    conditions = frozenset({"modality", "slice_bin", "lesion"})
    config: ConditionalGANConfig

    def _build_generator(self, cfg: ConditionalGANConfig) -> nn.Module:
        return ConditionalGenerator(cfg)

    def _build_discriminator(self, cfg: ConditionalGANConfig) -> nn.Module:
        return ProjectionDiscriminator(cfg)

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            raise ValueError("the conditional GAN needs labels")
        return self.generator(z, labels)

    def discriminate(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            raise ValueError("the conditional GAN needs labels")
        return self.discriminator(x, labels)

    def _labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        image = batch["image"]
        return as_labels(batch["label"], image.shape[0], self.config.n_classes, image.device)

    @torch.no_grad()
    def sample(self, n: int, *, labels: torch.Tensor | int | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images for ``labels`` ((n,) ints or one int); uniformly random classes if None."""
        z = self._latents(n, temperature)
        if labels is None:
            y = torch.randint(0, self.config.n_classes, (n,), device=z.device)
        else:
            y = as_labels(labels, n, self.config.n_classes, z.device)
        return self._sample(z, y)

    def sample_with_latents(self, z: torch.Tensor, labels: torch.Tensor | int) -> torch.Tensor:
        """Generator output (eval mode) for given z (N, latent_dim) and labels."""
        with torch.no_grad():
            return self._sample(z, as_labels(labels, z.shape[0], self.config.n_classes, z.device))
