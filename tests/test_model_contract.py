"""The contract every registered model keeps, run over the whole registry.

Each model builds from tiny options, takes one training step with finite losses that moves its
weights, survives a round trip through ``model.pt`` (medgen.models.artifact) unchanged, samples
or translates images of the declared shapes, and refuses an unknown option. A model added to
the registry without an entry in :data:`TINY` fails here: adding a model is its file, its
registry line and its tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from medgen.models import artifact
from medgen.models.base import CONDITIONS, KINDS, GenerativeModel
from medgen.models.registry import MODELS, build_model, class_conditions, models_of_kind, paired_models, task_kind
from model_helpers import SimpleStepContext

#: small options per registered model: each builds and steps on the CPU in well under a second
TINY: dict[str, dict] = {
    "glow": dict(image_size=8, levels=2, steps_per_level=1, hidden_channels=8),
    "gan": dict(image_size=16, ngf=8, ndf=8, latent_dim=16),
    "cgan": dict(image_size=16, ngf=8, ndf=8, latent_dim=16, embed_dim=8, n_classes=3),
    "cyclegan": dict(ngf=8, ndf=8, n_blocks=1, num_layers_d=2),
    "cut": dict(ngf=8, ndf=8, n_blocks=1, num_layers_d=2, num_patches=32),
    "fastcut": dict(ngf=8, ndf=8, n_blocks=1, num_layers_d=2, num_patches=32),
    "pix2pix": dict(ngf=8, ndf=8, num_downs=3, num_layers_d=2),
    "spade": dict(image_size=16, n_labels=3, latent_dim=8, ngf=8, ndf=8, spade_hidden=16, num_d=2, patch_layers=1),
    "stylegan": dict(image_size=16, latent_dim=16, w_dim=16, fmaps=8, ndf=8, mapping_layers=2),
    "ldm": dict(image_size=16, ae_channels=(8, 16), unet_channels=(16, 32), latent_channels=3, sample_steps=2),
    "vaegan": dict(image_size=16, latent_dim=8, ngf=8, ndf=8),
    "bigan": dict(image_size=16, latent_dim=8, ngf=8, ndf=8, z_hidden=32),
}
NAMES = sorted(MODELS)
TRANSLATION_SIZE = 32  # a multiple of every tiny translation network's divisor
N = 2


def _size(model: GenerativeModel) -> int:
    return int(getattr(model.config, "image_size", TRANSLATION_SIZE))


def _batch(name: str, model: GenerativeModel) -> dict[str, torch.Tensor]:
    """A batch of the keys and shapes the model's kind reads (normalised images in [-1, 1])."""
    g = torch.Generator().manual_seed(0)
    size = _size(model)
    image = torch.rand(N, int(getattr(model.config, "in_channels", 1)), size, size, generator=g) * 2 - 1
    if model.kind == "translation":
        return {"source": image, "target": image.flip(0)}
    batch = {"image": image}
    if "label" in model.batch_keys:
        batch["label"] = torch.arange(N) % int(model.config.n_classes)
    if model.kind == "label_map":
        batch["labels"] = torch.randint(0, int(model.config.n_labels), (N, 1, size, size), generator=g)
    return batch


def _output(model: GenerativeModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's inference output for ``batch``, drawn with a fixed seed: translation or samples."""
    torch.manual_seed(1)
    with torch.no_grad():
        if model.kind == "translation":
            return model.translate(batch["source"])
        if model.kind == "label_map":
            return model.sample(N, labels=batch["labels"])
        return model.sample(N)


def _build(name: str, seed: int = 0) -> GenerativeModel:
    torch.manual_seed(seed)
    return build_model(name, **TINY[name])


def test_every_registered_model_has_tiny_options_here():
    assert set(TINY) == set(MODELS), "a model added to the registry needs its entry in TINY (and its own tests)"


@pytest.mark.parametrize("name", NAMES)
def test_declarations(name):
    cls = MODELS[name]
    assert cls.kind in KINDS
    assert cls.conditions and set(cls.conditions) <= set(CONDITIONS)
    assert isinstance(cls.paired, bool) and (not cls.paired or cls.kind == "translation")
    assert (cls.kind == "translation") == (set(cls.batch_keys) == {"source", "target"})
    assert ("label_map" in cls.conditions) == (cls.kind == "label_map")
    assert cls.config_class.__dataclass_fields__  # a dataclass of options


@pytest.mark.parametrize("name", NAMES)
def test_one_training_step_moves_the_weights_with_finite_losses(name):
    model = _build(name)
    batch = _batch(name, model)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    with torch.no_grad():
        model.initialize_from_batch(batch)
    ctx = SimpleStepContext(model.configure_optimizers(), step=1)
    model.train()
    losses = model.training_step(batch, ctx)
    assert losses and all(math.isfinite(float(v)) for v in losses.values()), losses
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no weight changed"


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes(name):
    model = _build(name).eval()
    batch = _batch(name, model)
    out = _output(model, batch)
    expected = batch["target"].shape if model.kind == "translation" else batch["image"].shape
    assert tuple(out.shape) == tuple(expected)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_model_file_round_trip(name, tmp_path: Path):
    model = _build(name)
    batch = _batch(name, model)
    with torch.no_grad():
        model.initialize_from_batch(batch)
    model.eval()
    card = artifact.ModelCard(model=name, options=dict(TINY[name]), task={"kind": task_kind(name)}, versions=artifact.versions())
    path = artifact.save(tmp_path / artifact.FILE_NAME, card, model.state_dict())

    assert artifact.read_card(path) == card
    trained = artifact.load(path)
    assert type(trained.model) is MODELS[name] and not trained.model.training
    loaded = trained.model.state_dict()
    assert set(loaded) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded[key]), key
    torch.testing.assert_close(_output(trained.model, batch), _output(model, batch))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_refused_with_the_valid_ones(name):
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'no_such_option'.*valid options"):
        build_model(name, no_such_option=1)


def test_model_lists_derive_from_the_declarations():
    assert models_of_kind(*KINDS) == set(MODELS)
    assert models_of_kind("label_map") == {"spade"}
    assert paired_models() == {"pix2pix"}
    assert class_conditions() == {"modality", "slice_bin", "lesion"}
    assert {task_kind(name) for name in MODELS} == {"generation", "translation"}
    with pytest.raises(ValueError, match="valid kinds"):
        models_of_kind("segmentation")


def test_schema_names_no_model_list_of_its_own():
    """The config schema leaves the model names to the registry (a copy would drift)."""
    schema = (Path(__file__).parents[1] / "configs" / "config.schema.yaml").read_text()
    description = yaml.safe_load(schema)["properties"]["tasks"]["description"]
    named = [name for name in MODELS if f" {name}," in description or f"({name}," in description]
    assert not named, f"the schema lists model names {named}; refer to the registry instead"
