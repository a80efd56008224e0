"""Downstream utility of synthetic images: does adding them help a segmentation network?

A small MONAI 2D ``UNet`` learns the tissue label map from single slices of one modality, in
several *settings* that differ only in their training data:

* ``real``: the training subjects' real slices and labels alone;
* ``real+<model>``: the same plus as many synthetic (image, label) pairs, made by a trained
  model from the training split only: a translation model translates the training subjects'
  source slices (paired with their real labels), a label-map model (SPADE) draws an image for
  each training label map. The test split never reaches training.

Every setting trains for the same number of steps with the same seeds (MONAI ``DiceCELoss``,
Adam), and is scored on the real test subjects with MONAI ``DiceMetric`` per tissue class, per
subject (all of a subject's slices together, i.e. a 3D Dice over the slices used). The summary
per class gives the mean over subjects of the seed-averaged Dice, a percentile bootstrap 95%
interval over subjects and the SD of the per-seed means.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch

from medgen.data.datasets import SliceDataset
from medgen.data.splits import read_split
from medgen.data.tissues import LABELS
from medgen.eval.paired import bootstrap_ci
from medgen.eval.settings import DownstreamSettings
from medgen.io.atomic import atomic_write_json

log = logging.getLogger(__name__)

def real_slices(
    prep_root: Path, subjects: Sequence[str], modality: str, *, context: int = 0, min_mask_fraction: float = DownstreamSettings.min_mask_fraction
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N, 1, H, W) on the normalised scale, label maps (N, 1, H, W) int64 and each slice's subject.

    With ``context`` > 0 the images are 2.5D, (N, 2·context+1, H, W): each axial slice with its
    ``context`` neighbours on each side (edge slices repeated beyond the volume), as training and
    ``medgen translate`` build them."""
    ds = SliceDataset(prep_root, list(subjects), [modality], labels=True, min_mask_fraction=min_mask_fraction)
    items = [ds[i] for i in range(len(ds))]
    if not items:
        raise ValueError(f"{prep_root}: no slices of {modality} with labels for subjects {list(subjects)}")
    if context:
        images = _with_context(prep_root, modality, [(str(it["subject"]), int(it["slice"])) for it in items], context)
    else:
        images = np.stack([it[modality].numpy() for it in items]).astype(np.float32)
    labels = np.stack([it["labels"].numpy() for it in items]).astype(np.int64)
    return images, labels, [str(it["subject"]) for it in items]


def _with_context(prep_root: Path, modality: str, slices: Sequence[tuple[str, int]], context: int) -> np.ndarray:
    volumes: dict[str, np.ndarray] = {}
    out = []
    for subject, k in slices:
        if subject not in volumes:
            volumes[subject] = np.asarray(nib.load(str(Path(prep_root) / subject / f"{modality}.nii.gz")).dataobj, dtype=np.float32)
        vol = volumes[subject]
        picks = np.clip(np.arange(k - context, k + context + 1), 0, vol.shape[2] - 1)
        out.append(np.moveaxis(vol[:, :, picks], 2, 0))
    return np.stack(out).astype(np.float32)


