"""The config schema rejects values that could only fail later, when a job runs: the bad key is named."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, validate_config


def config_with(model_entry: dict, *, train: dict | None = None, models: dict | None = None) -> dict:
    cfg = {
        "data": {"phantom": {"subjects": 4}},
        "modalities": ["T1w", "CT"],
        "tasks": {"t1": {"kind": "generation", "modalities": ["T1w"], "models": {"gan": model_entry} if models is None else models}},
    }
    if train is not None:
        cfg["train"] = train
    return cfg


@pytest.mark.parametrize(
    "entry, key",
    [
        ({"train": {"steps": 0}}, "tasks.t1.models.gan.train.steps"),
        ({"train": {"steps": -5}}, "tasks.t1.models.gan.train.steps"),
        ({"train": {"batch_size": 0}}, "tasks.t1.models.gan.train.batch_size"),
        ({"sample": {"temperature": 0}}, "tasks.t1.models.gan.sample.temperature"),
        ({"options": {"spatial_dims": 4}}, "tasks.t1.models.gan.options.spatial_dims"),
        ({"options": {"patch_size": [16, 0, 16]}}, "tasks.t1.models.gan.options.patch_size.1"),
    ],
)
def test_model_entry_values_that_would_fail_in_the_job_are_refused(entry, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        validate_config(config_with(entry))


@pytest.mark.parametrize("train, key", [({"steps": 0}, "train.steps"), ({"batch_size": 0}, "train.batch_size"), ({"ckpt_every": 0}, "train.ckpt_every")])
def test_train_section_minimums(train, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        validate_config(config_with({}, train=train))


def test_empty_model_list_is_refused():
    with pytest.raises(ConfigError, match="config key 'tasks.t1.models'"):
        validate_config(config_with({}, models={}))


def test_valid_entries_pass():
    cfg = validate_config(config_with({"options": {"ngf": 8}, "train": {"steps": 1, "batch_size": 1}, "sample": {"temperature": 0.7}}))
    assert cfg["tasks"]["t1"]["models"]["gan"]["train"]["steps"] == 1
