"""LightningDataModules with seeded train/val splits, subsets and resumable shuffling.

Every DataModule takes ``data_dir`` (falling back to ``$LIGHTNING_PRUNE_DATA``), ``batch_size``,
``eval_batch_size``, ``val_fraction`` and ``val_from`` (validation carved from TRAIN, or from TEST for
weights trained on the whole training split), ``subset_fraction``, ``seed``, ``num_workers`` and
``augment``, and exposes ``num_classes``, ``input_shape`` and ``example_input()``.

The names below are imported on first use (PEP 562).

Example:
    >>> from lightning_prune.data import DigitsDataModule
    >>> dm = DigitsDataModule(batch_size=16)
    >>> dm.num_classes, dm.input_shape
    (10, (1, 8, 8))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune._lazy import lazy_attributes

if TYPE_CHECKING:  # the names __getattr__ provides, for type checkers and IDEs
    from lightning_prune.data._common import DATA_DIR_ENV
    from lightning_prune.data.base import SplitDataModule
    from lightning_prune.data.cifar import CIFAR10DataModule
    from lightning_prune.data.digits import DigitsDataModule
    from lightning_prune.data.image_folder import (
        ImageFolderDataModule,
        ImageSampleDataset,
    )
    from lightning_prune.data.mnist import MNISTDataModule
    from lightning_prune.data.sampler import EpochSeededSampler
    from lightning_prune.data.tensor_dataset import RandomCropFlip, TensorImageDataset

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "DATA_DIR_ENV": "lightning_prune.data._common",
    "CIFAR10DataModule": "lightning_prune.data.cifar",
    "DigitsDataModule": "lightning_prune.data.digits",
    "EpochSeededSampler": "lightning_prune.data.sampler",
    "ImageFolderDataModule": "lightning_prune.data.image_folder",
    "ImageSampleDataset": "lightning_prune.data.image_folder",
    "MNISTDataModule": "lightning_prune.data.mnist",
    "RandomCropFlip": "lightning_prune.data.tensor_dataset",
    "SplitDataModule": "lightning_prune.data.base",
    "TensorImageDataset": "lightning_prune.data.tensor_dataset",
}

__all__ = [
    "DATA_DIR_ENV",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "EpochSeededSampler",
    "ImageFolderDataModule",
    "ImageSampleDataset",
    "MNISTDataModule",
    "RandomCropFlip",
    "SplitDataModule",
    "TensorImageDataset",
]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _EXPORTS, __all__)
