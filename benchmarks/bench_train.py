"""Training throughput (images/s), sampling time per image and peak memory per generative model.

Usage: python benchmarks/bench_train.py [--sizes 32 64] [--steps 20] [--models glow gan cgan ...] [--device auto]

Each (model, size) runs in its own process through the real training engine on random data in
[-1, 1] (throughput does not depend on the pixel values), so that peak memory is that model's
alone: max RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. Images/s is the engine's own
figure over the timed steps, after warm-up steps; sampling time is per image over one batch of
32 after training (the diffusion model with its configured number of DDIM steps). The ratio
columns compare each model with the GAN at the same size in the same run. One more training step
runs under ``torch.utils.flop_counter``: its GFLOP times the measured steps per second is the
step's GFLOP/s, printed beside this machine's fp32 3x3-convolution rate measured at the start
(``bench_translation.machine_rates``) and beside the rate the step's own convolutions reach when
each runs alone at its own shape (``layer_rates``, CPU only): the share of the reference rate a
model of these layer widths and sizes could reach at best, and how much of it the step reaches.
Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_translation import machine_rates  # noqa: E402
from layer_rates import own_convolution_rate, record_convolutions  # noqa: E402

#: model options at benchmark scale: the demo's settings
OPTIONS = {
    "glow": {"levels": 3, "steps_per_level": 8, "hidden_channels": 64},
    "gan": {"ngf": 32, "ndf": 32},
    "cgan": {"ngf": 32, "ndf": 32, "n_classes": 3},
    "stylegan": {"fmaps": 32, "latent_dim": 64, "w_dim": 64},
    "vaegan": {"ngf": 32, "ndf": 32},
    "bigan": {"ngf": 32, "ndf": 32},
    "spade": {"ngf": 32, "ndf": 32, "latent_dim": 32, "patch_layers": 2},
    "ldm": {"ae_channels": [16, 32], "unet_channels": [32, 64], "ae_steps": 1, "sample_steps": 25},
}
#: the phantom's tissue labels 0..9, for label-map models
N_TISSUES = 10
SAMPLE_BATCH = 32


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int, n_classes: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 1, size, size, generator=g) * 2 - 1
        self.labels = torch.randint(0, n_classes, (n,), generator=g)
        self.maps = torch.randint(0, N_TISSUES, (n, 1, size, size), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i]), "labels": self.maps[i]}


def _run(model_name: str, size: int, steps: int, warmup: int, batch: int, device: str, queue: mp.Queue) -> None:
    try:
        _measure_in_child(model_name, size, steps, warmup, batch, device, queue)
    except Exception as exc:  # report instead of leaving the parent waiting
        queue.put({"model": model_name, "size": size, "error": f"{type(exc).__name__}: {exc}"})


def _measure_in_child(model_name: str, size: int, steps: int, warmup: int, batch: int, device: str, queue: mp.Queue) -> None:
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
        counter = FlopCounterMode(display=False)
        trainer.cfg.max_steps = warmup + steps + 1
        with counter:  # one more step, counted (and its convolutions recorded), not timed
            convolutions = record_convolutions(trainer.model, lambda: trainer.fit(resume=True))
        seconds_per_image = _sampling_seconds(model_name, trainer.model, size, trainer.device)
    rate = lines[-1]["images_per_s"]
    gflop = counter.get_total_flops() / 1e9
    ceiling = own_convolution_rate(convolutions) if trainer.device.type == "cpu" else {"conv_gflop": float("nan"), "own_conv_rate": float("nan")}
    if trainer.device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"model": model_name, "size": size, "images_per_s": rate, "sample_s": seconds_per_image, "peak_mb": peak_mb, "device": str(trainer.device),
               "gflop_per_step": gflop, "gflop_per_s": gflop * rate / batch, **ceiling})


def _sampling_seconds(model_name: str, model: torch.nn.Module, size: int, device: torch.device) -> float:
    """Seconds per image of ``model.sample`` over one batch (label maps for label-map models)."""
    import time

    labels = None
    if model.kind == "label_map":
        labels = torch.randint(0, N_TISSUES, (SAMPLE_BATCH, 1, size, size), device=device)
    elif "label" in model.batch_keys:
        labels = torch.arange(SAMPLE_BATCH, device=device) % 3
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        model.sample(SAMPLE_BATCH, labels=labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / SAMPLE_BATCH


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
    rates = machine_rates()
    rows = [measure(m, s, args.steps, args.warmup, args.batch_size, args.device) for s in args.sizes for m in args.models]
    for row in [r for r in rows if "error" in r]:
        print(f"{row['model']} at {row['size']}: {row['error']}")
    rows = [r for r in rows if "error" not in r]
    print(f"device: {rows[0]['device']}, batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up")
    print("machine rates (GFLOP/s, best of 3): " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()))
    print(f"{'model':8s} {'size':>5s} {'images/s':>10s} {'vs gan':>7s} {'ms/sample':>10s} {'vs gan':>7s} {'peak MB':>9s}"
          f" {'GFLOP/step':>11s} {'GFLOP/s':>8s} {'% conv fp32':>12s} {'own convs GFLOP/s':>18s} {'(% conv fp32)':>14s} {'step / own':>11s}")
    for row in rows:
        ref = next((r for r in rows if r["model"] == "gan" and r["size"] == row["size"]), None)
        train_ratio = f"{row['images_per_s'] / ref['images_per_s']:7.2f}" if ref else "      -"
        sample_ratio = f"{row['sample_s'] / ref['sample_s']:7.1f}" if ref else "      -"
        print(f"{row['model']:8s} {row['size']:5d} {row['images_per_s']:10.1f} {train_ratio} {1000 * row['sample_s']:10.2f} {sample_ratio} {row['peak_mb']:9.0f}"
              f" {row['gflop_per_step']:11.1f} {row['gflop_per_s']:8.1f} {100 * row['gflop_per_s'] / rates['conv fp32']:11.0f}%"
              f" {row['own_conv_rate']:18.1f} {100 * row['own_conv_rate'] / rates['conv fp32']:13.0f}% {100 * row['gflop_per_s'] / row['own_conv_rate']:10.0f}%")


if __name__ == "__main__":
    main()
