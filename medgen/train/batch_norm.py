"""Batch-norm running statistics re-estimated for the weights a model holds now (e.g. its EMA).

An EMA of the weights averages the parameters; batch-norm running statistics are buffers that
only the live network updates, so next to averaged weights they describe other weights (the live
network's last ~10 steps, not the average over the EMA's window) and in eval mode every such layer
normalises with a mean and variance its own inputs do not have. The remedy used with averaged
weights (``torch.optim.swa_utils.update_bn`` for SWA, Izmailov et al. 2018) is to recompute them:
reset, then a cumulative average over forward passes in which the batch-norm layers use batch
statistics. Written here rather than calling ``update_bn`` because that runs ``model(batch)`` over a
loader in train mode: medgen's models are not callables on a batch (a GAN's inference is sampling
from noise), and train mode would also switch on dropout and every other training-only behaviour.
Here only the batch-norm layers that the passes run see batch statistics; the rest stay as they
are, and a layer the passes never reach (a discriminator's) keeps its statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from medgen.models.running_stats import batch_norm_layers


def recalibrate_batch_norm(model: nn.Module, passes: Sequence[Callable[[], Any]]) -> int:
    """Re-estimate the running statistics of every batch-norm layer of ``model`` that ``passes``
    (callables running the model's inference, e.g. ``lambda: model.sample(16)``) reach: each such
    layer's statistics become the average over the passes of its batch statistics. No gradients;
    momenta and train/eval modes come back as they were. Returns the number of layers
    re-estimated (0 when there are no passes or no batch-norm layers: nothing is changed)."""
    layers = batch_norm_layers(model)
    if not layers or not passes:
        return 0
    momenta = {m: m.momentum for m in layers}
    mode: dict[nn.Module, bool] = {}
    reached: set[nn.Module] = set()

    def use_batch_statistics(module: nn.Module, args: Any) -> None:
        if module not in reached:  # reset on first use, so that layers never reached keep theirs
            reached.add(module)
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the passes
        mode[module] = module.training
        module.training = True

    def restore_mode(module: nn.Module, args: Any, output: Any) -> None:
        module.training = mode.pop(module)

    handles = [h for m in layers for h in (m.register_forward_pre_hook(use_batch_statistics), m.register_forward_hook(restore_mode))]
    try:
        with torch.no_grad():
            for run in passes:
                run()
    finally:
        for handle in handles:
            handle.remove()
        for module, momentum in momenta.items():
            module.momentum = momentum
    return len(reached)
