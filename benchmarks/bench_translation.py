"""Training speed of the translation models, optionally side by side with the public reference CUT.

Usage: python benchmarks/bench_translation.py [--reference PATH] [--sizes 64 128] [--ngf 64]
       [--n-blocks 9] [--warmup 2] [--iters 5] [--models ...] [--precision auto|fp32|bf16]
       [--channels-last] [--quick]

One iteration = one ``training_step`` (every D and G update of the model) on a batch of one
single-channel image pair, through the engine's step context, as ``medgen train`` runs it.

With ``--reference PATH`` (a local checkout of taesungp/contrastive-unpaired-translation; this
script never downloads it) the reference CUT and FastCUT are built through their own options
(``--gpu_ids -1``, batch 1, ngf 64, 9 blocks) in this process and timed interleaved with
medgen's, iteration by iteration, so that load on a shared machine hits both sides alike:

* same convolutions: reference without anti-aliased resampling (``--no_antialias
  --no_antialias_up``, the convolutions of medgen's generator) vs medgen in fp32. The
  arithmetic per step still differs (the GFLOP column): the sides differ in what else a step
  computes, so GFLOP/s is the measure of how well each uses the machine;
* defaults: the reference at its defaults (anti-aliased, fp32: it has no CPU mixed precision)
  vs medgen at its default precision (``train.precision: auto``).

Ratios are of the fastest iterations (min, the better estimate of the code's own speed on a
shared machine) and of the medians. Every model's step is counted with
``torch.utils.flop_counter`` and shown as GFLOP/s beside this machine's measured fp32/bf16
matmul and 3x3-convolution rates. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_rates import own_convolution_rate, record_convolutions  # noqa: E402
from medgen.models.registry import MODELS, build_model, models_of_kind  # noqa: E402
from medgen.train import precision  # noqa: E402
from medgen.train.step import EngineStepContext, make_scalers  # noqa: E402

MODEL_NAMES = tuple(name for name in MODELS if name in models_of_kind("translation"))  # registry order


# ----------------------------------------------------------------------------------- machine
def machine_rates(reps: int = 3) -> dict[str, float]:
    """Best GFLOP/s of a 1024^3 matmul and of a 256-channel 3x3 conv at 32x32 (forward + backward), fp32 and bf16."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1)
    x = torch.randn(1, 256, 32, 32, requires_grad=True)
    conv_flops = 3 * 2 * 256 * 256 * 9 * 32 * 32  # forward, grad input, grad weight

    def best(fn: Callable[[], None], flops: float) -> float:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return flops / min(times) / 1e9

    def conv_step(dtype: torch.dtype | None) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                y = conv(x)
            y.float().sum().backward()
        return run

    ab16 = (a.bfloat16(), b.bfloat16())
    return {
        "matmul fp32": best(lambda: a @ b, 2 * 1024**3),
        "matmul bf16": best(lambda: ab16[0] @ ab16[1], 2 * 1024**3),
        "conv fp32": best(conv_step(None), conv_flops),
        "conv bf16": best(conv_step(torch.bfloat16), conv_flops),
    }


# ------------------------------------------------------------------------------------ runners
class MedgenRunner:
    """One medgen model at one size and precision; ``step()`` is one training iteration."""

    def __init__(self, name: str, size: int, args: argparse.Namespace, prec: str) -> None:
        torch.manual_seed(0)
        options: dict = dict(ngf=args.ngf)
        if name == "pix2pix":  # the U-Net bottleneck at 1 px: 2**num_downs = size
            options["num_downs"] = max(2, size.bit_length() - 1)
        else:
            options["n_blocks"] = args.n_blocks
        self.model = build_model(name, **options)
        source = torch.rand(1, 1, size, size) * 2 - 1
        target = torch.rand(1, 1, size, size) * 2 - 1  # unpaired for cyclegan/cut
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            source, target = (t.contiguous(memory_format=torch.channels_last) for t in (source, target))
        device = torch.device("cpu")
        optimizers = self.model.configure_optimizers()
        self.dtype = precision.autocast_dtype(prec, device)
        self.ctx = EngineStepContext(optimizers, make_scalers(list(optimizers), device, self.dtype), device=device, amp_dtype=self.dtype)
        self.batch = {"source": source, "target": target}
        self.model.train()
        self.calls = 0

    def step(self) -> None:
        self.calls += 1
        self.ctx.step = self.calls
        self.model.training_step(self.batch, self.ctx)


