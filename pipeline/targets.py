"""File names the workflow produces per task and model, and the arguments of their jobs."""

from __future__ import annotations

import json
from typing import Any, Iterator

from pipeline.config import TRAIN_KEYS


def task_models(cfg: dict[str, Any], kind: str | None = None) -> Iterator[tuple[str, str]]:
    """(task, model) pairs of the config, optionally only of one task kind."""
    for task, spec in cfg["tasks"].items():
        if kind is None or spec["kind"] == kind:
            for model in spec["models"]:
                yield task, model


def task_json(cfg: dict[str, Any], task: str) -> str:
    """The task description ``medgen train`` takes (without its models)."""
    spec = {k: v for k, v in cfg["tasks"][task].items() if k not in ("models", "samples")}
    # one slice threshold for training and evaluation (read back from the trained model's task)
    spec["min_mask_fraction"] = cfg["preprocess"]["min_mask_fraction"]
    return json.dumps({"name": task, **spec}, sort_keys=True)


def model_options_json(cfg: dict[str, Any], task: str, model: str) -> str:
    """The model's options (its entry without the training keys) as JSON."""
    entry = cfg["tasks"][task]["models"][model] or {}
    return json.dumps({k: v for k, v in entry.items() if k not in TRAIN_KEYS}, sort_keys=True)


def train_setting(cfg: dict[str, Any], task: str, model: str, key: str) -> Any:
    """A training setting, the model's own override first, then the ``train`` section."""
    entry = cfg["tasks"][task]["models"][model] or {}
    return entry.get(key, cfg["train"][key])
