"""Glow: generative flow with invertible 1x1 convolutions (Kingma & Dhariwal 2018, arXiv:1807.03039).

Multi-scale architecture (Dinh et al. 2017, RealNVP §3.6): ``levels`` times
(squeeze, ``steps_per_level`` flow steps, split), the last level without a split. Each split
factors out half of the channels under a learned conditional Gaussian prior; the remaining top
latent has a learned per-position Gaussian prior. The layers live in :mod:`medgen.models.flows`
and serve 2D (squeeze 2x2, 1x1 conv) and 3D (squeeze 2x2x2, 1x1x1 conv) alike.

Likelihood and bits per dimension
---------------------------------
Images are in [-1, 1] (width ``R = 2``). With ``n_bins`` set, they are treated as discrete on a
grid of spacing ``Δ = R / n_bins`` and uniformly dequantised, ``x̃ = x + Δ·u``, ``u ~ U(0, 1)^D``.
The loss is the dequantised negative log-likelihood in bits per dimension

    bpd(x) = ( -log p(x̃) + D · log(n_bins / R) ) / ( D · ln 2 ),

with ``D = C·H·W(·depth)`` and ``p`` the flow's density, ``log p(x̃) = log p_Z(f(x̃)) +
log|det ∂f/∂x̃|``. Its expectation over ``u`` upper-bounds ``-log2 P(x) / D`` of the discrete
data (Theis et al. 2016). With ``n_bins = None`` the data are taken as continuous and
``bpd = -log p(x) / (D · ln 2)`` (differential entropy rate in bits).

The flow runs in float32 even inside the engine's autocast region: log-determinants and the
inverse of the 1x1 convolutions are too sensitive for half precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from medgen.models.base import GenerativeModel, StepContext
from medgen.models.flows import ActNorm, FlowStep, Squeeze, SplitPrior, gaussian_log_density


@dataclass
class GlowConfig:
    """Options of :class:`Glow` (filled from the YAML ``model:`` section)."""

    spatial_dims: int = 2
    image_size: int = 64
    in_channels: int = 1
    levels: int = 3  # L
    steps_per_level: int = 16  # K
    hidden_channels: int = 256  # width of the coupling networks
    n_bins: int | None = 256  # None: continuous data, no dequantisation
    lr: float = 1e-3
    warmup_steps: int = 0  # linear learning-rate warm-up (the paper uses one)

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.levels < 1 or self.steps_per_level < 1:
            raise ValueError("levels and steps_per_level must be >= 1")
        if self.image_size % 2**self.levels:
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**levels = {2 ** self.levels}")
        if self.n_bins is not None and self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2 or None, got {self.n_bins}")


class GlowLevel(nn.Module):
    """squeeze -> K flow steps -> (optional) split."""

    def __init__(self, in_channels: int, cfg: GlowConfig, split: bool) -> None:
        super().__init__()
        channels = in_channels * 2**cfg.spatial_dims
        self.squeeze = Squeeze(cfg.spatial_dims)
        self.steps = nn.ModuleList(FlowStep(channels, cfg.hidden_channels, cfg.spatial_dims) for _ in range(cfg.steps_per_level))
        self.split = SplitPrior(channels, cfg.spatial_dims) if split else None
        self.out_channels = channels // 2 if split else channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """x -> (h passed on, z factored out or None, logdet (N,), log p(z | h) (N,))."""
        x, logdet = self.squeeze(x)
        for step in self.steps:
            x, ld = step(x)
            logdet = logdet + ld
        if self.split is None:
            return x, None, logdet, x.new_zeros(x.shape[0])
        h, z, log_p = self.split(x)
        return h, z, logdet, log_p

    def inverse(self, h: torch.Tensor, z: torch.Tensor | None, temperature: float = 1.0) -> torch.Tensor:
        x = self.split.inverse(h, z, temperature) if self.split is not None else h
        for step in reversed(self.steps):
            x = step.inverse(x)
        return self.squeeze.inverse(x)


class Glow(GenerativeModel):
    """Glow for (N, C, S, S) or (N, C, S, S, S) images in [-1, 1].

    ``encode(x) -> (z_list, logdet)`` with ``z_list`` the factored-out latents from the finest
    level to the top latent (last); ``decode(z_list) -> x``; ``log_prob(x)`` (continuous
    density, nats); ``bits_per_dim(x)``; ``sample(n, temperature=T)``.
    """

    config_class = GlowConfig
    kind = "generation"

    def __init__(self, config: GlowConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or GlowConfig()
        levels, channels = [], cfg.in_channels
        for i in range(cfg.levels):
            level = GlowLevel(channels, cfg, split=i < cfg.levels - 1)
            levels.append(level)
            channels = level.out_channels
        self.levels = nn.ModuleList(levels)
        top_size = cfg.image_size // 2**cfg.levels
        top_shape = (1, channels, *([top_size] * cfg.spatial_dims))
        # learned top prior, starting at N(0, I)
        self.top_mean = nn.Parameter(torch.zeros(top_shape))
        self.top_log_std = nn.Parameter(torch.zeros(top_shape))

    # -- the bijection ----------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """x -> (z_list, log|det| (N,), log p_Z(z_list) (N,))."""
        logdet = x.new_zeros(x.shape[0])
        log_prior = x.new_zeros(x.shape[0])
        z_list = []
        h = x
        for level in self.levels:
            h, z, ld, lp = level(h)
            logdet, log_prior = logdet + ld, log_prior + lp
            if z is not None:
                z_list.append(z)
        z_list.append(h)
        log_prior = log_prior + gaussian_log_density(h, self.top_mean, self.top_log_std)
        return z_list, logdet, log_prior

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x (N, C, *spatial) -> (z_list, log|det ∂z/∂x| of shape (N,))."""
        z_list, logdet, _ = self._encode(x)
        return z_list, logdet

    def decode(self, z_list: list[torch.Tensor | None], temperature: float = 1.0) -> torch.Tensor:
        """Inverse of :meth:`encode`. Entries may be None (the top one too), in which case they
        are drawn from their (conditional) prior at ``temperature``; needs ``z_list[-1]``'s
        batch size, so pass at least the top latent or use :meth:`sample`."""
        if len(z_list) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} latents, got {len(z_list)}")
        h = z_list[-1]
        if h is None:
            raise ValueError("the top latent z_list[-1] is required")
        splits = list(z_list[:-1]) + [None]
        for level, z in zip(reversed(self.levels), reversed(splits)):
            h = level.inverse(h, z, temperature)
        return h

    # -- likelihood -------------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous log density log p(x) in nats, shape (N,)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            _, logdet, log_prior = self._encode(x.float())
        return logdet + log_prior

    def dequantize(self, x: torch.Tensor) -> torch.Tensor:
        """x + Δ·u with Δ = 2 / n_bins, u ~ U(0, 1); identity for continuous data."""
        if self.config.n_bins is None:
            return x
        return x + torch.rand_like(x) * (2.0 / self.config.n_bins)

    def bits_per_dim(self, x: torch.Tensor, dequantize: bool = True) -> torch.Tensor:
        """Per-sample bits/dim (N,), the formula of the module docstring."""
        dims = math.prod(x.shape[1:])
        x_in = self.dequantize(x) if dequantize else x
        nll = -self.log_prob(x_in)
        if self.config.n_bins is not None:
            nll = nll + dims * math.log(self.config.n_bins / 2.0)
        return nll / (dims * math.log(2.0))

    # -- engine interface -------------------------------------------------------------------
    def _actnorms(self) -> list[ActNorm]:
        return [m for m in self.modules() if isinstance(m, ActNorm)]

    @torch.no_grad()
    def initialize_from_batch(self, batch: Mapping[str, torch.Tensor]) -> None:
        """ActNorm data-dependent init on one (dequantised) batch; skipped once done (resume)."""
        actnorms = self._actnorms()
        if all(bool(a.initialized) for a in actnorms):
            return
        for a in actnorms:
            a.init_on_next_forward = True
        x = batch["image"].to(self.top_mean.device)
        self.log_prob(self.dequantize(x))

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"flow": torch.optim.Adam(self.parameters(), lr=self.config.lr)}

    def configure_schedulers(self, optimizers: Mapping[str, torch.optim.Optimizer], max_steps: int) -> dict[str, Any]:
        warmup = self.config.warmup_steps
        if warmup <= 0:
            return {}
        return {"flow": torch.optim.lr_scheduler.LambdaLR(optimizers["flow"], lambda step: min(1.0, (step + 1) / warmup))}

    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        with ctx.autocast():
            loss = self.bits_per_dim(batch["image"]).mean()
        return {"bpd": ctx.backward_and_step("bpd", loss, "flow")}

    @torch.no_grad()
    def sample(self, n: int, *, labels: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images (N, C, *spatial) clamped to [-1, 1]; latents drawn at ``temperature``
        (0 gives the image of the prior means)."""
        if labels is not None:
            raise ValueError("Glow is unconditional; labels must be None")
        top = self.top_mean + temperature * torch.exp(self.top_log_std) * torch.randn(
            n, *self.top_mean.shape[1:], device=self.top_mean.device
        )
        z_list: list[torch.Tensor | None] = [None] * (len(self.levels) - 1) + [top]
        with torch.autocast(device_type=top.device.type, enabled=False):
            x = self.decode(z_list, temperature)
        return x.clamp(-1.0, 1.0)
