"""Deterministic mode (train.deterministic): the same config twice gives the same weights and log."""

from __future__ import annotations

import json

import torch
from torch import nn

from medgen.models import artifact
from medgen.models.base import GenerativeModel
from medgen.train.engine import TrainConfig, Trainer
from medgen.train.run import train_task


class RecordsMode(GenerativeModel):
    """One weight trained on noise; records whether deterministic algorithms were on in each step."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen: list[bool] = []

    def configure_optimizers(self):
        return {"g": torch.optim.SGD([self.w], lr=0.1)}

    def training_step(self, batch, ctx):
        self.seen.append(torch.are_deterministic_algorithms_enabled())
        loss = (self.w - batch["image"].mean()) ** 2
        return {"loss": ctx.backward_and_step("loss", loss, "g")}


class Noise(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"image": torch.full((1, 2, 2), float(i))}


def test_deterministic_mode_is_on_during_training_only(tmp_path):
    for flag in (True, False):
        model = RecordsMode()
        Trainer(model, Noise(), TrainConfig(out_dir=tmp_path / str(flag), max_steps=3, batch_size=2, image_every=0, deterministic=flag)).fit()
        assert model.seen == [flag] * 3
        assert not torch.are_deterministic_algorithms_enabled()  # restored after fit


def _run(tiny_cohort, out):
    task = {"name": "t1_to_t2", "kind": "translation", "source": "T1w", "target": "T2w"}
    cfg = TrainConfig(out_dir=out, max_steps=4, batch_size=2, ckpt_every=4, log_every=1, image_every=0, val_every=2, deterministic=True)
    path = train_task(prep_root=tiny_cohort["prep"], split_path=tiny_cohort["split"], task=task, model_name="cyclegan",
                      options={"ngf": 4, "n_blocks": 1, "ndf": 4, "num_layers_d": 2}, train_cfg=cfg)
    weights = artifact.read(path)[1]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return weights, [{k: v for k, v in r.items() if k != "images_per_s"} for r in log]


def test_two_deterministic_runs_give_identical_weights_and_metrics(tiny_cohort, tmp_path):
    # CycleGAN draws random numbers every step (image pool, unpaired partners, dropout-free but
    # randomly initialised): identical results need the seeding and the deterministic kernels.
    w1, log1 = _run(tiny_cohort, tmp_path / "a")
    w2, log2 = _run(tiny_cohort, tmp_path / "b")
    assert log1 == log2  # every loss and validation MAE, bit for bit
    assert set(w1) == set(w2)
    for name in w1:
        assert torch.equal(w1[name], w2[name]), name
