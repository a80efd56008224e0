"""Images in, feature rows out: the input checks and batching every network extractor shares."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch


def image_batch(images: Any, spatial_dims: int, what: str) -> torch.Tensor:
    """``images`` as float32 (N, 1, *spatial): a channel axis is added to (N, *spatial) input."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if x.ndim == spatial_dims + 1:
        x = x[:, None]
    if x.ndim != spatial_dims + 2 or x.shape[1] != 1:
        axes = "D, H, W" if spatial_dims == 3 else "H, W"
        raise ValueError(f"expected {what} (N, 1, {axes}) or (N, {axes}), got {tuple(x.shape)}")
    return x


@torch.no_grad()
def batched_features(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> np.ndarray:
    """``fn`` applied to ``x`` in batches of ``batch_size``; rows concatenated as float64."""
    rows = [fn(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(rows).to(torch.float64).numpy()
