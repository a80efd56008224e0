"""Name -> model class, and construction from a YAML options dict.

``build_model("gan", spatial_dims=2, image_size=64, in_channels=1)`` fills the model's config
dataclass (``cls.config_class``) and rejects unknown option names. Adding a model is adding a
file and an entry to :data:`MODELS` (and its tests: ``tests/test_model_contract.py`` runs over
every entry). Each model class declares what it is (``kind``, ``paired``, ``conditions``; see
:class:`~medgen.models.base.GenerativeModel`); the queries below derive every list of models
by kind from those declarations.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from medgen.models.base import CONDITIONS, KINDS, GenerativeModel
from medgen.models.bigan import BiGAN
from medgen.models.cgan import ConditionalGAN
from medgen.models.cut import CUT, FastCUT
from medgen.models.cyclegan import CycleGAN
from medgen.models.gan import DCGAN
from medgen.models.glow import Glow
from medgen.models.ldm import LatentDiffusion
from medgen.models.pix2pix import Pix2Pix
from medgen.models.spade import SPADEGAN
from medgen.models.stylegan import StyleGAN
from medgen.models.vaegan import VAEGAN

MODELS: dict[str, type[GenerativeModel]] = {
    "glow": Glow,
    "gan": DCGAN,
    "cgan": ConditionalGAN,
    "cyclegan": CycleGAN,
    "cut": CUT,
    "fastcut": FastCUT,
    "pix2pix": Pix2Pix,
    "spade": SPADEGAN,
    "stylegan": StyleGAN,
    "ldm": LatentDiffusion,
    "vaegan": VAEGAN,
    "bigan": BiGAN,
}


def model_options(name: str) -> dict[str, Any]:
    """The option names of model ``name`` with their defaults."""
    config_class = _model_class(name).config_class
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory()) for f in dataclasses.fields(config_class)}


def _model_class(name: str) -> type[GenerativeModel]:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}") from None


def build_model(name: str, **options: Any) -> GenerativeModel:
    """Instantiate model ``name`` from its options.

    Raises ``KeyError`` (listing the valid names) for an unknown model, ``TypeError`` naming an
    unknown option and listing the valid ones, and ``ValueError`` for an invalid value.
    """
    cls = _model_class(name)
    config_class = cls.config_class
    valid = [f.name for f in dataclasses.fields(config_class)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))} for model {name!r}; valid options: {', '.join(valid)}")
    return cls(config_class(**options))


def models_of_kind(*kinds: str) -> frozenset[str]:
    """Names of the models of any of ``kinds`` (of :data:`~medgen.models.base.KINDS`)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown model kind(s) {', '.join(map(repr, unknown))}; valid kinds: {', '.join(KINDS)}")
    return frozenset(name for name, cls in MODELS.items() if cls.kind in kinds)


def task_kind(name: str) -> str:
    """The kind of task model ``name`` serves: ``"translation"`` or ``"generation"`` (label-map models included)."""
    return "translation" if _model_class(name).kind == "translation" else "generation"


def is_paired(name: str) -> bool:
    """Whether model ``name`` trains on registered (source, target) pairs."""
    return _model_class(name).paired


def paired_models() -> frozenset[str]:
    """Names of the models trained on registered pairs."""
    return frozenset(name for name, cls in MODELS.items() if cls.paired)


def models_with_condition(condition: str | None) -> frozenset[str]:
    """Names of the models that can be trained with task condition ``condition``."""
    return frozenset(name for name, cls in MODELS.items() if condition in cls.conditions)


def class_conditions() -> frozenset[str]:
    """Task conditions served as an integer class label: those of the models with an ``n_classes`` option."""
    found: set[str | None] = set()
    for cls in MODELS.values():
        if any(f.name == "n_classes" for f in dataclasses.fields(cls.config_class)):
            found |= cls.conditions
    return frozenset(c for c in found if c is not None and c in CONDITIONS)