def translated_slices(model_path: Path, sources_for: Callable[[int], np.ndarray], *, batch_size: int = 32) -> np.ndarray:
    """A translation model's output (N, 1, H, W) for the normalised source slices
    ``sources_for(context)`` returns: (N, 1, H, W), or 2.5D (N, 2·context+1, H, W) for a model
    with ``in_channels`` > 1."""
    from medgen.models import artifact

    trained = artifact.load(model_path)
    channels = int(getattr(getattr(trained.model, "config", None), "in_channels", 1))
    sources = sources_for((channels - 1) // 2)
    out = []
    with torch.no_grad():
        for start in range(0, len(sources), batch_size):
            out.append(trained.model.translate(torch.from_numpy(sources[start : start + batch_size])).float().numpy())
    return np.concatenate(out).astype(np.float32)


def label_map_samples(model_path: Path, label_maps: np.ndarray, *, seed: int, batch_size: int = 32) -> np.ndarray:
    """A label-map model's images (N, 1, H, W), one per given label map (N, 1, H, W)."""
    from medgen.synth.sample import _draw  # the sampler's own batching, seeding and finite redraws
    from medgen.models import artifact

    trained = artifact.load(model_path)
    maps = [torch.from_numpy(m) for m in label_maps]
    return _draw(trained.model, maps, temperature=1.0, seed=seed, batch_size=batch_size).numpy().astype(np.float32)


def make_unet(n_classes: int, channels: Sequence[int] = (16, 32, 64)) -> torch.nn.Module:
    """The segmentation network: MONAI's 2D UNet, one level per channel count, one residual unit.

    Cost: about 2 GFLOP per training step of 16 slices at 64x64 with (16, 32, 64) channels,
    a quarter of that with (8, 16, 32) (``torch.utils.flop_counter``)."""
    from monai.networks.nets import UNet

    channels = tuple(int(c) for c in channels)
    return UNet(spatial_dims=2, in_channels=1, out_channels=n_classes, channels=channels, strides=(2,) * (len(channels) - 1), num_res_units=1)


def train_segmenter(
    images: np.ndarray, labels: np.ndarray, n_classes: int, *, steps: int, batch_size: int, seed: int, lr: float = 2e-3, channels: Sequence[int] = (16, 32, 64)
) -> torch.nn.Module:
    """Train :func:`make_unet` for ``steps`` Adam steps on random batches of (image, label) pairs."""
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = make_unet(n_classes, channels)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    net.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(images), size=min(batch_size, len(images)), replace=False))
        x, y = x_all[idx], y_all[idx]
        flip = torch.from_numpy(rng.random(len(idx)) < 0.5)  # left-right flips: the head is near-symmetric
        x, y = torch.where(flip[:, None, None, None], x.flip(-2), x), torch.where(flip[:, None, None, None], y.flip(-2), y)
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def dice_per_subject(net: torch.nn.Module, images: np.ndarray, labels: np.ndarray, subjects: Sequence[str], n_classes: int) -> dict[str, list[float]]:
    """``{subject: [Dice of class 1, ..., n_classes - 1]}`` (NaN where the class is absent from the truth)."""
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    out: dict[str, list[float]] = {}
    with torch.no_grad():
        pred = torch.cat([net(torch.from_numpy(images[s : s + 64])).argmax(1, keepdim=True) for s in range(0, len(images), 64)])
    truth = torch.from_numpy(labels)
    for subject in dict.fromkeys(subjects):
        rows = torch.tensor([i for i, s in enumerate(subjects) if s == subject])
        # one "volume" per subject: (1, C, N_slices, H, W) so that Dice pools all its slices
        p = one_hot(pred[rows], n_classes).permute(1, 0, 2, 3)[None]
        t = one_hot(truth[rows], n_classes).permute(1, 0, 2, 3)[None]
        metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
        out[subject] = [float(v) for v in metric(p, t)[0]]
    return out


def summarise(per_seed: Sequence[Mapping[str, Sequence[float]]], class_names: Sequence[str], *, seed: int = 0) -> dict[str, Any]:
    """Per class: mean over subjects of the seed-averaged Dice, its bootstrap interval over
    subjects, the SD of the per-seed means, and the per-subject values."""
    subjects = list(per_seed[0])
    out: dict[str, Any] = {}
    for c, name in enumerate(class_names):
        values = np.array([[run[s][c] for s in subjects] for run in per_seed], dtype=np.float64)  # (seeds, subjects)
        keep = ~np.isnan(values).any(axis=0)
        if not keep.any():
            continue
        per_subject = values[:, keep].mean(axis=0)
        seed_means = values[:, keep].mean(axis=1)
        out[name] = {
            "mean": float(per_subject.mean()),
            "ci95": list(bootstrap_ci(per_subject, seed=seed)),
            "seed_means": [float(v) for v in seed_means],
            "seed_std": float(seed_means.std(ddof=1)) if len(seed_means) > 1 else None,
            "per_subject": dict(zip([s for s, k in zip(subjects, keep) if k], (float(v) for v in per_subject))),
            "n_subjects": int(keep.sum()),
        }
    return out


