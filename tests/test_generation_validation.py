"""Validation of generation models: FD in the encoder space on the validation split picks model.pt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medgen.cli import main
from medgen.data.datasets import SliceDataset
from medgen.data.splits import read_split
from medgen.eval.distribution import fid_from_features
from medgen.eval.encoder import train_encoder
from medgen.models import artifact
from medgen.models.base import GenerativeModel
from medgen.train import checkpoint as ckpt
from medgen.train.engine import TrainConfig, Trainer
from medgen.train.validation import GenerationValidator, generation_validator

TASK = {"name": "t1", "kind": "generation", "modalities": ["T1w"]}
#: the identity mapping of a normalised MR scale, unclipped
MAPPING = {"kind": "linear", "scale": 1.0, "offset": 0.0}


@pytest.fixture(scope="module")
def encoder(tiny_cohort, tmp_path_factory) -> Path:
    """A small study encoder (8 features) trained for 2 steps on the training split."""
    train = read_split(tiny_cohort["split"])["train"]
    path = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    return train_encoder(SliceDataset(tiny_cohort["prep"], train, ["T1w"]), path, steps=2, modalities=["T1w"], config={"block_inplanes": [4, 8, 8, 8]})


class Constant(GenerativeModel):
    """Samples a constant image of value ``c`` (one parameter) plus a little seeded noise; each
    training step raises ``c`` by ``lr`` (plain SGD on the loss -c)."""

    def __init__(self, c: float, lr: float = 0.0) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.tensor(float(c)))
        self.lr = lr

    def configure_optimizers(self):
        return {"g": torch.optim.SGD([self.c], lr=self.lr)}

    def training_step(self, batch, ctx):
        return {"c": ctx.backward_and_step("c", -self.c, "g")}

    @torch.no_grad()
    def sample(self, n, *, labels=None, temperature=1.0):
        return self.c + 0.1 * torch.randn(n, 1, 4, 4)


def _mean_features(images: np.ndarray) -> np.ndarray:
    """Per-image mean and standard deviation: a two-dimensional feature space."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    return np.stack([x.mean(axis=1), x.std(axis=1)], axis=1)


def test_fd_falls_as_the_samples_approach_the_real_slices_and_is_seeded():
    real = 0.5 + 0.1 * np.random.default_rng(0).standard_normal((40, 4, 4))
    validator = GenerationValidator(real.astype(np.float32), _mean_features, TASK, {"T1w": MAPPING}, n=32, seed=3)
    far, near = validator(Constant(-0.5))["val/fd"], validator(Constant(0.5))["val/fd"]
    # the means differ by 1 in the first feature: FD ~ 1; the same distribution: FD ~ 0
    assert far == pytest.approx(1.0, abs=0.1) and near < 0.01
    # a fixed seed: the same weights score the same at every step, and the training RNG is untouched
    state = torch.get_rng_state()
    assert validator(Constant(0.5))["val/fd"] == near
    assert torch.equal(state, torch.get_rng_state())


def test_samples_are_clipped_as_written_samples_are_and_n_is_bounded_by_the_real_slices():
    clipped = {**MAPPING, "clip_normalised": [-1.0, 1.0]}
    validator = GenerationValidator(np.zeros((5, 4, 4), np.float32), _mean_features, TASK, {"T1w": clipped}, n=64)
    images = validator.images(Constant(3.0))
    assert images.shape == (5, 4, 4) and float(images.max()) == 1.0


def test_class_conditional_models_sample_every_class_in_turn():
    seen = []

    class Labelled(Constant):
        def sample(self, n, *, labels=None, temperature=1.0):
            seen.extend(labels.tolist())
            return super().sample(n)

    task = {**TASK, "modalities": ["T1w", "T2w"], "condition": "modality", "classes": ["T1w", "T2w"]}
    validator = GenerationValidator(np.zeros((6, 4, 4), np.float32), _mean_features, task, {"T1w": MAPPING, "T2w": MAPPING}, n=6)
    validator(Labelled(0.0))
    assert seen == [0, 1, 0, 1, 0, 1]


