"""The benchmarks' own-convolution rate: every convolution of a step recorded at its shape, and its
arithmetic the same as the step's when the step does nothing else."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from layer_rates import own_convolution_rate, record_convolutions  # noqa: E402


def test_recorded_convolutions_carry_the_whole_arithmetic_of_a_convolution_only_step():
    torch.manual_seed(0)
    first, second = nn.Conv2d(1, 8, 3, padding=1), nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1)
    net = nn.Sequential(first, nn.ReLU(), second)
    x = torch.randn(2, 1, 16, 16)

    def step() -> None:
        net(x).sum().backward()
        second.requires_grad_(False)  # frozen, as a discriminator during its generator's update
        net(x[:1]).sum().backward()  # the same layers at a second shape
        second.requires_grad_(True)
        with torch.no_grad():
            net(x)  # forward only

    recorded = record_convolutions(net, step)
    assert recorded == {(first, (2, 1, 16, 16), False, True): 1, (second, (2, 8, 16, 16), True, True): 1,
                        (first, (1, 1, 16, 16), False, True): 1, (second, (1, 8, 16, 16), True, False): 1,
                        (first, (2, 1, 16, 16), False, False): 1, (second, (2, 8, 16, 16), False, False): 1}
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    own = own_convolution_rate(recorded, reps=1)
    # the flop counter counts convolutions (forward, input and weight gradients) only; ReLU and sum are free
    assert own["conv_gflop"] == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-12)  # sums of GFLOP in float
    assert math.isfinite(own["own_conv_rate"]) and own["own_conv_rate"] > 0
    assert not any(m._forward_pre_hooks for m in net.modules())  # the hooks are gone
