"""A shuffling sampler whose order depends only on ``(seed, epoch)``, so it survives resumes."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
    """Random permutation of ``range(len(data_source))`` seeded with ``seed + epoch``.

    Lightning calls :meth:`set_epoch` at the start of every training epoch (also under DDP,
    where its distributed wrapper forwards the call), so the order of epoch ``e`` is the same
    whether the run started at epoch 0 or was resumed from a checkpoint. The sampler uses its own
    ``torch.Generator``; the global RNG is neither read nor advanced.

    Args:
        data_source: The dataset (anything with ``len``) or its length.
        seed: Base seed.
        shuffle: When False, yield ``0, 1, ..., n-1`` in order.

    Example:
        >>> sampler = EpochSeededSampler(5, seed=0)
        >>> sampler.set_epoch(3)
        >>> order = list(sampler)
        >>> sorted(order), order == list(sampler)
        ([0, 1, 2, 3, 4], True)
    """

    def __init__(self, data_source: Sized | int, seed: int = 0, shuffle: bool = True) -> None:
        self.num_samples = data_source if isinstance(data_source, int) else len(data_source)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (called by Lightning every epoch)."""
        self.epoch = int(epoch)

    def permutation(self) -> list[int]:
        """The index order of the current epoch."""
        if not self.shuffle:
            return list(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation())

    def __len__(self) -> int:
        return self.num_samples
