"""Data-parallel training under ``torchrun``: process group set-up and gradient averaging.

How the model is made data-parallel (and why it is not wrapped in ``DistributedDataParallel``):
every rank holds a full copy of the :class:`~medgen.models.base.GenerativeModel`; parameters
and buffers are broadcast from rank 0 once before training (after any data-dependent init,
e.g. Glow's ActNorm, which would otherwise differ per rank), and the engine's
``backward_and_step`` averages the gradients of exactly the parameters of the optimizer it is
about to step (one flattened all-reduce per dtype) before unscaling, clipping and stepping.
Buffers (BatchNorm running statistics) are re-broadcast from rank 0 after every step, as DDP
does before every forward. The result is DDP's arithmetic (mean of per-rank gradients) with
the same weights on every rank after every step.

DDP's reducer instead assumes each wrapped module runs one forward followed by one backward
that reaches all its used parameters per iteration. The models' own update orders break that:
a GAN's D step runs G forward with grad and detaches its output (G's pending reduction never
completes and the next G forward raises), R1/gradient penalties need double backward, and a
G step's backward fills D's gradients that are then discarded. Averaging per optimizer step
holds whatever order a model uses, keeps ``state_dict`` keys free of ``module.`` prefixes and
needs no change to the models. The cost is that communication does not overlap the backward
pass, which is small for the networks trained here.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: ``world_size`` 1 means no process group."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes checkpoints, logs and images."""
        return self.rank == 0


def env_from_environment() -> DistEnv:
    """Read ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` as set by ``torchrun`` (defaults: single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return DistEnv(rank=rank, local_rank=local, world_size=world)


def resolve_device(requested: str, env: DistEnv) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` if CUDA is available else ``cpu``; ``cuda`` gets the local rank."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", env.local_rank if env.enabled else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def init_process_group(env: DistEnv, device: torch.device, *, timeout_s: float = 1800.0) -> bool:
    """Join the ``torchrun`` process group (NCCL on CUDA, gloo on CPU); True if this call created it."""
    if not env.enabled or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    return True


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


@torch.no_grad()
def broadcast_module(module: nn.Module, env: DistEnv, *, buffers_only: bool = False) -> None:
    """Overwrite every rank's parameters (unless ``buffers_only``) and buffers with rank 0's."""
    if not env.enabled:
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    for t in tensors:
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def average_gradients(params: Iterable[torch.Tensor], env: DistEnv) -> None:
    """Replace each gradient by its mean over ranks (one flattened all-reduce per dtype/device).

    A parameter with no gradient on some rank counts as zero there; it keeps ``grad = None``
    only if no rank produced a gradient, as in single-process training.
    """
    if not env.enabled:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has_grad)
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p, flag in zip(params, has_grad.tolist()):
        if flag == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for members in groups.values():
        flat = torch.cat([p.grad.reshape(-1) for p in members])
        dist.all_reduce(flat)
        flat.div_(env.world_size)
        offset = 0
        for p in members:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (so all ranks stop together)."""
    if not env.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects, e.g. RNG states)."""
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out