def test_label_map_models_sample_from_the_validation_label_maps_in_turn():
    seen = []

    class FromMaps(Constant):
        def sample(self, n, *, labels=None, temperature=1.0):
            seen.extend(int(m.max()) for m in labels)
            return super().sample(n)

    maps = np.stack([np.full((1, 4, 4), k) for k in (1, 2, 3)])
    task = {**TASK, "condition": "label_map"}
    validator = GenerationValidator(np.zeros((5, 4, 4), np.float32), _mean_features, task, {"T1w": MAPPING}, n=5, label_maps=maps)
    validator(FromMaps(0.0))
    assert seen == [1, 2, 3, 1, 2]
    with pytest.raises(ValueError, match="label maps"):
        GenerationValidator(np.zeros((5, 4, 4), np.float32), _mean_features, task, {"T1w": MAPPING})


class Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": torch.zeros(1, 4, 4)}


def test_model_pt_holds_the_last_weights_and_the_fd_curve_is_logged(tmp_path):
    # c climbs from -1 by 0.25 per step; the real slices sit at 0, so FD (the squared difference of
    # the means plus a constant: the same seeded noise at every step) is lowest at step 4 (c = 0)
    # and rises after it. The curve and its best step are logged; model.pt holds step 8 (c = 1):
    # the encoder FD is not trusted to choose generation weights (medgen.train.validation).
    real = (0.1 * np.random.default_rng(0).standard_normal((40, 4, 4))).astype(np.float32)
    validator = GenerationValidator(real, _mean_features, TASK, {"T1w": MAPPING}, n=32)
    assert validator.selects_weights is False
    cfg = TrainConfig(out_dir=tmp_path, max_steps=8, batch_size=4, ckpt_every=4, log_every=4, image_every=0, ema_decay=None, val_every=1)
    Trainer(Constant(-1.0, lr=0.25), Images(), cfg, validator=validator).fit()
    card, weights = artifact.read(tmp_path / ckpt.FINAL_NAME)
    assert card.validation is None
    assert float(weights["c"]) == pytest.approx(1.0, abs=1e-6)
    records = [r for r in _log(tmp_path) if "val/fd" in r]
    fd = {r["step"]: r["val/fd"] for r in records}
    assert sorted(fd) == list(range(1, 9)) and min(fd, key=fd.get) == 4
    assert records[-1]["val/fd_best"] == pytest.approx(fd[4])
    # only the mean feature moves: (1 + e - m)^2 - (e - m)^2 = 1 + 2 (e - m), e and m the noise's and the real slices' means
    e_minus_m = float(validator.images(Constant(0.0)).mean()) - float(real.mean())
    assert fd[8] - fd[4] == pytest.approx(1.0 + 2.0 * e_minus_m, abs=1e-5)


