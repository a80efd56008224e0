"""The adversarial losses of every GAN in medgen, under one vocabulary, and the two players' optimizers.

Kinds (the canonical name first; the alias is accepted wherever a model takes a loss name):

* ``bce`` (alias ``vanilla``; Goodfellow et al. 2014): binary cross-entropy on the logits l,
  written as ``mean[softplus(l) - t·l]``. D: ``BCE(D(x), real_label) + BCE(D(G(z)), 0)``.
  G: ``-log σ(D(G(z)))`` (``g_form="non_saturating"``, default) or ``log(1 - σ(D(G(z))))``
  (``"minimax"``, the original game). Hand-written rather than MONAI's ``PatchAdversarialLoss
  (criterion="bce")`` (sigmoid + ``BCELoss``), which clamps at saturation, cannot express the
  minimax form, and is refused by CUDA autocast.
* ``least_squares`` (alias ``lsgan``; Mao et al. 2017): D: ``mean (D(x) - real_label)² +
  mean D(G(z))²``, G: ``mean (D(G(z)) - 1)²``, on the raw logits: the numbers of MONAI's
  ``PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)``.
* ``hinge`` (Lim & Ye 2017; Miyato et al. 2018; SPADE, Park et al. 2019), on the raw logits:
  D: ``mean relu(1 - D(x)) + mean relu(1 + D(G(z)))``, G: ``-mean D(G(z))``. This is *not*
  MONAI's ``PatchAdversarialLoss(criterion="hinge")``, which applies the hinge to ``tanh`` of
  the logits (a bounded loss whose margin is never reached, so it never switches off).

Logits may be one tensor or a list of tensors, one per discriminator scale (SPADE); the loss is
then the mean over the scales. Every term is computed in float32, outside autocast regions.
``d_weight`` scales the D loss (pix2pix and CycleGAN halve it to slow D relative to G).
"""

from __future__ import annotations

from typing import Iterable, Sequence, Union

import torch
from torch.nn import functional as F

ADVERSARIAL_LOSSES = ("bce", "least_squares", "hinge")
ALIASES = {"vanilla": "bce", "lsgan": "least_squares"}
G_FORMS = ("non_saturating", "minimax")

Logits = Union[torch.Tensor, Sequence[torch.Tensor]]


def adversarial_loss_kind(option: str, value: str, allowed: Sequence[str] = ADVERSARIAL_LOSSES) -> str:
    """The canonical kind of loss name ``value`` (an alias is resolved); ValueError naming the
    option ``option`` and the accepted names unless the kind is one of ``allowed``."""
    kind = ALIASES.get(value, value)
    if kind not in allowed:
        names = [*allowed, *(alias for alias, target in ALIASES.items() if target in allowed)]
        raise ValueError(f"{option} must be one of {', '.join(names)}; got {value!r}")
    return kind


def bce_with_logits(logits: torch.Tensor, target: float) -> torch.Tensor:
    """mean[-t log σ(l) - (1 - t) log(1 - σ(l))] = mean[softplus(l) - t·l]."""
    return (F.softplus(logits) - target * logits).mean()


def generator_bce_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Minimax: minimise mean log(1 - σ(l)) = -softplus(l); non-saturating: -log σ(l) = softplus(-l)."""
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()
    return F.softplus(-fake_logits).mean()


class AdversarialLoss:
    """D and G losses of one kind (see the module docstring) on discriminator logits.

    ``real_label`` < 1 gives one-sided label smoothing of D's real target (Salimans et al. 2016;
    ``bce`` and ``least_squares`` only); ``g_form`` picks the ``bce`` generator loss.
    """

    def __init__(self, kind: str, *, real_label: float = 1.0, g_form: str = "non_saturating", d_weight: float = 1.0) -> None:
        self.kind = adversarial_loss_kind("adversarial loss", kind)
        if g_form not in G_FORMS:
            raise ValueError(f"g_form must be one of {', '.join(G_FORMS)}; got {g_form!r}")
        if g_form == "minimax" and self.kind != "bce":
            raise ValueError("the minimax generator loss is defined for the bce loss only")
        if real_label != 1.0 and self.kind == "hinge":
            raise ValueError("label smoothing does not apply to the hinge loss")
        self.real_label, self.g_form, self.d_weight = real_label, g_form, d_weight

    def d_loss(self, real_logits: Logits, fake_logits: Logits) -> torch.Tensor:
        """D's loss on the logits of real and of (detached) fake inputs."""
        if not isinstance(real_logits, torch.Tensor):
            return torch.stack([self.d_loss(r, f) for r, f in zip(real_logits, fake_logits)]).mean()
        real, fake = real_logits.float(), fake_logits.float()
        if self.kind == "bce":
            total = bce_with_logits(real, self.real_label) + bce_with_logits(fake, 0.0)
        elif self.kind == "least_squares":
            total = F.mse_loss(real, torch.full_like(real, self.real_label)) + F.mse_loss(fake, torch.zeros_like(fake))
        else:
            total = F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        return self.d_weight * total

    def g_loss(self, fake_logits: Logits) -> torch.Tensor:
        """G's loss on D's logits of its (not detached) fakes."""
        if not isinstance(fake_logits, torch.Tensor):
            return torch.stack([self.g_loss(f) for f in fake_logits]).mean()
        fake = fake_logits.float()
        if self.kind == "bce":
            return generator_bce_loss(fake, self.g_form)
        if self.kind == "least_squares":
            return F.mse_loss(fake, torch.ones_like(fake))
        return -fake.mean()

    def score(self, logits: torch.Tensor) -> float:
        """Logged D output: the mean probability for ``bce``, the mean raw logit otherwise."""
        logits = logits.detach().float()
        return float(torch.sigmoid(logits).mean() if self.kind == "bce" else logits.mean())


def gan_optimizers(
    g_params: Iterable[torch.nn.Parameter], d_params: Iterable[torch.nn.Parameter], *, lr_g: float, lr_d: float, betas: tuple[float, float]
) -> dict[str, torch.optim.Optimizer]:
    """The two players' Adam optimizers, named ``"g"`` and ``"d"`` as the engine expects."""
    return {"g": torch.optim.Adam(g_params, lr=lr_g, betas=betas), "d": torch.optim.Adam(d_params, lr=lr_d, betas=betas)}
