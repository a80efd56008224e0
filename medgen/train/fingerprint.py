"""What defines a training run, and whether a checkpoint in a run folder belongs to it.

A run's *fingerprint* is everything that changes what training produces: the model and its
options, the task, the split membership, the preprocessing settings, checksums of every
preprocessed file training reads, and the training settings that change the result (batch size,
seed, EMA decay, gradient clipping). The step count is deliberately left out: raising ``--steps``
extends a finished run from its checkpoint instead of starting over. A schedule that is a function
of the total (the translation models' linear decay) is recomputed for the new total from the
restored step: a decay that had reached 0 resumes at the new total's factor, so the extended run is
not the one the new total gives from scratch (README, reruns). Device, precision flags and
logging intervals are left out too: they decide how a run is computed, not what it is trained on.

``checkpoint.pt`` (in its config snapshot) and ``model.pt`` (in its model card) record the fingerprint, and
:func:`check_run_folder` compares it with the run about to start: a checkpoint of another run is
either refused with a message that names what differs, or moved aside (``checkpoint.stale-<n>.pt``)
so that the run starts from scratch. A stale checkpoint is never resumed and never deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from medgen.layout import LABELS_FILE, MASK_FILE, NORMALISATION_JSON
from medgen.train import checkpoint as ckpt

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
#: TrainConfig fields that change the trained weights (``max_steps`` is left out on purpose, see above)
RESULT_TRAIN_KEYS = ("batch_size", "seed", "ema_decay", "grad_clip")
#: files of a run folder that belong to one run and move aside with its checkpoint
RUN_FILES = (ckpt.CHECKPOINT_NAME, ckpt.FINAL_NAME, "log.jsonl")
#: per-subject files of a preprocessed subject that training may read, besides its modalities
_SUBJECT_FILES = (MASK_FILE, LABELS_FILE, NORMALISATION_JSON)


class RunMismatchError(ValueError):
    """A run folder holds the checkpoint of a different run; the message says what differs."""


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def data_checksums(prep_root: Path | str, subjects: Iterable[str], modalities: Sequence[str]) -> dict[str, str]:
    """``{"<subject>/<file>": sha256}`` of the preprocessed files a run reads (missing optional
    files, e.g. labels, are left out)."""
    prep_root = Path(prep_root)
    sums = {}
    for subject in sorted(set(subjects)):
        for name in [f"{m}.nii.gz" for m in modalities] + list(_SUBJECT_FILES):
            path = prep_root / subject / name
            if path.exists():
                sums[f"{subject}/{name}"] = file_sha256(path)
    return sums


def run_fingerprint(
    *,
    model: str,
    options: Mapping[str, Any],
    task: Mapping[str, Any],
    split: Mapping[str, Sequence[str]],
    preprocess: Mapping[str, Any],
    data: Mapping[str, str],
    training: Mapping[str, Any],
    extra_data: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The fingerprint of a run: ``{"version", "digest", "parts"}``; ``digest`` is the SHA-256
    of the canonical JSON of ``parts`` (each argument, as weights-only-loadable builtins)."""
    parts = ckpt.plain(
        {
            "model": model,
            "options": dict(options),
            "task": dict(task),
            "split": {k: sorted(v) for k, v in split.items()},
            "preprocess": dict(preprocess),
            "data": dict(data),
            "training": {k: training[k] for k in RESULT_TRAIN_KEYS if k in training},
            "extra_data": dict(extra_data or {}),
        }
    )
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return {"version": FINGERPRINT_VERSION, "digest": digest, "parts": parts}


