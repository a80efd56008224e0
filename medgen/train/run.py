"""Train one model of one task from preprocessed data, and load trained models back.

The file a training run leaves for later stages is ``out_dir/model.pt``: EMA weights plus the
*meta* dictionary below, which is everything sampling and translation need to rebuild the model
and to return to physical units without the training data::

    {"model": name, "options": {...},                      # build_model(name, **options)
     "task": {"name", "kind": "generation"|"translation", "source", "target" | "modalities",
              "condition", "classes"},
     "data": {"spatial_dims", "slice_axis", "spacing", "size", "patch_size",
              "preprocess": {"mr_norm", "mr_percentiles", "ct_window"},
              "mappings": {modality: normalisation mapping (median over training subjects)},
              "affine": a training subject's preprocessed RAS affine},
     "medgen_version": ...}
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from medgen import __version__
from medgen.data.splits import read_split
from medgen.data.tasks import task_dataset, with_augmentation
from medgen.models.base import GenerativeModel
from medgen.models.registry import MODELS, build_model
from medgen.train import checkpoint as ckpt
from medgen.train.engine import TrainConfig, Trainer
from medgen.train.validation import PairedSlices, TranslationValidator

log = logging.getLogger(__name__)

#: translation models trained on registered pairs; the others see unpaired targets
PAIRED_MODELS = frozenset({"pix2pix"})


@dataclass
class TrainedModel:
    """A model ready for inference (eval mode, EMA weights) and its meta dictionary."""

    model: GenerativeModel
    meta: dict[str, Any]
    path: Path | None = None


def _median_mappings(prep_root: Path, subjects: Sequence[str], modalities: Sequence[str]) -> tuple[dict[str, dict], dict[str, Any]]:
    """Per modality, the training subjects' normalisation with median scale and offset (exact
    for CT's fixed HU window; the cohort's typical scale for MR), and the first subject's file."""
    docs = [json.loads((prep_root / s / "normalisation.json").read_text()) for s in subjects]
    mappings = {}
    for mod in modalities:
        per_subject = [d["normalisation"][mod] for d in docs]
        mapping = dict(per_subject[0])
        for key in ("scale", "offset"):
            mapping[key] = float(np.median([m[key] for m in per_subject]))
        if mapping.get("clip_normalised") is not None:
            lo, hi = mapping["clip_normalised"]
            mapping["source_range"] = [mapping["offset"] + lo * mapping["scale"], mapping["offset"] + hi * mapping["scale"]]
        mapping["method"] = f"{mapping.get('method', 'linear')} (median of {len(per_subject)} training subjects)"
        mappings[mod] = mapping
    return mappings, docs[0]


def _task_modalities(task: Mapping[str, Any]) -> list[str]:
    return [task["source"], task["target"]] if task["kind"] == "translation" else list(task["modalities"])


#: task conditions that are class labels (a label map is not)
CLASS_CONDITIONS = frozenset({"modality", "slice_bin", "lesion"})


def _fill_shape_options(name: str, options: dict[str, Any], sample: Mapping[str, torch.Tensor], n_classes: int | None) -> dict[str, Any]:
    """Options the data decide (image size; class count of class-conditioned tasks) unless the
    config set them."""
    fields = {f.name for f in dataclasses.fields(MODELS[name].config_class)}
    image = sample.get("image", sample.get("source"))
    if "image_size" in fields and "image_size" not in options:
        options["image_size"] = int(image.shape[-1])
    if "n_classes" in fields and "n_classes" not in options and n_classes is not None:
        options["n_classes"] = n_classes
    return options


def _source_context(task: Mapping[str, Any], model_name: str, options: Mapping[str, Any], spatial_dims: int) -> int:
    """Neighbour slices on each side of a 2.5D source: a paired 2D translation model with
    ``in_channels`` = 2·context + 1 sees the source's adjacent slices as channels (0 otherwise)."""
    channels = int(options.get("in_channels", 1))
    if task["kind"] != "translation" or channels == 1:
        return 0
    if spatial_dims != 2 or model_name not in PAIRED_MODELS or channels % 2 == 0:
        raise ValueError(
            f"{model_name}: in_channels {channels} asks for a 2.5D source (adjacent slices as channels), which needs a paired 2D "
            f"model ({', '.join(sorted(PAIRED_MODELS))}, spatial_dims 2) and an odd count (2 x neighbours + 1); use in_channels 1, 3, 5, ..."
        )
    return (channels - 1) // 2


