"""The batch-norm layers that keep running statistics, and passes that leave those statistics alone.

One place for both: the training engine re-estimates the statistics of these layers for averaged
weights (:mod:`medgen.train.batch_norm`), and a model's training step may run passes on inputs
that inference never sees (:func:`running_stats_frozen`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batch_norm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The batch-norm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Passes inside run the batch-norm layers of ``module`` on batch statistics, as in training,
    without folding them into the running statistics that eval mode normalises with.

    For passes on inputs that inference never sees: CUT runs its generator on target-domain images
    (the identity term) and re-encodes its own outputs; folded in, their statistics would move the
    ones a translation of a source image is normalised with (used where the EMA is off; with it,
    the engine re-estimates them from translations of sources)."""
    layers = batch_norm_layers(module)
    for m in layers:
        m.track_running_stats = False  # in train mode: batch statistics, running ones untouched
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True
