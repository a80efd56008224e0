"""Run by ``tests/test_train_distributed.py`` under ``torchrun --nproc_per_node 2`` (CPU, gloo).

Each rank builds the toy GAN with a *different* seed (the engine must broadcast rank 0's
weights), trains a few steps, and writes its final weights to ``<out>/rank<r>_weights.pt``.
With ``nan`` as third argument, rank 1 alone produces a NaN loss at step 3: both ranks must
stop with ``NonFiniteLossError`` (none may hang in a collective) and exit non-zero. With
``regression``, each rank trains the deterministic least-squares model on batches of 4 of the
8-item regression set (no EMA), to be compared with one process on batches of 8.
Usage: ``torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT_DIR MAX_STEPS [nan|regression]``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from medgen.errors import NonFiniteLossError  # noqa: E402
from medgen.train.engine import Trainer  # noqa: E402
from test_train_engine import LinearRegressor, RegressionDataset, ToyDataset, make_cfg, make_model  # noqa: E402


def main(out_dir: Path, max_steps: int, mode: str) -> None:
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    nan = mode == "nan"
    if mode == "regression":
        torch.manual_seed(100 + rank)  # different per rank: rank 0's weights must be broadcast
        model, data = LinearRegressor(), RegressionDataset()
        cfg = make_cfg(out_dir, max_steps=max_steps, batch_size=4, ckpt_every=max_steps, log_every=max_steps, ema_decay=None)
    else:
        model, data = make_model(seed=100 + rank, nan_at=3 if nan and rank == 1 else None), ToyDataset()
        cfg = make_cfg(out_dir, max_steps=max_steps, ckpt_every=2 if nan else 3, log_every=2, image_every=3)
    trainer = Trainer(model, data, cfg, config_snapshot={"test": "ddp"})
    try:
        trainer.fit(resume=True)
    except NonFiniteLossError as exc:
        print(f"rank {rank}: {exc}", file=sys.stderr)
        sys.exit(3)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / f"rank{rank}_weights.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), mode=sys.argv[3] if len(sys.argv) > 3 else "")
