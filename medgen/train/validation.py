"""Validation during training: a score on held-out subjects, logged, and for translation the
choice of the weights ``model.pt`` holds.

A *validator* is called by the engine every ``TrainConfig.val_every`` steps (and at the last
step) with the model in eval mode and its inference weights (EMA when enabled) loaded, under
``torch.no_grad``. It returns scalars for the run log; the one named by its ``key`` is minimised.
A validator that ``selects_weights`` (translation: a paired error) makes the engine keep the
inference weights of its best step for ``model.pt``; otherwise (generation) ``model.pt`` holds
the last weights and the curve only shows how training went.

Why generation does not select: the encoder FD ranks a collapsed or noise-like sampler too well.
In the demo the DCGAN's step-200 samples were a checkerboard of noise with validation FD 152.8,
its step-400 and step-600 samples head-shaped slices with 253.4 and 173.0; on the test slices the
noise scored encoder FD 144.4 and the heads 162.3, while the radiomics FD (1,595 against 660) and
the encoder-space precision and coverage (0 and 0 against 0.05 and 0.03) ranked them the right
way round. A selection by that FD kept the noise.

:class:`TranslationValidator` scores a translation model by its mean absolute error against the
registered ground truth of the validation subjects, inside their head masks: in HU for CT (the
network output taken back through the training cohort's CT mapping, which is the fixed HU
window and therefore exact) and on the normalised scale for MR (the scale the preprocessed
target is stored on, the one the evaluation's MR metrics use).

:class:`GenerationValidator` scores a generation model by the Fréchet distance, in the study's
in-domain encoder space (:mod:`medgen.eval.encoder`), between a fixed-seed set of its samples and
the real slices of the validation subjects, chosen as the evaluation chooses the test slices.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medgen.data.tasks import TranslationDataset
from medgen.data.normalise import apply_normalisation, invert_normalisation, is_ct
from medgen.eval.distribution import fid_from_features
from medgen.synth import DEFAULT_TEMPERATURE

log = logging.getLogger(__name__)


class Validator(Protocol):
    """What the engine calls: ``validator(model) -> {name: value}``; ``key`` names the value to
    minimise; with ``selects_weights`` the best step's weights go to ``model.pt``."""

    key: str
    selects_weights: bool

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
    selects_weights = True  # a paired error on held-out subjects: model.pt holds the best step

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


#: samples drawn per generation validation (fewer when the validation split has fewer slices)
VAL_SAMPLES = 64
#: at most this many real validation slices (a seeded subset, as the evaluation's ``max_real``)
VAL_MAX_REAL = 256


