"""Checkpoint files: atomic writes, safe (weights-only) loads and RNG state capture/restore.

A checkpoint is a plain dict of tensors and Python builtins so that it loads with
``torch.load(..., weights_only=True)``: nothing in it can execute code when read. The RNG states
are stored in that form too (numpy's state as a list of ints, torch's as uint8 tensors).
"""

from __future__ import annotations

import pickle
import random
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgen.io.atomic import TMP_SUFFIX as _TMP_SUFFIX
from medgen.io.atomic import atomic_write_with

CHECKPOINT_NAME = "checkpoint.pt"
FINAL_NAME = "model.pt"
FORMAT = "medgen-checkpoint"
FINAL_FORMAT = "medgen-model"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used (not a medgen file, refused by weights-only loading, ...)."""


# --------------------------------------------------------------------------------------- writing
def atomic_save(obj: Any, path: Path | str) -> Path:
    """``torch.save`` to a temp file beside ``path``, fsync it, then ``os.replace`` it into place.

    A crash or kill at any moment leaves either the previous ``path`` or the new one, never a
    partial file under that name; a killed write leaves only a hidden ``.<name>.*.tmp`` file,
    which no load reads and :func:`remove_stale_temps` deletes.
    """
    return atomic_write_with(path, lambda fh: torch.save(obj, fh), durable=True)


def remove_stale_temps(path: Path | str) -> list[Path]:
    """Delete temp files a killed :func:`atomic_save` of ``path`` left behind; returns them."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


# --------------------------------------------------------------------------------------- reading
def load_checkpoint(path: Path | str, *, map_location: str | torch.device = "cpu", expect: str = FORMAT) -> dict[str, Any]:
    """Load a medgen file with ``weights_only=True``; :class:`CheckpointError` if it is not one."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} is not a medgen checkpoint or was written by untrusted code: weights-only loading "
            f"refused it ({_first_line(exc)}). medgen never unpickles arbitrary objects. If this is a run "
            f"folder you want to restart, move or delete {path.name} (or choose another output folder); "
            f"if you wrote the file yourself and trust it, re-save it as a plain dict of tensors."
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path} is unreadable or truncated ({_first_line(exc)}); move or delete it and restart") from exc
    if not isinstance(obj, dict) or obj.get("format") != expect:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a medgen {expect!r} file (found {found!r}); move or delete it, or choose another output folder")
    if int(obj.get("version", -1)) > VERSION:
        raise CheckpointError(f"{path} was written by a newer medgen (format version {obj['version']} > {VERSION}); upgrade medgen")
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------ RNG
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch-CPU and (if present) every CUDA generator, as weights-only types."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), [int(x) for x in internal], gauss],
        "numpy": [str(np_name), np_keys.astype(np.int64).tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only where this process has the devices)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states[: torch.cuda.device_count()]])


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -------------------------------------------------------------------------------------- helpers
def plain(value: Any) -> Any:
    """``value`` as weights-only-loadable builtins (dataclasses -> dicts, Paths -> str, tuples kept)."""
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
