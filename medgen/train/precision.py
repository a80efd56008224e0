"""Which arithmetic a training run uses: ``train.precision: auto | fp32 | bf16``.

``auto`` picks bf16 autocast where the hardware runs bf16 faster than fp32, else fp32:

* CUDA: bf16 where the GPU supports it (Ampere and later), else fp16 autocast + loss scaling;
* CPU: bf16 only when the CPU reports native bf16 arithmetic (``avx512_bf16`` or AMX
  ``amx_bf16`` in ``/proc/cpuinfo``). Without them oneDNN emulates bf16 and a training step is
  far slower than in fp32 (a CUT step at 64 px took 30-40x longer on an AVX2-only CPU), so
  ``auto`` keeps fp32 there; ``bf16`` can still be forced.

Under bf16 autocast the parameters, optimizer states and gradients stay fp32 (only the
autocast-listed ops such as convolutions and matmuls run in bf16), so checkpoints are the same
format in every precision and no loss scaling is needed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from medgen.train.settings import PRECISIONS  # noqa: F401 - the one list of precision values
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 CPU flags this machine reports (empty where none, or off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return tuple(f for f in _CPU_BF16_FLAGS if f in flags)
    return ()


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 units (``avx512_bf16`` or AMX), where bf16 autocast pays off."""
    return bool(cpu_bf16_flags())


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; None means plain fp32 (no autocast).

    ``auto``: bf16 on CUDA with bf16 support (fp16 on older GPUs) and on CPUs with native bf16,
    else fp32. ``bf16``: bf16 on any device (on CUDA without bf16 support it is an error).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if precision == "bf16" and not bf16:
            raise ValueError(f"train.precision: bf16 requested but {torch.cuda.get_device_name(device)} has no bf16 support; use auto or fp32")
        return torch.bfloat16 if bf16 else torch.float16
    if device.type == "cpu":
        if precision == "bf16" or cpu_has_native_bf16():
            return torch.bfloat16
        return None
    return torch.bfloat16 if precision == "bf16" else None


def describe(dtype: torch.dtype | None) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` for logs and benchmark tables."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
