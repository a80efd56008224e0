"""Validation during training: the validated MAE is logged and model.pt holds the best validated weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from medgen.models.base import GenerativeModel
from medgen.train import checkpoint as ckpt
from medgen.train.engine import TrainConfig, Trainer
from medgen.models.artifact import load, read
from medgen.train.run import train_task
from medgen.train.validation import TranslationValidator


class ScaleTranslator(GenerativeModel):
    """y = w·x with one weight, trained by plain SGD on the L1 loss: its path is known in closed form."""

    batch_keys = ("source", "target")

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.lr = lr

    def configure_optimizers(self):
        return {"g": torch.optim.SGD([self.w], lr=self.lr)}

    def training_step(self, batch, ctx):
        loss = (self.w * batch["source"] - batch["target"]).abs().mean()
        return {"l1": ctx.backward_and_step("l1", loss, "g")}

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x


class Pairs(torch.utils.data.Dataset):
    """Constant images: source 1, target ``scale`` (so the L1 gradient in w is exactly ±1)."""

    def __init__(self, scale: float, n: int = 8) -> None:
        self.scale, self.n = scale, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = torch.ones(1, 4, 4)
        return {"source": x, "target": self.scale * x, "mask": torch.ones(1, 4, 4)}


def _log(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def test_model_pt_holds_the_weights_of_the_best_validation_not_the_last(tmp_path):
    # Training pulls w from 0 towards 1 (train target = source) in steps of lr = 0.05, so after k
    # steps w = 0.05·k. Validation wants w = 0.5 (validation target = source / 2): its MAE
    # |w - 0.5| falls until step 10 and rises after, to 0.5 at step 20. Validating every 2 steps,
    # the best is step 10 with w = 0.5; the last weights (w = 1.0) are what model.pt held before.
    model = ScaleTranslator(lr=0.05)
    validator = TranslationValidator(Pairs(0.5), target="T2w")
    cfg = TrainConfig(out_dir=tmp_path, max_steps=20, batch_size=4, ckpt_every=5, log_every=5, image_every=0, ema_decay=None, val_every=2)
    trainer = Trainer(model, Pairs(1.0), cfg, validator=validator)
    trainer.fit()

    card, weights = read(tmp_path / ckpt.FINAL_NAME)
    # float32 steps of 0.05 accumulate rounding of a few ulp: 1e-5 is far below the 0.1 between validations
    assert float(weights["w"]) == pytest.approx(0.5, abs=1e-5)
    assert card.validation["step"] == 10 and card.validation["key"] == "val/mae"
    assert card.validation["value"] == pytest.approx(0.0, abs=1e-5)
    # the resumable state holds the last weights
    last = ckpt.load_checkpoint(tmp_path / ckpt.CHECKPOINT_NAME)
    assert float(last["model"]["w"]) == pytest.approx(1.0, abs=1e-5)
    assert last["best"]["step"] == 10

    val = {r["step"]: r["val/mae"] for r in _log(tmp_path) if "val/mae" in r}
    assert sorted(val) == list(range(2, 21, 2))
    assert val[2] == pytest.approx(0.4, abs=1e-5) and val[20] == pytest.approx(0.5, abs=1e-5)
    assert min(val, key=val.get) == 10


def test_resumed_run_keeps_the_best_found_before_the_interruption(tmp_path):
    # Interrupted at step 12 (after the best, step 10) and resumed to 20: the best must come
    # from the checkpoint, not from the validations after the resume.
    def run(steps: int) -> None:
        cfg = TrainConfig(out_dir=tmp_path, max_steps=steps, batch_size=4, ckpt_every=2, log_every=2, image_every=0, ema_decay=None, val_every=2)
        Trainer(ScaleTranslator(lr=0.05), Pairs(1.0), cfg, validator=TranslationValidator(Pairs(0.5), target="T2w")).fit()

    run(12)
    run(20)
    card, weights = read(tmp_path / ckpt.FINAL_NAME)
    assert card.validation["step"] == 10
    assert float(weights["w"]) == pytest.approx(0.5, abs=1e-5)


def test_ct_validation_is_in_hu_inside_the_mask():
    # CT mapping of the demo: [-1, 1] <-> [-1024, 3000] HU, so a normalised error of 0.1 is 201.2 HU.
    mapping = {"kind": "linear", "scale": 2012.0, "offset": 988.0, "clip_normalised": [-1.0, 1.0]}

    class Offset(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(()))

        def translate(self, x):
            return x + 0.1

    class Half(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            mask = torch.zeros(1, 4, 4)
            mask[..., :2] = 1  # the unmasked half would add no error here, but a large one below
            source = torch.full((1, 4, 4), -0.5)
            target = source.clone()
            target[..., 2:] = 0.9  # outside the mask: would raise the MAE if it were counted
            return {"source": source, "target": target, "mask": mask}

    scores = TranslationValidator(Half(), target="CT", target_mapping=mapping)(Offset())
    # 0.1 normalised x 2012 HU per unit; float32 rounding of HU values is below 1e-2 HU
    assert scores["val/mae"] == pytest.approx(201.2, abs=1e-2)


def test_translation_training_validates_on_the_validation_subjects(tiny_cohort, tmp_path):
    task = {"name": "t1_to_ct", "kind": "translation", "source": "T1w", "target": "CT"}
    cfg = TrainConfig(out_dir=tmp_path / "run", max_steps=4, batch_size=4, ckpt_every=2, log_every=2, image_every=0, val_every=2)
    path = train_task(prep_root=tiny_cohort["prep"], split_path=tiny_cohort["split"], task=task, model_name="pix2pix",
                      options={"ngf": 8, "ndf": 8, "num_downs": 3, "num_layers_d": 2}, train_cfg=cfg)
    records = [r for r in _log(tmp_path / "run") if "val/mae" in r]
    assert [r["step"] for r in records] == [2, 4]
    # an MAE in HU of a barely trained model: hundreds of HU, certainly not normalised units (< 2)
    assert all(20.0 < r["val/mae"] < 3000.0 for r in records)
    card, _ = read(path)
    best = min(records, key=lambda r: r["val/mae"])
    assert card.validation["step"] == best["step"]
    assert load(path).card.model == "pix2pix"
