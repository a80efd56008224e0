"""Train one model of one task from preprocessed data.

The file a training run leaves for later stages is ``out_dir/model.pt``: EMA weights plus the
model card (:class:`medgen.models.artifact.ModelCard`), which holds everything sampling and
translation need to rebuild the model and to return to physical units without the training
data. :mod:`medgen.models.artifact` owns that file; this module fills the card.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from medgen.data.normalise import is_ct
from medgen.data.preprocess import load_normalisation, median_normalisation
from medgen.data.scale_relation import fit_scale_relation
from medgen.data.splits import read_split
from medgen.data.tasks import task_dataset, with_augmentation
from medgen.errors import OptionError
from medgen.models import artifact
from medgen.models.registry import MODELS, build_model, class_conditions, is_paired
from medgen.synth import DEFAULT_TEMPERATURE
from medgen.train import checkpoint as ckpt
from medgen.train import fingerprint as fp
from medgen.train.distributed import env_from_environment
from medgen.train.engine import TrainConfig, Trainer
from medgen.train.validation import PairedSlices, TranslationValidator, generation_validator

log = logging.getLogger(__name__)

def _scale_relation(prep_root: Path, subjects: Sequence[str], source: str, target: str) -> dict[str, Any]:
    """The cohort's relation between source and target MR scales (medgen.data.scale_relation)."""
    docs = [load_normalisation(prep_root / s) for s in subjects]
    return fit_scale_relation(subjects, [d[source] for d in docs], [d[target] for d in docs])


def _task_modalities(task: Mapping[str, Any]) -> list[str]:
    return [task["source"], task["target"]] if task["kind"] == "translation" else list(task["modalities"])


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


#: options medgen's training adds to a model's own (``spatial_dims``, ``patch_size`` of 3D models)
ENGINE_OPTIONS = frozenset({"spatial_dims", "patch_size"})


def _check_option_names(model_name: str, options: Mapping[str, Any]) -> None:
    """:class:`OptionError` naming unknown option keys and the valid ones, before anything is built."""
    valid = [f.name for f in dataclasses.fields(MODELS[model_name].config_class)]
    unknown = sorted(set(options) - set(valid) - ENGINE_OPTIONS)
    if unknown:
        raise OptionError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for model {model_name!r} (--options-json, or the "
            f"options of the model's entry under tasks.<task>.models in the config); valid options: {', '.join(sorted({*valid, *ENGINE_OPTIONS}))}"
        )


#: keys a task must have, by kind
TASK_KEYS = {"generation": ("modalities",), "translation": ("source", "target")}


def _check_task(task: Mapping[str, Any]) -> None:
    """:class:`OptionError` for a task description (``--task-json`` / ``tasks.<name>``) that lacks what its kind needs."""
    kind = task.get("kind")
    if kind not in TASK_KEYS:
        raise OptionError(f"--task-json: 'kind' must be 'generation' or 'translation', got {kind!r}")
    if task.get("flip_lr") and kind != "translation":
        raise OptionError(f"--task-json: flip_lr (mirrored training pairs) is an option of translation tasks, not {kind}")
    missing = [key for key in TASK_KEYS[kind] if not task.get(key)]
    if missing:
        raise OptionError(f"--task-json: a {kind} task needs {', '.join(map(repr, missing))}, e.g. "
                          + ('{"kind": "translation", "source": "T1w", "target": "CT"}' if kind == "translation"
                             else '{"kind": "generation", "modalities": ["T1w"]}'))


