"""Training logs: TensorBoard scalars and images, a JSONL scalar log, PNG sample grids, a progress bar.

Only rank 0 creates a :class:`RunLogger` with ``enabled=True``; on other ranks every method is a
no-op. ``out_dir/log.jsonl`` holds one JSON object per logged step (``{"step": 10, "epoch": 0,
"loss/d_loss": 0.69, "lr/g": 2e-4, "images_per_s": 512.0, ...}``) and is what later report stages
plot; on resume from step ``s`` the lines with ``step > s`` (written after the checkpoint by the
interrupted run) are dropped so that the file reads as one uninterrupted run. The same holds for
the interrupted run's other leftovers: its TensorBoard events after ``s`` are removed from its
event files and its sample grids after ``s`` are deleted. A fresh run in a reused folder starts
with no log, events or grids of an earlier run.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from medgen.io.atomic import atomic_write_text, atomic_write_with

LOG_NAME = "log.jsonl"
TB_DIR = "tb"
SAMPLES_DIR = "samples"
NO_PROGRESS_ENV = "MEDGEN_NO_PROGRESS"


class RunLogger:
    """Writes scalars to TensorBoard and ``log.jsonl`` and sample grids to TensorBoard and PNG."""

    def __init__(self, out_dir: Path, *, enabled: bool = True, resume_step: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self._writer = None
        self._jsonl = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.out_dir / LOG_NAME
        if resume_step is not None:
            truncate_jsonl(log_path, resume_step)
        elif log_path.exists():
            log_path.unlink()  # a fresh run in a reused folder starts a fresh log
        remove_leftovers(self.out_dir, after_step=-1 if resume_step is None else resume_step)
        self._jsonl = open(log_path, "a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter  # heavy import, only on rank 0

        # purge_step makes TensorBoard hide events of the interrupted run after the checkpoint
        self._writer = SummaryWriter(str(self.out_dir / TB_DIR), purge_step=None if resume_step is None else resume_step + 1)

    def log_scalars(self, step: int, scalars: Mapping[str, float], **extra: Any) -> None:
        """One JSONL line and one TensorBoard point per scalar (``extra`` goes to JSONL only)."""
        if not self.enabled:
            return
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, step)
        record = {"step": int(step), **extra, **{k: _json_float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def log_images(self, step: int, images: torch.Tensor, *, tag: str = "samples") -> Path | None:
        """Grid of ``images`` (N, C, *spatial) to TensorBoard and ``samples/step_XXXXXX.png``."""
        if not self.enabled:
            return None
        grid = image_grid(images)  # (H, W) float in [0, 1]
        self._writer.add_image(tag, grid[None], step, dataformats="CHW")
        return save_png(grid, self.out_dir / SAMPLES_DIR / f"step_{step:06d}.png")

    def flush(self) -> None:
        if self.enabled:
            self._writer.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled and self._writer is not None:
            self._writer.close()
            self._jsonl.close()
            self._writer = self._jsonl = None
            self.enabled = False


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop lines with ``step > max_step`` (and a torn last line) from ``path``, atomically."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-write
        if int(record.get("step", -1)) <= max_step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def _grid_step(path: Path) -> int | None:
    try:
        return int(path.stem.removeprefix("step_"))
    except ValueError:
        return None


def remove_leftovers(out_dir: Path, *, after_step: int) -> list[Path]:
    """Delete sample grids of steps ``> after_step`` and drop TensorBoard events of those steps
    from the event files in ``out_dir`` (``after_step=-1``: everything of an earlier run).
    Returns the files deleted or rewritten."""
    out_dir = Path(out_dir)
    touched = []
    for grid in sorted((out_dir / SAMPLES_DIR).glob("step_*.png")):
        step = _grid_step(grid)
        if step is not None and step > after_step:
            grid.unlink()
            touched.append(grid)
    for events in sorted((out_dir / TB_DIR).glob("events.out.tfevents.*")):
        if after_step < 0:
            events.unlink()
            touched.append(events)
        elif truncate_events(events, after_step):
            touched.append(events)
    return touched


def truncate_events(path: Path, max_step: int) -> bool:
    """Rewrite the TensorBoard event file ``path`` without its events of steps ``> max_step``
    (atomically; a record torn by a kill ends the file). True if anything was dropped.

    TensorBoard's ``purge_step`` only hides such events when the files are read by TensorBoard
    itself; rewriting the file removes them for every reader.
    """
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    kept, dropped = [], 0
    for record in RawEventFileLoader(str(path)).Load():
        event = event_pb2.Event.FromString(record)
        if event.step > max_step:
            dropped += 1
        else:
            kept.append(record)
    if not dropped:
        return False
    def write(fh) -> None:
        writer = RecordWriter(fh)
        for record in kept:
            writer.write(record)
        writer.flush()

    atomic_write_with(path, write)
    return True


def _json_float(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------------------- images
def image_grid(images: torch.Tensor, *, ncol: int | None = None, pad: int = 2) -> torch.Tensor:
    """Tile (N, C, *spatial) images into one (H, W) float image in [0, 1].

    Channel 0 is shown; 3-D volumes show their central slice along the first spatial axis.
    Intensities are min-max scaled over the whole grid (so images stay comparable). Written by
    hand because torchvision (``make_grid``) is not a dependency and MONAI's plotting goes
    through matplotlib figures.
    """
    x = images.detach().float().cpu()
    if x.ndim == 5:
        x = x[:, :, x.shape[2] // 2]
    if x.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) or (N, C, D, H, W) images, got shape {tuple(images.shape)}")
    x = x[:, 0]
    x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    n, h, w = x.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = torch.ones(nrow * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = x[i]
    return grid


def save_png(grid: torch.Tensor, path: Path) -> Path:
    """Write a (H, W) image in [0, 1] as 8-bit greyscale PNG (atomically)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    array = (grid.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    atomic_write_with(path, lambda fh: Image.fromarray(array).save(fh, format="PNG"))
    return path


# ----------------------------------------------------------------------------------- progress
class ProgressBar:
    """tqdm bar on stderr showing the loss terms and images/s.

    Off on non-main ranks, when stderr is not a terminal, or when ``MEDGEN_NO_PROGRESS`` is set
    to anything but ``0``/empty.
    """

    def __init__(self, total: int, initial: int, *, enabled: bool = True) -> None:
        self._bar = None
        if not (enabled and progress_wanted()):
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)

    def update(self, scalars: Mapping[str, float]) -> None:
        if self._bar is None:
            return
        self._bar.set_postfix({k.removeprefix("loss/"): f"{v:.4g}" for k, v in scalars.items()}, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def progress_wanted() -> bool:
    if os.environ.get(NO_PROGRESS_ENV, "") not in ("", "0"):
        return False
    return sys.stderr.isatty()
