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
from lightning_prune.errors import PruningConfigError

#: Where the validation split can come from (``val_from``).
VAL_SOURCES = ("train", "test")

#: ``val_fraction`` when it is None and ``val_from="test"``: half of the test split decides, half reports.
TEST_VAL_FRACTION = 0.5

#: Seed of the carve of the test split under ``val_from="test"``. Fixed, not ``seed``: every seed of a
#: benchmark then decides on the same images and reports on the same other images.
TEST_SPLIT_SEED = 0


class SplitDataModule(L.LightningDataModule):
    """Base DataModule: a seeded validation split carved from TRAIN (or from TEST), optionally subset.

    Subclasses implement :meth:`_load_pool`, returning the training pool twice (with train and
    eval transforms, same samples in the same order) and the test set. The train loader shuffles
    with :class:`EpochSeededSampler`, so the order depends only on ``(seed, epoch)``.

    Where the validation split comes from (``val_from``):

    - ``"train"`` (default): :meth:`setup` splits the training pool into train/val indices with a
      generator seeded by ``seed`` and keeps a seeded ``subset_fraction`` of each; the test set is
      always complete.
    - ``"test"``: for weights trained on the *whole* training split (the published CIFAR ResNets),
      which have memorised any validation split carved from it, so that every decision taken on it
      (skip a fine-tune, roll back, stop early, rank tuning trials) sees no cost. A ``val_fraction``
      of the test split (0.5 when None) becomes the validation set and :meth:`test_dataloader`
      serves only the rest, so the reported accuracy is measured on images no decision saw. The
      training split is used whole (``subset_fraction`` still subsamples it; the two test halves
      are never subsampled). The carve is seeded by :data:`TEST_SPLIT_SEED`, not by ``seed``: the
      halves are the same for every ``seed``, run and process.

    Args:
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (``batch_size`` when None).
        val_fraction: Fraction of the split named by ``val_from`` used for validation, in (0, 1);
            None: the subclass's default for ``"train"``, :data:`TEST_VAL_FRACTION` for ``"test"``.
        subset_fraction: Fraction of the train (and, with ``val_from="train"``, val) split kept, in (0, 1].
        seed: Seed of the splits, subsets and shuffling.
        num_workers: DataLoader worker processes.
        augment: Whether the training split is augmented.
        val_from: ``"train"`` or ``"test"``: the split the validation set is carved from.

    Attributes:
        num_classes: Number of classes.
        input_shape: Shape of one input, e.g. ``(3, 32, 32)``.
        train_indices: Indices of the training split in the pool (after :meth:`setup`).
        val_indices: Indices of the validation split in the pool, or in the test set with
            ``val_from="test"`` (after :meth:`setup`).
        test_indices: Indices of the served test split in the test set (after :meth:`setup`).

    Example:
        >>> from lightning_prune.data import DigitsDataModule
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> isinstance(dm, SplitDataModule), dm.example_input(2).shape
        (True, torch.Size([2, 1, 8, 8]))

        Deciding on half of the test split and reporting on the other half:

        >>> dm = DigitsDataModule(val_from="test")
        >>> dm.setup()
        >>> len(dm.val_dataset), len(dm.test_dataset), set(dm.val_indices.tolist()) & set(dm.test_indices.tolist())
        (180, 179, set())
    """

    num_classes: int
    input_shape: tuple[int, ...]
    #: ``val_fraction`` when it is None and ``val_from="train"``.
    default_val_fraction: float = 0.1

    def __init__(
        self,
        *,
        batch_size: int,
        eval_batch_size: int | None,
        val_fraction: float | None,
        subset_fraction: float,
        seed: int,
        num_workers: int,
        augment: bool,
        val_from: str = "train",
    ) -> None:
        super().__init__()
        check_positive_int("batch_size", batch_size)
        check_positive_int("eval_batch_size", eval_batch_size, allow_none=True)
        check_num_workers(num_workers)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        if val_from not in VAL_SOURCES:
            raise PruningConfigError(
                f"val_from={val_from!r} is not one of {list(VAL_SOURCES)}",
                hint="use 'train' (carve validation from the training split) or 'test' (for weights trained "
                "on the whole training split: half of the test split decides, the other half reports)",
            )
        self.val_from = val_from
        if val_fraction is None:
            val_fraction = TEST_VAL_FRACTION if val_from == "test" else self.default_val_fraction
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
        self.test_indices: Tensor | None = None

    # -- hooks for subclasses -------------------------------------------------------------
    def _load_pool(self) -> tuple[Dataset[Any], Dataset[Any], Dataset[Any]]:
        """Return ``(train_pool_with_train_transform, train_pool_with_eval_transform, test)``."""
        raise NotImplementedError

    # -- public API -----------------------------------------------------------------------
    def example_input(self, batch_size: int = 1) -> Tensor:
        """Zeros of shape ``(batch_size, *input_shape)``, e.g. for export or tracing."""
        return torch.zeros(batch_size, *self.input_shape)

    def split_indices(self, pool_size: int) -> tuple[Tensor, Tensor]:
        """Seeded ``(train, val)`` indices of a training pool of ``pool_size`` samples, before subsetting.

        With ``val_from="test"`` the whole pool trains and ``val`` is empty.
        """
        if self.val_from == "test":
            return torch.arange(pool_size), torch.arange(0)
        n_val = split_count(pool_size, self.val_fraction, "val_fraction")
        val, train = carve(torch.arange(pool_size), n_val, seeded_generator(self.seed))
        return train, val

    def test_split_indices(self, test_size: int) -> tuple[Tensor, Tensor]:
        """``(val, test)`` indices of a test set of ``test_size`` samples.

        With ``val_from="test"``: a ``val_fraction`` carved with :data:`TEST_SPLIT_SEED` and the rest,
        both sorted and disjoint. With ``val_from="train"``: nothing and the whole test set.
        """
        if self.val_from == "train":
            return torch.arange(0), torch.arange(test_size)
        n_val = split_count(test_size, self.val_fraction, "val_fraction")
        return carve(torch.arange(test_size), n_val, seeded_generator(TEST_SPLIT_SEED))

    def setup(self, stage: str | None = None) -> None:
        """Load the data once and build the train/val/test datasets (idempotent)."""
        if self.train_dataset is not None:
            return
        train_pool, eval_pool, test = self._load_pool()
        train_idx, val_idx = self.split_indices(len(eval_pool))  # type: ignore[arg-type]
        generator = seeded_generator(self.seed + 1)
        self.train_indices = take_subset(train_idx, self.subset_fraction, generator)
        self.train_dataset = Subset(train_pool, self.train_indices.tolist())
        test_val_idx, self.test_indices = self.test_split_indices(len(test))  # type: ignore[arg-type]
        if self.val_from == "train":
            self.val_indices = take_subset(val_idx, self.subset_fraction, generator)
            self.val_dataset = Subset(eval_pool, self.val_indices.tolist())
            self.test_dataset = test
        else:
            self.val_indices = test_val_idx
            self.val_dataset = Subset(test, test_val_idx.tolist())
            self.test_dataset = Subset(test, self.test_indices.tolist())

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled (by ``(seed, epoch)``) training loader."""
        dataset = self._split("train_dataset")
        sampler = EpochSeededSampler(len(dataset), seed=self.seed)  # type: ignore[arg-type]
        return self._loader(dataset, self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader[Any]:
        """Validation loader: a split of TRAIN, or with ``val_from="test"`` the deciding part of TEST."""
        return self._loader(self._split("val_dataset"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader[Any]:
        """Loader over the test set: complete, or with ``val_from="test"`` only the part validation does not use."""
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
            pin_memory=self._on_cuda(),
        )

    def _on_cuda(self) -> bool:
        """Whether the attached Trainer trains on a CUDA device (then batches come from pinned memory)."""
        strategy = getattr(getattr(self, "trainer", None), "strategy", None)
        return getattr(getattr(strategy, "root_device", None), "type", None) == "cuda"
