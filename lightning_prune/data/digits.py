"""scikit-learn's embedded 8x8 digits as a LightningDataModule (no files needed)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_prune.data._common import (
    carve,
    check_fraction,
    seeded_generator,
    split_count,
)
from lightning_prune.data.base import SplitDataModule
from lightning_prune.data.tensor_dataset import RandomCropFlip, TensorImageDataset

_TEST_SPLIT_SEED = 20240601


class DigitsDataModule(SplitDataModule):
    """The 1,797 scikit-learn digits as 1x8x8 images, 10 classes; tiny and fast, for tests.

    Pixels are scaled to [0, 1] (``/16``) and normalised with the mean/std of the training split.
    A ``test_fraction`` test split is carved first with a FIXED seed (so the test set is the same
    for every ``seed``); ``val_fraction`` of the remainder becomes the validation split (seeded
    by ``seed``). ``data_dir`` is accepted for a uniform interface and ignored.

    Args:
        data_dir: Ignored (the data ship with scikit-learn).
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (``batch_size`` when None).
        val_fraction: Fraction of the ``val_from`` split used for validation, in (0, 1); None: 0.1 of
            the non-test samples, or 0.5 of the test set with ``val_from="test"``.
        test_fraction: Fraction of all samples held out as the test set, in (0, 1).
        subset_fraction: Fraction of the train and val splits kept, in (0, 1].
        seed: Seed of the val split, subsets and shuffling.
        num_workers: DataLoader worker processes.
        augment: Random 1-pixel shifts of training images (off by default).
        val_from: ``"train"`` (default) or ``"test"``: carve the validation set from the test split, for
            weights trained on the whole training split (see :class:`~lightning_prune.data.SplitDataModule`).

    Example:
        >>> dm = DigitsDataModule(batch_size=64)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), y.dtype
        ((64, 1, 8, 8), torch.int64)
    """

    num_classes = 10
    input_shape = (1, 8, 8)

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_fraction: float | None = None,
        test_fraction: float = 0.2,
        subset_fraction: float = 1.0,
        seed: int = 0,
        num_workers: int = 0,
        augment: bool = False,
        val_from: str = "train",
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_fraction=val_fraction,
            subset_fraction=subset_fraction,
            seed=seed,
            num_workers=num_workers,
            augment=augment,
            val_from=val_from,
        )
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.test_fraction = check_fraction("test_fraction", test_fraction, allow_one=False)
        self.mean: float | None = None
        self.std: float | None = None

    def _load_pool(self) -> tuple[Dataset[Any], Dataset[Any], Dataset[Any]]:
        images, labels = _digits_tensors()
        n_test = split_count(len(labels), self.test_fraction, "test_fraction")
        test_idx, pool_idx = carve(
            torch.arange(len(labels)), n_test, seeded_generator(_TEST_SPLIT_SEED)
        )
        pool_images, pool_labels = images[pool_idx], labels[pool_idx]
        train_idx, _ = self.split_indices(len(pool_labels))
        train_pixels = pool_images[train_idx]
        self.mean, self.std = float(train_pixels.mean()), float(train_pixels.std())
        stats = ((self.mean,), (self.std,))
        eval_pool = TensorImageDataset(pool_images, pool_labels, *stats)
        augment = RandomCropFlip(padding=1, flip=False) if self.augment else None
        test = TensorImageDataset(images[test_idx], labels[test_idx], *stats)
        return eval_pool.with_augment(augment), eval_pool, test


def _digits_tensors() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    return images, torch.as_tensor(bunch.target, dtype=torch.int64)
