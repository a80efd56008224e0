"""What every generative model offers the one training engine.

A model owns its networks, its losses and the order of its updates (a GAN alternates D and G,
a flow takes one likelihood step); the engine owns everything around them: device, mixed
precision, data-parallel wrapping, checkpoints, resume, logging and the non-finite-loss guard.
The engine hands each step a :class:`StepContext`; a model never calls ``loss.backward()`` or
``optimizer.step()`` itself, so that AMP scaling and the guard apply to every update.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping, Protocol

import torch
from torch import nn


#: what a model does: sample images (``generation``), map a source image to a target image
#: (``translation``), or generate images from label maps (``label_map``, a generation task with
#: ``condition: label_map``)
KINDS = ("generation", "translation", "label_map")

#: the task conditions a model may declare: none, a class label (``modality``, ``slice_bin``,
#: ``lesion``: an integer ``batch["label"]``) or a tissue label map (``label_map``: ``batch["labels"]``)
CONDITIONS: tuple[str | None, ...] = (None, "modality", "slice_bin", "lesion", "label_map")


class StepContext(Protocol):
    """Provided by the engine to :meth:`GenerativeModel.training_step`."""

    step: int
    device: torch.device

    def autocast(self) -> Any:
        """Context manager for the forward pass (mixed precision on CUDA when enabled)."""

    def backward_and_step(self, term: str, loss: torch.Tensor, optimizer_name: str) -> float:
        """Check ``loss`` is finite (else raise :class:`~medgen.errors.NonFiniteLossError` naming ``term``),
        zero the optimizer's gradients, backpropagate (AMP-scaled), clip if configured, step
        the optimizer and return the loss as a float."""


class GenerativeModel(nn.Module, abc.ABC):
    """Base class of every model in the registry (Glow, GAN, cGAN, CycleGAN, ...).

    Subclasses keep every network as a submodule, so ``state_dict()`` holds them all, and name
    their optimizers in :meth:`configure_optimizers`. Each declares what it is in the class
    attributes below (``kind`` always; ``paired`` and ``conditions`` where they differ from the
    defaults: unpaired, no condition); every list of models by kind elsewhere is derived from them
    through the registry (:mod:`medgen.models.registry`).
    """

    #: the model's options (a dataclass; ``build_model`` fills it from the config and refuses unknown names)
    config_class: ClassVar[type]
    #: one of :data:`KINDS`
    kind: ClassVar[str] = "generation"
    #: a translation model trained on registered (source, target) pairs; False: unpaired targets
    paired: ClassVar[bool] = False
    #: the task conditions (of :data:`CONDITIONS`) the model can be trained with
    conditions: ClassVar[frozenset[str | None]] = frozenset({None})
    #: keys of the batch dict the model reads (e.g. ``("image",)`` or ``("image", "label")``)
    batch_keys: tuple[str, ...] = ("image",)

    @abc.abstractmethod
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimizers, e.g. ``{"g": Adam(...), "d": Adam(...)}``."""

    def configure_schedulers(self, optimizers: Mapping[str, torch.optim.Optimizer], max_steps: int) -> dict[str, Any]:
        """Named LR schedulers stepped once per training step (default: none)."""
        return {}

    @abc.abstractmethod
    def training_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        """One optimisation step on ``batch``; returns the named loss values for logging."""

    @torch.no_grad()
    def sample(self, n: int, *, labels: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """``n`` images (N, C, *spatial) in the normalised data range; generative models override."""
        raise NotImplementedError(f"{type(self).__name__} does not sample unconditionally")

    def initialize_from_batch(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Data-dependent initialisation before the first step (e.g. Glow's ActNorm); default none."""
