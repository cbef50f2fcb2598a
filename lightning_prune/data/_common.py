"""Private helpers shared by the DataModules: argument checks, data-dir resolution, splits."""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_prune.errors import PruningConfigError

DATA_DIR_ENV = "LIGHTNING_PRUNE_DATA"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None, what: str) -> Path:
    """Return ``data_dir``, else ``$LIGHTNING_PRUNE_DATA``, as an existing directory.

    A relative ``data_dir`` that is not a folder here is also looked up in ``$LIGHTNING_PRUNE_DATA``
    (as weights files are), so that a recipe can name ``imagenet`` and run wherever the data lives.
    """
    raw = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if raw is None:
        raise PruningConfigError(
            f"no data directory for {what}: data_dir=None and ${DATA_DIR_ENV} is not set",
            hint=f"pass data_dir=... (data.init_args.data_dir in YAML) or export {DATA_DIR_ENV}",
        )
    path = Path(raw).expanduser()
    root = os.environ.get(DATA_DIR_ENV)
    beside = Path(root).expanduser() / path if root and data_dir is not None and not path.is_absolute() else None
    if not path.is_dir() and beside is not None and beside.is_dir():
        return beside
    if not path.is_dir():
        source = "data_dir" if data_dir is not None else f"${DATA_DIR_ENV}"
        also = f" (nor in ${DATA_DIR_ENV}={root!r})" if beside is not None else ""
        raise PruningConfigError(
            f"{source}={str(raw)!r} for {what} is not an existing directory{also}",
            hint=f"point data_dir or {DATA_DIR_ENV} at the folder holding the data set",
        )
    return path


def load_npz(path: Path, keys: tuple[str, ...], hint: str) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the ``.npz`` archive ``path``, read with ``allow_pickle=False``.

    No pickle inside the file is ever unpickled, so no code in it runs: an archive holding object
    arrays (pickles), a file that is not an ``.npz`` archive, or one lacking a key is refused.

    Args:
        path: The ``.npz`` file.
        keys: The array names that must be present.
        hint: The hint of the error raised for a bad file (what the file should hold).

    Returns:
        ``{key: array}`` for every key.

    Raises:
        PruningConfigError: naming the file, for any file that cannot be read that way.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "d.npz"
        >>> np.savez(path, x=np.zeros(2), y=np.ones(2))
        >>> load_npz(path, ("y",), hint="...")["y"].tolist()
        [1.0, 1.0]
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:  # pickles are refused as ValueError
        raise PruningConfigError(f"{str(path)!r} could not be read as an .npz archive of plain arrays: "
                                 f"{first_line(err)}", hint=hint) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise PruningConfigError(f"{str(path)!r} is a single .npy array, not an .npz archive with keys {list(keys)}",
                                 hint=hint)
    with archive:
        missing = [key for key in keys if key not in archive.files]
        if missing:
            raise PruningConfigError(f"{str(path)!r} lacks the key(s) {missing}; it holds {archive.files}", hint=hint)
        try:
            return {key: archive[key] for key in keys}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:  # object arrays, damaged members
            raise PruningConfigError(f"{str(path)!r} could not be read as an .npz archive of plain arrays: "
                                     f"{first_line(err)}", hint=hint) from None


def first_line(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters) of an exception."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"


def check_fraction(name: str, value: float, *, allow_one: bool) -> float:
    """Validate ``0 < value < 1`` (or ``<= 1`` when ``allow_one``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and 0.0 < float(value) and (float(value) <= 1.0 if allow_one else float(value) < 1.0)
    if not ok:
        interval = "(0, 1]" if allow_one else "(0, 1)"
        raise PruningConfigError(
            f"{name}={value!r} is outside {interval}",
            hint=f"use a fraction such as {'1.0 (everything) or 0.1' if allow_one else '0.1'}",
        )
    return float(value)


def check_positive_int(name: str, value: int | None, *, allow_none: bool = False) -> None:
    """Validate a positive integer (optionally None)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PruningConfigError(
            f"{name}={value!r} must be a positive integer", hint=f"use e.g. {name}=64"
        )


def check_num_workers(num_workers: int) -> None:
    """Validate a non-negative integer number of loader workers."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise PruningConfigError(
            f"num_workers={num_workers!r} must be a non-negative integer",
            hint="use 0 (load in the main process) or the number of CPU cores",
        )


def split_count(n: int, fraction: float, what: str) -> int:
    """Number of items a ``fraction`` of ``n`` takes, leaving at least one on each side."""
    count = int(round(n * fraction))
    if count < 1 or count >= n:
        raise PruningConfigError(
            f"{what}={fraction} of {n} samples leaves an empty split",
            hint=f"choose {what} so that both parts keep at least one sample",
        )
    return count


def subset_count(n: int, fraction: float) -> int:
    """Size of a ``fraction`` subset of ``n`` items (at least one)."""
    return min(n, max(1, math.ceil(n * fraction - 1e-9)))


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(int(seed))


def carve(indices: Tensor, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Randomly split ``indices`` into (``count`` items, the rest), each sorted."""
    perm = indices[torch.randperm(len(indices), generator=generator)]
    return perm[:count].sort().values, perm[count:].sort().values


def take_subset(indices: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """A seeded random ``fraction`` subset of ``indices`` (sorted); all of them when 1."""
    perm = torch.randperm(len(indices), generator=generator)
    if fraction >= 1.0:
        return indices
    return indices[perm[: subset_count(len(indices), fraction)]].sort().values
