"""SPADE / GauGAN (Park et al. 2019, "Semantic Image Synthesis with Spatially-Adaptive
Normalization", arXiv:1903.07291) for 2D and 3D label-map-to-image synthesis, images in [-1, 1].

Shapes (``S = image_size``, ``K = n_labels``, ``d = spatial_dims``):

* label map ``labels``: (N, 1, S, S[, S]) integer, values ``0 .. K-1``; converted to a one-hot
  segmentation map ``m`` (N, K, S, S[, S]).
* Generator ``G(z, m)``: z (N, latent_dim) -> linear -> (c0, 4, 4[, 4]), c0 = ngf·min(8, S/4); with
  ``latent_dim = 0`` the start is instead a conv k3 of ``m`` downsampled (nearest) to 4x4[x4]
  (the paper's deterministic variant). Then ``log2(S / 4)`` times: 2x nearest upsampling and a
  SPADE residual block, channels halving down to ``ngf`` -> leaky ReLU -> conv k3 -> tanh ->
  (N, in_channels, S, S[, S]).
  A SPADE residual block is ``shortcut(x) + conv3(lrelu(SPADE(conv3(lrelu(SPADE(x, m))), m)))``,
  where ``SPADE(x, m) = norm(x) · (1 + γ(m)) + β(m)`` is MONAI's
  :class:`monai.networks.blocks.spade_norm.SPADE` (parameter-free instance norm, γ and β from
  a small conv net on ``m`` resized to x), and ``shortcut`` is ``conv1(SPADE(x, m))`` when the
  channel count changes (identity otherwise).
* Discriminator: ``num_d`` MONAI :class:`PatchDiscriminator`s (instance norm, optionally spectral
  norm, Miyato et al. 2018) on the concatenation ``[x, m]`` (N, in_channels + K, ...) at scales
  ``1, 1/2, ...`` (average pooling, as in pix2pixHD / SPADE). Each returns its intermediate
  features and patch logits.

Losses (:mod:`medgen.models.adversarial`): ``adversarial_loss: hinge`` (default, as in the paper,
on the raw logits; D: ``relu(1 - D(real)) + relu(1 + D(fake))``, G: ``-D(fake)``) or
``least_squares`` (alias ``lsgan``; Mao et al. 2017), averaged over the scales; plus the
pix2pixHD feature-matching loss: L1 between D's intermediate features on ``[G(z, m), m]`` and on
``[x, m]``, averaged over layers and scales, weighted by ``lambda_fm``.
Adam with TTUR (lr_g 1e-4, lr_d 4e-4, betas (0, 0.999)) as in the paper. The paper's optional
image encoder (VAE style transfer) and perceptual VGG loss are not included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from monai.networks.blocks.spade_norm import SPADE
from monai.networks.layers.factories import Conv, Pool
from monai.networks.nets import PatchDiscriminator
from monai.networks.utils import eval_mode
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from medgen.models.adversarial import AdversarialLoss, adversarial_loss_kind, gan_optimizers
from medgen.models.base import GenerativeModel, StepContext
from medgen.models.gan import dcgan_init
from medgen.models.options import GANOptions

SPADE_ADVERSARIAL_LOSSES = ("hinge", "least_squares")


@dataclass
class SPADEConfig(GANOptions):
    """Options of :class:`SPADEGAN` (filled from the YAML ``model:`` section): :class:`GANOptions` plus these."""

    latent_dim: int = 64  # 0: start from the downsampled label map instead of z
    n_labels: int = 10  # label values 0 .. n_labels - 1
    spade_hidden: int = 64  # channels of the conv net predicting γ and β in each SPADE layer
    num_d: int = 2  # discriminator scales
    patch_layers: int = 3  # layers of each MONAI PatchDiscriminator
    spectral_norm: bool = True  # on the discriminator convolutions
    adversarial_loss: str = "hinge"  # hinge | least_squares (alias: lsgan)
    lambda_fm: float = 10.0
    leaky_slope: float = 0.2
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.999)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_labels < 2:
            raise ValueError(f"n_labels must be >= 2, got {self.n_labels}")
        if self.latent_dim < 0:
            raise ValueError(f"latent_dim must be >= 0, got {self.latent_dim}")
        if self.num_d < 1 or self.patch_layers < 1:
            raise ValueError("num_d and patch_layers must be >= 1")
        # The coarsest discriminator sees image_size / 2**(num_d-1); its PatchDiscriminator
        # downsamples by 2**patch_layers and then loses 1 pixel in each of its two stride-1
        # k4 convs, and instance norm needs > 1 spatial element: >= 4 pixels remain required.
        if self.image_size < 4 * 2 ** (self.num_d - 1 + self.patch_layers):
            raise ValueError(
                f"image_size {self.image_size} is too small for num_d {self.num_d} and patch_layers "
                f"{self.patch_layers}: needs >= 4·2**(num_d - 1 + patch_layers)"
            )
        adversarial_loss_kind("adversarial_loss", self.adversarial_loss, SPADE_ADVERSARIAL_LOSSES)
        if self.lambda_fm < 0:
            raise ValueError(f"lambda_fm must be >= 0, got {self.lambda_fm}")


# -- generator ---------------------------------------------------------------------------------
class SPADEResBlock(nn.Module):
    """SPADE residual block (Park et al. 2019, Fig. 4): (N, c_in, *sp), (N, K, *) -> (N, c_out, *sp)."""

    def __init__(self, c_in: int, c_out: int, cfg: SPADEConfig) -> None:
        super().__init__()
        d, k, hidden = cfg.spatial_dims, cfg.n_labels, cfg.spade_hidden
        c_mid = min(c_in, c_out)
        self.norm_0 = SPADE(k, c_in, spatial_dims=d, hidden_channels=hidden)
        self.conv_0 = Conv[Conv.CONV, d](c_in, c_mid, 3, padding=1)
        self.norm_1 = SPADE(k, c_mid, spatial_dims=d, hidden_channels=hidden)
        self.conv_1 = Conv[Conv.CONV, d](c_mid, c_out, 3, padding=1)
        self.learned_shortcut = c_in != c_out
        if self.learned_shortcut:
            self.norm_s = SPADE(k, c_in, spatial_dims=d, hidden_channels=hidden)
            self.conv_s = Conv[Conv.CONV, d](c_in, c_out, 1, bias=False)
        self.slope = cfg.leaky_slope

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        h = self.conv_0(F.leaky_relu(self.norm_0(x, seg), self.slope))
        h = self.conv_1(F.leaky_relu(self.norm_1(h, seg), self.slope))
        return shortcut + h


class SPADEGeneratorNet(nn.Module):
    """(z (N, latent_dim), one-hot map (N, K, S, S[, S])) -> image (N, C, S, S[, S]) in (-1, 1)."""

    def __init__(self, cfg: SPADEConfig) -> None:
        super().__init__()
        d = cfg.spatial_dims
        self.base_size = 4
        n_up = int(math.log2(cfg.image_size // self.base_size))
        # ngf·8 at 4x4, halving per upsampling down to ngf (never below ngf)
        channels = [cfg.ngf * 2 ** max(min(3, n_up - i), 0) for i in range(n_up + 1)]
        self.spatial_dims = d
        self.base_shape = (channels[0], *([self.base_size] * d))
        if cfg.latent_dim > 0:
            self.head = nn.Linear(cfg.latent_dim, math.prod(self.base_shape))
        else:
            self.head = Conv[Conv.CONV, d](cfg.n_labels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList(SPADEResBlock(c_in, c_out, cfg) for c_in, c_out in zip(channels[:-1], channels[1:]))
        self.out = nn.Sequential(nn.LeakyReLU(cfg.leaky_slope), Conv[Conv.CONV, d](channels[-1], cfg.in_channels, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor | None, seg: torch.Tensor) -> torch.Tensor:
        if isinstance(self.head, nn.Linear):
            h = self.head(z).view(seg.shape[0], *self.base_shape)
        else:
            h = self.head(F.interpolate(seg, size=self.base_shape[1:], mode="nearest"))
        for block in self.blocks:
            # upsample then block, so that the last block already works at full resolution
            h = block(F.interpolate(h, scale_factor=2, mode="nearest"), seg)
        return self.out(h)


# -- discriminator -----------------------------------------------------------------------------
class MultiScaleDiscriminator(nn.Module):
    """``num_d`` PatchDiscriminators on [x, m] average-pooled by 1, 2, 4, ...

    MONAI's ``MultiScalePatchDiscriminator`` instead varies the depth at a single resolution;
    the SPADE / pix2pixHD design (same net, coarser input) is written here. Returns, per scale,
    the list of intermediate features and the patch logits (N, 1, *patches).
    """

    def __init__(self, cfg: SPADEConfig) -> None:
        super().__init__()
        self.pool = Pool[Pool.AVG, cfg.spatial_dims](kernel_size=3, stride=2, padding=1, count_include_pad=False)
        self.nets = nn.ModuleList(
            PatchDiscriminator(
                spatial_dims=cfg.spatial_dims,
                channels=cfg.ndf,
                in_channels=cfg.in_channels + cfg.n_labels,
                num_layers_d=cfg.patch_layers,
                activation=("LEAKYRELU", {"negative_slope": cfg.leaky_slope}),
                norm="INSTANCE",
            )
            for _ in range(cfg.num_d)
        )
        if cfg.spectral_norm:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                    _spectral_norm(m)

    def forward(self, x: torch.Tensor) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        features, logits = [], []
        for i, net in enumerate(self.nets):
            if i > 0:
                x = self.pool(x)
            out = net(x)
            features.append(out[:-1])
            logits.append(out[-1])
        return features, logits


# -- model -------------------------------------------------------------------------------------
class SPADEGAN(GenerativeModel):
    """SPADE label-map-conditioned GAN; submodules ``generator`` and ``discriminator``, optimised
    by the optimizers ``"g"`` and ``"d"``. Batches hold ``image`` (N, C, *sp) in [-1, 1] and
    ``labels`` (N, 1, *sp) integer label maps."""

    batch_keys = ("image", "labels")
    config_class = SPADEConfig
    kind = "label_map"
    conditions = frozenset({"label_map"})

    def __init__(self, config: SPADEConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or self.config_class()
        self.generator = SPADEGeneratorNet(cfg)
        self.discriminator = MultiScaleDiscriminator(cfg)
        dcgan_init(self.generator, cfg.init_std)
        self.adversarial = AdversarialLoss(cfg.adversarial_loss)
        # the discriminator keeps MONAI's PatchDiscriminator init (N(0, 0.02) convs)

    # -- helpers ---------------------------------------------------------------------------
    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        """Integer label map (N, 1, *sp) or (N, *sp) -> float one-hot (N, K, *sp)."""
        d, k = self.config.spatial_dims, self.config.n_labels
        if labels.dim() == d + 2:
            if labels.shape[1] != 1:
                raise ValueError(f"labels must be a (N, 1, *spatial) integer label map, got shape {tuple(labels.shape)}")
            labels = labels[:, 0]
        if labels.dim() != d + 1:
            raise ValueError(f"labels must be a (N, 1, *spatial) integer label map, got shape {tuple(labels.shape)}")
        if labels.is_floating_point():
            labels = labels.round()
        labels = labels.long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"label values must be in 0..{k - 1}, got {int(labels.min())}..{int(labels.max())}")
        return F.one_hot(labels, k).movedim(-1, 1).float()

    def generate(self, z: torch.Tensor | None, seg: torch.Tensor) -> torch.Tensor:
        """z (N, latent_dim) (None when latent_dim = 0), one-hot map (N, K, *sp) -> (N, C, *sp)."""
        return self.generator(z, seg)

    def discriminate(self, x: torch.Tensor, seg: torch.Tensor) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        """Per-scale intermediate features and patch logits of D on [x, m]."""
        return self.discriminator(torch.cat([x, seg.to(x.dtype)], dim=1))

    def _latents(self, n: int, temperature: float, device: torch.device) -> torch.Tensor | None:
        if self.config.latent_dim == 0:
            return None
        return temperature * torch.randn(n, self.config.latent_dim, device=device)

    # -- losses (float32) ------------------------------------------------------------------
    def discriminator_loss(self, real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
        """Mean over the scales of D's adversarial loss (float32)."""
        return self.adversarial.d_loss(real_logits, fake_logits)

    def generator_adv_loss(self, fake_logits: list[torch.Tensor]) -> torch.Tensor:
        """Mean over the scales of G's adversarial loss (float32)."""
        return self.adversarial.g_loss(fake_logits)

    @staticmethod
    def feature_matching_loss(fake_features: list[list[torch.Tensor]], real_features: list[list[torch.Tensor]]) -> torch.Tensor:
        """Mean over scales and layers of L1(φ(fake), φ(real).detach())."""
        terms = [
            F.l1_loss(f.float(), r.detach().float())
            for fs, rs in zip(fake_features, real_features)
            for f, r in zip(fs, rs)
        ]
        return torch.stack(terms).mean()

    # -- engine interface ------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        return gan_optimizers(self.generator.parameters(), self.discriminator.parameters(), lr_g=cfg.lr_g, lr_d=cfg.lr_d, betas=cfg.betas)

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """One D update on (real, G(z, m).detach()), then one G update (adversarial + feature
        matching) through the updated D."""
        real = batch["image"]
        seg = self.one_hot(batch["labels"].to(real.device))
        z = self._latents(real.shape[0], 1.0, real.device)
        with ctx.autocast():
            fake = self.generate(z, seg)
            _, real_logits = self.discriminate(real, seg)
            _, fake_logits = self.discriminate(fake.detach(), seg)
        d_loss = ctx.backward_and_step("d_loss", self.discriminator_loss(real_logits, fake_logits), "d")

        with ctx.autocast():
            # real features from the just-updated D, so both sides of the L1 use the same D
            with torch.no_grad():
                real_features, _ = self.discriminate(real, seg)
            fake_features, g_logits = self.discriminate(fake, seg)
        g_adv = self.generator_adv_loss(g_logits)
        g_fm = self.feature_matching_loss(fake_features, real_features)
        g_loss = ctx.backward_and_step("g_loss", g_adv + self.config.lambda_fm * g_fm, "g")
        return {"d_loss": d_loss, "g_loss": g_loss, "g_adv": float(g_adv.detach()), "g_fm": float(g_fm.detach())}

    @torch.no_grad()
    def sample(self, n: int, *, labels: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images (n, C, *sp) in [-1, 1] for the integer label maps ``labels``
        (n, 1, *sp), required; ``temperature`` scales z."""
        if labels is None:  # the base contract for "cannot sample unconditionally"
            raise NotImplementedError("SPADE synthesises images from label maps: pass labels=(N, 1, *spatial) integer label map")
        s = self.config.image_size
        spatial = tuple(labels.shape[-self.config.spatial_dims :])
        if labels.shape[0] != n:
            raise ValueError(f"labels hold {labels.shape[0]} label maps but n = {n}")
        if spatial != (s,) * self.config.spatial_dims:
            raise ValueError(f"label maps must be {s} per side (image_size), got spatial shape {spatial}")
        device = next(self.generator.parameters()).device
        seg = self.one_hot(labels.to(device))
        with eval_mode(self.generator):
            return self.generate(self._latents(n, temperature, device), seg)
