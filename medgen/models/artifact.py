"""The trained-model file ``model.pt``: its card (what the model is) and its weights.

This module is the one owner of the file's layout. ``medgen train`` writes it with :func:`save`;
sampling, translation, evaluation, the report and the command line read it with :func:`load`
(the model rebuilt for inference, and its card) or :func:`read_card` (the card alone, without
building the network or reading the weights into memory). Nothing else knows its keys.

The file is a plain dict loaded with ``torch.load(..., weights_only=True)``
(:mod:`medgen.io.torch_load`), so nothing in it can execute code when read::

    {"format": "medgen-model", "version": 2,
     "card": ModelCard as a dict (see the class),
     "weights": the model's state dict (EMA weights when training kept an EMA)}

Version-1 files (the card's facts spread over ``config``, ``train_config``, ``validation``, ...
beside the weights under ``model``) are read as well: :func:`read` converts them.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypedDict

import torch
from torch import nn

from medgen import __version__
from medgen.errors import ModelFileError
from medgen.io.atomic import atomic_write_with
from medgen.io.torch_load import safe_load

__all__ = ["FILE_NAME", "FORMAT", "VERSION", "ModelCard", "TrainedModel", "save", "read", "read_card", "load", "versions"]

FILE_NAME = "model.pt"
FORMAT = "medgen-model"
VERSION = 2

#: what a file of this format is called in messages, and what to do when one is unusable
WHAT = f"trained model ({FILE_NAME})"
REMEDY = f"Pass the {FILE_NAME} that medgen train wrote into its run folder (--out)."
#: the ``format`` of a training checkpoint (``checkpoint.pt``), recognised to say what to pass instead
CHECKPOINT_FORMAT = "medgen-checkpoint"
NOT_A_CHECKPOINT = (
    f"is a training checkpoint (the state to resume training from), not a trained model; "
    f"pass {FILE_NAME} from the same run folder (medgen train writes it when training finishes)"
)


class TaskInfo(TypedDict, total=False):
    """The task a model was trained for (the config's ``tasks.<name>`` entry, plus its classes)."""

    name: str
    kind: str  # "generation" | "translation"
    source: str  # translation: input modality
    target: str  # translation: output modality
    modalities: list[str]  # generation: the modalities sampled
    condition: str | None  # None | "modality" | "slice_bin" | "lesion" | "label_map"
    classes: list[Any] | None  # the class of each label of a class-conditioned task
    min_mask_fraction: float  # the training slices' head-mask threshold


class DataInfo(TypedDict, total=False):
    """The data grid and normalisation a model was trained on: what inference needs to return to
    physical units without the training data."""

    spatial_dims: int  # 2 (slices) or 3 (volumes / patches)
    slice_axis: int  # RAS axis of 2D slices
    spacing: list[float]  # mm, RAS
    size: list[int]  # voxels of the preprocessed grid
    patch_size: list[int] | None  # 3D training patches
    preprocess: dict[str, Any]  # mr_norm, mr_percentiles, ct_window (HU)
    mappings: dict[str, dict[str, Any]]  # modality -> normalisation mapping (median over training subjects)
    affine: list[list[float]]  # a training subject's preprocessed RAS affine
    train_subjects: list[str]
    extra_manifests: list[str]
    scale_relation: dict[str, Any]  # MR -> MR translation: target scale per source scale


@dataclass
class ModelCard:
    """What a trained model is: enough to rebuild it (``build_model(model, **options)``), to know
    what it was trained for and on, and to return its outputs to physical units."""

    model: str  #: registry name (medgen.models.registry.MODELS)
    options: dict[str, Any] = field(default_factory=dict)  #: the model's options, as built
    task: TaskInfo = field(default_factory=dict)  # type: ignore[assignment]
    data: DataInfo = field(default_factory=dict)  # type: ignore[assignment]
    versions: dict[str, str] = field(default_factory=dict)  #: medgen, torch and python that trained it
    seed: int | None = None
    fingerprint: dict[str, Any] | None = None  #: medgen.train.fingerprint.run_fingerprint of the run
    step: int | None = None  #: training steps completed when the weights were taken
    ema: bool | None = None  #: the weights are an exponential moving average
    validation: dict[str, Any] | None = None  #: {"key", "step", "value"} of the best validation, if validated
    train_config: dict[str, Any] = field(default_factory=dict)  #: the engine settings (TrainConfig)

    @property
    def kind(self) -> str | None:
        """The task kind: ``"generation"`` or ``"translation"``."""
        return self.task.get("kind")

    def to_dict(self) -> dict[str, Any]:
        """The card as plain values (what the file stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict`; ``TypeError`` naming keys that are no card field."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"unknown model card key(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(names))}")
        return cls(**dict(values))

    def with_training(self, *, step: int, ema: bool, train_config: Mapping[str, Any], validation: Mapping[str, Any] | None) -> ModelCard:
        """This card completed with what the training engine knows when it writes the weights."""
        return dataclasses.replace(
            self, step=int(step), ema=bool(ema), train_config=dict(train_config),
            validation=None if validation is None else dict(validation), seed=train_config.get("seed", self.seed),
        )


@dataclass
class TrainedModel:
    """A model ready for inference (eval mode, EMA weights) and its card."""

    model: nn.Module
    card: ModelCard
    path: Path | None = None


def versions() -> dict[str, str]:
    """The versions a card records: medgen, torch and python."""
    return {"medgen": str(__version__), "torch": str(torch.__version__), "python": platform.python_version()}


def save(path: Path | str, card: ModelCard, weights: Mapping[str, torch.Tensor]) -> Path:
    """Write ``card`` and ``weights`` (a state dict) to ``path`` atomically and durably."""
    state = {
        "format": FORMAT,
        "version": VERSION,
        "card": card.to_dict(),
        "weights": {k: v.detach().cpu() for k, v in weights.items()},
    }
    return atomic_write_with(path, lambda fh: torch.save(state, fh), durable=True)


def read(path: Path | str, *, map_location: str | torch.device = "cpu", mmap: bool = False) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """The card and the weights of a ``model.pt`` (weights-only load; no network is built).

    Raises :class:`~medgen.errors.ModelFileError` naming the file for anything that is not a
    trained model medgen can read (a training checkpoint, a foreign or newer file).
    """
    path = Path(path)
    state = safe_load(path, what=WHAT, remedy=REMEDY, map_location=map_location, mmap=mmap)
    found = state.get("format") if isinstance(state, dict) else type(state).__name__
    if found == CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path} {NOT_A_CHECKPOINT}")
    if found != FORMAT:
        raise ModelFileError(f"{path} is not a medgen {WHAT} (found {found!r}). {REMEDY}")
    version = int(state.get("version", -1))
    if version > VERSION:
        raise ModelFileError(f"{path} was written by a newer medgen (format version {version} > {VERSION}); upgrade medgen")
    if version <= 1:
        return _card_of_version_1(path, state), state["model"]
    try:
        return ModelCard.from_dict(state["card"]), state["weights"]
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: damaged {WHAT}: {exc}. Retrain the model with medgen train.") from None


def read_card(path: Path | str) -> ModelCard:
    """The card of a ``model.pt`` alone: the weights stay on disk (memory-mapped), no network is built."""
    return read(path, mmap=True)[0]


def load(path: Path | str, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the model of a ``model.pt`` in eval mode on ``device``, with its card."""
    from medgen.models.registry import build_model  # the registry imports every model

    path = Path(path)
    card, weights = read(path, map_location=device)
    model = build_model(card.model, **card.options)
    model.load_state_dict(weights)
    model.to(device).eval()
    return TrainedModel(model=model, card=card, path=path)


def _card_of_version_1(path: Path, state: Mapping[str, Any]) -> ModelCard:
    """The card of a version-1 file: the training run's meta under ``config``, the engine's facts beside it."""
    meta = dict(state.get("config") or {})
    if "model" not in meta or "model" not in state:
        raise ModelFileError(f"{path}: holds no model description; it was not written by medgen train. {REMEDY}")
    train_config = dict(state.get("train_config") or {})
    return ModelCard(
        model=meta["model"],
        options=dict(meta.get("options") or {}),
        task=dict(meta.get("task") or {}),  # type: ignore[arg-type]
        data=dict(meta.get("data") or {}),  # type: ignore[arg-type]
        versions={"medgen": meta["medgen_version"]} if meta.get("medgen_version") else {},
        seed=train_config.get("seed"),
        fingerprint=meta.get("fingerprint"),
        step=state.get("step"),
        ema=state.get("ema"),
        validation=state.get("validation"),
        train_config=train_config,
    )
