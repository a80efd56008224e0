"""The engine's :class:`~medgen.models.base.StepContext`: mixed precision, the non-finite guards
(loss before backward, gradient before the optimizer step), gradient averaging across ranks,
clipping and the optimizer step for one loss term.

Hand-written rather than taken from MONAI's ``GanTrainer``/ignite engines: those own the
update order themselves (one fixed D-then-G recipe), have no per-term NaN/inf guard that names
the step and term before the update, and cannot resume the RNG and data-sampler position
exactly; here the model owns the order and every update goes through this one function.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping

import torch

from medgen.errors import NonFiniteGradientError, NonFiniteLossError
from medgen.train.distributed import DistEnv, any_rank, average_gradients


def amp_dtype_for(device: torch.device, amp: bool) -> torch.dtype | None:
    """Autocast dtype: bf16 on CUDA where supported, else fp16; None (full fp32) off CUDA or if disabled."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def make_scalers(names: list[str], device: torch.device, amp_dtype: torch.dtype | None) -> dict[str, torch.amp.GradScaler]:
    """One loss scaler per optimizer (D and G losses differ in scale); enabled only for fp16."""
    enabled = amp_dtype == torch.float16
    return {name: torch.amp.GradScaler(device.type, enabled=enabled) for name in names}


class EngineStepContext:
    """Implements ``StepContext``; ``step`` is the 1-based number of the step being run."""

    def __init__(
        self,
        optimizers: Mapping[str, torch.optim.Optimizer],
        scalers: Mapping[str, torch.amp.GradScaler],
        *,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        grad_clip: float | None = None,
        env: DistEnv | None = None,
    ) -> None:
        self.optimizers, self.scalers = optimizers, scalers
        self.device = device
        self.amp_dtype = amp_dtype
        self.grad_clip = grad_clip
        self.env = env or DistEnv()
        self.step = 0
        #: gradient norm (before clipping) per optimizer of the current step, when clipping
        self.grad_norms: dict[str, float] = {}

    def autocast(self) -> Any:
        """``torch.autocast`` on CUDA with AMP on; a no-op context otherwise."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def backward_and_step(self, term: str, loss: torch.Tensor, optimizer_name: str) -> float:
        """Guard -> zero_grad -> (scaled) backward -> average over ranks -> clip -> step; returns the loss."""
        optimizer = self._optimizer(optimizer_name)
        value = self._checked_value(term, loss)
        scaler = self.scalers[optimizer_name]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        # averaged while still scaled, so every rank sees the same inf/NaN and skips alike
        average_gradients(params, self.env)
        if not scaler.is_enabled():  # fp16's scaler skips inf/NaN steps itself and lowers its scale
            self._check_gradients(term, value, optimizer_name, params)
        if self.grad_clip is not None:
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            self.grad_norms[optimizer_name] = float(norm)
        scaler.step(optimizer)
        scaler.update()
        return value

    def _optimizer(self, name: str) -> torch.optim.Optimizer:
        try:
            return self.optimizers[name]
        except KeyError:
            raise KeyError(f"unknown optimizer {name!r}; the model configured {sorted(self.optimizers)}") from None

    def _checked_value(self, term: str, loss: torch.Tensor) -> float:
        """The loss as a float; raises :class:`NonFiniteLossError` on every rank if any rank's is NaN/inf."""
        if loss.numel() != 1:
            raise ValueError(f"loss term {term!r} must be a scalar, got shape {tuple(loss.shape)}")
        value = float(loss.detach().float())
        bad_here = not math.isfinite(value)
        if any_rank(bad_here, self.env, self.device):
            raise NonFiniteLossError(self.step, term, value if bad_here else math.nan)
        return value

    def _check_gradients(self, term: str, value: float, optimizer_name: str, params: list[torch.Tensor]) -> None:
        """Raise :class:`NonFiniteGradientError` (before the optimizer step) if any gradient is NaN/inf.

        Runs on the averaged gradients, which are identical on every rank, so all ranks raise alike.
        The gradients are dropped so that nothing can step on them afterwards.
        """
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        finite = torch.stack([torch.isfinite(g).all() for g in grads])
        if bool(finite.all()):  # one device sync per optimizer step
            return
        first = int((~finite).nonzero()[0, 0])
        name = f"parameter {first} of optimizer '{optimizer_name}' (shape {tuple(grads[first].shape)})"
        self._optimizer(optimizer_name).zero_grad(set_to_none=True)
        raise NonFiniteGradientError(self.step, term, value, name)
