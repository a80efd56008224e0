"""A minimal :class:`medgen.models.base.StepContext` for model tests (no engine needed)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from medgen.errors import NonFiniteLossError
from medgen.models.base import GenerativeModel


@dataclass
class SimpleStepContext:
    """zero_grad -> backward -> step on named optimizers, no AMP, no clipping."""

    optimizers: Mapping[str, torch.optim.Optimizer]
    step: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def autocast(self) -> Any:
        return contextlib.nullcontext()

    def backward_and_step(self, term: str, loss: torch.Tensor, optimizer_name: str) -> float:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(self.step, term, value)
        optimizer = self.optimizers[optimizer_name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return value


def fit(model: GenerativeModel, batches, steps: int) -> list[dict[str, float]]:
    """Run ``steps`` training steps, drawing batches from the callable ``batches(step)``."""
    ctx = SimpleStepContext(model.configure_optimizers())
    model.train()
    logs = []
    for step in range(steps):
        ctx.step = step
        logs.append(model.training_step(batches(step), ctx))
    return logs
