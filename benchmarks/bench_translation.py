"""Training speed of the translation models: seconds per iteration of CycleGAN, CUT, FastCUT, pix2pix.

Usage: python benchmarks/bench_translation.py [--sizes 64 128] [--ngf 64] [--n-blocks 9]
       [--warmup 2] [--iters 5] [--device auto|cpu|cuda] [--amp] [--channels-last] [--quick]

One iteration = one ``training_step`` (every D and G update of the model) on a batch of one
single-channel image pair, through the engine's step context (AMP scaling, finite-loss guard),
as ``medgen train`` runs it. Each model gets ``--warmup`` untimed iterations, then ``--iters``
timed ones; the table shows the fastest and the median iteration (on a shared machine the
fastest is the better estimate of the code's own speed, the median shows the load). Prints the
CUT/CycleGAN and FastCUT/CycleGAN time ratios of this run, and this run's seconds against the
published figures of the public reference implementation of CUT/FastCUT (measured on the same
class of 2-core machine, not in this run). Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from medgen.models.registry import build_model
from medgen.train.step import EngineStepContext, amp_dtype_for, make_scalers

MODEL_NAMES = ("cyclegan", "cut", "fastcut", "pix2pix")
# s/iteration of the public reference implementation (batch 1, ngf 64, 9 blocks, 2 CPU cores)
PUBLISHED_CPU = {("cut", 64): 0.8, ("cut", 128): 2.7, ("fastcut", 64): 0.56, ("fastcut", 128): 1.47}


def model_options(name: str, args: argparse.Namespace, size: int) -> dict:
    options: dict = dict(ngf=args.ngf)
    if name == "pix2pix":
        # the U-Net bottleneck at 1 px: 2**num_downs = size (as 8 downs for 256 px in the paper)
        options["num_downs"] = max(2, size.bit_length() - 1)
    else:
        options["n_blocks"] = args.n_blocks
    return options


def time_model(name: str, size: int, args: argparse.Namespace, device: torch.device) -> list[float]:
    """Seconds of each timed training iteration of model ``name`` at ``size``x``size``."""
    torch.manual_seed(0)
    model = build_model(name, **model_options(name, args, size)).to(device)
    source = torch.rand(1, 1, size, size, device=device) * 2 - 1
    target = torch.rand(1, 1, size, size, device=device) * 2 - 1  # unpaired for cyclegan/cut
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        source, target = (t.contiguous(memory_format=torch.channels_last) for t in (source, target))
    optimizers = model.configure_optimizers()
    amp_dtype = amp_dtype_for(device, args.amp)
    ctx = EngineStepContext(optimizers, make_scalers(list(optimizers), device, amp_dtype), device=device, amp_dtype=amp_dtype)
    batch = {"source": source, "target": target}
    model.train()
    times = []
    for i in range(args.warmup + args.iters):
        ctx.step = i + 1
        sync(device)
        t0 = time.perf_counter()
        model.training_step(batch, ctx)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return times


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_device(device: torch.device, args: argparse.Namespace) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    print(f"\n== {device} (threads {torch.get_num_threads()}, amp {args.amp and device.type == 'cuda'}, channels_last {args.channels_last}) ==")
    print(f"{'model':<10}{'size':>6}{'min s/it':>11}{'median s/it':>13}{'it/s (min)':>12}")
    results: dict[tuple[str, int], tuple[float, float]] = {}
    for size in args.sizes:
        for name in args.models:
            times = time_model(name, size, args, device)
            best, median = min(times), statistics.median(times)
            results[name, size] = (best, median)
            print(f"{name:<10}{size:>6}{best:>11.3f}{median:>13.3f}{1 / best:>12.2f}", flush=True)
    print_ratios(results, args.sizes)
    if device.type == "cpu":
        print_published(results, args)


def print_ratios(results: dict[tuple[str, int], tuple[float, float]], sizes: list[int]) -> None:
    print("\nthis run, time per iteration relative to CycleGAN on the same data (min / median):")
    for size in sizes:
        if ("cyclegan", size) not in results:
            continue
        base = results["cyclegan", size]
        for name in ("cut", "fastcut"):
            if (name, size) in results:
                ours = results[name, size]
                print(f"  {name}/cyclegan @ {size}: {ours[0] / base[0]:.2f} / {ours[1] / base[1]:.2f}")


def print_published(results: dict[tuple[str, int], tuple[float, float]], args: argparse.Namespace) -> None:
    if (args.ngf, args.n_blocks) != (64, 9):
        return
    print("\npublished reference figures (public reference implementation, same sizes, batch 1, ngf 64, 9 blocks,")
    print("2-core machine of the same class; NOT measured in this run) vs this run:")
    for (name, size), ref in PUBLISHED_CPU.items():
        if (name, size) in results:
            best, median = results[name, size]
            print(f"  {name:<8}{size:>4}: reference {ref:.2f} s/it, here {best:.3f} (min) / {median:.3f} (median) -> {ref / best:.2f}x / {ref / median:.2f}x faster")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--n-blocks", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CPU, and CUDA too when available")
    parser.add_argument("--amp", action="store_true", help="bf16/fp16 autocast on CUDA (as the engine's default)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format for weights and inputs")
    parser.add_argument("--quick", action="store_true", help="64x64 only, 1 warm-up and 3 timed iterations")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.warmup, args.iters = [64], 1, 3
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    t0 = time.perf_counter()
    for device in devices:
        run_device(device, args)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
