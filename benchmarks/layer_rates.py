"""The rate a model's own convolutions reach on this machine, each timed alone at its own shape.

A step's GFLOP/s against one reference convolution (256 channels at 32 x 32, ``machine_rates``)
mixes two things: how well the step's code uses the machine, and how fast convolutions of the
model's shapes can run at all (16-64 channels at 64-128 px reach a smaller share of a CPU's
peak than 256 channels at 32 px). This module separates them: it records every convolution a
step runs (module and input shape, through forward hooks), times each distinct one alone
(forward, and the backward products the step computed for it, best of ``reps``) and returns
their total GFLOP over their total time: the rate the step would reach if it did nothing but
those convolutions. Written here because torch's profiler reports per-operator times inside the
step, not the rate of the same operator run alone, which is the ceiling asked about.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def record_convolutions(model: nn.Module, run_step: Callable[[], object]) -> Counter:
    """(module, input shape, input gradient, weight gradient) -> how often ``run_step()`` ran
    that convolution so. The two flags say which backward products the step computed: none under
    ``no_grad``; no input gradient in a network's first layer; no weight gradient where the
    model froze the layer (a discriminator during its generator's update)."""
    seen: Counter = Counter()

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        grad = torch.is_grad_enabled()
        weight_grad = grad and any(p.requires_grad for p in module.parameters())
        seen[(module, tuple(inputs[0].shape), grad and inputs[0].requires_grad, weight_grad)] += 1

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, CONV_TYPES)]
    try:
        run_step()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _time_alone(module: nn.Module, shape: tuple[int, ...], input_grad: bool, weight_grad: bool, reps: int) -> tuple[float, float]:
    """(GFLOP, best seconds) of a copy of ``module`` on a random input: forward, and backward
    to the input and/or weight as flagged."""
    layer = copy.deepcopy(module).float().train().requires_grad_(weight_grad)
    x = torch.randn(shape, requires_grad=input_grad)
    backward = input_grad or weight_grad

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with torch.set_grad_enabled(backward):
            y = layer(x)
        if backward:
            y.sum().backward()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return counter.get_total_flops() / 1e9, best


def own_convolution_rate(recorded: Counter, reps: int = 3) -> dict[str, float]:
    """GFLOP/s of the recorded convolutions run alone (each weighted by its count), with their GFLOP."""
    gflop = seconds = 0.0
    for (module, shape, input_grad, weight_grad), count in recorded.items():
        g, s = _time_alone(module, shape, input_grad, weight_grad, reps)
        gflop += count * g
        seconds += count * s
    return {"conv_gflop": gflop, "own_conv_rate": gflop / seconds if seconds else float("nan")}
