"""What the translation models (pix2pix, CycleGAN, CUT, FastCUT) share beyond their options.

:class:`TranslationModel` owns the config, the adversarial loss (D loss halved, as in
pix2pix/CycleGAN), ``translate`` / ``preview`` with their input checks, and the linear
learning-rate decay of CycleGAN §4 (:func:`linear_decay_schedulers`: torch's ``LambdaLR``
with the decay factor, so the scheduler state holds only numbers). Each model adds its networks
and its training step.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from monai.networks.utils import eval_mode
from torch import nn

from medgen.models.adversarial import AdversarialLoss
from medgen.models.base import GenerativeModel
from medgen.models.discriminators import PatchDiscriminatorLogits
from medgen.models.options import TranslationOptions
from medgen.models.translation_generators import check_image


def linear_decay_factor(step: int, max_steps: int, decay_start: float) -> float:
    """1 up to ``decay_start·max_steps`` steps, then linear to 0 at ``max_steps`` (CycleGAN §4)."""
    start = int(math.floor(decay_start * max_steps))
    if step <= start or max_steps <= start:
        return 1.0
    return max(0.0, (max_steps - step) / (max_steps - start))


def linear_decay_schedulers(optimizers: Mapping[str, torch.optim.Optimizer], max_steps: int, decay_start: float) -> dict[str, Any]:
    """One ``LambdaLR`` per optimizer; the engine steps them once per training step, so after
    ``k`` steps the LR is ``lr·linear_decay_factor(k)`` (state_dict holds only numbers)."""
    return {
        name: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: linear_decay_factor(k, max_steps, decay_start))
        for name, opt in optimizers.items()
    }


class TranslationModel(GenerativeModel):
    """Base of the translation models: batch ``{"source", "target"}`` (N, C, *S) in [-1, 1].

    Subclasses call ``super().__init__(config)``, build their networks and implement
    :meth:`_translator` (the source -> target network). ``sample()`` stays unimplemented (the
    engine then skips sample grids).
    """

    batch_keys = ("source", "target")
    config_class: type[TranslationOptions] = TranslationOptions

    def __init__(self, config: TranslationOptions | None = None) -> None:
        super().__init__()
        self.config = config or self.config_class()
        self.criterion = AdversarialLoss(self.config.gan_loss, d_weight=0.5)

    def patch_discriminator(self, in_channels: int) -> PatchDiscriminatorLogits:
        """The PatchGAN of the config (``ndf``, ``num_layers_d``, ``norm``) on ``in_channels`` inputs."""
        cfg = self.config
        return PatchDiscriminatorLogits(cfg.spatial_dims, in_channels, cfg.ndf, cfg.num_layers_d, cfg.norm)

    def _translator(self) -> nn.Module:
        raise NotImplementedError

    @property
    def divisor(self) -> int:
        """Every spatial size of a translated image must be a multiple of this."""
        return self._translator().divisor

    def configure_schedulers(self, optimizers: Mapping[str, torch.optim.Optimizer], max_steps: int) -> dict[str, Any]:
        return linear_decay_schedulers(optimizers, max_steps, self.config.lr_decay_start)

    def _run_eval(self, net: nn.Module, x: torch.Tensor, channels: int) -> torch.Tensor:
        check_image(x, self.config.spatial_dims, channels, net.divisor)
        with eval_mode(self):
            return net(x)

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        """Source (N, in_channels, *S) -> target domain (N, out_channels, *S) in [-1, 1]; eval mode,
        no grad. Raises ValueError unless every S is divisible by :attr:`divisor`."""
        return self._run_eval(self._translator(), x, self.config.in_channels)

    @torch.no_grad()
    def preview(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logging panel (N, C, H, 3W): source | translate(source) | target side by side, in
        [-1, 1] (first channel of each; 3D volumes show their middle slice along the first axis)."""
        parts = [batch["source"], self.translate(batch["source"]), batch["target"]]
        if self.config.spatial_dims == 3:
            parts = [p[:, :, p.shape[2] // 2] for p in parts]
        return torch.cat([p[:, :1].float() for p in parts], dim=-1)


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze a discriminator while the generator's loss is backpropagated (saves its weight grads)."""
    for p in module.parameters():
        p.requires_grad_(flag)

