"""Baselines of a translation task: what trivial methods score on the same test subjects.

A translation model's error means something only beside what needs no learning. Three
baselines are fitted on the training split only, run over every test subject and scored by
exactly the code that scores the models (:func:`medgen.eval.translation_run.evaluate_translation`):

* ``identity_matched``: the source returned unchanged, its intensities mapped onto the target's
  distribution by quantile matching (quantiles pooled over the training subjects inside their
  head masks, source and target each on their normalised scale);
* ``intensity_lookup``: a voxel-wise lookup, source intensity bin -> median target value of the
  training voxels in that bin (the median minimises the absolute error that MAE reports);
* ``resolution_floor``: the ground truth itself taken onto the models' grid (RAS at the training
  spacing) and back onto its own grid, CT clipped to the window the models can express: what a
  perfect model of that grid would score.

The first two run through :func:`medgen.synth.translate.translate_volume`, with a voxel-wise
function in place of the network: the same RAS grid, head mask, per-subject source
normalisation, return to units through the training cohort's target mapping, blanking outside
the head and resampling onto the input grid as a model gets. Their fitted curves are kept in
the output so that the numbers can be checked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from medgen.data.grid import resample_to, to_ras_grid
from medgen.data.mask import head_mask
from medgen.data.normalise import background_value, is_ct
from medgen.data.preprocess import median_normalisation
from medgen.data.splits import read_split
from medgen.io.atomic import atomic_write_json
from medgen.io.nifti import load_nifti, save_nifti
from medgen.layout import MASK_FILE
from medgen.models.artifact import ModelCard, TrainedModel

log = logging.getLogger(__name__)

#: baseline name -> what it is (written into every metrics file beside the numbers)
BASELINES: dict[str, str] = {
    "identity_matched": "source unchanged, intensities quantile-matched to the target's training distribution",
    "intensity_lookup": "voxel-wise lookup: median target value per source-intensity bin, fitted on the training split",
    "resolution_floor": "ground truth through the models' grid and back (the best a perfect model of that grid can score)",
}
#: quantile levels of the identity + intensity matching baseline
N_QUANTILES = 1001
#: source-intensity bins of the lookup baseline (equal-count bins over the normalised source scale)
LOOKUP_BINS = 128


class IntensityMap:
    """A monotone-or-not piecewise-linear curve ``x -> y`` on the normalised scales (clamped at the ends)."""

    def __init__(self, xp: np.ndarray, fp: np.ndarray) -> None:
        xp, fp = np.asarray(xp, dtype=np.float64), np.asarray(fp, dtype=np.float64)
        if xp.ndim != 1 or xp.shape != fp.shape or xp.size < 2 or np.any(np.diff(xp) <= 0):
            raise ValueError("an intensity map needs >= 2 strictly increasing knots with one value each")
        self.xp, self.fp = xp, fp

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(x, dtype=np.float64), self.xp, self.fp).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {"x": [round(float(v), 6) for v in self.xp], "y": [round(float(v), 6) for v in self.fp]}


def _merge_ties(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique ``x`` (sorted) with the mean ``y`` of each: interpolation needs strictly increasing knots."""
    xs, inverse = np.unique(x, return_inverse=True)
    ys = np.bincount(inverse, weights=y) / np.bincount(inverse)
    return xs, ys


def fit_quantile_map(source: np.ndarray, target: np.ndarray, n_quantiles: int = N_QUANTILES) -> IntensityMap:
    """Histogram (quantile) matching: the source's q-quantile goes to the target's q-quantile."""
    levels = np.linspace(0.0, 1.0, n_quantiles)
    qs = np.quantile(np.asarray(source, dtype=np.float64), levels)
    qt = np.quantile(np.asarray(target, dtype=np.float64), levels)
    return IntensityMap(*_merge_ties(qs, qt))


def fit_lookup(source: np.ndarray, target: np.ndarray, bins: int = LOOKUP_BINS) -> IntensityMap:
    """Median ``target`` per bin of ``source`` (equal-count bins), knots at each bin's mean source value.

    ``source`` and ``target`` are paired voxel values (same length). Equal-count bins keep every
    median well estimated; bins that collapse onto one source value (clipped ends) merge.
    """
    s, t = np.asarray(source, dtype=np.float64).ravel(), np.asarray(target, dtype=np.float64).ravel()
    if s.shape != t.shape or s.size == 0:
        raise ValueError(f"paired voxel values needed, got {s.shape} and {t.shape}")
    order = np.argsort(s, kind="stable")
    s, t = s[order], t[order]
    xs, ys = [], []
    for chunk in np.array_split(np.arange(s.size), min(bins, s.size)):
        xs.append(s[chunk].mean())
        ys.append(np.median(t[chunk]))
    return IntensityMap(*_merge_ties(np.array(xs), np.array(ys)))


