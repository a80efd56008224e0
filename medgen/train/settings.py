"""Training settings: :class:`TrainConfig`, the source of every training default, and the
config's ``train`` section read into it.

The workflow config's ``train`` section holds TrainConfig's fields (``steps`` for
``max_steps``), the data cache (``cache``: :class:`medgen.data.datasets.CachePolicy`) and the
launcher's resources (``gpus``, ``nodes``). Its schema defaults are checked against these
dataclasses by the tests, ``medgen train`` takes its flag defaults from them, and the workflow
hands each training job its resolved section as one JSON object (``medgen train
--settings``). This module imports nothing heavy, so that ``medgen --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

#: values of ``precision`` (medgen.train.precision: auto = bf16 where the hardware has it)
PRECISIONS = ("auto", "fp32", "bf16")
#: config keys of the ``train`` section whose TrainConfig field has another name
SECTION_NAMES = {"max_steps": "steps"}
#: keys of the ``train`` section for the workflow's launcher (resources), not for the engine
LAUNCH_KEYS = ("gpus", "nodes")
#: the ``train`` section's key of the data cache settings
CACHE_KEY = "cache"


@dataclass
class TrainConfig:
    """Engine settings (model and data settings live in the config snapshot)."""

    out_dir: Path
    max_steps: int = 2000
    batch_size: int = 16  # per rank
    seed: int = 0
    device: str = "auto"  # auto -> cuda (cuda:<LOCAL_RANK> under torchrun) if available, else cpu
    amp: bool = True  # False forces fp32 whatever ``precision`` says
    precision: str = "auto"  # auto | fp32 | bf16 (medgen.train.precision: auto = bf16 where the hardware has it)
    compile: bool = False  # torch.compile each of the model's networks in place
    ckpt_every: int = 200  # steps; a checkpoint is also written at max_steps
    log_every: int = 10  # steps between scalar log points (losses averaged over the interval)
    image_every: int = 500  # steps between sample grids (0 disables); also at max_steps
    ema_decay: float | None = 0.999  # EMA of the parameters, used for sampling and model.pt
    grad_clip: float | None = None  # max global grad norm per optimizer step
    num_workers: int = 0
    val_every: int = 0  # steps between validations (0: none); the best validated weights go to model.pt
    deterministic: bool = False  # deterministic algorithms where torch has them (see deterministic_mode)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        for name in ("max_steps", "batch_size", "ckpt_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.val_every < 0:
            raise ValueError(f"TrainConfig.val_every must be >= 0 (0 disables validation), got {self.val_every}")


def section_key(field: str) -> str:
    """The ``train`` section's key of a TrainConfig field."""
    return SECTION_NAMES.get(field, field)


def engine_defaults() -> dict[str, Any]:
    """The ``train`` section's engine keys with TrainConfig's defaults (``out_dir`` aside)."""
    return {section_key(f.name): f.default for f in dataclasses.fields(TrainConfig) if f.name != "out_dir"}


def read_section(section: Mapping[str, Any], out_dir: Path | str) -> tuple[TrainConfig, dict[str, Any]]:
    """The TrainConfig of a ``train`` section (missing keys take TrainConfig's defaults) and its
    ``cache`` settings. An ``ema_decay`` of 0 or less (or null) disables the EMA; the launcher's
    keys are ignored. :class:`ValueError` names unknown keys and the valid ones."""
    defaults = engine_defaults()
    unknown = sorted(set(section) - set(defaults) - {CACHE_KEY, *LAUNCH_KEYS})
    if unknown:
        valid = sorted({*defaults, CACHE_KEY, *LAUNCH_KEYS})
        raise ValueError(f"unknown train setting(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(valid)}")
    values = {**defaults, **{k: v for k, v in section.items() if k in defaults}}
    if values["ema_decay"] is not None and values["ema_decay"] <= 0:
        values["ema_decay"] = None
    names = {section_key(f.name): f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(out_dir=Path(out_dir), **{names[k]: v for k, v in values.items()})
    return cfg, dict(section.get(CACHE_KEY) or {})
