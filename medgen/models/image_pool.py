"""The image pool of CycleGAN: past fakes shown to the discriminators (Shrivastava et al. 2017).

Hand-written (neither MONAI nor torch has one) and kept in the model's ``state_dict`` so that a resumed
run continues with the same history.
"""

from __future__ import annotations

import torch
from torch import nn


class ImagePool(nn.Module):
    """History of generated images for the discriminator (Shrivastava et al. 2017; CycleGAN §4).

    :meth:`query` takes a batch of fakes and returns a batch of the same shape: while the pool
    holds fewer than ``size`` images each new fake is stored and returned; once full, each fake
    is, with probability ½, swapped with a uniformly chosen stored one (the stored one is
    returned), else returned as is. Decisions use the global torch CPU generator (checkpointed by
    the engine). Images are stored detached on the device of the fakes.

    The stored images are the module's *extra state* (a single tensor (count, C, *S)), so they
    are part of ``state_dict()`` and survive checkpoint/resume, while not being buffers (the EMA
    and data-parallel buffer broadcast leave them alone; each rank keeps its own pool).
    """

    def __init__(self, size: int = 50) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = size
        self.images: torch.Tensor | None = None  # (size, C, *S) once the first batch came
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @torch.no_grad()
    def query(self, fakes: torch.Tensor) -> torch.Tensor:
        fakes = fakes.detach().float()  # stored and returned in float32 (autocast may give bf16/fp16)
        if self.size == 0:
            return fakes
        if self.images is None or self.images.shape[1:] != fakes.shape[1:] or self.images.device != fakes.device:
            self._reallocate(fakes)
        out = fakes.clone()
        for i in range(fakes.shape[0]):
            if self.count < self.size:
                self.images[self.count] = fakes[i]
                self.count += 1
            elif float(torch.rand(())) < 0.5:
                j = int(torch.randint(self.size, ()))
                out[i] = self.images[j]
                self.images[j] = fakes[i]
        return out

    def _reallocate(self, like: torch.Tensor) -> None:
        """Storage for ``size`` images shaped like ``like[0]``, keeping what fits (device move after resume)."""
        old = self.images[: self.count] if self.images is not None else None
        self.images = like.new_zeros((self.size, *like.shape[1:]))
        if old is not None and old.shape[1:] == like.shape[1:]:
            self.images[: self.count] = old.to(like.device, like.dtype)
        else:
            self.count = 0  # the image size changed: start afresh

    def get_extra_state(self) -> torch.Tensor:
        if self.images is None or self.count == 0:
            return torch.zeros(0)
        return self.images[: self.count].clone()

    def set_extra_state(self, state: torch.Tensor) -> None:
        if state.ndim < 2 or state.shape[0] == 0:
            self.images, self.count = None, 0
            return
        self.count = min(int(state.shape[0]), self.size)
        self.images = state.new_zeros((self.size, *state.shape[1:]))
        self.images[: self.count] = state[: self.count]
