"""Training throughput (images/s) and peak memory per generative model at two image sizes.

Usage: python benchmarks/bench_train.py [--sizes 32 64] [--steps 20] [--models glow gan cgan] [--device auto]

Each (model, size) runs in its own process through the real training engine on random data in
[-1, 1] (throughput does not depend on the pixel values), so that peak memory is that model's
alone: max RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. Images/s is the engine's own
figure over the timed steps, after warm-up steps. The ratio column compares each model with the
GAN at the same size in the same run. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
from pathlib import Path

import torch

#: model options at benchmark scale: the demo's settings
OPTIONS = {
    "glow": {"levels": 3, "steps_per_level": 8, "hidden_channels": 64},
    "gan": {"ngf": 32, "ndf": 32},
    "cgan": {"ngf": 32, "ndf": 32, "n_classes": 3},
}


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int, n_classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 1, size, size, generator=g) * 2 - 1
        self.labels = torch.randint(0, n_classes, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i])}


def _run(model_name: str, size: int, steps: int, warmup: int, batch: int, device: str, queue: mp.Queue) -> None:
    from medgen.models.registry import build_model
    from medgen.train.engine import TrainConfig, Trainer

    torch.set_num_threads(torch.get_num_threads())
    model = build_model(model_name, spatial_dims=2, image_size=size, **OPTIONS[model_name])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out_dir=Path(tmp), max_steps=warmup + steps, batch_size=batch, device=device, log_every=steps, ckpt_every=10**6, image_every=0, ema_decay=None)
        trainer = Trainer(model, RandomImages(4 * batch, size, 3), cfg)
        # log_every=steps puts one log point after warm-up+steps; the first `warmup` steps are
        # folded into it, so run warm-up separately and time the rest from the log.
        trainer.cfg.max_steps = warmup
        trainer.fit(resume=False)
        trainer.cfg.max_steps = warmup + steps
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.fit(resume=True)
        lines = [json.loads(x) for x in (Path(tmp) / "log.jsonl").read_text().splitlines()]
    rate = lines[-1]["images_per_s"]
    if trainer.device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"model": model_name, "size": size, "images_per_s": rate, "peak_mb": peak_mb, "device": str(trainer.device)})


def measure(model_name: str, size: int, steps: int, warmup: int, batch: int, device: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(model_name, size, steps, warmup, batch, device, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(OPTIONS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    rows = [measure(m, s, args.steps, args.warmup, args.batch_size, args.device) for s in args.sizes for m in args.models]
    print(f"device: {rows[0]['device']}, batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'model':8s} {'size':>5s} {'images/s':>10s} {'peak MB':>9s} {'vs gan':>7s}")
    for row in rows:
        ref = next((r["images_per_s"] for r in rows if r["model"] == "gan" and r["size"] == row["size"]), None)
        ratio = f"{row['images_per_s'] / ref:7.2f}" if ref else "      -"
        print(f"{row['model']:8s} {row['size']:5d} {row['images_per_s']:10.1f} {row['peak_mb']:9.0f} {ratio}")


if __name__ == "__main__":
    main()
