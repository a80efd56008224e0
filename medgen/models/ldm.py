"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", arXiv:2112.10752) for 2D and 3D images in [-1, 1], built from MONAI's generative blocks.

* Autoencoder: MONAI ``AutoencoderKL``, images (N, C, S, S[, S]) -> latents
  (N, latent_channels, s, s[, s]) with ``s = S / 2**(len(ae_channels) - 1)``, and back. Trained
  with L1 reconstruction + ``kl_weight``·KL(q(z|x) || N(0, I)) (the KL-regularised variant of §3).
* Denoiser: MONAI ``DiffusionModelUNet`` on the scaled latents ``scale_factor · z``, predicting
  the noise ε (DDPM, Ho et al. 2020; linear β schedule, 1000 training steps). Class conditioning
  (an integer modality or lesion label) through the UNet's class embedding, added to the time
  embedding, when ``n_classes > 0``.
* ``scale_factor`` = 1 / std of the latents of the first diffusion batch (§4.3.2 / appendix G),
  so that the diffusion sees latents of roughly unit variance; stored as a buffer (state_dict).
* Sampling: DDIM (Song et al. 2021, η = 0) with ``sample_steps`` steps, deterministic given
  torch's seed, then decoding of ``z / scale_factor`` and clamping to [-1, 1].

Training is one model in two phases driven by the engine's step counter (``ctx.step``, from 1):
steps ``1..ae_steps`` update only the autoencoder (optimizer ``"ae"``), later steps only the UNet
(optimizer ``"unet"``) with the autoencoder frozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from monai.networks.utils import eval_mode
from torch.nn import functional as F

from medgen.models.base import GenerativeModel, StepContext
from medgen.models.cgan import as_labels

NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class LatentDiffusionConfig:
    """Options of :class:`LatentDiffusion` (filled from the YAML ``model:`` section)."""

    spatial_dims: int = 2
    image_size: int = 64  # divisible by 2**(len(ae_channels) - 1 + len(unet_channels) - 1)
    in_channels: int = 1
    n_classes: int = 0  # > 0: conditioned on batch["label"] in [0, n_classes)
    ae_channels: tuple[int, ...] = (32, 64)
    latent_channels: int = 3
    unet_channels: tuple[int, ...] = (32, 64)
    ae_steps: int = 200  # steps 1..ae_steps train the autoencoder, later ones the UNet
    kl_weight: float = 1e-6
    lr_ae: float = 1e-4
    lr_unet: float = 1e-4
    sample_steps: int = 25  # DDIM steps at sampling time

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        self.ae_channels = tuple(int(c) for c in self.ae_channels)  # YAML gives a list
        self.unet_channels = tuple(int(c) for c in self.unet_channels)
        if not self.ae_channels or not self.unet_channels:
            raise ValueError("ae_channels and unet_channels must be non-empty")
        factor = 2 ** (len(self.ae_channels) - 1 + len(self.unet_channels) - 1)
        if self.image_size < factor or self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of {factor} "
                f"(2**(len(ae_channels) - 1) autoencoder and 2**(len(unet_channels) - 1) UNet downsamplings)"
            )
        if self.n_classes < 0:
            raise ValueError(f"n_classes must be >= 0, got {self.n_classes}")
        if self.ae_steps < 0:
            raise ValueError(f"ae_steps must be >= 0, got {self.ae_steps}")
        if not 1 <= self.sample_steps <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"sample_steps must be in [1, {NUM_TRAIN_TIMESTEPS}], got {self.sample_steps}")

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.ae_channels) - 1)


def _groups(channels: tuple[int, ...]) -> int:
    """Largest group count <= 32 dividing every width (MONAI's GroupNorm default is 32, which
    small widths such as 8 or 16 do not allow)."""
    return math.gcd(32, *channels)


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) || N(0, 1)) summed over latent elements, averaged over the batch; (N, ...) -> ()."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1)
    return kl.flatten(1).sum(dim=1).mean()


