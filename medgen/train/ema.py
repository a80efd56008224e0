"""Exponential moving average (EMA) of a model's weights, used for sampling and the final model.

Hand-written rather than ``torch.optim.swa_utils.AveragedModel`` because that keeps a deep copy
of the whole module (a second set of networks, optimiser-free but with hooks, compiled wrappers
and all) and its ``state_dict`` is tied to the copy's structure; here the shadow is a flat
``{name: tensor}`` dict keyed like ``model.state_dict()``, so it drops straight into a
checkpoint, into ``model.load_state_dict`` for inference, and loads with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn


class EMA:
    """Shadow copy of ``model``'s floating-point parameters, averaged after every step.

    ``shadow <- d * shadow + (1 - d) * param`` with ``d = min(decay, (1 + n) / (10 + n))`` after
    the ``n``-th update: the warm-up keeps early samples from being dominated by the random
    initial weights in short runs. Buffers (e.g. BatchNorm running stats) are copied, not
    averaged: they describe the live weights, and the engine re-estimates batch-norm statistics for
    the averaged ones (:mod:`medgen.train.batch_norm`). Shadow tensors live on the model's device,
    in float32 for half-precision weights.
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {}
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Restart the average from ``model``'s current weights (e.g. after data-dependent init)."""
        self.num_updates = 0
        self.shadow = {name: _detached_copy(t) for name, t in _averaged(model)}
        self.shadow.update({name: t.detach().clone() for name, t in _copied(model)})

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average; copy its buffers."""
        d = self.current_decay()
        for name, param in _averaged(model):
            self.shadow[name].lerp_(param.detach().to(self.shadow[name].dtype), 1.0 - d)
        for name, buf in _copied(model):
            self.shadow[name].copy_(buf)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (overwrites its parameters and buffers)."""
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        for name, value in self.shadow.items():
            target = params.get(name, buffers.get(name))
            if target is not None:
                target.copy_(value)

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights into ``model`` (for sampling); restore them after."""
        backup = {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, t in [*model.named_parameters(), *model.named_buffers()]:
                    t.copy_(backup[name])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]} ... (was it written for another model?)")
        self.decay = float(state["decay"])
        self.warmup = bool(state.get("warmup", True))
        self.num_updates = int(state["num_updates"])
        with torch.no_grad():
            for name, value in state["shadow"].items():
                if name in self.shadow:
                    self.shadow[name].copy_(value)


def _averaged(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Floating-point parameters: averaged."""
    return ((n, p) for n, p in model.named_parameters() if p.is_floating_point())


def _copied(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Buffers (running stats, counters): copied as they are."""
    return iter(list(model.named_buffers()))


def _detached_copy(t: torch.Tensor) -> torch.Tensor:
    """A float32 copy of half-precision weights; other dtypes keep theirs."""
    dtype = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype
    return t.detach().to(dtype).clone()