def _log(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def test_generation_training_with_an_encoder_logs_fd_and_keeps_the_last_weights(tiny_cohort, encoder, tmp_path):
    out = tmp_path / "run"
    code = main(
        ["train", "--prep-root", str(tiny_cohort["prep"]), "--split", str(tiny_cohort["split"]), "--task-json", json.dumps(TASK),
         "--model", "gan", "--options-json", json.dumps({"ngf": 8, "ndf": 8, "latent_dim": 16}), "--out", str(out),
         "--steps", "6", "--batch-size", "4", "--log-every", "2", "--image-every", "0", "--ckpt-every", "3", "--device", "cpu",
         "--val-every", "2", "--encoder", str(encoder)]
    )
    assert code == 0
    records = [r for r in _log(out) if "val/fd" in r]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(np.isfinite(r["val/fd"]) and r["val/fd"] >= 0 for r in records)
    assert records[-1]["val/fd_best"] == pytest.approx(min(r["val/fd"] for r in records))
    assert artifact.read_card(out / ckpt.FINAL_NAME).validation is None
    # model.pt's weights are the last step's: they score its logged FD again with a validator built the same way
    trained = artifact.load(out / "model.pt")
    split = read_split(tiny_cohort["split"])
    validator = generation_validator(trained.card.task, tiny_cohort["prep"], split["val"], trained.card.data["mappings"], encoder, val_every=2)
    assert validator(trained.model)["val/fd"] == pytest.approx(records[-1]["val/fd"], rel=1e-6)
    # the real validation slices are those the evaluation would choose, and FD is fid_from_features'
    assert validator.n == min(64, len(validator.real_features))
    fake = validator.features(validator.images(trained.model))
    assert fid_from_features(validator.real_features, fake) == pytest.approx(records[-1]["val/fd"], rel=1e-6)


def test_validation_samples_are_drawn_at_the_sampling_temperature(tiny_cohort, encoder):
    """A flow sampled at 0.7 (the demo's Glow) is validated on samples drawn at 0.7, not at 1."""
    seen = []

    class Tempered(Constant):
        def sample(self, n, *, labels=None, temperature=1.0):
            seen.append(temperature)
            return super().sample(n)

    split = read_split(tiny_cohort["split"])
    validator = generation_validator(TASK, tiny_cohort["prep"], split["val"], {"T1w": MAPPING}, encoder, val_every=2, temperature=0.7)
    validator(Tempered(0.0))
    assert seen and set(seen) == {0.7}


def test_the_train_command_validates_at_its_sample_temperature(tiny_cohort, encoder, tmp_path):
    """`medgen train --sample-temperature 0.5` logs the FD of samples drawn at 0.5: what a validator
    drawing at 0.5 gives for the saved weights, not what one drawing at 1 gives."""
    out = tmp_path / "glow"
    code = main(
        ["train", "--prep-root", str(tiny_cohort["prep"]), "--split", str(tiny_cohort["split"]), "--task-json", json.dumps(TASK),
         "--model", "glow", "--options-json", json.dumps({"levels": 2, "steps_per_level": 1, "hidden_channels": 8}), "--out", str(out),
         "--steps", "2", "--batch-size", "4", "--log-every", "2", "--image-every", "0", "--device", "cpu",
         "--val-every", "2", "--encoder", str(encoder), "--sample-temperature", "0.5"]
    )
    assert code == 0
    logged = [r["val/fd"] for r in _log(out) if "val/fd" in r]
    assert len(logged) == 1
    trained = artifact.load(out / ckpt.FINAL_NAME)
    val = read_split(tiny_cohort["split"])["val"]

    def fd_at(temperature: float) -> float:
        validator = generation_validator(trained.card.task, tiny_cohort["prep"], val, trained.card.data["mappings"], encoder, val_every=2,
                                         temperature=temperature)
        return validator(trained.model)["val/fd"]

    assert logged[0] == pytest.approx(fd_at(0.5), rel=1e-6)
    assert logged[0] != pytest.approx(fd_at(1.0), rel=1e-3)


def test_without_an_encoder_generation_training_is_not_validated(tiny_cohort, tmp_path):
    code = main(
        ["train", "--prep-root", str(tiny_cohort["prep"]), "--split", str(tiny_cohort["split"]), "--task-json", json.dumps(TASK),
         "--model", "gan", "--options-json", json.dumps({"ngf": 8, "ndf": 8, "latent_dim": 16}), "--out", str(tmp_path),
         "--steps", "2", "--batch-size", "4", "--log-every", "2", "--image-every", "0", "--device", "cpu", "--val-every", "2"]
    )
    assert code == 0
    assert not [r for r in _log(tmp_path) if "val/fd" in r]
    assert artifact.read_card(tmp_path / ckpt.FINAL_NAME).validation is None