class LatentDiffusion(GenerativeModel):
    """AutoencoderKL + latent DDPM UNet; submodules ``autoencoder`` and ``unet``, optimizers
    ``"ae"`` and ``"unet"``, buffers ``scale_factor`` and ``scale_factor_set``."""

    config_class = LatentDiffusionConfig
    kind = "generation"
    conditions = frozenset({None, "modality", "slice_bin", "lesion"})  # class labels when n_classes > 0

    def __init__(self, config: LatentDiffusionConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or self.config_class()
        self.batch_keys = ("image", "label") if cfg.n_classes > 0 else ("image",)
        n_ae, n_unet = len(cfg.ae_channels), len(cfg.unet_channels)
        self.autoencoder = AutoencoderKL(
            spatial_dims=cfg.spatial_dims,
            in_channels=cfg.in_channels,
            out_channels=cfg.in_channels,
            channels=cfg.ae_channels,
            latent_channels=cfg.latent_channels,
            num_res_blocks=1,
            attention_levels=(False,) * n_ae,
            norm_num_groups=_groups(cfg.ae_channels),
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
        )
        self.unet = DiffusionModelUNet(
            spatial_dims=cfg.spatial_dims,
            in_channels=cfg.latent_channels,
            out_channels=cfg.latent_channels,
            channels=cfg.unet_channels,
            num_res_blocks=1,
            attention_levels=(False,) * n_unet,
            norm_num_groups=_groups(cfg.unet_channels),
            num_class_embeds=cfg.n_classes if cfg.n_classes > 0 else None,
        )
        # clip_sample off: the ±1 clipping of the predicted x0 is meant for images, not for
        # (scaled) latents, whose values exceed 1 routinely.
        self.train_scheduler = DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, clip_sample=False)
        self.sample_scheduler = DDIMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, clip_sample=False)
        self.register_buffer("scale_factor", torch.tensor(1.0))
        self.register_buffer("scale_factor_set", torch.tensor(False))

    # -- helpers ---------------------------------------------------------------------------
    def _labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        if self.config.n_classes == 0:
            return None
        image = batch["image"]
        return as_labels(batch["label"], image.shape[0], self.config.n_classes, image.device)

    def in_ae_phase(self, step: int) -> bool:
        """True while ``step`` (from 1) belongs to the autoencoder phase."""
        return step <= self.config.ae_steps

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, *spatial) -> scaled latent samples (N, latent_channels, *latent_spatial)."""
        return self.autoencoder.encode_stage_2_inputs(x) * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (N, latent_channels, *latent_spatial) -> images (N, C, *spatial)."""
        return self.autoencoder.decode_stage_2_outputs(z / self.scale_factor)

    def latent_shape(self, n: int) -> tuple[int, ...]:
        cfg = self.config
        return (n, cfg.latent_channels, *([cfg.latent_size] * cfg.spatial_dims))

    # -- engine interface ------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        return {
            "ae": torch.optim.Adam(self.autoencoder.parameters(), lr=cfg.lr_ae),
            "unet": torch.optim.Adam(self.unet.parameters(), lr=cfg.lr_unet),
        }

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """Autoencoder step (``ctx.step <= ae_steps``) or latent ε-prediction step (after)."""
        if self.in_ae_phase(ctx.step):
            return self._autoencoder_step(batch, ctx)
        return self._diffusion_step(batch, ctx)

    def _autoencoder_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        x = batch["image"]
        self.autoencoder.requires_grad_(True)
        with ctx.autocast():
            recon, z_mu, z_sigma = self.autoencoder(x)
        # losses in float32 outside autocast
        recon_loss = F.l1_loss(recon.float(), x.float())
        kl = kl_divergence(z_mu.float(), z_sigma.float())
        ctx.backward_and_step("ae_loss", recon_loss + self.config.kl_weight * kl, "ae")
        return {"recon": float(recon_loss.detach()), "kl": float(kl.detach()), "phase": 1.0}

    @torch.no_grad()
    def _set_scale_factor(self, x: torch.Tensor) -> None:
        """scale_factor = 1 / std of the unscaled latents of ``x`` (done once, then kept)."""
        z = self.autoencoder.encode_stage_2_inputs(x).float()
        self.scale_factor.fill_(1.0 / z.std().clamp_min(1e-8).item())
        self.scale_factor_set.fill_(True)

    def _diffusion_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        x = batch["image"]
        labels = self._labels(batch)
        # frozen from now on ("ae" is no longer stepped); drop its last phase-1 gradients
        self.autoencoder.requires_grad_(False)
        self.autoencoder.zero_grad(set_to_none=True)
        if not bool(self.scale_factor_set):
            self._set_scale_factor(x)
        # Equivalent of monai.inferers.LatentDiffusionInferer.__call__ (encode, scale, noise,
        # denoise), written out because the inferer passes conditioning only as cross-attention
        # context, not as the UNet's class_labels.
        with torch.no_grad(), ctx.autocast():
            z = self.encode(x)
        z = z.float()
        noise = torch.randn_like(z)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (z.shape[0],), device=z.device).long()
        noisy = self.train_scheduler.add_noise(original_samples=z, noise=noise, timesteps=t)
        with ctx.autocast():
            eps = self.unet(noisy, timesteps=t, class_labels=labels)
        loss = F.mse_loss(eps.float(), noise)
        value = ctx.backward_and_step("diffusion", loss, "unet")
        return {"diffusion": value, "phase": 2.0}

    @torch.no_grad()
    def sample(self, n: int, *, labels: torch.Tensor | int | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images (n, C, *spatial) in [-1, 1] by DDIM (η = 0, ``sample_steps`` steps) in latent
        space. Conditional models take ``labels`` ((n,) ints or one int; uniformly random classes
        if None); ``temperature`` scales the initial latent noise."""
        cfg = self.config
        device = self.scale_factor.device
        if cfg.n_classes == 0:
            if labels is not None:
                raise ValueError("this latent diffusion model is unconditional (n_classes = 0); labels must be None")
            y = None
        elif labels is None:
            y = torch.randint(0, cfg.n_classes, (n,), device=device)
        else:
            y = as_labels(labels, n, cfg.n_classes, device)
        with eval_mode(self):
            # Equivalent of LatentDiffusionInferer.sample with class labels (see _diffusion_step).
            z = temperature * torch.randn(self.latent_shape(n), device=device)
            scheduler = self.sample_scheduler
            scheduler.set_timesteps(cfg.sample_steps, device=device)
            for t in scheduler.timesteps:
                timesteps = torch.full((n,), int(t), device=device, dtype=torch.long)
                eps = self.unet(z, timesteps=timesteps, class_labels=y).float()
                z, _ = scheduler.step(eps, int(t), z)
            return self.decode(z).clamp(-1.0, 1.0)
