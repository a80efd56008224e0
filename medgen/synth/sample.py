"""Draw samples from a trained generative model and write them as NIfTI files plus a manifest.

Each sample goes back to original units through the training mapping of its modality (HU for
CT, the training cohort's median scale for MR) and gets an affine on the training grid: a 3D
sample the training affine itself, a 2D sample a one-slice volume (H, W, 1) with the training
grid's in-plane spacing and orientation. ``manifest.tsv`` has the ``subject``, ``modality`` and
``path`` columns that ``medgen ingest`` reads, so a set of samples can be fed back as extra
training data; ``label`` and ``source`` record where each came from.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from medgen.data.normalise import invert_normalisation, is_ct  # noqa: E402
from medgen.io.atomic import atomic_write_text, atomic_write_with  # noqa: E402
from medgen.io.nifti import save_nifti  # noqa: E402
from medgen.synth import DEFAULT_TEMPERATURE  # noqa: E402

if TYPE_CHECKING:
    from medgen.models.artifact import TrainedModel

log = logging.getLogger(__name__)

__all__ = ["sample_to_files", "sample_affine", "MANIFEST_HEADER", "GRID_MAX", "CT_DISPLAY_WINDOW"]

MANIFEST_HEADER = ("subject", "modality", "path", "label", "source")
#: At most this many samples are drawn into grid.png.
GRID_MAX = 64
#: Display window of CT samples (HU); MR is shown between its 1st and 99.5th percentile.
CT_DISPLAY_WINDOW = (-200.0, 1200.0)
#: Pixels between grid cells, and the smallest cell side after integer upscaling.
_GAP = 2
_MIN_CELL = 96


@dataclass
class _Sample:
    """One written image: ``display`` is a 2D view (rows = anterior/superior up) for the grid."""

    index: int
    modality: str
    label: int | None
    path: Path
    display: np.ndarray


# --------------------------------------------------------------------------------------------
# Labels and modalities


def _labels_for(task: dict[str, Any], n: int, labels: Sequence[int] | None) -> list[int | None]:
    """One label per sample: ``labels`` cycled; every class cycled for a conditional model without labels."""
    condition = task.get("condition")
    if condition is None:
        if labels:
            raise ValueError(f"task {task.get('name')!r} is unconditional; it takes no labels")
        return [None] * n
    n_classes = len(task.get("classes") or [])
    chosen = list(labels) if labels else list(range(n_classes))
    if not chosen:
        raise ValueError(f"task {task.get('name')!r} is conditioned on {condition!r} but lists no classes; pass labels")
    bad = [c for c in chosen if n_classes and not 0 <= int(c) < n_classes]
    if bad:
        raise ValueError(f"labels {bad} out of range for {n_classes} classes {task.get('classes')}")
    return [int(chosen[i % len(chosen)]) for i in range(n)]


def _channel_modalities(task: dict[str, Any], label: int | None, n_channels: int) -> list[str]:
    """The modality of each output channel of one sample."""
    if task.get("condition") == "modality":
        if n_channels != 1:
            raise ValueError(f"a modality-conditioned model should give 1 channel, got {n_channels}")
        return [str(task["classes"][label])]
    modalities = [str(m) for m in task.get("modalities") or []]
    if n_channels == len(modalities):
        return modalities
    if n_channels == 1 and modalities:
        return modalities[:1]
    raise ValueError(f"samples have {n_channels} channels but the task lists modalities {modalities}")


# --------------------------------------------------------------------------------------------
# Geometry


def _slice_index(data: dict[str, Any], task: dict[str, Any], label: int | None, axis: int) -> float:
    """Where along the slice axis a 2D sample sits: the centre of its slice bin, else the middle.

    Bins are taken as equal fractions of the training depth (slice position k / (depth - 1)),
    the way the slice datasets report ``slice_position``.
    """
    depth = int((data.get("size") or [1, 1, 1])[axis])
    classes = task.get("classes") or []
    if task.get("condition") == "slice_bin" and label is not None and classes:
        return (label + 0.5) / len(classes) * (depth - 1)
    return (depth - 1) / 2.0


def sample_affine(train_affine: np.ndarray, spatial_dims: int, slice_axis: int = 2, slice_index: float = 0.0) -> np.ndarray:
    """Voxel -> RAS affine of a sample: the training affine (3D), or for a 2D sample (H, W, 1)
    the two in-plane columns of the training affine, its slice column third, placed at
    ``slice_index`` (voxels) along the slice axis."""
    a = np.asarray(train_affine, dtype=np.float64)
    if spatial_dims == 3:
        return a.copy()
    in_plane = [i for i in range(3) if i != slice_axis]
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2] = a[:3, in_plane[0]], a[:3, in_plane[1]], a[:3, slice_axis]
    out[:3, 3] = a[:3, 3] + slice_index * a[:3, slice_axis]
    return out


# --------------------------------------------------------------------------------------------
# Drawing


def _draw(model: torch.nn.Module, labels: list[int | None], *, temperature: float, seed: int, batch_size: int) -> torch.Tensor:
    """All samples (N, C, *spatial) in the network range, reproducible from ``seed``.

    The global RNGs (which the models draw from) are forked so that the caller's state is kept.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    cuda = [device.index or 0] if device.type == "cuda" else []
    chunks = []
    with torch.random.fork_rng(devices=cuda), torch.inference_mode():
        torch.manual_seed(seed)
        for start in range(0, len(labels), batch_size):
            part = labels[start : start + batch_size]
            chunks.append(_finite_batch(model, part, temperature=temperature, device=device))
    return torch.cat(chunks)


