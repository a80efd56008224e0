"""File names the workflow produces per task and model, and the arguments of their jobs.

Seeds: a task that lists ``seeds: [0, 1, 2]`` trains each model once per seed. A *run* names one
training of one model and is what the ``{model}`` wildcard of every rule holds: the model name
alone when the task has at most one seed (``pix2pix``: layout unchanged), else the model name and
the seed folder (``pix2pix/seed-1``), so that every per-model path gains one level::

    models/{task}/{model}/seed-{s}/model.pt        synth/{task}/{model}/seed-{s}/{subject}.nii.gz
    augment/{task}/{model}/seed-{s}/manifest.tsv   metrics/{task}/{model}/seed-{s}.json

The per-task files ``metrics/{task}/baselines.json`` and ``metrics/{task}/downstream.json`` sit
beside the models' files; the wildcard only matches registry model names, so they never clash.
Every path is built by :mod:`medgen.layout`.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from medgen import layout
from medgen.layout import SEED_FOLDER


def model_wildcard() -> str:
    """Regex of the ``{model}`` wildcard: a registry model name, optionally ``/seed-<n>``."""
    from medgen.models.registry import MODELS

    names = "|".join(sorted(MODELS, key=len, reverse=True))
    return rf"(?:{names})(?:/{SEED_FOLDER}[0-9]+)?"


def task_seeds(cfg: dict[str, Any], task: str) -> list[int]:
    """The training seeds of a task: its ``seeds`` list, else ``[train.seed]``."""
    return list(cfg["tasks"][task].get("seeds") or [cfg["train"]["seed"]])


def task_models(cfg: dict[str, Any], kind: str | None = None) -> Iterator[tuple[str, str]]:
    """(task, run) pairs of the config, optionally only of one task kind (see module doc)."""
    for task, spec in cfg["tasks"].items():
        if kind is None or spec["kind"] == kind:
            seeds = task_seeds(cfg, task)
            for model in spec["models"]:
                if len(seeds) > 1:
                    for seed in seeds:
                        yield task, layout.run_name(model, seed)
                else:
                    yield task, model


def run_model(run: str) -> str:
    """The model name of a run (``pix2pix/seed-1`` -> ``pix2pix``)."""
    return run.split("/", 1)[0]


def run_seed(cfg: dict[str, Any], task: str, run: str) -> int:
    """The training seed of a run: from its seed folder, else the task's only seed."""
    _, _, folder = run.partition("/")
    return int(folder.removeprefix(SEED_FOLDER)) if folder else task_seeds(cfg, task)[0]


def task_json(cfg: dict[str, Any], task: str) -> str:
    """The task description ``medgen train`` takes (without its models)."""
    spec = {k: v for k, v in cfg["tasks"][task].items() if k not in ("models", "samples", "seeds", "downstream")}
    # one slice threshold for training and evaluation (read back from the trained model's task)
    spec["min_mask_fraction"] = cfg["preprocess"]["min_mask_fraction"]
    return json.dumps({"name": task, **spec}, sort_keys=True)


def model_entry(cfg: dict[str, Any], task: str, model: str) -> dict[str, Any]:
    """A model's entry of a validated config, ``{options, train, sample}`` (``model`` may be a run)."""
    return cfg["tasks"][task]["models"][run_model(model)]


def model_options_json(cfg: dict[str, Any], task: str, model: str) -> str:
    """The model's options as JSON (``medgen train --options-json``; ``model`` may be a run)."""
    return json.dumps(model_entry(cfg, task, model)["options"], sort_keys=True)


def train_settings(cfg: dict[str, Any], task: str, model: str) -> dict[str, Any]:
    """A run's training settings: the ``train`` section with the model's own ``train`` keys over
    it and the run's seed (``model`` may be a run)."""
    return {**cfg["train"], **model_entry(cfg, task, model)["train"], "seed": run_seed(cfg, task, model)}


def train_settings_json(cfg: dict[str, Any], task: str, model: str) -> str:
    """:func:`train_settings` as JSON (``medgen train --settings``)."""
    return json.dumps(train_settings(cfg, task, model), sort_keys=True)


def downstream_tasks(cfg: dict[str, Any]) -> list[str]:
    """Tasks whose synthetic data is tried for segmentation (``downstream: true``)."""
    return [task for task, spec in cfg["tasks"].items() if spec.get("downstream")]


def downstream_models(cfg: dict[str, Any], results: str, task: str) -> dict[str, list[str]]:
    """Model name -> its ``model.pt`` files, one per seed, for ``medgen downstream --model``."""
    out: dict[str, list[str]] = {}
    for t, run in task_models(cfg):
        if t == task:
            out.setdefault(run_model(run), []).append(layout.model_file(results, task, run))
    return out
