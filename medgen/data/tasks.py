"""Training data for a task: preprocessed slices or patches, keyed the way models read them.

A *generation* task serves ``{"image": (1, *spatial), "label": int}`` (the label is the class of
the condition: the modality, a slice-position bin, or lesion present/absent; 0 when
unconditional), plus ``"labels"`` (1, *spatial) int64, the tissue label map, for models that
generate an image from a label map (``condition: label_map``). A *translation* task serves ``{"source": ..., "target": ...}``: registered pairs
for paired models, or for unpaired ones a target drawn from another slice/patch (a permutation
that depends only on the seed and the epoch, so a resumed run sees the same pairs).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from medgen.data.datasets import PatchDataset, SliceDataset
from medgen.data.settings import MIN_MASK_FRACTION
from medgen.data.normalise import apply_normalisation
from medgen.io.nifti import load_nifti

CONDITIONS = (None, "modality", "slice_bin", "lesion", "label_map")
#: label value of lesions in the phantom's label maps
LESION_LABEL = 9
#: manifest modality of the label maps that label-map models' samples come with
LABEL_MAP_MODALITY = "labels"


def _base_dataset(
    prep_root: Path,
    subjects: Sequence[str],
    modalities: Sequence[str],
    *,
    spatial_dims: int,
    patch_size: Sequence[int] | None,
    seed: int,
    labels: bool,
    min_mask_fraction: float = MIN_MASK_FRACTION,
) -> Dataset:
    if spatial_dims == 2:
        return SliceDataset(prep_root, subjects, modalities, labels=labels, min_mask_fraction=min_mask_fraction)
    if spatial_dims == 3:
        return PatchDataset(prep_root, subjects, modalities, patch_size=tuple(patch_size or (32, 32, 32)), seed=seed, labels=labels)
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


class GenerationDataset(Dataset):
    """Images of one or more modalities with a class label for conditional models.

    With several modalities and ``condition="modality"`` every slice/patch appears once per
    modality, labelled by the modality's index in ``modalities``.
    """

    def __init__(
        self,
        prep_root: Path | str,
        subjects: Sequence[str],
        modalities: Sequence[str],
        *,
        condition: str | None = None,
        slice_bins: int = 4,
        spatial_dims: int = 2,
        patch_size: Sequence[int] | None = None,
        seed: int = 0,
        min_mask_fraction: float = MIN_MASK_FRACTION,
    ) -> None:
        if condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; valid: {', '.join(map(str, CONDITIONS))}")
        if len(modalities) > 1 and condition != "modality":
            raise ValueError(f"several modalities {list(modalities)} need condition 'modality'")
        self.modalities = list(modalities)
        self.condition = condition
        self.slice_bins = int(slice_bins)
        with_labels = condition in ("lesion", "label_map")
        self.base = _base_dataset(
            Path(prep_root), subjects, modalities, spatial_dims=spatial_dims, patch_size=patch_size, seed=seed, labels=with_labels, min_mask_fraction=min_mask_fraction
        )

    @property
    def classes(self) -> list[str]:
        """Names of the label values."""
        if self.condition == "modality":
            return list(self.modalities)
        if self.condition == "slice_bin":
            return [f"slice-bin-{b}" for b in range(self.slice_bins)]
        if self.condition == "lesion":
            return ["no-lesion", "lesion"]
        return ["all"]  # unconditional, or conditioned on a whole label map

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base) * len(self.modalities)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i // len(self.modalities)]
        m = i % len(self.modalities)
        out = {"image": item[self.modalities[m]], "label": self._label(item, m)}
        if self.condition == "label_map":
            out["labels"] = item["labels"]
        return out

    def _label(self, item: Mapping[str, Any], m: int) -> int:
        if self.condition == "modality":
            return m
        if self.condition == "slice_bin":
            return min(int(float(item.get("slice_position", 0.0)) * self.slice_bins), self.slice_bins - 1)
        if self.condition == "lesion":
            return int(bool((item["labels"] == LESION_LABEL).any()))
        return 0


def neighbour_slices(volume: torch.Tensor, k: int, context: int) -> torch.Tensor:
    """Slices ``k - context .. k + context`` of ``volume`` (C, X, Y, Z) along its last axis as
    channels (C·(2·context+1), X, Y), the volume's edge slice repeated beyond its ends (2.5D input)."""
    depth = volume.shape[-1]
    picks = [min(max(k + d, 0), depth - 1) for d in range(-context, context + 1)]
    return torch.cat([volume[..., j] for j in picks], dim=0)


