"""Common machinery of the project's DataModules: seeded splits, subsets, loaders."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_prune.data._common import (
    carve,
    check_fraction,
    check_num_workers,
    check_positive_int,
    seeded_generator,
    split_count,
    take_subset,
)
from lightning_prune.data.sampler import EpochSeededSampler


class SplitDataModule(L.LightningDataModule):
    """Base DataModule: carves a seeded validation split from TRAIN and optionally subsets it.

    Subclasses implement :meth:`_load_pool`, returning the training pool twice (with train and
    eval transforms, same samples in the same order) and the test set. :meth:`setup` then splits
    the pool into train/val indices with a generator seeded by ``seed`` and keeps a seeded
    ``subset_fraction`` of each; the test set is always complete. The train loader shuffles with
    :class:`EpochSeededSampler`, so the order depends only on ``(seed, epoch)``.

    Args:
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (``batch_size`` when None).
        val_fraction: Fraction of the training pool used for validation, in (0, 1).
        subset_fraction: Fraction of the train and val splits kept, in (0, 1].
        seed: Seed of the splits, subsets and shuffling.
        num_workers: DataLoader worker processes.
        augment: Whether the training split is augmented.

    Attributes:
        num_classes: Number of classes.
        input_shape: Shape of one input, e.g. ``(3, 32, 32)``.
        train_indices: Indices of the training split in the pool (after :meth:`setup`).
        val_indices: Indices of the validation split in the pool (after :meth:`setup`).

    Example:
        >>> from lightning_prune.data import DigitsDataModule
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> isinstance(dm, SplitDataModule), dm.example_input(2).shape
        (True, torch.Size([2, 1, 8, 8]))
    """

    num_classes: int
    input_shape: tuple[int, ...]

    def __init__(
        self,
        *,
        batch_size: int,
        eval_batch_size: int | None,
        val_fraction: float,
        subset_fraction: float,
        seed: int,
        num_workers: int,
        augment: bool,
    ) -> None:
        super().__init__()
        check_positive_int("batch_size", batch_size)
        check_positive_int("eval_batch_size", eval_batch_size, allow_none=True)
        check_num_workers(num_workers)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction = check_fraction("val_fraction", val_fraction, allow_one=False)
        self.subset_fraction = check_fraction("subset_fraction", subset_fraction, allow_one=True)
        self.seed = int(seed)
        self.num_workers = num_workers
        self.augment = bool(augment)
        self.train_dataset: Dataset[Any] | None = None
        self.val_dataset: Dataset[Any] | None = None
        self.test_dataset: Dataset[Any] | None = None
        self.train_indices: Tensor | None = None
        self.val_indices: Tensor | None = None

    # -- hooks for subclasses -------------------------------------------------------------
    def _load_pool(self) -> tuple[Dataset[Any], Dataset[Any], Dataset[Any]]:
        """Return ``(train_pool_with_train_transform, train_pool_with_eval_transform, test)``."""
        raise NotImplementedError

    # -- public API -----------------------------------------------------------------------
    def example_input(self, batch_size: int = 1) -> Tensor:
        """Zeros of shape ``(batch_size, *input_shape)``, e.g. for export or tracing."""
        return torch.zeros(batch_size, *self.input_shape)

    def split_indices(self, pool_size: int) -> tuple[Tensor, Tensor]:
        """Seeded ``(train, val)`` indices of a pool of ``pool_size`` samples, before subsetting."""
        n_val = split_count(pool_size, self.val_fraction, "val_fraction")
        val, train = carve(torch.arange(pool_size), n_val, seeded_generator(self.seed))
        return train, val

    def setup(self, stage: str | None = None) -> None:
        """Load the data once and build the train/val/test datasets (idempotent)."""
        if self.train_dataset is not None:
            return
        train_pool, eval_pool, test = self._load_pool()
        train_idx, val_idx = self.split_indices(len(eval_pool))  # type: ignore[arg-type]
        generator = seeded_generator(self.seed + 1)
        self.train_indices = take_subset(train_idx, self.subset_fraction, generator)
        self.val_indices = take_subset(val_idx, self.subset_fraction, generator)
        self.train_dataset = Subset(train_pool, self.train_indices.tolist())
        self.val_dataset = Subset(eval_pool, self.val_indices.tolist())
        self.test_dataset = test

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled (by ``(seed, epoch)``) training loader."""
        dataset = self._split("train_dataset")
        sampler = EpochSeededSampler(len(dataset), seed=self.seed)  # type: ignore[arg-type]
        return self._loader(dataset, self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader[Any]:
        """Validation loader (split of TRAIN, never the test set)."""
        return self._loader(self._split("val_dataset"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader[Any]:
        """Loader over the complete test set."""
        return self._loader(self._split("test_dataset"), self.eval_batch_size)

    # -- private helpers ------------------------------------------------------------------
    def _split(self, name: str) -> Dataset[Any]:
        if getattr(self, name) is None:
            self.setup()
        return getattr(self, name)

    def _loader(
        self, dataset: Dataset[Any], batch_size: int, sampler: EpochSeededSampler | None = None
    ) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
