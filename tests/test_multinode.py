"""Multi-node training: two torchrun rendezvous agents ("nodes", c10d, gloo) on this machine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medgen.train.launch import torchrun_command

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
from multinode_worker import train  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_rendezvous_agents_train_like_one_process_with_the_doubled_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_NO_PROGRESS", "1")
    steps, batch = 6, 2  # 16 items, 4 per step: 4 steps per epoch, so the run crosses an epoch
    out = tmp_path / "two_nodes"
    out.mkdir()
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDGEN_NO_PROGRESS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", "medgen-test",
             str(TESTS / "multinode_worker.py"), str(out), str(steps), str(batch)]
    # two agents = two "nodes": each joins the rendezvous and starts one worker
    agents = [subprocess.Popen(agent, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        outputs = [a.communicate(timeout=180)[0] for a in agents]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    assert [a.returncode for a in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert (out / "world_size.txt").read_text() == "2"
    two_nodes = torch.load(out / "weights.pt", weights_only=True)

    single = train(tmp_path / "one_process", steps, 2 * batch).model.state_dict()
    # Same data per step (the sampler's strided shards of the same permutation make up the
    # doubled batch), same initial weights (rank 0's are broadcast), and the MSE is a mean over
    # the batch, so the averaged gradient equals the full-batch one up to float32 summation
    # order (~1e-7 relative); through 6 Adam steps of lr 1e-2 that stays below 1e-5, while one
    # step of a different batch moves weights by ~1e-2.
    for name, value in single.items():
        torch.testing.assert_close(two_nodes[name], value, rtol=0, atol=1e-5, msg=name)
    start = train(tmp_path / "zero_steps", 1, 2 * batch)  # guards against a run that did not train
    assert any((start.model.state_dict()[k] - single[k]).abs().max() > 1e-3 for k in single)


def test_launch_command_per_cluster_shape():
    py = "/env/bin/python"
    assert torchrun_command(python=py, nodes=1, procs_per_node=1, rdzv_id="x") == f"{py} -m medgen.cli train"
    assert torchrun_command(python=py, nodes=1, procs_per_node=4, rdzv_id="x").startswith(f"{py} -m torch.distributed.run --standalone --nproc_per_node 4")
    multi = torchrun_command(python=py, nodes=3, procs_per_node=2, rdzv_id="job7")
    assert multi.startswith(f"srun --nodes 3 --ntasks 3 --ntasks-per-node 1 {py} -m torch.distributed.run --nnodes 3 --nproc_per_node 2")
    assert "--rdzv-backend c10d" in multi and "--rdzv-id job7" in multi and multi.endswith("-m medgen.cli train")
    with pytest.raises(ValueError):
        torchrun_command(python=py, nodes=0, procs_per_node=1, rdzv_id="x")
