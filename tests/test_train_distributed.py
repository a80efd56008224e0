"""Data-parallel training under torchrun (2 CPU processes, gloo): ranks agree, rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medgen.train import checkpoint as ckpt

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _torchrun(out_dir: Path, max_steps: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TESTS / "ddp_worker.py"), str(out_dir), str(max_steps), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDGEN_NO_PROGRESS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_torchrun_two_ranks_agree_and_only_rank0_writes(tmp_path):
    run = _torchrun(tmp_path, 6)
    assert run.returncode == 0, run.stderr[-4000:]

    w0 = torch.load(tmp_path / "rank0_weights.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1_weights.pt", weights_only=True)
    for name in w0:  # identical, not merely close: same averaged gradients on both ranks
        assert torch.equal(w0[name], w1[name]), name

    state = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 6 and state["world_size"] == 2
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    for name, value in state["model"].items():
        assert torch.equal(value, w0[name]), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6], "only rank 0 logs"
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_000003.png", "step_000006.png"]
    assert len(list((tmp_path / "tb").glob("events.*"))) == 1

    # resume under torchrun: continue to step 8 from the checkpoint, ranks still agree
    run = _torchrun(tmp_path, 8)
    assert run.returncode == 0, run.stderr[-4000:]
    w0 = torch.load(tmp_path / "rank0_weights.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1_weights.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 8


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_nan_on_one_rank_stops_every_rank_without_hanging(tmp_path):
    run = _torchrun(tmp_path, 6, "nan")
    assert run.returncode != 0
    assert "rank 0: non-finite loss at step 3: term 'd_adv'" in run.stderr
    assert "rank 1: non-finite loss at step 3: term 'd_adv' = nan" in run.stderr
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_ranks_of_batch_4_step_like_one_process_of_batch_8(tmp_path):
    """Gradient averaging is DDP's arithmetic: 2 ranks x 4 items == 1 process x 8 items, step by step.

    Ranks that skip the averaging diverge from each other; ranks that broadcast rank 0's gradient
    agree with each other but follow half the data: both differ from the batch-8 run.
    """
    from test_train_engine import LinearRegressor, RegressionDataset, make_cfg

    from medgen.train.engine import Trainer

    steps = 5
    run = _torchrun(tmp_path / "ddp", steps, "regression")
    assert run.returncode == 0, run.stderr[-4000:]
    torch.manual_seed(100)  # rank 0's initial weights, which the ranks broadcast
    single = LinearRegressor()
    cfg = make_cfg(tmp_path / "single", max_steps=steps, batch_size=8, ckpt_every=steps, log_every=steps, ema_decay=None)
    Trainer(single, RegressionDataset(), cfg).fit()
    for rank in (0, 1):
        weights = torch.load(tmp_path / "ddp" / f"rank{rank}_weights.pt", weights_only=True)
        for name, value in single.state_dict().items():
            # float32 sums in another order (two 4-item means averaged vs one 8-item mean): ~1e-7
            # relative per step; a step on half the data moves the weights by ~1e-1.
            torch.testing.assert_close(weights[name], value, rtol=0.0, atol=1e-5, msg=f"rank {rank}: {name}")
