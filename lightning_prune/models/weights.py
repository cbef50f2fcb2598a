"""Reading network weights from a local file: the one place the models (and a distillation teacher) load them.

Nothing is downloaded: a relative path is also looked up in ``$LIGHTNING_PRUNE_DATA``. Files are read
with ``torch.load(weights_only=True)`` (no code in a file is ever run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_prune.errors import PruningConfigError

__all__ = ["load_state_dict_file"]


def _locate(path: str | Path) -> Path:
    """``path`` itself, else (when relative) the same path inside ``$LIGHTNING_PRUNE_DATA``.

    This lets configs name ``weights/resnet20-12fca82f.th`` without a machine-specific path.
    """
    file = Path(path).expanduser()
    data_dir = os.environ.get("LIGHTNING_PRUNE_DATA")
    if not file.is_file() and not file.is_absolute() and data_dir and (Path(data_dir) / file).is_file():
        return Path(data_dir) / file
    return file


def _read_checkpoint(path: str | Path) -> Mapping[str, Tensor]:
    file = _locate(path)
    if not file.is_file():
        raise PruningConfigError(
            f"weights file {str(path)!r} does not exist (relative paths are also looked up in "
            "$LIGHTNING_PRUNE_DATA)",
            hint="pass the path of a local checkpoint (weights are never downloaded), "
            "or weights=None for random initialisation",
        )
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a config error
        raise PruningConfigError(
            f"could not read weights file {str(file)!r}: {type(exc).__name__}: "
            f"{(str(exc).strip().splitlines() or [''])[0][:200]}",
            hint="the file must be a torch.save()d state_dict or {'state_dict': ...} checkpoint",
        ) from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PruningConfigError(
            f"weights file {str(file)!r} does not contain a state_dict of tensors",
            hint="save weights with torch.save(model.state_dict(), path)",
        )
    return dict(obj)


def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def _align_keys(state: Mapping[str, Tensor], expected: set[str]) -> dict[str, Tensor]:
    """Strip a ``module.`` prefix, and a ``model.`` prefix when every key has one."""
    aligned = _strip_prefix(state, "module.")
    if aligned and not set(aligned) & expected and all(k.startswith("model.") for k in aligned):
        aligned = _strip_prefix(aligned, "model.")
    return aligned


def load_state_dict_file(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a local checkpoint into ``model`` strictly.

    Accepts a raw state_dict or ``{"state_dict": ...}``; a leading ``module.`` (DataParallel) or
    ``model.`` (``ImageClassifier``) prefix on the keys is stripped.

    Args:
        model: The network to load into (modified in place).
        path: Path of the checkpoint file.

    Returns:
        ``model`` itself.

    Raises:
        PruningConfigError: If the file is missing, unreadable or does not match ``model``.

    Example:
        >>> from lightning_prune.models import cifar_resnet
        >>> net = cifar_resnet(20)
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "r20.pt")
        >>> torch.save(net.state_dict(), path)
        >>> load_state_dict_file(cifar_resnet(20), path).linear.out_features
        10
    """
    expected = model.state_dict()
    state = _align_keys(_read_checkpoint(path), set(expected))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PruningConfigError(
            f"weights file {str(path)!r} does not match {type(model).__name__}: "
            f"{_describe_mismatch(state, expected)}",
            hint="check that the architecture (depth, num_classes, in_channels) is the one "
            "the checkpoint was saved from",
        ) from exc
    return model


def _describe_mismatch(state: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> str:
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = [
        f"{label} {len(keys)} (e.g. {', '.join(keys[:3])})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if keys
    ]
    return "; ".join(parts) or "incompatible tensors"
