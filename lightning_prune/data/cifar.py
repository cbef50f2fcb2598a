"""CIFAR-10 from local files (``.npz`` or torchvision's ``cifar-10-batches-py``), no download."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_prune.data._common import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    resolve_data_dir,
)
from lightning_prune.data.base import SplitDataModule
from lightning_prune.data.tensor_dataset import RandomCropFlip, TensorImageDataset
from lightning_prune.errors import PruningConfigError

_NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "cifar": (CIFAR10_MEAN, CIFAR10_STD)}


class CIFAR10DataModule(SplitDataModule):
    """CIFAR-10 (50,000 train / 10,000 test 3x32x32 images) held in memory as uint8 tensors.

    Looks in ``data_dir`` (or ``$LIGHTNING_PRUNE_DATA``) for, in order: ``cifar10/train.npz`` +
    ``cifar10/test.npz`` (keys ``x`` uint8 [N,32,32,3], ``y``), ``train.npz`` + ``test.npz``,
    or torchvision's ``cifar-10-batches-py`` folder (pickles read locally). Images are scaled
    by 1/255 and normalised with the ImageNet statistics (what the published ResNet weights
    expect) or the CIFAR-10 ones. Training augmentation: random crop 32 with padding 4 and a
    random horizontal flip, on tensors.

    Args:
        data_dir: Folder holding the data; ``$LIGHTNING_PRUNE_DATA`` when None.
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (``batch_size`` when None).
        val_fraction: Fraction of TRAIN used for validation, in (0, 1).
        subset_fraction: Fraction of the train and val splits kept, in (0, 1].
        seed: Seed of the splits, subsets and shuffling.
        num_workers: DataLoader worker processes.
        augment: Crop+flip augmentation of the training split.
        normalization: ``"imagenet"`` or ``"cifar"``.

    Example:
        >>> dm = CIFAR10DataModule(data_dir="data", subset_fraction=0.1)  # doctest: +SKIP
        >>> dm.setup("fit")  # doctest: +SKIP
        >>> next(iter(dm.train_dataloader()))[0].shape  # doctest: +SKIP
        torch.Size([128, 3, 32, 32])
    """

    num_classes = 10
    input_shape = (3, 32, 32)

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        subset_fraction: float = 1.0,
        seed: int = 0,
        num_workers: int = 0,
        augment: bool = True,
        normalization: str = "imagenet",
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_fraction=val_fraction,
            subset_fraction=subset_fraction,
            seed=seed,
            num_workers=num_workers,
            augment=augment,
        )
        self.save_hyperparameters()
        if normalization not in _NORMALIZATIONS:
            raise PruningConfigError(
                f"normalization={normalization!r} is not one of {sorted(_NORMALIZATIONS)}",
                hint="use 'imagenet' for the published CIFAR ResNet weights, else 'cifar'",
            )
        self.normalization = normalization
        self.data_dir = resolve_data_dir(data_dir, "CIFAR10DataModule")
        self._source = _find_cifar_source(self.data_dir)

    def _load_pool(self) -> tuple[Dataset[Any], Dataset[Any], Dataset[Any]]:
        (train_x, train_y), (test_x, test_y) = _load_cifar(self._source)
        mean, std = _NORMALIZATIONS[self.normalization]
        eval_pool = TensorImageDataset(train_x, train_y, mean, std, scale=1 / 255)
        augment = RandomCropFlip(padding=4, flip=True) if self.augment else None
        test = TensorImageDataset(test_x, test_y, mean, std, scale=1 / 255)
        return eval_pool.with_augment(augment), eval_pool, test


def _find_cifar_source(root: Path) -> Path:
    """The ``.npz`` folder or ``cifar-10-batches-py`` folder under ``root``."""
    for folder in (root / "cifar10", root):
        if (folder / "train.npz").is_file() and (folder / "test.npz").is_file():
            return folder
    for folder in (
        root / "cifar-10-batches-py",
        root / "cifar10" / "cifar-10-batches-py",
        root,
    ):
        if (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file():
            return folder
    raise PruningConfigError(
        f"no CIFAR-10 data found in {str(root)!r}",
        hint="expected cifar10/train.npz + cifar10/test.npz, train.npz + test.npz, or "
        "torchvision's cifar-10-batches-py folder inside data_dir / $LIGHTNING_PRUNE_DATA",
    )


def _load_cifar(source: Path) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    if (source / "train.npz").is_file():
        return _load_npz(source / "train.npz"), _load_npz(source / "test.npz")
    train = [_load_batch(source / f"data_batch_{i}") for i in range(1, 6)]
    train_x = torch.cat([x for x, _ in train])
    train_y = torch.cat([y for _, y in train])
    return (train_x, train_y), _load_batch(source / "test_batch")


def _load_npz(path: Path) -> tuple[Tensor, Tensor]:
    with np.load(path) as data:
        x, y = data["x"], data["y"]
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8:
        raise PruningConfigError(
            f"{str(path)!r} holds x of shape {x.shape} and dtype {x.dtype}",
            hint="CIFAR-10 .npz files must hold x uint8 [N,32,32,3] (HWC) and y [N]",
        )
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return images, torch.from_numpy(y.astype(np.int64))


def _load_batch(path: Path) -> tuple[Tensor, Tensor]:
    with open(path, "rb") as handle:
        entry = pickle.load(handle, encoding="latin1")  # torchvision's own format
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = entry.get("labels", entry.get("fine_labels"))
    return torch.from_numpy(data.copy()), torch.as_tensor(labels, dtype=torch.int64)