class TranslationDataset(Dataset):
    """``{"source", "target"}`` pairs from the same subject and position (``paired=True``) or
    from a seeded, epoch-dependent other position (``paired=False``, unpaired training).

    ``context`` > 0 (2D only) makes the source 2.5D: the ``context`` slices on either side of the
    target's slice as extra channels, (2·context+1, X, Y), centre slice in the middle channel.
    ``flip_lr`` mirrors item ``i``'s source and target together along the first spatial axis (left-
    right on the RAS grid) when a per-epoch draw from ``seed`` says so (probability 1/2): a function
    of (seed, epoch, i), so a resumed run sees the same items. Written here rather than with MONAI's
    ``RandFlipd`` because that transform's random state advances with every call, which would tie
    the flips to the order in which items are loaded (workers, resume)."""

    def __init__(
        self,
        prep_root: Path | str,
        subjects: Sequence[str],
        source: str,
        target: str,
        *,
        paired: bool,
        spatial_dims: int = 2,
        patch_size: Sequence[int] | None = None,
        seed: int = 0,
        min_mask_fraction: float = MIN_MASK_FRACTION,
        context: int = 0,
        flip_lr: bool = False,
    ) -> None:
        if source == target:
            raise ValueError(f"source and target are both {source!r}")
        if context < 0 or (context and spatial_dims != 2):
            raise ValueError(f"context (neighbour slices of a 2.5D source) must be >= 0 and needs 2D slices; got {context} with spatial_dims {spatial_dims}")
        self.source, self.target, self.paired, self.seed, self.context = source, target, paired, seed, int(context)
        self.flip_lr = bool(flip_lr)
        self.base = _base_dataset(
            Path(prep_root), subjects, [source, target], spatial_dims=spatial_dims, patch_size=patch_size, seed=seed, labels=False, min_mask_fraction=min_mask_fraction
        )
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)
        rng = np.random.default_rng([self.seed, epoch, 7])
        self._partner = rng.permutation(len(self.base))
        self._flipped = np.random.default_rng([self.seed, epoch, 11]).random(len(self.base)) < 0.5 if self.flip_lr else None

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.base[i]
        target = item[self.target] if self.paired else self.base[int(self._partner[i])][self.target]
        source = self.source_slices(i) if self.context else item[self.source]
        if self._flipped is not None and self._flipped[i]:
            source, target = torch.flip(source, dims=(1,)), torch.flip(target, dims=(1,))  # (C, X, ...): X is left-right
        return {"source": source, "target": target}

    def source_slices(self, i: int) -> torch.Tensor:
        """The 2.5D source of item ``i`` from the cached volume, float32."""
        v, k = self.base.index[i]
        volume = self.base.volumes[v][self.source]
        volume = volume.as_tensor() if hasattr(volume, "as_tensor") else volume
        return neighbour_slices(volume, k, self.context).to(torch.float32)


class AugmentationDataset(Dataset):
    """Synthetic images from an augmentation manifest (``medgen sample``'s ``manifest.tsv``),
    normalised with the training mappings so they mix with real data: items like
    :class:`GenerationDataset`'s (2D samples are one-slice volumes (H, W, 1))."""

    def __init__(self, manifest: Path | str, mappings: Mapping[str, Mapping], classes: Sequence[str]) -> None:
        manifest = Path(manifest)
        with open(manifest, newline="") as fh:
            # label maps listed beside label-map samples are conditions, not training images
            self.rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["modality"] != LABEL_MAP_MODALITY]
        unknown = sorted({r["modality"] for r in self.rows} - set(mappings))
        if unknown:
            raise ValueError(f"{manifest}: modalities {unknown} are not among the task's {sorted(mappings)}")
        self.root, self.mappings, self.classes = manifest.parent, mappings, list(classes)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        vol = load_nifti(self.root / row["path"]).array
        image = apply_normalisation(vol[..., 0] if vol.shape[-1] == 1 else vol, self.mappings[row["modality"]])
        label = int(row["label"]) if str(row.get("label", "")).isdigit() else 0  # "n/a" when unconditional
        return {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None], "label": label}


def task_dataset(
    task: Mapping[str, Any], prep_root: Path | str, subjects: Sequence[str], *, model_paired: bool, spatial_dims: int, patch_size: Sequence[int] | None, seed: int,
    context: int = 0,
) -> Dataset:
    """The dataset a task's config asks for (see ``configs/config.schema.yaml``, ``tasks``).

    2D slices are served when the head mask covers at least ``task["min_mask_fraction"]`` of the
    slice (the workflow sets it from ``preprocess.min_mask_fraction``; evaluation reads the same
    value back from the trained model's task). ``context``: neighbour slices on each side of a
    2.5D translation source.
    """
    fraction = float(task.get("min_mask_fraction", MIN_MASK_FRACTION))
    if task["kind"] == "translation":
        return TranslationDataset(
            prep_root, subjects, task["source"], task["target"], paired=model_paired, spatial_dims=spatial_dims, patch_size=patch_size, seed=seed,
            min_mask_fraction=fraction, context=context, flip_lr=bool(task.get("flip_lr", False))
        )
    return GenerationDataset(
        prep_root,
        subjects,
        task["modalities"],
        condition=task.get("condition"),
        slice_bins=task.get("slice_bins", 4),
        spatial_dims=spatial_dims,
        patch_size=patch_size,
        seed=seed,
        min_mask_fraction=fraction,
    )


def with_augmentation(dataset: Dataset, manifests: Sequence[Path | str], mappings: Mapping[str, Mapping], classes: Sequence[str]) -> Dataset:
    """``dataset`` plus the synthetic images listed in ``manifests`` (extra training data)."""
    if not manifests:
        return dataset
    return ConcatDataset([dataset, *(AugmentationDataset(m, mappings, classes) for m in manifests)])
