"""CIFAR-10 from local files (``.npz`` or torchvision's ``cifar-10-batches-py``), no download."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_prune.data._common import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    first_line,
    load_npz,
    resolve_data_dir,
)
from lightning_prune.data.base import SplitDataModule
from lightning_prune.data.tensor_dataset import RandomCropFlip, TensorImageDataset
from lightning_prune.errors import PruningConfigError, check

_NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "cifar": (CIFAR10_MEAN, CIFAR10_STD)}


class CIFAR10DataModule(SplitDataModule):
    """CIFAR-10 (50,000 train / 10,000 test 3x32x32 images) held in memory as uint8 tensors.

    Looks in ``data_dir`` (or ``$LIGHTNING_PRUNE_DATA``) for, in order: ``cifar10/train.npz`` +
    ``cifar10/test.npz`` (keys ``x`` uint8 [N,32,32,3], ``y``), ``train.npz`` + ``test.npz``,
    or torchvision's ``cifar-10-batches-py`` folder. Its pickles are read by a restricted
    unpickler that builds numpy arrays, dicts, lists, strings and numbers and nothing else, so a
    tampered batch file is refused and never runs code (``.npz`` files are read with
    ``allow_pickle=False``). Images are scaled
    by 1/255 and normalised with the ImageNet statistics (what the published ResNet weights
    expect) or the CIFAR-10 ones. Training augmentation: random crop 32 with padding 4 and a
    random horizontal flip, on tensors.

    Args:
        data_dir: Folder holding the data; ``$LIGHTNING_PRUNE_DATA`` when None.
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (``batch_size`` when None).
        val_fraction: Fraction of the ``val_from`` split used for validation, in (0, 1); None: 0.1 of
            TRAIN, or 0.5 of TEST with ``val_from="test"``.
        subset_fraction: Fraction of the train and val splits kept, in (0, 1].
        seed: Seed of the splits, subsets and shuffling.
        num_workers: DataLoader worker processes.
        augment: Crop+flip augmentation of the training split.
        normalization: ``"imagenet"`` or ``"cifar"``.
        val_from: ``"train"`` (default) or ``"test"``: carve the validation set from the test split, for
            weights trained on the whole training split (see :class:`~lightning_prune.data.SplitDataModule`).

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
        val_fraction: float | None = None,
        subset_fraction: float = 1.0,
        seed: int = 0,
        num_workers: int = 0,
        augment: bool = True,
        normalization: str = "imagenet",
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


_NPZ_HINT = "CIFAR-10 .npz files must hold x uint8 [N,32,32,3] (HWC) and y [N]"


def _load_npz(path: Path) -> tuple[Tensor, Tensor]:
    data = load_npz(path, ("x", "y"), hint=_NPZ_HINT)
    x, y = data["x"], data["y"]
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8:
        raise PruningConfigError(f"{str(path)!r} holds x of shape {x.shape} and dtype {x.dtype}", hint=_NPZ_HINT)
    check(y.ndim == 1 and len(y) == len(x) and np.issubdtype(y.dtype, np.integer),
          f"{str(path)!r} holds y of shape {y.shape} and dtype {y.dtype} for {len(x)} images", hint=_NPZ_HINT)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    return images, torch.from_numpy(y.astype(np.int64))


#: The only globals a genuine CIFAR-10 batch pickle names: numpy's array reconstruction (numpy 1 and
#: numpy 2 module names; ``_frombuffer`` when a batch was re-pickled with protocol 5). Dicts, lists,
#: strings, bytes and numbers need no global at all.
_CIFAR_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})

_BATCH_HINT = ("use the original cifar-10-batches-py files from the CIFAR-10 site (or the .npz layout: "
               "cifar10/train.npz + cifar10/test.npz); never load batch files of unknown origin")


class RestrictedCifarUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that only builds what genuine CIFAR-10 batches contain.

    ``find_class`` resolves the globals in :data:`_CIFAR_PICKLE_GLOBALS` (numpy's array
    reconstruction) and refuses every other one (``os.system``, ``builtins.exec``, ...) with a
    :class:`~lightning_prune.errors.PruningConfigError`, so no code named by the file ever runs.
    Persistent ids are refused too (the base class already does so).

    Args:
        handle: The open batch file (binary mode).
        path: The file's path, named in error messages.

    Example:
        >>> import io
        >>> RestrictedCifarUnpickler(io.BytesIO(pickle.dumps({"labels": [1, 2]})), Path("b")).load()
        {'labels': [1, 2]}
        >>> RestrictedCifarUnpickler(io.BytesIO(pickle.dumps(print)), Path("b")).load()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_prune.errors.PruningConfigError: 'b' is not a genuine CIFAR-10 batch: its pickle names the global builtins.print, which is refused (only numpy arrays, dicts, lists, strings and numbers are loaded). HINT: ...
    """

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        super().__init__(handle, encoding="latin1")  # torchvision's files were written by Python 2
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        """Return the allowed numpy global ``module.name``; refuse any other."""
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise PruningConfigError(
                f"{str(self.path)!r} is not a genuine CIFAR-10 batch: its pickle names the global {module}.{name}, "
                "which is refused (only numpy arrays, dicts, lists, strings and numbers are loaded)",
                hint=_BATCH_HINT,
            )
        return super().find_class(module, name)


def _load_batch(path: Path) -> tuple[Tensor, Tensor]:
    """One ``cifar-10-batches-py`` file as (uint8 images [N,3,32,32], int64 labels [N]), safely."""
    try:
        with open(path, "rb") as handle:
            entry = RestrictedCifarUnpickler(handle, path).load()
    except PruningConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged pickle raises many kinds of error
        raise PruningConfigError(
            f"{str(path)!r} could not be read as a CIFAR-10 batch: {first_line(err)}",
            hint=_BATCH_HINT,
        ) from None
    shape = "a dict with 'data' (uint8 [N, 3072]) and 'labels' or 'fine_labels' (N integers)"
    check(isinstance(entry, dict) and "data" in entry and ("labels" in entry or "fine_labels" in entry),
          f"{str(path)!r} holds {_describe(entry)}, not {shape}", hint=_BATCH_HINT)
    data, labels = entry["data"], entry.get("labels", entry.get("fine_labels"))
    check(isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3 * 32 * 32,
          f"{str(path)!r}: 'data' is {_describe(data)}, not a uint8 array [N, 3072]", hint=_BATCH_HINT)
    labels_ok = isinstance(labels, list | np.ndarray) and len(labels) == len(data)
    labels_ok = labels_ok and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in labels)
    check(labels_ok, f"{str(path)!r}: the labels are {_describe(labels)}, not {len(data)} integers", hint=_BATCH_HINT)
    images = data.reshape(-1, 3, 32, 32)
    return torch.from_numpy(images.copy()), torch.as_tensor(np.asarray(labels, dtype=np.int64))


def _describe(value: Any) -> str:
    """A short description of an unpickled value for error messages."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))[:8]}"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    return f"a {type(value).__name__}"