class GenerationValidator:
    """Fréchet distance between ``n`` samples of ``model.sample`` and real slices, in a feature space.

    ``real``: real slices (M, H, W) on the normalised scale; their features are computed once
    here. ``features``: images (N, H, W) -> (N, F) float64, e.g.
    :class:`medgen.eval.encoder.EncoderFeatures`. Samples are drawn as ``medgen sample`` draws
    them (:func:`medgen.synth.sample._draw`: every class cycled for a class-conditional model,
    ``label_maps`` cycled for a label-map model) from a fixed ``seed`` outside the training's
    random stream, so that the values of different steps compare; each channel is one image, taken
    through its modality's mapping and back (the clipping a written sample gets), and the first
    ``n`` images are scored. ``n`` is at most the number of real slices. FD with N <= F is regularised (``fid_from_features``), the same
    at every step.
    """

    key = "val/fd"
    selects_weights = False  # logged only: the encoder FD can rank noise above anatomy (module docstring)

    def __init__(
        self, real: np.ndarray, features: Callable[[np.ndarray], np.ndarray], task: Mapping[str, Any], mappings: Mapping[str, Mapping], *,
        n: int = VAL_SAMPLES, seed: int = 0, temperature: float = DEFAULT_TEMPERATURE, batch_size: int = 16, label_maps: np.ndarray | None = None,
    ) -> None:
        from medgen.synth.sample import _labels_for

        if len(real) < 2:
            raise ValueError(f"the validation split has {len(real)} usable slice(s); FD needs at least 2")
        self.features, self.task, self.mappings = features, task, mappings
        self.real_features = features(real)
        self.n = max(2, min(int(n), len(real)))
        self.seed, self.temperature, self.batch_size = int(seed), float(temperature), int(batch_size)
        if task.get("condition") == "label_map":
            if label_maps is None or len(label_maps) == 0:
                raise ValueError("a label-map model needs the validation slices' label maps to sample from")
            self.labels: list[Any] = [None] * self.n
            self.conditions: list[Any] = [torch.as_tensor(np.asarray(label_maps[i % len(label_maps)]), dtype=torch.long) for i in range(self.n)]
        else:
            self.labels = self.conditions = _labels_for(dict(task), self.n, None)

    def images(self, model: torch.nn.Module) -> np.ndarray:
        """The ``n`` sampled images (n, H, W) on the normalised scale, as the evaluation reads them."""
        from medgen.synth.sample import _channel_modalities, _draw

        samples = _draw(model, self.conditions, temperature=self.temperature, seed=self.seed, batch_size=self.batch_size).numpy()
        out = []
        for sample, label in zip(samples, self.labels):
            for channel, modality in zip(sample, _channel_modalities(dict(self.task), label, sample.shape[0])):
                mapping = self.mappings[modality]
                out.append(apply_normalisation(invert_normalisation(channel, mapping), mapping))
        return np.stack(out[: self.n])

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        """``{"val/fd": FD}``; NaN (never the best) when the model keeps sampling NaN/inf."""
        try:
            fake = self.features(self.images(model))
        except FloatingPointError:
            return {self.key: math.nan}
        if not np.isfinite(fake).all():
            return {self.key: math.nan}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # N <= F: regularised alike at every step
            return {self.key: fid_from_features(self.real_features, fake)}


def generation_validator(
    task: Mapping[str, Any], prep_root: Path, subjects: Sequence[str], mappings: Mapping[str, Mapping], encoder: Path | str, *,
    val_every: int, spatial_dims: int = 2, seed: int = 0, n: int = VAL_SAMPLES, max_real: int = VAL_MAX_REAL, temperature: float = DEFAULT_TEMPERATURE,
) -> GenerationValidator | None:
    """FD in the encoder space (weights file ``encoder``) against the validation ``subjects``' slices:
    each modality of every slice whose head mask covers the task's ``min_mask_fraction``, a
    seeded subset of ``max_real`` (:func:`medgen.eval.generation_run._slices`, as the evaluation's test slices).
    Samples are drawn at ``temperature``, the one ``medgen sample`` will draw at.

    None (no validation curve) without ``val_every``, without validation subjects, or for a 3D
    model (the encoder sees 2D slices); ``model.pt`` holds the last weights either way. ``task`` is the trained model's (with ``classes``).
    """
    if val_every <= 0:
        return None
    if not subjects or spatial_dims != 2:
        log.warning("no generation validation (%s)",
                    "the split has no validation subjects" if not subjects else "the encoder scores 2D slices, this model is 3D")
        return None
    from medgen.data.settings import MIN_MASK_FRACTION
    from medgen.eval.encoder import EncoderFeatures
    from medgen.eval.generation_run import _slices
    from medgen.synth.sample import slice_label_maps

    modalities = list(task["modalities"])
    fraction = float(task.get("min_mask_fraction", MIN_MASK_FRACTION))
    real = _slices(Path(prep_root), subjects, modalities, max_real, seed, min_mask_fraction=fraction, split="validation")
    maps = slice_label_maps(Path(prep_root), subjects, modalities[:1], fraction) if task.get("condition") == "label_map" else None
    return GenerationValidator(real, EncoderFeatures(encoder), task, mappings, n=n, seed=seed, temperature=temperature, label_maps=maps)
