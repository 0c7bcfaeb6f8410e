"""A sampler whose order and augmentation depend only on (seed, epoch, index): never on history.

It shuffles by (seed, epoch) and gives every sample its own augmentation seed, so a run resumed from a
checkpoint, a run with another number of workers, and an uninterrupted run see the same batches and the same
augmented pixels. Under torch.distributed it shards like DistributedSampler (padding by repetition; the
prediction store de-duplicates), which keeps `set_epoch` reaching it (Lightning's wrapper would not).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

_MASK = (1 << 62) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 62-bit seed for one sample of one epoch (splitmix64-style finaliser)."""
    value = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & ((1 << 64) - 1)
    value ^= value >> 31
    value = (value * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    value ^= value >> 27
    return value & _MASK


class SeededSampler(Sampler[tuple[int, int | None]]):
    """Yields (index, augmentation seed or None); Lightning calls `set_epoch` each epoch.

    `pad_to_multiple`: each process's share is filled up to a multiple of it by repeating its first samples, so
    every evaluation batch has one shape (a new batch shape makes cuDNN's autotuning start over, which cost tens
    of seconds per shape for DenseNet-169 on an H100); the prediction store counts each image once.
    """

    def __init__(self, length: int, seed: int, shuffle: bool, augment: bool, pad_to_multiple: int = 1):
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.augment = augment
        self.pad_to_multiple = max(1, pad_to_multiple)
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, samples to leave out of it), set by resume_at

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Start at `epoch`, leaving out its first `samples_done` samples of this process's share (once: later epochs
        are whole). A run resumed mid-epoch then trains on exactly the samples it had not reached; the length stays
        the whole epoch's, as Lightning counts the epoch's batches from it."""
        self.epoch, self._skip = epoch, (epoch, samples_done)

    @staticmethod
    def _world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        _, world = self._world()
        share = math.ceil(self.length / world)
        return math.ceil(share / self.pad_to_multiple) * self.pad_to_multiple

    def __iter__(self) -> Iterator[tuple[int, int | None]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        rank, world = self._world()
        if world > 1:
            total = math.ceil(self.length / world) * world
            order = (order * math.ceil(total / max(1, len(order))))[:total]
            order = order[rank::world]
        if order and len(order) % self.pad_to_multiple:
            order = (order * math.ceil(len(self) / len(order)))[: len(self)]
        # Only into the epoch it was meant for: set_epoch may move on before a loader without workers starts
        skip = self._skip[1] if self._skip is not None and self._skip[0] == self.epoch else 0
        self._skip = None
        for index in order[skip:]:
            yield index, (sample_seed(self.seed, self.epoch, index) if self.augment else None)
