"""Deterministic training mode (``train.deterministic: true``).

What the engine always does, deterministic or not: the global RNGs are seeded from
``train.seed`` (+ rank), the data order is a function of (seed, epoch), and DataLoader workers
take their torch, numpy and ``random`` seeds from a loader generator reseeded per (seed, epoch,
rank). So on a CPU, two runs of one config on one machine give the same weights already.

What this mode adds, for the kernels that are not reproducible by default (mostly on CUDA):

* ``torch.use_deterministic_algorithms(True, warn_only=True)``: every op with a deterministic
  implementation uses it; an op that has none (e.g. some CUDA scatter/index ops, adaptive pooling
  backward) runs its usual kernel and torch *states it* with a ``UserWarning`` naming the op, in
  the training log, instead of stopping the run.
* cuDNN: ``deterministic = True`` and ``benchmark = False`` (no autotuned, input-dependent choice).
* ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when unset (cuBLAS needs it for reproducible matmuls; it
  only takes effect if CUDA was not initialised before).

Deterministic kernels can be slower on GPUs; on CPU the cost is nil. Results are reproducible on
the same hardware, software versions and thread count, not across them.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Switch torch to deterministic algorithms for the duration (no-op when not ``enabled``);
    the previous settings are restored on exit."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]
