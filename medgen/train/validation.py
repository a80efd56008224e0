"""Validation during training: a score on held-out subjects that picks the checkpoint ``model.pt`` holds.

A *validator* is called by the engine every ``TrainConfig.val_every`` steps (and at the last
step) with the model in eval mode and its inference weights (EMA when enabled) loaded, under
``torch.no_grad``. It returns scalars for the run log; the one named by its ``key`` is minimised:
the engine keeps the inference weights of the best step, and ``model.pt`` holds those.

:class:`TranslationValidator` scores a translation model by its mean absolute error against the
registered ground truth of the validation subjects, inside their head masks: in HU for CT (the
network output taken back through the training cohort's CT mapping, which is the fixed HU
window and therefore exact) and on the normalised scale for MR (the scale the preprocessed
target is stored on, the one the evaluation's MR metrics use).
"""

from __future__ import annotations

from typing import Mapping, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medgen.data.tasks import TranslationDataset
from medgen.data.normalise import invert_normalisation, is_ct


class Validator(Protocol):
    """What the engine calls: ``validator(model) -> {name: value}``; ``key`` names the value to minimise."""

    key: str

    def __call__(self, model: torch.nn.Module) -> dict[str, float]: ...


class PairedSlices(Dataset):
    """``{"source", "target", "mask"}`` of the same subject and place, from preprocessed subjects:
    2D axial slices (a 2.5D source with ``context`` neighbour slices on each side), or for 3D
    models seeded patches per subject (the same patches at every validation)."""

    def __init__(self, prep_root, subjects, source: str, target: str, *, spatial_dims: int = 2, patch_size=None, seed: int = 0, context: int = 0) -> None:
        self.source, self.target = source, target
        self.pairs = TranslationDataset(prep_root, subjects, source, target, paired=True, spatial_dims=spatial_dims, patch_size=patch_size, seed=seed, context=context)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.pairs.base[i]
        source = self.pairs.source_slices(i) if self.pairs.context else item[self.source]
        return {"source": source, "target": item[self.target], "mask": item["mask"]}


class TranslationValidator:
    """Masked MAE of ``model.translate(source)`` against ``target`` over a paired dataset.

    ``dataset`` items hold ``source`` and ``target`` (registered) and ``mask`` (the preprocessed
    head mask of the same slice or patch), e.g. :func:`medgen.data.tasks.task_dataset` of the
    validation subjects with ``model_paired=True``. ``target_mapping`` is the normalisation of the
    target modality (only used for CT, to report HU).
    """

    key = "val/mae"

    def __init__(self, dataset: Dataset, *, target: str, target_mapping: Mapping | None = None, batch_size: int = 32) -> None:
        if len(dataset) == 0:
            raise ValueError("the validation set is empty: the split has no validation subjects with head slices")
        self.dataset = dataset
        self.target = target
        self.ct = is_ct(target)
        if self.ct and target_mapping is None:
            raise ValueError("a CT target needs its normalisation mapping to report the MAE in HU")
        self.target_mapping = target_mapping
        self.batch_size = int(batch_size)
        self.units = "HU" if self.ct else "normalised"

    def _to_units(self, x: torch.Tensor) -> np.ndarray:
        array = x.detach().float().cpu().numpy()
        return invert_normalisation(array, self.target_mapping) if self.ct else array

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=0)
        abs_sum = 0.0  # float64 sums over every masked voxel of the split
        count = 0.0
        for batch in loader:
            pred = model.translate(batch["source"].to(device))
            mask = batch["mask"].numpy() > 0.5
            diff = np.abs(self._to_units(pred).astype(np.float64) - self._to_units(batch["target"]).astype(np.float64))
            abs_sum += float(diff[mask].sum())
            count += float(mask.sum())
        if count == 0:
            raise ValueError("the validation masks are empty: no voxel to score")
        return {self.key: abs_sum / count}
