"""The data order of training: a function of (seed, epoch) only, resumable mid-epoch.

Hand-written rather than ``RandomSampler``/``DistributedSampler``: ``RandomSampler`` draws its
permutation from a generator whose state advances with use (so the order depends on history,
not on the epoch), and neither can start part-way through an epoch. Exact resume needs both:
the same permutation as the uninterrupted run and a start offset that skips the samples of the
batches already consumed, without loading them.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Shuffled indices of ``dataset_len`` items for ``epoch``, sharded over ``num_replicas`` ranks.

    Like ``DistributedSampler``: the permutation is seeded by ``seed + epoch`` (the same on every
    rank), padded by wrapping around to a multiple of ``num_replicas``, and rank ``r`` takes
    every ``num_replicas``-th index from ``r``; every rank therefore sees the same number of
    samples per epoch. ``set_start(k)`` skips this rank's first ``k`` samples of the epoch.
    """

    def __init__(self, dataset_len: int, *, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        if dataset_len <= 0:
            raise ValueError("the training dataset is empty")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.dataset_len = dataset_len
        self.seed, self.shuffle = int(seed), shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.start = 0

    @property
    def samples_per_replica(self) -> int:
        """Samples each rank sees in one full epoch."""
        return math.ceil(self.dataset_len / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's share of the epoch."""
        if not 0 <= start <= self.samples_per_replica:
            raise ValueError(f"start {start} outside [0, {self.samples_per_replica}]")
        self.start = int(start)

    def epoch_indices(self) -> list[int]:
        """This rank's full index list for the current epoch (ignores ``start``)."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_len, generator=gen).tolist()
        else:
            order = list(range(self.dataset_len))
        total = self.samples_per_replica * self.num_replicas
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.start :])

    def __len__(self) -> int:
        return self.samples_per_replica - self.start
