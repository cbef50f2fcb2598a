"""LightningDataModules with seeded train/val splits, subsets and resumable shuffling.

Every DataModule takes ``data_dir`` (falling back to ``$LIGHTNING_PRUNE_DATA``), ``batch_size``,
``eval_batch_size``, ``val_fraction`` (carved from TRAIN), ``subset_fraction``, ``seed``,
``num_workers`` and ``augment``, and exposes ``num_classes``, ``input_shape`` and
``example_input()``.

Example:
    >>> from lightning_prune.data import DigitsDataModule
    >>> dm = DigitsDataModule(batch_size=16)
    >>> dm.num_classes, dm.input_shape
    (10, (1, 8, 8))
"""

from lightning_prune.data._common import DATA_DIR_ENV
from lightning_prune.data.base import SplitDataModule
from lightning_prune.data.cifar import CIFAR10DataModule
from lightning_prune.data.digits import DigitsDataModule
from lightning_prune.data.image_folder import ImageFolderDataModule, ImageSampleDataset
from lightning_prune.data.mnist import MNISTDataModule
from lightning_prune.data.sampler import EpochSeededSampler
from lightning_prune.data.tensor_dataset import RandomCropFlip, TensorImageDataset

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
