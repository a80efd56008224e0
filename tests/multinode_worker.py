"""Run by ``tests/test_multinode.py``: one training process of a deterministic regression model.

Started either directly (one process, batch 2B) or by each of two ``torchrun`` rendezvous
agents (``--nnodes 2 --nproc_per_node 1 --rdzv-backend c10d``, batch B per rank); writes the
final weights to ``<out>/weights.pt`` (rank 0). The model has no dropout, no BatchNorm and a
loss that is a mean over the batch, so the mean of two half-batch gradients equals the
full-batch gradient and both set-ups must reach the same weights.
Usage: ``python tests/multinode_worker.py OUT_DIR MAX_STEPS BATCH_PER_RANK``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medgen.models.base import GenerativeModel  # noqa: E402
from medgen.train.engine import TrainConfig, Trainer  # noqa: E402


class Regressor(GenerativeModel):
    """Learns target = f(image) with an MLP, one Adam optimizer; deterministic."""

    batch_keys = ("image", "target")

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 16))

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": torch.optim.Adam(self.net.parameters(), lr=1e-2)}

    def training_step(self, batch, ctx) -> dict[str, float]:
        with ctx.autocast():
            pred = self.net(batch["image"])
        loss = F.mse_loss(pred.float(), batch["target"])
        return {"mse": ctx.backward_and_step("mse", loss, "net")}

    def sample(self, n, *, labels=None, temperature=1.0):
        raise NotImplementedError


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int = 16) -> None:
        gen = torch.Generator().manual_seed(5)
        self.image = torch.randn(n, 16, generator=gen)
        self.target = torch.sin(self.image.roll(1, dims=1))

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.image[i], "target": self.target[i]}


def train(out_dir: Path, max_steps: int, batch: int) -> Trainer:
    torch.manual_seed(0 if int(os.environ.get("RANK", "0")) == 0 else 1)  # rank 0's weights are broadcast
    cfg = TrainConfig(out_dir=out_dir, max_steps=max_steps, batch_size=batch, seed=0, device="cpu", precision="fp32",
                      ckpt_every=100, log_every=1, image_every=0, ema_decay=None)
    trainer = Trainer(Regressor(), Pairs(), cfg)
    trainer.fit(resume=False)
    return trainer


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    trainer = train(out, int(sys.argv[2]), int(sys.argv[3]))
    if trainer.env.is_main:
        torch.save({k: v.detach() for k, v in trainer.model.state_dict().items()}, out / "weights.pt")
        (out / "world_size.txt").write_text(str(trainer.env.world_size))
