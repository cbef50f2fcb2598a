"""MNIST from local files (``.npz`` or torchvision's ``MNIST/raw`` idx files), no download."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_prune.data._common import (
    MNIST_MEAN,
    MNIST_STD,
    first_line,
    load_npz,
    resolve_data_dir,
)
from lightning_prune.data.base import SplitDataModule
from lightning_prune.data.tensor_dataset import RandomCropFlip, TensorImageDataset
from lightning_prune.errors import PruningConfigError

_NPZ_HINT = "MNIST files must hold x uint8 [N,28,28] and integer labels y [N]"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class MNISTDataModule(SplitDataModule):
    """MNIST (60,000 train / 10,000 test 1x28x28 images), normalised with (0.1307, 0.3081).

    Looks in ``data_dir`` (or ``$LIGHTNING_PRUNE_DATA``) for, in order: ``mnist/train.npz`` +
    ``mnist/test.npz`` (keys ``x`` uint8 [N,28,28], ``y``), ``train.npz`` + ``test.npz``, or
    torchvision's ``MNIST/raw`` idx files (optionally ``.gz``). Nothing read can run code: ``.npz``
    files are read with ``allow_pickle=False`` and idx files are raw bytes. Optional augmentation:
    random crop 28 with padding 2 (no flips for digits).

    Args:
        data_dir: Folder holding the data; ``$LIGHTNING_PRUNE_DATA`` when None.
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (``batch_size`` when None).
        val_fraction: Fraction of the ``val_from`` split used for validation, in (0, 1); None: 0.1 of
            TRAIN, or 0.5 of TEST with ``val_from="test"``.
        subset_fraction: Fraction of the train and val splits kept, in (0, 1].
        seed: Seed of the splits, subsets and shuffling.
        num_workers: DataLoader worker processes.
        augment: Random-shift augmentation of the training split.
        val_from: ``"train"`` (default) or ``"test"``: carve the validation set from the test split, for
            weights trained on the whole training split (see :class:`~lightning_prune.data.SplitDataModule`).

    Example:
        >>> dm = MNISTDataModule(data_dir="data")  # doctest: +SKIP
        >>> dm.setup("fit")  # doctest: +SKIP
        >>> next(iter(dm.val_dataloader()))[0].shape  # doctest: +SKIP
        torch.Size([128, 1, 28, 28])
    """

    num_classes = 10
    input_shape = (1, 28, 28)

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_fraction: float | None = None,
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
        self.data_dir = resolve_data_dir(data_dir, "MNISTDataModule")
        self._source = _find_mnist_source(self.data_dir)

    def _load_pool(self) -> tuple[Dataset[Any], Dataset[Any], Dataset[Any]]:
        (train_x, train_y), (test_x, test_y) = (_load_split(self._source, s) for s in _IDX_FILES)
        eval_pool = TensorImageDataset(train_x, train_y, MNIST_MEAN, MNIST_STD, scale=1 / 255)
        augment = RandomCropFlip(padding=2, flip=False) if self.augment else None
        test = TensorImageDataset(test_x, test_y, MNIST_MEAN, MNIST_STD, scale=1 / 255)
        return eval_pool.with_augment(augment), eval_pool, test


def _find_mnist_source(root: Path) -> Path:
    for folder in (root / "mnist", root):
        if (folder / "train.npz").is_file() and (folder / "test.npz").is_file():
            return folder
    for folder in (root / "MNIST" / "raw", root / "mnist" / "MNIST" / "raw", root / "raw", root):
        names = [name for pair in _IDX_FILES.values() for name in pair]
        if all(_idx_path(folder, name) is not None for name in names):
            return folder
    raise PruningConfigError(
        f"no MNIST data found in {str(root)!r}",
        hint="expected mnist/train.npz + mnist/test.npz, train.npz + test.npz, or torchvision's "
        "MNIST/raw idx files inside data_dir / $LIGHTNING_PRUNE_DATA",
    )


def _idx_path(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_split(source: Path, split: str) -> tuple[Tensor, Tensor]:
    if (source / f"{split}.npz").is_file():
        data = load_npz(source / f"{split}.npz", ("x", "y"), hint=_NPZ_HINT)
        x, y = data["x"], data["y"]
    else:
        image_name, label_name = _IDX_FILES[split]
        x = _read_idx(_idx_path(source, image_name))  # type: ignore[arg-type]
        y = _read_idx(_idx_path(source, label_name))  # type: ignore[arg-type]
    shape_ok = x.ndim == 3 and x.shape[1:] == (28, 28) and x.dtype == np.uint8
    if not (shape_ok and y.ndim == 1 and len(x) == len(y) and np.issubdtype(y.dtype, np.integer)):
        raise PruningConfigError(
            f"MNIST {split} split in {str(source)!r} has x of shape {x.shape}, dtype {x.dtype} "
            f"and y of shape {y.shape}, dtype {y.dtype}",
            hint=_NPZ_HINT,
        )
    images = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)
    return images, torch.from_numpy(y.astype(np.int64))


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (big-endian header: 0, 0, dtype code 0x08, ndim; then dims)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:  # a damaged .gz: BadGzipFile is an OSError
        raise PruningConfigError(f"{str(path)!r} could not be read: {first_line(err)}",
                                 hint="re-extract the MNIST idx files") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise PruningConfigError(
            f"{str(path)!r} is not an unsigned-byte IDX file",
            hint="use the original MNIST idx files (or the .npz layout)",
        )
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise PruningConfigError(f"{str(path)!r} is truncated inside its header ({len(raw)} bytes)",
                                 hint="re-extract the MNIST idx files")
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise PruningConfigError(
            f"{str(path)!r} is truncated: header says {tuple(dims)}, found {data.size} bytes",
            hint="re-extract the MNIST idx files",
        )
    return data.reshape(tuple(dims)).copy()
