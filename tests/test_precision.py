"""train.precision: bf16 autocast on CPU (and where ``auto`` turns it on) against fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medgen.errors import NonFiniteLossError
from medgen.models.registry import build_model
from medgen.train import checkpoint as ckpt
from medgen.train import precision
from medgen.train.engine import TrainConfig, Trainer
from test_train_engine import Crash, ToyDataset, assert_state_equal, make_cfg, make_model, read_log


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("MEDGEN_NO_PROGRESS", "1")


def test_auto_is_bf16_exactly_where_the_cpu_has_bf16_units(monkeypatch):
    cpu = torch.device("cpu")
    assert precision.autocast_dtype("fp32", cpu) is None
    assert precision.autocast_dtype("bf16", cpu) is torch.bfloat16
    expected = torch.bfloat16 if precision.cpu_has_native_bf16() else None
    assert precision.autocast_dtype("auto", cpu) is expected
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    assert precision.autocast_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ())
    assert precision.autocast_dtype("auto", cpu) is None
    with pytest.raises(ValueError, match="fp32, bf16|auto, fp32, bf16"):
        precision.autocast_dtype("fp8", cpu)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(out_dir=Path("x"), max_steps=1, precision="half")
    # amp: false forces fp32 whatever precision says
    trainer = Trainer(make_model(), ToyDataset(), make_cfg(Path("unused"), amp=False, precision="bf16"))
    assert trainer.amp_dtype is None


class PairedSquares(torch.utils.data.Dataset):
    """Paired 16x16 images: the target is a fixed smooth function of the source (learnable by pix2pix)."""

    def __init__(self, n: int = 8) -> None:
        gen = torch.Generator().manual_seed(7)
        src = torch.nn.functional.avg_pool2d(torch.rand(n, 1, 16, 16, generator=gen) * 2 - 1, 5, 1, 2)
        self.source, self.target = src, torch.tanh(1.5 * src.flip(-1))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"source": self.source[i], "target": self.target[i]}


def _train_pix2pix(out_dir: Path, prec: str) -> tuple[Trainer, list[dict]]:
    torch.manual_seed(0)
    # tiny and with a high learning rate, so that 20 steps show a clear learning curve
    model = build_model("pix2pix", ngf=4, num_downs=3, ndf=4, num_layers_d=2, lr=2e-3)
    cfg = TrainConfig(out_dir=out_dir, max_steps=20, batch_size=4, seed=0, device="cpu", precision=prec,
                      ckpt_every=100, log_every=1, image_every=0, ema_decay=None)
    trainer = Trainer(model, PairedSquares(), cfg)
    trainer.fit()
    return trainer, read_log(out_dir)


def test_bf16_training_follows_the_fp32_loss_curve(tmp_path):
    fp32, log32 = _train_pix2pix(tmp_path / "fp32", "fp32")
    bf16, log16 = _train_pix2pix(tmp_path / "bf16", "bf16")
    assert fp32.amp_dtype is None and bf16.amp_dtype is torch.bfloat16
    l1_32 = torch.tensor([r["loss/l1"] for r in log32])
    l1_16 = torch.tensor([r["loss/l1"] for r in log16])
    # bf16 really ran (its rounding shows in the losses) ...
    assert not torch.equal(l1_32, l1_16)
    # ... and the same weights, data and dropout draws give the same first loss up to bf16
    # rounding: convolutions take inputs and weights rounded to 8 mantissa bits (relative error
    # 2^-9 = 0.2 % each) and accumulate in fp32; the L1 loss averages 4096 such outputs, so its
    # relative error stays well inside 1 % (measured: 0.01 %).
    assert l1_16[0] == pytest.approx(float(l1_32[0]), rel=1e-2)
    # Both runs learn the mapping (the L1 term drops by a third) and end on the same curve: after
    # 20 Adam steps the per-step rounding differences have moved the weights apart a little
    # (measured: 1 % apart), so the mean L1 of the last 8 steps is compared at 5 %, well below
    # the ~30 % drop of the curve itself, which a broken bf16 path would not follow.
    assert l1_32[-8:].mean() < 0.8 * l1_32[:2].mean()
    assert float(l1_16[-8:].mean()) == pytest.approx(float(l1_32[-8:].mean()), rel=0.05)
    # parameters and optimizer states stay fp32 under autocast: checkpoints look the same
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())


def test_bf16_nan_guard_stops_before_the_update_and_keeps_last_checkpoint(tmp_path):
    trainer = Trainer(make_model(nan_at=5), ToyDataset(), make_cfg(tmp_path, max_steps=10, ckpt_every=2, precision="bf16"))
    assert trainer.amp_dtype is torch.bfloat16
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    assert (info.value.step, info.value.term) == (5, "d_adv")
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4
    assert not (tmp_path / "model.pt").exists()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_bf16_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    straight = Trainer(make_model(), ToyDataset(), make_cfg(tmp_path / "a", precision="bf16"))
    straight.fit()
    with pytest.raises(Crash):
        Trainer(make_model(crash_at=7), ToyDataset(), make_cfg(tmp_path / "b", precision="bf16")).fit()
    resumed = Trainer(make_model(seed=99), ToyDataset(), make_cfg(tmp_path / "b", precision="bf16"))
    resumed.fit(resume=True)
    # same ops on the same data with the same RNG stream: bf16 rounding is deterministic, so the
    # resumed run matches as closely as in fp32 (atol as in test_train_engine's resume test)
    assert resumed.step == straight.step == 12
    assert_state_equal(straight.model.state_dict(), resumed.model.state_dict())
    for name in ("d", "g"):
        assert_state_equal(straight.optimizers[name].state_dict(), resumed.optimizers[name].state_dict())
    log_a, log_b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["loss/d"] for r in log_a] == pytest.approx([r["loss/d"] for r in log_b], abs=1e-6)