def training_voxels(prep_root: Path, subjects: Sequence[str], source: str, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Paired normalised (source, target) values inside each training subject's head mask."""
    src, tgt = [], []
    for subject in subjects:
        folder = Path(prep_root) / subject
        mask = load_nifti(folder / MASK_FILE).array > 0
        src.append(load_nifti(folder / f"{source}.nii.gz").array[mask])
        tgt.append(load_nifti(folder / f"{target}.nii.gz").array[mask])
    if not src:
        raise ValueError("no training subjects to fit the baselines on")
    return np.concatenate(src), np.concatenate(tgt)


class VoxelwiseTranslator(nn.Module):
    """A "translation model" that applies an :class:`IntensityMap` to every voxel (no context)."""

    divisor = 1  # no padding needed: nothing here mixes neighbouring voxels

    def __init__(self, curve: IntensityMap) -> None:
        super().__init__()
        self.curve = curve

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.curve(x.detach().cpu().numpy())).to(x.device)


def cohort_card(prep_root: Path, subjects: Sequence[str], task: Mapping[str, Any], name: str) -> ModelCard:
    """The part of a trained model's card that translation reads, built as ``medgen train`` builds it."""
    mappings, first = median_normalisation(Path(prep_root), subjects, [task["source"], task["target"]])
    return ModelCard(
        model=name,
        task={"name": task.get("name"), "kind": "translation", "source": task["source"], "target": task["target"]},
        data={
            "spatial_dims": 2,
            "slice_axis": 2,
            "spacing": first["geometry"]["spacing"],
            "size": first["geometry"]["size"],
            "preprocess": {k: first["config"][k] for k in ("mr_norm", "mr_percentiles", "ct_window")},
            "mappings": mappings,
        },
    )


def resolution_floor(source_path: Path, truth_path: Path, card: ModelCard, out_path: Path) -> Path:
    """The ground truth on the models' grid and back, blanked outside the source's head mask as a
    model's output is, CT clipped to the normalisation window (a model's output cannot leave it)."""
    source, truth = load_nifti(source_path), load_nifti(truth_path)
    if source.array.shape != truth.array.shape or not np.allclose(source.affine, truth.affine, atol=1e-3):
        raise ValueError(f"{truth_path}: grid differs from the source {source_path}; the floor needs them registered on one grid")
    spacing = tuple(float(s) for s in card.data["spacing"])
    target = card.task["target"]
    grid = to_ras_grid(truth, spacing)
    values = grid.array
    if is_ct(target):
        values = np.clip(values, *card.data["preprocess"]["ct_window"])
    mask, _ = head_mask(card.task["source"], to_ras_grid(source, spacing).array)
    if mask.any():
        values = np.where(mask, values, np.float32(background_value(target))).astype(np.float32)
    back = resample_to(values, grid.affine, truth.array.shape, truth.affine)
    return save_nifti(out_path, back.array, truth.affine)


def run_baselines(
    *,
    task: Mapping[str, Any],
    prep_root: Path,
    nifti_root: Path,
    split_path: Path,
    out_dir: Path,
    out_json: Path,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the baselines on the training split, write their test volumes under
    ``out_dir/<baseline>/<subject>.nii.gz``, score them like a model and write ``out_json``::

        {"kind": "translation_baselines", "task", "source", "target", "units",
         "baselines": {name: {"description", "per_subject": [...], "aggregate": {...}, "curve"?}}}
    """
    from medgen.eval.translation_run import evaluate_translation
    from medgen.synth.translate import translate_volume

    split = read_split(split_path)
    source, target = task["source"], task["target"]
    src, tgt = training_voxels(prep_root, split["train"], source, target)
    log.info("fitting baselines on %d voxels of %d training subjects", src.size, len(split["train"]))
    curves = {"identity_matched": fit_quantile_map(src, tgt), "intensity_lookup": fit_lookup(src, tgt)}
    out_dir = Path(out_dir)
    result: dict[str, Any] = {"kind": "translation_baselines", "task": task.get("name"), "source": source, "target": target, "baselines": {}}
    for name in BASELINES:
        folder = out_dir / name
        card = cohort_card(prep_root, split["train"], task, name)
        for subject in split["test"]:
            src_path, out_path = Path(nifti_root) / subject / f"{source}.nii.gz", folder / f"{subject}.nii.gz"
            if name == "resolution_floor":
                resolution_floor(src_path, Path(nifti_root) / subject / f"{target}.nii.gz", card, out_path)
            else:
                trained = TrainedModel(model=VoxelwiseTranslator(curves[name]), card=card)
                # voxel-wise: the mirror image's translation, mirrored back, is the same volume
                translate_volume(trained, src_path, out_path, progress=False, mirror_average=False)
        scored = evaluate_translation(
            task=task, model=name, pred_dir=folder, nifti_root=Path(nifti_root), prep_root=Path(prep_root),
            split_path=Path(split_path), out_json=out_dir / f"{name}.json", seed=seed,
        )
        entry = {"description": BASELINES[name], "per_subject": scored["per_subject"], "aggregate": scored["aggregate"]}
        if name in curves:
            entry["curve"] = curves[name].to_dict()
        result["units"] = scored.get("units")
        result["baselines"][name] = entry
        log.info("baseline %s: MAE %.4g %s", name, scored["aggregate"].get("mae", {}).get("mean", float("nan")), scored.get("units"))
    atomic_write_json(out_json, result)
    return result