def count_gflop(step: Callable[[], None]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / 1e9


def time_interleaved(runners: dict[str, Callable[[], None]], warmup: int, iters: int) -> dict[str, list[float]]:
    """Seconds of each timed iteration, the runners taking turns every iteration."""
    for _ in range(warmup):
        for step in runners.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(iters):
        for key, step in runners.items():
            t0 = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------------------------- report
def print_rows(times: dict[str, list[float]], gflop: dict[str, float], rates: dict[str, float]) -> None:
    print(f"{'':<30}{'min s/it':>10}{'median':>9}{'GFLOP':>8}{'GFLOP/s':>9}{'% conv fp32':>13}{'% conv bf16':>13}")
    for key, t in times.items():
        best, med = min(t), statistics.median(t)
        rate = gflop[key] / best
        print(f"{key:<30}{best:>10.3f}{med:>9.3f}{gflop[key]:>8.1f}{rate:>9.1f}"
              f"{100 * rate / rates['conv fp32']:>12.0f}%{100 * rate / rates['conv bf16']:>12.0f}%")


def ratio(times: dict[str, list[float]], slow: str, fast: str) -> str:
    a, b = times[slow], times[fast]
    return f"{min(a) / min(b):.2f}x (min) / {statistics.median(a) / statistics.median(b):.2f}x (median)"


def run_reference(args: argparse.Namespace, rates: dict[str, float]) -> None:
    from reference_cut import ReferenceCUT  # noqa: PLC0415

    default_dtype = precision.autocast_dtype("auto", torch.device("cpu"))
    default_name = precision.describe(default_dtype)
    for size in args.sizes:
        for mode in args.reference_modes:
            print(f"\n-- {mode} @ {size}x{size}, batch 1, ngf {args.ngf}, {args.n_blocks} blocks; interleaved, warm-up {args.warmup}, {args.iters} timed --")
            ref_default = ReferenceCUT(args.reference, mode, size, antialias=True, ngf=args.ngf)
            ref_plain = ReferenceCUT(args.reference, mode, size, antialias=False, ngf=args.ngf)
            medgen_fp32 = MedgenRunner(mode, size, args, "fp32")
            runners = {
                "reference defaults (AA, fp32)": ref_default.step,
                "reference no-AA fp32": ref_plain.step,
                "medgen fp32": medgen_fp32.step,
            }
            if default_dtype is not None:
                runners[f"medgen default ({default_name})"] = MedgenRunner(mode, size, args, "auto").step
            gflop = {k: count_gflop(step) for k, step in runners.items()}
            times = time_interleaved(runners, args.warmup, args.iters)
            print_rows(times, gflop, rates)
            default_key = f"medgen default ({default_name})" if default_dtype is not None else "medgen fp32"
            print(f"  speed-up, same convolutions (no AA, fp32):           {ratio(times, 'reference no-AA fp32', 'medgen fp32')}")
            print(f"  speed-up, defaults (reference AA fp32 vs medgen {default_name}): {ratio(times, 'reference defaults (AA, fp32)', default_key)}")


def run_medgen_models(args: argparse.Namespace, rates: dict[str, float]) -> None:
    for size in args.sizes:
        print(f"\n-- medgen models @ {size}x{size}, precision {args.precision}, channels_last {args.channels_last}; interleaved --")
        models = {name: MedgenRunner(name, size, args, args.precision) for name in args.models}
        runners = {name: m.step for name, m in models.items()}
        gflop = {k: count_gflop(step) for k, step in runners.items()}
        times = time_interleaved(runners, args.warmup, args.iters)
        print_rows(times, gflop, rates)
        print("  the step's convolutions, each run alone at its own shape (fp32; layer_rates.py):")
        for name, m in models.items():
            own = own_convolution_rate(record_convolutions(m.model, m.step))
            step_rate = gflop[name] / min(times[name])
            print(f"  {name:<28}{own['own_conv_rate']:>8.1f} GFLOP/s ({100 * own['own_conv_rate'] / rates['conv fp32']:.0f}% of conv fp32);"
                  f" the step reaches {100 * step_rate / own['own_conv_rate']:.0f}% of it")
        if "cyclegan" in times:
            for name in ("cut", "fastcut"):
                if name in times:
                    print(f"  {name} is {ratio(times, 'cyclegan', name)} faster than cyclegan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, help="local checkout of taesungp/contrastive-unpaired-translation: time it beside medgen's CUT/FastCUT")
    parser.add_argument("--reference-modes", nargs="+", choices=["cut", "fastcut"], default=["cut", "fastcut"], help="with --reference: which of the two to time")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES, help="medgen models of the own table (without --reference, or with --all)")
    parser.add_argument("--all", action="store_true", help="with --reference, also the table of every medgen model")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--n-blocks", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--precision", default="auto", choices=precision.PRECISIONS, help="medgen's precision in its own table")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format for medgen's weights and inputs")
    parser.add_argument("--quick", action="store_true", help="64x64 only, 1 warm-up and 3 timed iterations")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.warmup, args.iters = [64], 1, 3
    if args.reference is not None and args.n_blocks != 9:
        parser.error("--reference compares the reference's 9-block generator: leave --n-blocks at 9")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    flags = ",".join(precision.cpu_bf16_flags()) or "none"
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, native bf16 flags: {flags}; "
          f"medgen default CPU precision: {precision.describe(precision.autocast_dtype('auto', torch.device('cpu')))}")
    rates = machine_rates()
    print("machine rates (GFLOP/s, best of 3): " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()))
    if args.reference is not None:
        run_reference(args, rates)
    if args.reference is None or args.all:
        run_medgen_models(args, rates)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
