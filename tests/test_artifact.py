"""model.pt (medgen.models.artifact): the card round trip, metadata without a network, version-1
files, and refusals that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medgen.errors import ModelFileError
from medgen.models import artifact, registry
from medgen.models.artifact import ModelCard

OPTIONS = {"image_size": 16, "ngf": 8, "ndf": 8, "latent_dim": 16}
TASK = {"name": "t1", "kind": "generation", "modalities": ["T1w"], "condition": None, "classes": None}
DATA = {"spatial_dims": 2, "slice_axis": 2, "spacing": [2.0, 2.0, 2.0], "size": [16, 16, 8],
        "mappings": {"T1w": {"kind": "linear", "scale": 500.0, "offset": 500.0}}}


def _gan() -> torch.nn.Module:
    torch.manual_seed(0)
    return registry.build_model("gan", **OPTIONS)


def _version_1(path: Path, weights: dict) -> Path:
    """A model.pt as medgen wrote it before the card (format version 1)."""
    torch.save({
        "format": "medgen-model", "version": 1, "step": 6, "model_class": "medgen.models.gan.DCGAN", "ema": True,
        "model": weights,
        "config": {"model": "gan", "options": OPTIONS, "task": TASK, "data": DATA, "medgen_version": "0.1.0",
                   "fingerprint": {"digest": "abc"}},
        "train_config": {"out_dir": "run", "max_steps": 6, "seed": 3}, "validation": None,
    }, path)
    return path


def test_card_and_weights_round_trip(tmp_path):
    model = _gan()
    card = ModelCard(model="gan", options=OPTIONS, task=TASK, data=DATA, versions=artifact.versions(), seed=3,
                     fingerprint={"digest": "abc"}, step=6, ema=True, validation={"key": "val/mae", "step": 4, "value": 0.1})
    path = artifact.save(tmp_path / "model.pt", card, model.state_dict())
    assert artifact.read_card(path) == card
    trained = artifact.load(path)
    assert trained.card == card and trained.path == path and not trained.model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained.model.state_dict()[key])


def test_read_card_builds_no_network(tmp_path, monkeypatch):
    path = artifact.save(tmp_path / "model.pt", ModelCard(model="gan", options=OPTIONS, task=TASK), _gan().state_dict())

    def refuse(*args, **kwargs):
        raise AssertionError("read_card built a network")

    monkeypatch.setattr(registry, "build_model", refuse)
    assert artifact.read_card(path).options == OPTIONS


def test_version_1_files_load(tmp_path):
    model = _gan()
    path = _version_1(tmp_path / "model.pt", model.state_dict())
    card = artifact.read_card(path)
    assert (card.model, card.options, card.task, card.data) == ("gan", OPTIONS, TASK, DATA)
    assert card.versions == {"medgen": "0.1.0"} and card.seed == 3 and card.step == 6 and card.ema
    assert card.fingerprint == {"digest": "abc"} and card.train_config["max_steps"] == 6
    trained = artifact.load(path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained.model.state_dict()[key])


def test_version_1_file_without_a_model_description_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"format": "medgen-model", "version": 1, "model": {}, "config": {}}, path)
    with pytest.raises(ModelFileError, match=f"{path}: holds no model description"):
        artifact.read_card(path)


def test_training_checkpoint_newer_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "medgen-checkpoint", "version": 1}, path)
    with pytest.raises(ModelFileError, match="is a training checkpoint .* pass model.pt from the same run folder"):
        artifact.load(path)
    torch.save({"format": "medgen-model", "version": artifact.VERSION + 1}, path)
    with pytest.raises(ModelFileError, match="newer medgen"):
        artifact.read_card(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ModelFileError, match="is not a medgen trained model"):
        artifact.read_card(path)


def test_card_from_dict_refuses_unknown_keys():
    with pytest.raises(TypeError, match="'medgen_version'"):
        ModelCard.from_dict({"model": "gan", "medgen_version": "0.1.0"})