def train_task(
    *,
    prep_root: Path | str,
    split_path: Path | str,
    task: Mapping[str, Any],
    model_name: str,
    options: Mapping[str, Any],
    train_cfg: TrainConfig,
    extra_manifests: Sequence[Path | str] = (),
    resume: bool = True,
) -> Path:
    """Train ``model_name`` on the training split of ``task``; returns the path of ``model.pt``."""
    prep_root = Path(prep_root)
    if model_name not in MODELS:
        raise KeyError(f"unknown model {model_name!r}; valid models: {', '.join(sorted(MODELS))}")
    split = read_split(split_path)
    subjects = split["train"]
    options = dict(options)
    spatial_dims = int(options.setdefault("spatial_dims", 2))
    patch_size = options.pop("patch_size", None) if spatial_dims == 3 else None
    context = _source_context(task, model_name, options, spatial_dims)
    dataset = task_dataset(
        task, prep_root, subjects, model_paired=model_name in PAIRED_MODELS, spatial_dims=spatial_dims, patch_size=patch_size, seed=train_cfg.seed, context=context
    )
    modalities = _task_modalities(task)
    mappings, first = _median_mappings(prep_root, subjects, modalities)
    classes = getattr(dataset, "classes", None)
    if extra_manifests:
        dataset = with_augmentation(dataset, extra_manifests, mappings, classes or modalities)
    n_classes = len(classes) if classes and task.get("condition") in CLASS_CONDITIONS else None
    options = _fill_shape_options(model_name, options, dataset[0], n_classes)
    ckpt.seed_everything(train_cfg.seed)  # the initial weights are a function of the seed
    model = build_model(model_name, **options)
    meta = {
        "model": model_name,
        "options": options,
        "task": {**dict(task), "classes": classes},
        "data": {
            "spatial_dims": spatial_dims,
            "slice_axis": 2,
            "spacing": first["geometry"]["spacing"],
            "size": first["geometry"]["size"],
            "patch_size": list(patch_size) if patch_size else None,
            "preprocess": {k: first["config"][k] for k in ("mr_norm", "mr_percentiles", "ct_window")},
            "mappings": mappings,
            "affine": first["geometry"]["affine"],
            "train_subjects": list(subjects),
            "extra_manifests": [str(m) for m in extra_manifests],
        },
        "medgen_version": __version__,
    }
    log.info("training %s on task %s: %d items from %d subjects", model_name, task.get("name"), len(dataset), len(subjects))
    validator = _translation_validator(task, prep_root, split.get("val", []), mappings, spatial_dims, patch_size, train_cfg, context)
    trainer = Trainer(model, dataset, train_cfg, config_snapshot=meta, validator=validator)
    trainer.fit(resume=resume)
    return trainer.save_final()


def _translation_validator(
    task: Mapping[str, Any], prep_root: Path, subjects: Sequence[str], mappings: Mapping[str, Any], spatial_dims: int, patch_size: Any, train_cfg: TrainConfig,
    context: int = 0,
) -> TranslationValidator | None:
    """MAE on the validation subjects for translation tasks with ``val_every`` set (else None)."""
    if task["kind"] != "translation" or train_cfg.val_every <= 0:
        return None
    if not subjects:
        log.warning("train.val_every is set but the split has no validation subjects: model.pt holds the last weights")
        return None
    pairs = PairedSlices(prep_root, subjects, task["source"], task["target"], spatial_dims=spatial_dims, patch_size=patch_size, seed=train_cfg.seed, context=context)
    return TranslationValidator(pairs, target=task["target"], target_mapping=mappings[task["target"]])


def load_trained(path: Path | str, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild a model from ``model.pt`` (weights-only load) in eval mode on ``device``."""
    path = Path(path)
    state = ckpt.load_checkpoint(path, map_location=device, expect=ckpt.FINAL_FORMAT)
    meta = state["config"]
    if not meta or "model" not in meta:
        raise ckpt.CheckpointError(f"{path}: holds no model description; it was not written by medgen train")
    model = build_model(meta["model"], **meta["options"])
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return TrainedModel(model=model, meta=meta, path=path)
