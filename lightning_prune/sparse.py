"""Compact saving of unstructured-sparse models: a bitmask plus the non-zero values per tensor.

A tensor with ``n`` entries of which ``nnz`` are non-zero is stored as ``ceil(n / 8)`` bytes of
packed bits and ``nnz`` values in its own dtype, whenever that is smaller than the dense tensor
(for float32 from about 3 % zeros on; at 90 % sparsity it is 7.6x smaller). Other tensors (BN
statistics, dense biases, integer buffers) are stored as they are. The file is a plain
``torch.save`` dictionary of tensors, strings and lists, loadable with ``weights_only=True``.
:func:`load_sparse` gives back the dense ``state_dict`` bit for bit (and loads it into a model),
ready for ``export_onnx`` or any dense runtime.
"""

from __future__ import annotations

import io
import math
import operator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FORMAT", "dense_size", "load_sparse", "save_sparse"]

FORMAT = "lightning_prune.sparse/1"
_SHIFTS = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)


def _pack_bits(mask: Tensor) -> Tensor:
    flat = mask.flatten().to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) << _SHIFTS).sum(1, dtype=torch.uint8)


def _unpack_bits(bits: Tensor, numel: int) -> Tensor:
    return ((bits.unsqueeze(1) >> _SHIFTS) & 1).flatten()[:numel].bool()