#: redraws allowed for samples that come out NaN/inf before sampling gives up
MAX_REDRAWS = 10


def _finite_batch(model: torch.nn.Module, labels: list[int | None], *, temperature: float, device: torch.device) -> torch.Tensor:
    """One batch of samples in which every sample is finite.

    An invertible flow can overflow when it maps a far-out latent back to image space (the
    coupling inverse divides by a scale); such samples are drawn again, up to
    :data:`MAX_REDRAWS` times, and the number redrawn is logged. Never written as NaN.
    """

    def draw(part: list[Any]) -> torch.Tensor:
        if part[0] is None:
            y = None
        elif isinstance(part[0], torch.Tensor):  # label maps (1, *spatial) for label-map models
            y = torch.stack(part).to(device)
        else:
            y = torch.tensor(part, dtype=torch.long, device=device)
        return model.sample(len(part), labels=y, temperature=temperature).detach().float().cpu()

    batch = draw(labels)
    redrawn = 0
    for _ in range(MAX_REDRAWS):
        bad = [i for i in range(len(batch)) if not torch.isfinite(batch[i]).all()]
        if not bad:
            break
        redrawn += len(bad)
        batch[bad] = draw([labels[i] for i in bad])
    else:
        if not torch.isfinite(batch).all():
            raise FloatingPointError(f"the model kept producing NaN/inf samples after {MAX_REDRAWS} redraws; try a lower --temperature")
    if redrawn:
        log.warning("redrew %d sample(s) that came out NaN/inf (temperature %g)", redrawn, temperature)
    return batch