def evaluate_downstream(
    *,
    task: Mapping[str, Any],
    prep_root: Path,
    split_path: Path,
    out_json: Path,
    models: Mapping[str, Sequence[Path]] | None = None,
    seeds: Sequence[int] = DownstreamSettings.seeds,
    steps: int = DownstreamSettings.steps,
    batch_size: int = DownstreamSettings.batch_size,
    channels: Sequence[int] = DownstreamSettings.channels,
    min_mask_fraction: float = DownstreamSettings.min_mask_fraction,
) -> dict[str, Any]:
    """Train and score every setting (see module doc) and write ``out_json``::

        {"kind": "downstream", "task", "modality", "network", "loss", "metric", "steps", "seeds",
         "n_train_slices", "n_test_slices", "classes", "settings": {name: {"dice": {class: {...}},
         "mean_dice": {...}, "n_synthetic", "seconds"}}}

    ``models`` maps a model name to its ``model.pt`` file(s); with several (one per training
    seed) the segmentation seed ``i`` uses file ``i mod len``.
    """
    t_start = time.perf_counter()
    split = read_split(split_path)
    translation = task["kind"] == "translation"
    modality = task["target"] if translation else task["modalities"][0]
    images, labels, _ = real_slices(prep_root, split["train"], modality, min_mask_fraction=min_mask_fraction)
    test_images, test_labels, test_subjects = real_slices(prep_root, split["test"], modality, min_mask_fraction=min_mask_fraction)
    source_by_context: dict[int, np.ndarray] = {}  # training source slices per 2.5D context, built once

    def sources_for(context: int) -> np.ndarray:
        if context not in source_by_context:
            source_by_context[context] = real_slices(prep_root, split["train"], task["source"], context=context, min_mask_fraction=min_mask_fraction)[0]
        return source_by_context[context]
    n_classes = max(LABELS) + 1
    class_names = [LABELS[c] for c in range(1, n_classes)]
    settings: dict[str, Any] = {}
    for name, paths in [("real", []), *((f"real+{m}", list(p)) for m, p in (models or {}).items())]:
        t0 = time.perf_counter()
        per_seed = []
        for i, seed in enumerate(seeds):
            x, y = images, labels
            if paths:
                path = Path(paths[i % len(paths)])
                synthetic = translated_slices(path, sources_for) if translation else label_map_samples(path, labels, seed=seed)
                x, y = np.concatenate([images, synthetic]), np.concatenate([labels, labels])
            net = train_segmenter(x, y, n_classes, steps=steps, batch_size=batch_size, seed=seed, channels=channels)
            per_seed.append(dice_per_subject(net, test_images, test_labels, test_subjects, n_classes))
        dice = summarise(per_seed, class_names)
        mean_dice = [np.nanmean([np.nanmean(run[s]) for s in run]) for run in per_seed]
        settings[name] = {
            "dice": dice,
            "mean_dice": {"mean": float(np.mean(mean_dice)), "seed_means": [float(v) for v in mean_dice],
                          "seed_std": float(np.std(mean_dice, ddof=1)) if len(mean_dice) > 1 else None},
            "n_synthetic": len(images) if paths else 0,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        log.info("downstream %s: mean Dice %.3f over %d seeds (%.0f s)", name, settings[name]["mean_dice"]["mean"], len(seeds), settings[name]["seconds"])
    result = {
        "kind": "downstream",
        "task": task.get("name"),
        "modality": modality,
        "network": f"monai.networks.nets.UNet 2D, channels {tuple(channels)}, 1 residual unit",
        "loss": "monai.losses.DiceCELoss (softmax, one-hot)",
        "metric": "monai.metrics.DiceMetric per class, per test subject over its slices; mean over subjects, bootstrap 95% CI over subjects, SD over seeds",
        "steps": steps,
        "min_mask_fraction": min_mask_fraction,
        "batch_size": batch_size,
        "seeds": list(seeds),
        "n_train_slices": len(images),
        "n_test_slices": len(test_images),
        "test_subjects": list(dict.fromkeys(test_subjects)),
        "classes": class_names,
        "settings": settings,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    atomic_write_json(out_json, result)
    return result
