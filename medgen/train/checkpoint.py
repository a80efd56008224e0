"""Checkpoint files: atomic writes, safe (weights-only) loads and RNG state capture/restore.

A checkpoint is a plain dict of tensors and Python builtins so that it loads with
``torch.load(..., weights_only=True)``: nothing in it can execute code when read. The RNG states
are stored in that form too (numpy's state as a list of ints, torch's as uint8 tensors).
"""

from __future__ import annotations

import random
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgen.io.atomic import TMP_SUFFIX as _TMP_SUFFIX
from medgen.io.atomic import atomic_write_with
from medgen.io.torch_load import ModelFileError, safe_load
from medgen.models import artifact

CHECKPOINT_NAME = "checkpoint.pt"
FINAL_NAME = artifact.FILE_NAME  # the trained model; its layout belongs to medgen.models.artifact
FORMAT = artifact.CHECKPOINT_FORMAT
FINAL_FORMAT = artifact.FORMAT
VERSION = 1


#: A checkpoint file cannot be used (not a medgen file, refused by weights-only loading, ...).
CheckpointError = ModelFileError


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
    obj = safe_load(path, what=_KINDS.get(expect, expect), remedy=_REMEDIES.get(expect, ""), map_location=map_location)
    found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
    if found != expect:
        if (found, expect) in _WRONG_KIND:
            raise CheckpointError(f"{path} {_WRONG_KIND[found, expect]}")
        raise CheckpointError(f"{path} is not a medgen {_KINDS.get(expect, expect)} (found {found!r}). {_REMEDIES.get(expect, '')}")
    if int(obj.get("version", -1)) > VERSION:
        raise CheckpointError(f"{path} was written by a newer medgen (format version {obj['version']} > {VERSION}); upgrade medgen")
    return obj


#: What each medgen format is called in messages, and what to do when such a file is unusable.
#: (``model.pt`` files are read by :mod:`medgen.models.artifact`.)
_KINDS = {FORMAT: "training checkpoint"}
_REMEDIES = {
    FORMAT: f"To restart this run from scratch, pass --no-resume or move {CHECKPOINT_NAME} out of the run folder.",
}
_WRONG_KIND = {
    (FINAL_FORMAT, FORMAT): f"is a trained model ({FINAL_NAME}), not a training checkpoint to resume from; "
                            f"move it out of the run folder or pass --no-resume",
}


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