def _source_context(task: Mapping[str, Any], model_name: str, options: Mapping[str, Any], spatial_dims: int) -> int:
    """Neighbour slices on each side of a 2.5D source: a 2D translation model with
    ``in_channels`` = 2·context + 1 sees the source's adjacent slices as channels (0 otherwise).
    Paired or unpaired alike (the source's neighbours are the source volume's); a model whose
    losses cannot take a source of other channels than its target refuses it in its own options
    (CUT and FastCUT: PatchNCE encodes the translation with the generator's encoder)."""
    channels = int(options.get("in_channels", 1))
    if task["kind"] != "translation" or channels == 1:
        return 0
    if spatial_dims != 2 or channels % 2 == 0:
        raise ValueError(
            f"{model_name}: in_channels {channels} asks for a 2.5D source (adjacent slices as channels), which needs a 2D "
            "model (spatial_dims 2) and an odd count (2 x neighbours + 1); use in_channels 1, 3, 5, ..."
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
    on_mismatch: str = "refuse",
    restart: bool = False,
    encoder: Path | str | None = None,
    sample_temperature: float = DEFAULT_TEMPERATURE,
) -> Path:
    """Train ``model_name`` on the training split of ``task``; returns the path of ``model.pt``.

    A ``checkpoint.pt`` in the run folder is resumed only if it records this run's fingerprint
    (:mod:`medgen.train.fingerprint`); otherwise it is refused (``on_mismatch="refuse"``, raising
    :class:`~medgen.train.fingerprint.RunMismatchError`) or moved aside (``"restart"``).
    ``restart`` moves any previous run's files aside and trains from scratch. With ``encoder`` (the
    study encoder's weights) a generation model is validated by FD in its feature space, on samples
    drawn at ``sample_temperature`` (the one ``medgen sample`` will use)
    (:func:`~medgen.train.validation.generation_validator`).
    """
    prep_root = Path(prep_root)
    if model_name not in MODELS:
        raise KeyError(f"unknown model {model_name!r}; valid models: {', '.join(sorted(MODELS))}")
    # Everything random (the dataset's draws, the model's initial weights, augmentation, noise)
    # is created after this point, so the seed alone decides a fresh run. The trainer seeds again
    # (per rank) before the first step, or restores the checkpoint's RNG states on resume.
    ckpt.seed_everything(train_cfg.seed)
    split = read_split(split_path)
    subjects = split["train"]
    options = dict(options)
    _check_option_names(model_name, options)
    _check_task(task)
    spatial_dims = int(options.setdefault("spatial_dims", 2))
    patch_size = options.pop("patch_size", None) if spatial_dims == 3 else None
    context = _source_context(task, model_name, options, spatial_dims)
    dataset = task_dataset(
        task, prep_root, subjects, model_paired=is_paired(model_name), spatial_dims=spatial_dims, patch_size=patch_size, seed=train_cfg.seed, context=context
    )
    modalities = _task_modalities(task)
    mappings, first = median_normalisation(prep_root, subjects, modalities)
    classes = getattr(dataset, "classes", None)
    if extra_manifests:
        dataset = with_augmentation(dataset, extra_manifests, mappings, classes or modalities)
    n_classes = len(classes) if classes and task.get("condition") in class_conditions() else None
    options = _fill_shape_options(model_name, options, dataset[0], n_classes)
    ckpt.seed_everything(train_cfg.seed)  # the initial weights are a function of the seed
    model = build_model(model_name, **options)
    data: dict[str, Any] = {
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
    }
    if task["kind"] == "translation" and not is_ct(task["source"]) and not is_ct(task["target"]):
        data["scale_relation"] = _scale_relation(prep_root, subjects, task["source"], task["target"])
    fingerprint = fp.run_fingerprint(
        model=model_name,
        options=options,
        task=task,
        split=split,
        preprocess=first["config"],
        data=fp.data_checksums(prep_root, [*subjects, *split.get("val", [])], modalities),
        training=dataclasses.asdict(train_cfg),
        extra_data={str(m): fp.file_sha256(m) for m in extra_manifests},
    )
    card = artifact.ModelCard(
        model=model_name, options=options, task={**dict(task), "classes": classes}, data=data,  # type: ignore[typeddict-item]
        versions=artifact.versions(), seed=train_cfg.seed, fingerprint=fingerprint,
    )
    is_main = env_from_environment().is_main
    if restart:
        if is_main and (Path(train_cfg.out_dir) / ckpt.CHECKPOINT_NAME).exists():
            n = fp.move_run_aside(train_cfg.out_dir)
            log.info("--restart: moved the previous run's files in %s aside (*.stale-%d.*)", train_cfg.out_dir, n)
        resume = False
    elif resume:
        resume = fp.check_run_folder(train_cfg.out_dir, card.fingerprint, on_mismatch=on_mismatch, is_main=is_main)
    log.info("training %s on task %s: %d items from %d subjects", model_name, task.get("name"), len(dataset), len(subjects))
    validator = _translation_validator(task, prep_root, split.get("val", []), mappings, spatial_dims, patch_size, train_cfg, context)
    if encoder is not None and task["kind"] == "generation":
        validator = generation_validator(card.task, prep_root, split.get("val", []), mappings, encoder, val_every=train_cfg.val_every, spatial_dims=spatial_dims, seed=train_cfg.seed,
                                         temperature=sample_temperature)
    trainer = Trainer(model, dataset, train_cfg, card=card, validator=validator)
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