def _display(image: np.ndarray) -> np.ndarray:
    """A 2D view of a (X, Y) or (X, Y, Z) RAS image: axial (middle slice), anterior up, right of patient at the right."""
    plane = image if image.ndim == 2 else image[:, :, image.shape[2] // 2]
    return np.flipud(plane.T)


def _source_name(trained: TrainedModel) -> str:
    checkpoint = Path(trained.path).name if getattr(trained, "path", None) else "unsaved"
    return f"{trained.card.model or 'model'}:{checkpoint}"


def _write_samples(
    trained: TrainedModel, images: torch.Tensor, labels: list[int | None], out_dir: Path
) -> list[_Sample]:
    task, data = trained.card.task, trained.card.data
    dims = int(data.get("spatial_dims", 2))
    axis = int(data.get("slice_axis", 2))
    if images.ndim != 2 + dims:
        raise ValueError(f"expected samples (N, C, {dims} spatial dims), got shape {tuple(images.shape)}")
    written = []
    for i, (image, label) in enumerate(zip(images.numpy(), labels)):
        modalities = _channel_modalities(task, label, image.shape[0])
        affine = sample_affine(np.asarray(data["affine"]), dims, axis, _slice_index(data, task, label, axis) if dims == 2 else 0.0)
        for channel, modality in zip(image, modalities):
            values = invert_normalisation(channel, data["mappings"][modality])
            volume = values[..., None] if dims == 2 else values  # 2D: a one-slice volume (H, W, 1)
            name = f"sample_{i:05d}.nii.gz" if len(modalities) == 1 else f"sample_{i:05d}_{modality}.nii.gz"
            path = save_nifti(out_dir / "images" / name, volume, affine)
            written.append(_Sample(i, modality, label, path, _display(values)))
    return written


def held_out_label_maps(prep_root: Path, split_path: Path, modalities: Sequence[str], min_mask_fraction: float | None = None) -> np.ndarray:
    """Tissue label maps (M, 1, H, W) of the test split's slices, to condition label-map models
    on anatomy they were not trained on (slices chosen by the training threshold
    ``min_mask_fraction``, default :data:`medgen.data.settings.MIN_MASK_FRACTION`)."""
    from medgen.data.splits import read_split

    return slice_label_maps(prep_root, read_split(split_path)["test"], modalities, min_mask_fraction)


def slice_label_maps(prep_root: Path, subjects: Sequence[str], modalities: Sequence[str], min_mask_fraction: float | None = None) -> np.ndarray:
    """Tissue label maps (M, 1, H, W) of ``subjects``' slices whose head mask covers
    ``min_mask_fraction`` (default :data:`medgen.data.settings.MIN_MASK_FRACTION`)."""
    from medgen.data.datasets import SliceDataset
    from medgen.data.settings import MIN_MASK_FRACTION

    fraction = MIN_MASK_FRACTION if min_mask_fraction is None else min_mask_fraction
    ds = SliceDataset(prep_root, list(subjects), list(modalities), labels=True, min_mask_fraction=fraction)
    return np.stack([ds[i]["labels"].numpy() for i in range(len(ds))])


def _write_label_maps(trained: TrainedModel, maps: list[torch.Tensor], out_dir: Path) -> list[_Sample]:
    """Each sample's label map as a NIfTI beside its image, on the same affine."""
    data = trained.card.data
    dims, axis = int(data.get("spatial_dims", 2)), int(data.get("slice_axis", 2))
    written = []
    for i, label_map in enumerate(maps):
        values = label_map.numpy()[0]
        affine = sample_affine(np.asarray(data["affine"]), dims, axis, _slice_index(data, trained.card.task, None, axis) if dims == 2 else 0.0)
        path = save_nifti(out_dir / "images" / f"labels_{i:05d}.nii.gz", values[..., None] if dims == 2 else values, affine, dtype=np.uint8)
        written.append(_Sample(i, "labels", None, path, values.astype(np.float32)))
    return written


# --------------------------------------------------------------------------------------------
# Manifest and grid


def _write_manifest(samples: list[_Sample], out_dir: Path, source: str) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(MANIFEST_HEADER)
    for s in samples:
        label = "n/a" if s.label is None else str(s.label)
        writer.writerow([f"synth-{s.index:05d}", s.modality, s.path.relative_to(out_dir).as_posix(), label, source])
    return atomic_write_text(out_dir / "manifest.tsv", buffer.getvalue())


def _windowed(samples: list[_Sample]) -> list[np.ndarray]:
    """Each display image scaled to [0, 1] in its modality's display window."""
    windows: dict[str, tuple[float, float]] = {}
    for modality in {s.modality for s in samples}:
        if is_ct(modality):
            windows[modality] = CT_DISPLAY_WINDOW
        else:  # one window per modality over all shown samples, so that they compare
            lo, hi = np.percentile(np.concatenate([s.display.ravel() for s in samples if s.modality == modality]), [1.0, 99.5])
            windows[modality] = (float(lo), float(hi if hi > lo else lo + 1.0))
    return [np.clip((s.display - windows[s.modality][0]) / (windows[s.modality][1] - windows[s.modality][0]), 0, 1) for s in samples]


def _grid_layout(samples: list[_Sample]) -> list[list[int]]:
    """Rows of indices into ``samples``: one row per label (in order of appearance), or a near-square grid."""
    if samples and samples[0].label is not None:
        rows: dict[int | None, list[int]] = {}
        for i, s in enumerate(samples):
            rows.setdefault(s.label, []).append(i)
        per_row = max(1, GRID_MAX // len(rows))
        return [idx[:per_row] for idx in rows.values()]
    shown = list(range(min(len(samples), GRID_MAX)))
    cols = max(1, math.ceil(math.sqrt(len(shown))))
    return [shown[r : r + cols] for r in range(0, len(shown), cols)]


def grid_shape(n_rows: int, n_cols: int, cell: tuple[int, int]) -> tuple[int, int]:
    """(height, width) in pixels of grid.png for ``n_rows`` x ``n_cols`` cells of display ``cell`` (h, w)."""
    scale = max(1, math.ceil(_MIN_CELL / max(cell)))
    return n_rows * cell[0] * scale + (n_rows + 1) * _GAP, n_cols * cell[1] * scale + (n_cols + 1) * _GAP


def _write_grid(samples: list[_Sample], path: Path) -> Path:
    """A mosaic PNG (grey, windowed); black gaps between cells."""
    seen: set[int] = set()
    first = [s for s in samples if not (s.index in seen or seen.add(s.index))]  # first channel of each sample
    layout = _grid_layout(first)
    images = _windowed(first)
    h, w = images[0].shape
    scale = max(1, math.ceil(_MIN_CELL / max(h, w)))
    n_cols = max(len(r) for r in layout)
    mosaic = np.zeros(grid_shape(len(layout), n_cols, (h, w)), dtype=np.float32)
    for r, row in enumerate(layout):
        for c, i in enumerate(row):
            y0, x0 = _GAP + r * (h * scale + _GAP), _GAP + c * (w * scale + _GAP)
            mosaic[y0 : y0 + h * scale, x0 : x0 + w * scale] = np.kron(images[i], np.ones((scale, scale), dtype=np.float32))
    return atomic_write_with(path, lambda fh: plt.imsave(fh, mosaic, cmap="gray", vmin=0.0, vmax=1.0, format="png"))


# --------------------------------------------------------------------------------------------
# Entry point


def sample_to_files(
    trained: TrainedModel,
    n: int,
    out_dir: Path,
    *,
    labels: Sequence[int] | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    seed: int = 0,
    batch_size: int = 16,
    label_maps: np.ndarray | None = None,
) -> Path:
    """Draw ``n`` samples and write ``out_dir/images/sample_XXXXX.nii.gz``, ``manifest.tsv`` and ``grid.png``.

    ``labels`` are cycled over the samples (sample i gets ``labels[i % len(labels)]``); a
    conditional model without labels cycles over all its classes. For a modality-conditioned
    model the label indexes ``task["classes"]`` and picks the modality (and its mapping). The
    same ``seed`` gives the same samples. Returns the manifest path.

    A model that generates from a label map (task condition ``label_map``) takes ``label_maps``
    (M, 1, *spatial) integer tissue maps, cycled over the samples; each map is written beside its
    image (``labels_XXXXX.nii.gz``, manifest modality ``labels``) so that the set comes with labels.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    task = trained.card.task
    if task.get("kind") != "generation":
        from medgen.errors import ModalityMismatchError

        raise ModalityMismatchError(
            f"{_source_name(trained)}: model of task {task.get('name')!r} is a {task.get('kind')!r} model, not a generation model; "
            "translate volumes with it (medgen translate), or pass a generation model's model.pt"
        )
    out_dir = Path(out_dir)
    if task.get("condition") == "label_map":
        if label_maps is None or len(label_maps) == 0:
            raise ValueError(f"task {task.get('name')!r} generates images from label maps: pass label_maps")
        maps = [torch.as_tensor(np.asarray(label_maps[i % len(label_maps)]), dtype=torch.long) for i in range(n)]
        per_sample: list[Any] = [None] * n
        conditions: list[Any] = maps
    else:
        per_sample = _labels_for(task, n, labels)
        conditions = per_sample
    model = trained.model.eval()
    images = _draw(model, conditions, temperature=temperature, seed=seed, batch_size=batch_size)
    samples = _write_samples(trained, images, per_sample, out_dir)
    pairs = _write_label_maps(trained, conditions, out_dir) if conditions is not per_sample else []
    manifest = _write_manifest(samples + pairs, out_dir, _source_name(trained))
    _write_grid(samples, out_dir / "grid.png")
    log.info("wrote %d samples to %s", n, out_dir)
    return manifest
