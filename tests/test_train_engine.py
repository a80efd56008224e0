"""The training engine: exact resume, the non-finite guard, crash-safe checkpoints, logs, EMA, data order."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medgen.models import artifact
from medgen.errors import NonFiniteGradientError, NonFiniteLossError
from medgen.models.base import GenerativeModel
from medgen.train import checkpoint as ckpt
from medgen.train.ema import EMA
from medgen.train.engine import TrainConfig, Trainer
from medgen.train.logging import truncate_jsonl
from medgen.train.sampler import EpochSampler

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


# ------------------------------------------------------------------------------------ toy model
class Crash(RuntimeError):
    """Stands in for a process dying mid-run."""


class ToyGAN(GenerativeModel):
    """A 4x4-image GAN: alternating D/G updates, dropout (RNG), BatchNorm (buffers), two schedulers."""

    batch_keys = ("image", "label")

    def __init__(self, latent: int = 4, *, nan_at: int | None = None, crash_at: int | None = None, grad_nan_at: int | None = None) -> None:
        super().__init__()
        self.latent = latent
        self.generator = nn.Sequential(nn.Linear(latent, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 16))
        self.discriminator = nn.Sequential(
            nn.Linear(16, 16), nn.BatchNorm1d(16), nn.LeakyReLU(0.2), nn.Dropout(0.3), nn.Linear(16, 1)
        )
        self.nan_at, self.crash_at, self.grad_nan_at = nan_at, crash_at, grad_nan_at
        self.init_calls = 0

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "d": torch.optim.Adam(self.discriminator.parameters(), lr=1e-2, betas=(0.5, 0.9)),
            "g": torch.optim.Adam(self.generator.parameters(), lr=1e-2, betas=(0.5, 0.9)),
        }

    def configure_schedulers(self, optimizers, max_steps):
        return {
            "d": torch.optim.lr_scheduler.StepLR(optimizers["d"], step_size=3, gamma=0.5),
            "g": torch.optim.lr_scheduler.LambdaLR(optimizers["g"], lambda s: 1.0 / (1.0 + 0.1 * s)),
        }

    def initialize_from_batch(self, batch) -> None:
        self.init_calls += 1
        self.generator[-1].bias.copy_(batch["image"].flatten(1).mean(0))

    def training_step(self, batch, ctx) -> dict[str, float]:
        if ctx.step == self.crash_at:
            raise Crash(f"crash at step {ctx.step}")
        real = batch["image"].flatten(1)
        z = torch.randn(real.shape[0], self.latent, device=ctx.device)
        with ctx.autocast():
            fake = self.generator(z)
            d_loss = F.softplus(-self.discriminator(real)).mean() + F.softplus(self.discriminator(fake.detach())).mean()
        if ctx.step == self.nan_at:
            d_loss = d_loss * float("nan")
        if ctx.step == self.grad_nan_at:  # sqrt at 0: the loss stays finite, d/dx = 0 * inf = NaN
            d_loss = d_loss + torch.sqrt((self.discriminator[0].weight * 0.0).sum())
        d = ctx.backward_and_step("d_adv", d_loss, "d")
        with ctx.autocast():
            g_loss = F.softplus(-self.discriminator(fake)).mean()
        g = ctx.backward_and_step("g_adv", g_loss, "g")
        return {"d": d, "g": g}

    @torch.no_grad()
    def sample(self, n, *, labels=None, temperature=1.0):
        z = torch.randn(n, self.latent, device=self.generator[0].weight.device) * temperature
        return self.generator(z).view(n, 1, 4, 4)


class NoSampleGAN(ToyGAN):
    def sample(self, n, *, labels=None, temperature=1.0):
        raise NotImplementedError


class ToyDataset(torch.utils.data.Dataset):
    """Fixed random 4x4 images with labels; a random flip draws on the global torch RNG."""

    def __init__(self, n: int = 22) -> None:
        gen = torch.Generator().manual_seed(1234)
        self.images = torch.randn(n, 1, 4, 4, generator=gen) * 0.5 + 1.0
        self.labels = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.images[i]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"image": image, "label": self.labels[i]}


class LinearRegressor(GenerativeModel):
    """Least squares by plain SGD: deterministic (no dropout, no BatchNorm, no noise), so that a step
    on the mean loss of 8 items equals, up to float rounding, the mean of two 4-item gradients."""

    batch_keys = ("x", "y")

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"w": torch.optim.SGD(self.linear.parameters(), lr=0.1)}

    def training_step(self, batch, ctx) -> dict[str, float]:
        loss = ((self.linear(batch["x"])[:, 0] - batch["y"]) ** 2).mean()
        return {"mse": ctx.backward_and_step("mse", loss, "w")}


class RegressionDataset(torch.utils.data.Dataset):
    """Eight fixed (x, y) pairs with y linear in x plus noise."""

    def __init__(self, n: int = 8) -> None:
        gen = torch.Generator().manual_seed(99)
        self.x = torch.randn(n, 4, generator=gen)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.3 * torch.randn(n, generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def make_cfg(out_dir: Path, **overrides) -> TrainConfig:
    settings = dict(out_dir=out_dir, max_steps=12, batch_size=4, seed=3, device="cpu", ckpt_every=4, log_every=1, image_every=0, ema_decay=0.9)
    settings.update(overrides)
    return TrainConfig(**settings)


def make_model(seed: int = 0, **kwargs) -> ToyGAN:
    torch.manual_seed(seed)
    return ToyGAN(**kwargs)


def read_log(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def assert_state_equal(a, b, *, atol: float = 1e-6) -> None:
    """Nested dicts/lists of tensors and numbers equal (tensors within ``atol``)."""
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0.0, atol=atol)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            assert_state_equal(a[k], b[k], atol=atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_state_equal(x, y, atol=atol)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=atol)
    else:
        assert a == b


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("MEDGEN_NO_PROGRESS", "1")


# ---------------------------------------------------------------------------------------- resume
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    # 22 items / batch 4 -> 5 steps per epoch; 12 steps cross two epoch boundaries. The crash at
    # step 7 comes after the checkpoint at step 4 (mid-epoch: 4 of 5 batches consumed) and after
    # log lines for steps 5-6, which the resumed run must drop and rewrite.
    straight_dir, split_dir = tmp_path / "straight", tmp_path / "split"
    straight = Trainer(make_model(), ToyDataset(), make_cfg(straight_dir))
    straight_metrics = straight.fit()

    first = Trainer(make_model(crash_at=7), ToyDataset(), make_cfg(split_dir))
    with pytest.raises(Crash):
        first.fit()
    assert ckpt.load_checkpoint(split_dir / "checkpoint.pt")["step"] == 4
    assert [r["step"] for r in read_log(split_dir)] == [1, 2, 3, 4, 5, 6]

    # a new model and Trainer, as a new process would build them (different initial weights)
    resumed_model = make_model(seed=99)
    resumed = Trainer(resumed_model, ToyDataset(), make_cfg(split_dir))
    resumed_metrics = resumed.fit(resume=True)
    assert resumed_model.init_calls == 0, "initialize_from_batch must not run again on resume"
    assert straight.model.init_calls == 1

    # On CPU the resumed run replays the same ops on the same data with the same RNG stream, so
    # it is bitwise identical in practice; atol=1e-6 only leaves room for a different reduction
    # order in multithreaded CPU kernels, far below any real divergence (lr 1e-2 steps).
    assert resumed.step == straight.step == 12
    assert (resumed.epoch, resumed.batches_in_epoch) == (straight.epoch, straight.batches_in_epoch) == (2, 2)
    assert_state_equal(straight.model.state_dict(), resumed.model.state_dict())
    for name in ("d", "g"):
        assert_state_equal(straight.optimizers[name].state_dict(), resumed.optimizers[name].state_dict())
        assert straight.optimizers[name].param_groups[0]["lr"] == resumed.optimizers[name].param_groups[0]["lr"]
        assert_state_equal(straight.schedulers[name].state_dict(), resumed.schedulers[name].state_dict())
    assert_state_equal(straight.ema.state_dict(), resumed.ema.state_dict())
    straight_metrics.pop("images_per_s"), resumed_metrics.pop("images_per_s")  # wall-clock
    assert_state_equal(straight_metrics, resumed_metrics)

    # the log reads as one run: steps 1..12 once each, same values as the uninterrupted run
    log_a, log_b = read_log(straight_dir), read_log(split_dir)
    assert [r["step"] for r in log_b] == list(range(1, 13))
    for ra, rb in zip(log_a, log_b):
        assert ra["loss/d"] == pytest.approx(rb["loss/d"], abs=1e-6)
        assert ra["lr/g"] == pytest.approx(rb["lr/g"], abs=1e-12)


def test_resume_false_starts_afresh_and_finished_run_is_not_extended(tmp_path):
    cfg = make_cfg(tmp_path, max_steps=3, ckpt_every=10)
    Trainer(make_model(), ToyDataset(), cfg).fit()
    again = Trainer(make_model(), ToyDataset(), cfg)
    metrics = again.fit(resume=True)
    assert again.step == 3 and metrics["step"] == 3 and again.model.init_calls == 0
    fresh = Trainer(make_model(), ToyDataset(), cfg)
    fresh.fit(resume=False)
    assert fresh.model.init_calls == 1
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3]


# ------------------------------------------------------------------------------ non-finite loss
def test_nonfinite_loss_names_step_and_term_and_keeps_last_good_checkpoint(tmp_path):
    cfg = make_cfg(tmp_path, max_steps=10, ckpt_every=2)
    trainer = Trainer(make_model(nan_at=5), ToyDataset(), cfg)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    assert (info.value.step, info.value.term) == (5, "d_adv")
    assert "step 5" in str(info.value) and "d_adv" in str(info.value)
    state = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 4
    assert max(r["step"] for r in read_log(tmp_path)) == 4
    assert not (tmp_path / "model.pt").exists()
    # the NaN never reached the weights: the guard runs before backward
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nonfinite_gradient_of_a_finite_loss_stops_before_the_optimizer_moves(tmp_path):
    cfg = make_cfg(tmp_path, max_steps=10, ckpt_every=2)
    trainer = Trainer(make_model(grad_nan_at=5), ToyDataset(), cfg)
    with pytest.raises(NonFiniteGradientError) as info:
        trainer.fit()
    assert isinstance(info.value, NonFiniteLossError)  # stops exactly where a NaN loss stops
    assert (info.value.step, info.value.term) == (5, "d_adv") and math.isfinite(info.value.value)
    assert "non-finite gradient at step 5" in str(info.value) and "optimizer 'd'" in str(info.value)
    state = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 4 and not (tmp_path / "model.pt").exists()
    # the optimizer never moved on step 5: the parameters are still those checkpointed after step 4
    # (exactly equal; BatchNorm's running statistics did move in step 5's forward, as they would)
    for name, value in trainer.model.named_parameters():
        assert torch.equal(value, state["model"][name]), name
    for saved in state["model"].values():
        assert not saved.is_floating_point() or torch.isfinite(saved).all()


def test_checkpoint_with_nonfinite_weights_is_refused_and_previous_kept(tmp_path):
    trainer = Trainer(make_model(), ToyDataset(), make_cfg(tmp_path, max_steps=2, ckpt_every=2, ema_decay=None))
    trainer.fit()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        trainer.model.generator[0].weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="generator.0.weight"):
        trainer.save_checkpoint()
    with pytest.raises(FloatingPointError, match="model.pt"):
        trainer.save_final()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


# --------------------------------------------------------------------- crash-safe checkpointing
def _half_write_then_fail(real_save):
    def fake_save(obj, f, *args, **kwargs):
        import io

        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError("disk full")

    return fake_save


def test_failed_checkpoint_write_keeps_previous_and_resume_goes_on(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, max_steps=8, ckpt_every=4)
    first = Trainer(make_model(crash_at=5), ToyDataset(), cfg)
    with pytest.raises(Crash):
        first.fit()
    good = (tmp_path / "checkpoint.pt").read_bytes()

    # the next run gets to step 8 and its checkpoint write fails half-way
    real_save = torch.save
    monkeypatch.setattr(torch, "save", _half_write_then_fail(real_save))
    with pytest.raises(OSError, match="disk full"):
        Trainer(make_model(), ToyDataset(), cfg).fit()
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []

    monkeypatch.setattr(torch, "save", real_save)
    final = Trainer(make_model(), ToyDataset(), cfg)
    final.fit()
    assert final.step == 8 and ckpt.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 8


KILLED_WRITER = """
import io, sys, time, torch
sys.path.insert(0, {tests!r})
from test_train_engine import ToyDataset, make_cfg, make_model
from medgen.train.engine import Trainer
real_save, calls = torch.save, [0]
def slow_save(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 1:
        return real_save(obj, f, *args, **kwargs)
    buf = io.BytesIO(); real_save(obj, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
    print("WRITING", flush=True)
    time.sleep(120)
torch.save = slow_save
Trainer(make_model(), ToyDataset(), make_cfg({out!r}, max_steps=8, ckpt_every=4)).fit()
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_checkpoint_write_leaves_previous_checkpoint(tmp_path):
    env = {**os.environ, "MEDGEN_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    code = KILLED_WRITER.format(tests=str(TESTS), out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "WRITING", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".checkpoint.pt.")]
    assert leftovers, "the kill should have left the half-written temp file"
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4

    trainer = Trainer(make_model(), ToyDataset(), make_cfg(tmp_path, max_steps=8, ckpt_every=4))
    trainer.fit()
    assert trainer.step == 8
    assert not any(p.exists() for p in leftovers)
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 8


class Arbitrary:
    """Any pickled object that is not a tensor/builtin: weights-only loading must refuse it."""

    def __reduce__(self):
        return (print, ("this would run on load",))


def test_untrusted_or_foreign_checkpoint_is_refused_with_advice(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "medgen-checkpoint", "payload": Arbitrary()}, path)
    with pytest.raises(ckpt.CheckpointError, match="not a training checkpoint written by medgen") as info:
        Trainer(make_model(), ToyDataset(), make_cfg(tmp_path)).fit()
    assert "--no-resume" in str(info.value)
    assert "weights_only" not in str(info.value)  # torch's advice to load it unsafely is not passed on

    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ckpt.CheckpointError, match="not a medgen"):
        ckpt.load_checkpoint(path)


def test_checkpoint_loads_weights_only_and_has_full_state(tmp_path):
    Trainer(make_model(), ToyDataset(), make_cfg(tmp_path, max_steps=2), config_snapshot={"model": {"name": "toy"}, "out": tmp_path}).fit()
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizers", "schedulers", "scalers", "ema", "rng", "step", "epoch", "batches_in_epoch", "config"} <= set(state)
    assert set(state["optimizers"]) == set(state["schedulers"]) == {"d", "g"}
    assert state["config"] == {"model": {"name": "toy"}, "out": str(tmp_path)}
    assert {"python", "numpy", "torch"} <= set(state["rng"][0])
    card, weights = artifact.read(tmp_path / "model.pt")
    assert card.ema and set(weights) == set(make_model().state_dict())


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt.capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.restore_rng_state(state)
    assert random.random() == expected[0] and np.random.rand() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


# ------------------------------------------------------------------------------------- logging
def test_logs_tensorboard_jsonl_and_sample_grids(tmp_path):
    cfg = make_cfg(tmp_path, max_steps=6, log_every=2, image_every=3)
    metrics = Trainer(make_model(), ToyDataset(), cfg).fit()
    records = read_log(tmp_path)
    assert [r["step"] for r in records] == [2, 4, 6]
    assert {"loss/d", "loss/g", "lr/d", "lr/g", "images_per_s", "epoch"} <= set(records[-1])
    assert records[-1]["images_per_s"] > 0
    assert metrics["step"] == 6 and metrics["loss/g"] == pytest.approx(records[-1]["loss/g"])
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["step_000003.png", "step_000006.png"]
    assert (tmp_path / "model.pt").exists()


def test_model_that_cannot_sample_trains_without_grids(tmp_path):
    torch.manual_seed(0)
    Trainer(NoSampleGAN(), ToyDataset(), make_cfg(tmp_path, max_steps=4, image_every=2)).fit()
    assert not (tmp_path / "samples").exists()
    assert (tmp_path / "checkpoint.pt").exists()


def test_truncate_jsonl_drops_later_and_torn_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste')
    truncate_jsonl(path, 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


# ----------------------------------------------------------------------------- EMA and sampling
def test_ema_averages_params_copies_buffers_and_round_trips():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(net, decay=0.5, warmup=False)
    before = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.fill_(7.0)
    ema.update(net)
    torch.testing.assert_close(ema.shadow["0.weight"], before + 0.5)
    torch.testing.assert_close(ema.shadow["1.running_mean"], torch.full((2,), 7.0))

    current = net[0].weight.detach().clone()
    with ema.swapped_into(net):
        torch.testing.assert_close(net[0].weight, before + 0.5)
    torch.testing.assert_close(net[0].weight, current)

    other = EMA(net, decay=0.5, warmup=False)
    other.load_state_dict(ema.state_dict())
    assert_state_equal(other.state_dict(), ema.state_dict())
    assert EMA(net, decay=0.999).current_decay() == pytest.approx(0.1)  # warm-up


def test_sampler_order_depends_on_seed_and_epoch_only_and_shards_cover_dataset():
    a, b = EpochSampler(10, seed=1), EpochSampler(10, seed=1)
    for _ in range(3):
        list(a)  # iterating does not advance anything
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    a.set_start(4)
    full = EpochSampler(10, seed=1)
    full.set_epoch(2)
    assert list(a) == list(full)[4:] and len(a) == 6

    shards = [EpochSampler(10, seed=1, num_replicas=3, rank=r) for r in range(3)]
    for s in shards:
        s.set_epoch(5)
    parts = [list(s) for s in shards]
    assert {len(p) for p in parts} == {4}
    assert set().union(*parts) == set(range(10))


# ----------------------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_training_and_resume(tmp_path):
    cfg = make_cfg(tmp_path, device="cuda", amp=True, max_steps=6, ckpt_every=3, grad_clip=1.0)
    trainer = Trainer(make_model(), ToyDataset(), cfg)
    trainer.fit()
    assert trainer.amp_dtype in (torch.bfloat16, torch.float16)
    assert next(trainer.model.parameters()).is_cuda
    state = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    assert "cuda" in state["rng"][0]
    resumed = Trainer(make_model(), ToyDataset(), make_cfg(tmp_path, device="cuda", amp=True, max_steps=8, ckpt_every=3, grad_clip=1.0))
    resumed.fit()
    assert resumed.step == 8


def test_progress_bar_shows_losses_and_throughput(tmp_path, monkeypatch, capsys):
    from medgen.train import logging as train_logging

    monkeypatch.setattr(train_logging, "progress_wanted", lambda: True)
    Trainer(make_model(), ToyDataset(), make_cfg(tmp_path, max_steps=3)).fit()
    err = capsys.readouterr().err
    assert "3/3" in err and "img/s" in err and "d=" in err


@pytest.mark.skipif(not any(Path(d, "cc").exists() for d in os.environ.get("PATH", "").split(os.pathsep)), reason="inductor needs a C compiler")
def test_compile_keeps_state_dict_keys_and_checkpoints(tmp_path):
    trainer = Trainer(make_model(), ToyDataset(), make_cfg(tmp_path, max_steps=2, compile=True))
    trainer.fit()
    assert set(trainer.model.state_dict()) == set(make_model().state_dict())
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