def _state_dict(model: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    return {k: v.detach().cpu() for k, v in state.items()}


def _nbytes(obj: Any) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def dense_size(model: nn.Module | Mapping[str, Tensor]) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (the dense reference)."""
    return _nbytes(_state_dict(model))


def save_sparse(model: nn.Module | Mapping[str, Tensor], path: str | Path, completed: bool = True) -> dict[str, Any]:
    """Save ``model``'s weights compactly and report the size on disk against the dense ``state_dict``.

    Args:
        model: A module (its ``state_dict``; a LightningModule works) or a ``state_dict``.
        path: Output file.
        completed: ``False`` marks weights of a run stopped before its plan's end; :func:`load_sparse`
            says so when loading them.

    Returns:
        ``{"path", "bytes", "dense_bytes", "ratio", "compressed_tensors"}``; ``ratio`` is
        ``dense_bytes / bytes``.

    Example:
        >>> import tempfile, os
        >>> net = nn.Linear(64, 64)
        >>> with torch.no_grad():
        ...     _ = net.weight.masked_fill_(torch.rand(64, 64) < 0.9, 0.0)
        >>> info = save_sparse(net, os.path.join(tempfile.mkdtemp(), "net.pt"))
        >>> info["bytes"] < info["dense_bytes"], info["compressed_tensors"]
        (True, ['weight'])
    """
    state = _state_dict(model)
    sparse: dict[str, dict[str, Any]] = {}
    dense: dict[str, Tensor] = {}
    for name, tensor in state.items():
        nonzero = tensor != 0
        nnz = int(nonzero.sum())
        compact = (tensor.numel() + 7) // 8 + nnz * tensor.element_size()
        if tensor.is_floating_point() and tensor.numel() >= 64 and compact < tensor.numel() * tensor.element_size():
            sparse[name] = {"shape": list(tensor.shape), "bits": _pack_bits(nonzero),
                            "values": tensor[nonzero].clone()}
        else:
            dense[name] = tensor.clone()
    payload = {"format": FORMAT, "order": list(state), "sparse": sparse, "dense": dense, "completed": bool(completed)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    size, reference = path.stat().st_size, _nbytes(state)
    return {"path": str(path), "bytes": size, "dense_bytes": reference, "ratio": reference / size,
            "compressed_tensors": list(sparse)}


def _decode(payload: Mapping[str, Any]) -> dict[str, Tensor]:
    """The dense ``state_dict`` of a :func:`save_sparse` payload; ``ValueError`` says what is damaged."""
    order, dense, sparse = payload.get("order"), payload.get("dense"), payload.get("sparse")
    if not isinstance(order, list) or not isinstance(dense, dict) or not isinstance(sparse, dict):
        raise ValueError("its 'order', 'dense' or 'sparse' entry is missing or of the wrong type")
    state: dict[str, Tensor] = {}
    for name in order:
        if name in dense:
            if not isinstance(dense[name], Tensor):
                raise ValueError(f"{name!r} is a {type(dense[name]).__name__}, not a tensor")
            state[name] = dense[name]
            continue
        entry = sparse.get(name)
        if not isinstance(entry, dict):
            raise ValueError(f"{name!r} is listed in 'order' but stored nowhere")
        values, bits, sizes = entry.get("values"), entry.get("bits"), entry.get("shape")
        try:
            shape = [operator.index(size) for size in sizes]
        except TypeError as err:
            raise ValueError(f"{name!r} has the shape {sizes!r}") from err
        if any(size < 0 for size in shape):
            raise ValueError(f"{name!r} has the shape {shape}")
        if not isinstance(values, Tensor) or not isinstance(bits, Tensor) or bits.dtype != torch.uint8:
            raise ValueError(f"{name!r} lacks its uint8 'bits' or its 'values' tensor")
        numel = math.prod(shape)
        if bits.numel() != (numel + 7) // 8:
            raise ValueError(f"{name!r} has {bits.numel()} bytes of bits for {numel} entries")
        keep = _unpack_bits(bits.flatten(), numel)
        if int(keep.sum()) != values.numel():
            raise ValueError(f"{name!r} has {int(keep.sum())} non-zero bits but {values.numel()} values")
        tensor = torch.zeros(numel, dtype=values.dtype)
        tensor[keep] = values.flatten()
        state[name] = tensor.view(shape)
    return state


def _without_wrapper_prefix(state: dict[str, Tensor], current: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with the prefix (e.g. ``"model."``) of the module that wrapped the network removed, when
    its names then are exactly ``current``'s: a LightningModule's file loads into the bare network."""
    if not state or all(k in current for k in state):
        return state
    parts = next(iter(state)).split(".")
    for cut in range(1, len(parts)):
        prefix = ".".join(parts[:cut]) + "."
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if stripped.keys() == current.keys():
                return stripped
    return state


def load_sparse(path: str | Path, model: nn.Module | None = None, strict: bool = True) -> dict[str, Tensor]:
    """Read a :func:`save_sparse` file back into a dense ``state_dict`` (and into ``model``, if given).

    The file is read with ``torch.load(weights_only=True)`` after a check that it is a complete
    archive. With ``model``, the names (if ``strict``) and shapes are checked before anything is
    loaded, and the load is all or nothing: on any failure ``model`` keeps its values. A file saved
    from a module that wraps the network (a LightningModule's ``model.`` names) also loads into the
    bare network.

    Args:
        path: A file written by :func:`save_sparse`.
        model: Optional module to ``load_state_dict`` into (same architecture as the saved one).
        strict: Passed to ``load_state_dict``.

    Returns:
        The dense ``state_dict`` (CPU tensors, original order).

    Raises:
        PruningConfigError: naming ``path``: a missing, truncated or damaged file, one not written
            by :func:`save_sparse`, or one whose tensors do not fit ``model``.

    Example:
        >>> # state = load_sparse("sparse_model.pt", model)  # model now holds the dense weights
    """
    from lightning_prune.artifacts import (
        load_weights_only,  # imported here: keeps this module light
    )
    from lightning_prune.errors import PruningConfigError, check
    from lightning_prune.structural import snapshot

    hint = "pass a file written by lightning_prune.sparse.save_sparse"
    payload = load_weights_only(path, hint)
    file = Path(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        fmt = payload.get("format") if isinstance(payload, dict) else None
        held = f"format {fmt!r}" if fmt is not None else f"a {type(payload).__name__}"
        if isinstance(payload, dict) and payload and all(isinstance(v, Tensor) for v in payload.values()):
            held = f"a plain state_dict of {len(payload)} tensors"
        raise PruningConfigError(f"{file} is not a {FORMAT} file (it holds {held})", hint=hint)
    try:
        state = _decode(payload)
    except (ValueError, TypeError, RuntimeError, IndexError) as err:
        raise PruningConfigError(f"{file} is a damaged {FORMAT} file: {err}", hint=hint) from err
    if payload.get("completed") is False:
        from lightning_prune._logging import log

        log.warning(f"[lightning_prune] {file} holds weights from a run that stopped before its pruning plan was "
                    "complete: they are not the planned result")
    if model is None:
        return state
    kind = type(model).__name__
    fit_hint = ("load it into the architecture it was saved from (a structurally pruned model first needs its "
                "structure, e.g. with lightning_prune.load_pruned)")
    current = model.state_dict()
    state = _without_wrapper_prefix(state, current)
    if strict:
        missing, unexpected = [k for k in current if k not in state], [k for k in state if k not in current]
        check(not missing and not unexpected,
              f"{file} does not fit the given {kind}: the model has {len(missing)} tensors the file lacks "
              f"(e.g. {missing[:3]}) and the file {len(unexpected)} the model lacks (e.g. {unexpected[:3]})", fit_hint)
    for name, tensor in state.items():
        if name in current:
            check(tuple(tensor.shape) == tuple(current[name].shape),
                  f"{file} does not fit the given {kind}: {name} is {list(tensor.shape)} in the file but "
                  f"{list(current[name].shape)} in the model", fit_hint)
    try:
        with snapshot.transaction(model):
            model.load_state_dict(state, strict=strict)
    except Exception as err:  # e.g. a module's own _load_from_state_dict; the values were put back
        reason = (str(err).strip().splitlines() or [""])[0]
        raise PruningConfigError(f"{file} could not be loaded into the given {kind}: {type(err).__name__}: {reason}",
                                 hint=fit_hint) from err
    return state
