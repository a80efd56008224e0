"""Evaluation settings: the defaults of the config's ``eval`` section and of ``medgen evaluate``,
``medgen encoder`` and ``medgen downstream`` (the schema is checked against them by the tests).
Nothing heavy is imported here, so that the command line's parser can read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EvalSettings:
    """Distribution metrics of generation models (config section ``eval``)."""

    features: tuple[str, ...] = ("encoder", "radiomics")  # feature spaces of FD/KID/PRDC
    encoder_steps: int = 300  # training steps of the study's in-domain encoder
    max_real: int = 256  # real test slices drawn for distribution metrics
    # pretrained extractors named in features: {name: {"weights": path, **options}}
    extractors: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class DownstreamSettings:
    """The segmentation network of the downstream-utility test (config section ``eval.downstream``)."""

    steps: int = 300  # training steps per setting and seed
    batch_size: int = 16
    channels: tuple[int, ...] = (16, 32, 64)  # UNet channels per level
    seeds: tuple[int, ...] = (0, 1, 2)
    # Slices whose head mask covers less than this share of the slice are left out of the Dice
    # study. Stricter than preprocess.min_mask_fraction (0.05, the slices models train on): near
    # the vertex and the skull base a slice holds a few voxels of each tissue, where per-class
    # Dice is dominated by single voxels.
    min_mask_fraction: float = 0.15