def differences(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between a recorded fingerprint and the current one."""
    if not recorded or "parts" not in recorded:
        return ["the checkpoint records no run fingerprint (written before fingerprints existed)"]
    old, new = recorded["parts"], current["parts"]
    lines = []
    for part in sorted(set(old) | set(new)):
        a, b = old.get(part), new.get(part)
        if a == b:
            continue
        if part == "data":
            line = _data_difference(a or {}, b or {})
            lines.extend([line] if line else [])
        elif part == "split":
            lines.extend(_split_differences(a or {}, b or {}))
        elif isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if a.get(key, _MISSING) != b.get(key, _MISSING):
                    lines.append(f"{part}.{key}: {_show(a.get(key, _MISSING))} -> {_show(b.get(key, _MISSING))}")
        else:
            lines.append(f"{part}: {_show(a)} -> {_show(b)}")
    return lines


class _Missing:
    def __repr__(self) -> str:
        return "(unset)"


_MISSING = _Missing()


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, _Missing) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _split_differences(a: Mapping[str, list], b: Mapping[str, list]) -> list[str]:
    lines = []
    for key in sorted(set(a) | set(b)):
        before, after = set(a.get(key, [])), set(b.get(key, []))
        if before != after:
            change = [f"+{s}" for s in sorted(after - before)] + [f"-{s}" for s in sorted(before - after)]
            lines.append(f"split.{key}: {' '.join(change)}")
    return lines


def _data_difference(a: Mapping[str, str], b: Mapping[str, str]) -> str | None:
    """Files of subjects read by both runs whose checksums differ (or that one run lacks); a
    subject that joined or left the run is the split's difference, reported there."""
    common = {k.split("/")[0] for k in a} & {k.split("/")[0] for k in b}
    changed = sorted(k for k in set(a) | set(b) if k.split("/")[0] in common and a.get(k) != b.get(k))
    if not changed:
        return None
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    return f"data: {len(changed)} preprocessed file(s) differ ({shown})"


def recorded_fingerprint(checkpoint_path: Path | str) -> dict[str, Any] | None:
    """The fingerprint a checkpoint records (None if it records none)."""
    state = ckpt.load_checkpoint(checkpoint_path, map_location="cpu")
    return (state.get("config") or {}).get("fingerprint")


def move_run_aside(out_dir: Path | str) -> int:
    """Rename the run files of ``out_dir`` to ``<stem>.stale-<n><suffix>`` with the first ``n``
    free for all of them; returns ``n``. Nothing is deleted."""
    out_dir = Path(out_dir)
    n = 1
    while any((out_dir / _stale_name(name, n)).exists() for name in RUN_FILES):
        n += 1
    for name in RUN_FILES:
        if (out_dir / name).exists():
            (out_dir / name).rename(out_dir / _stale_name(name, n))
    return n


def _stale_name(name: str, n: int) -> str:
    stem, _, suffix = name.partition(".")
    return f"{stem}.stale-{n}.{suffix}"


def check_run_folder(out_dir: Path | str, fingerprint: Mapping[str, Any], *, on_mismatch: str = "refuse", is_main: bool = True) -> bool:
    """Whether ``out_dir``'s checkpoint may be resumed by the run of ``fingerprint``.

    True when there is no checkpoint or it records the same fingerprint. Otherwise, with
    ``on_mismatch="restart"`` the old run's files are moved aside (by the main process only) and
    False is returned (train from scratch); with ``"refuse"`` a :class:`RunMismatchError` names
    what differs and how to start afresh.
    """
    if on_mismatch not in ("refuse", "restart"):
        raise ValueError(f"on_mismatch must be 'refuse' or 'restart', got {on_mismatch!r}")
    path = Path(out_dir) / ckpt.CHECKPOINT_NAME
    try:
        recorded = recorded_fingerprint(path)
    except FileNotFoundError:  # none, or another process of this run moved it aside just now
        return True
    except ckpt.CheckpointError:
        if not path.exists():
            return True
        raise
    if recorded and recorded.get("digest") == fingerprint["digest"]:
        return True
    diffs = differences(recorded, fingerprint)
    if on_mismatch == "restart":
        if is_main:
            n = move_run_aside(out_dir)
            log.warning(
                "%s belongs to a different run (%s); moved it aside as %s and training from scratch",
                path, "; ".join(diffs), _stale_name(ckpt.CHECKPOINT_NAME, n),
            )
        return False
    raise RunMismatchError(
        f"{path} belongs to a different run, so it cannot be resumed:\n  "
        + "\n  ".join(diffs)
        + f"\nTo train this run from scratch, rerun with --restart (moves {ckpt.CHECKPOINT_NAME} to "
        f"checkpoint.stale-<n>.pt; nothing is deleted), or choose another --out folder."
    )
