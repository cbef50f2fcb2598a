"""The pruned-model artifact, loading a pruned model into a fresh instance, and checkpoint checks.

Every file is read with ``torch.load(weights_only=True)`` (no code in a file is ever run) after a
check that it is a complete torch zip archive, and every failure, from a missing or truncated file
to a model of another architecture, is a :class:`~lightning_prune.errors.PruningConfigError` naming
the file. :func:`load_pruned` is all-or-nothing: on any failure the model is left exactly as it was.
"""

from __future__ import annotations

import itertools
import operator
import os
import pickle
import pickletools
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_prune._logging import log
from lightning_prune.errors import PruningConfigError, check
from lightning_prune.structural import graph as structure
from lightning_prune.structural import snapshot

FORMAT = "lightning_prune.pruned_model/1"

#: The entries :func:`check_checkpoint` requires of a Lightning checkpoint.
CHECKPOINT_KEYS = ("state_dict", "callbacks", "epoch", "global_step")

_HINT_PRUNED = "pass the pruned_model.pt written by StructuredPruning, or a .ckpt of the pruning run"
_HINT_CHECKPOINT = "pass the path of a .ckpt written by ModelCheckpoint, or the newest intact one"
_HINT_ARCHITECTURE = "pass a fresh, unpruned instance of the architecture the file was pruned from"
_ZIP_MAGIC = b"PK\x03\x04"


class _NotWeightsOnly(PruningConfigError):
    """An intact torch archive holding objects that ``torch.load(weights_only=True)`` refuses."""


def save_pruned(
    path: str | Path,
    model: nn.Module,
    history: Sequence[Sequence[tuple[str, Sequence[int]]]],
    example_input: torch.Tensor | None,
    completed: bool = True,
) -> Path:
    """Write the structural history, the weights and the tracing input (all ``weights_only``-safe).

    ``completed=False`` marks a model from a run that stopped before its plan's end (the controller
    also names such a file ``pruned_model.incomplete.pt``); :func:`load_pruned` says so when loading it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": FORMAT,
            "history": [[[name, [int(i) for i in idxs]] for name, idxs in step] for step in history],
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "example_input": None if example_input is None else example_input.detach().cpu(),
            "completed": bool(completed),
        },
        path,
    )
    return path


def needs_replay(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` holds shapes that differ from ``model``'s (a pruned checkpoint)."""
    current = model.state_dict()
    return any(k in current and tuple(current[k].shape) != tuple(v.shape) for k, v in state_dict.items())


# ---------------------------------------------------------------------- reading files safely
def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _data_pickle(archive: zipfile.ZipFile) -> str | None:
    """The name of the archive's top-level ``data.pkl`` (``<root>/data.pkl`` in a torch archive)."""
    for name in archive.namelist():
        if name == "data.pkl" or (name.endswith("/data.pkl") and name.count("/") == 1):
            return name
    return None


def _check_archive(file: Path, hint: str) -> None:
    """A complete zip archive (its central directory is there, every entry passes its CRC) from torch.save."""
    try:
        with zipfile.ZipFile(file) as archive:
            damaged = archive.testzip()
            pickled = _data_pickle(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise PruningConfigError(f"{file} is a damaged zip archive ({_first_line(err)})", hint=hint) from err
    check(damaged is None, f"{file} is damaged: its entry {damaged!r} fails the zip CRC check "
          "(a partial write or a corrupted copy)", hint)
    check(pickled is not None, f"{file} is a zip archive but not a file written by torch.save (it has no data.pkl)",
          hint)


def load_weights_only(path: str | Path, hint: str, *, mmap: bool = False) -> Any:
    """Read a ``torch.save`` file without running any code from it.

    The file must exist and, when it is a zip archive (every file torch, Lightning and this library
    write), be complete: its central directory present and every entry passing its CRC check
    (``torch.load`` itself reads a truncated tail as an error, but damaged tensor data silently).
    Then it is loaded onto the CPU with ``weights_only=True``.

    Args:
        path: The file.
        hint: What the user should do, for the error raised.
        mmap: Map tensor storages instead of reading them (zip archives only).

    Returns:
        What the file holds.

    Raises:
        PruningConfigError: naming ``path``, for a missing, empty, truncated, damaged or foreign
            file, or one holding objects that ``weights_only=True`` refuses to unpickle.
    """
    check(isinstance(path, str | os.PathLike), f"path={path!r} is not a file path", hint)
    file = Path(path)
    check(file.exists(), f"no file at {file}", hint)
    check(file.is_file(), f"{file} is not a file", hint)
    size = file.stat().st_size
    check(size > 0, f"{file} is empty (0 bytes)", hint)
    archive = zipfile.is_zipfile(file)
    if archive:
        _check_archive(file, hint)
    else:
        with file.open("rb") as handle:
            head = handle.read(len(_ZIP_MAGIC))
        check(head != _ZIP_MAGIC, f"{file} is truncated: a zip archive of {size} bytes whose end "
              "(the central directory) is missing", hint)
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap and archive)
    except pickle.UnpicklingError as err:
        if archive and "weights only load failed" in str(err).lower():
            try:
                found = torch.serialization.get_unsafe_globals_in_checkpoint(file)
            except Exception:  # only for the message
                found = []
            listed = f" ({', '.join(found[:3])})" if found else ""
            raise _NotWeightsOnly(f"{file} holds objects that torch.load(weights_only=True) refuses to unpickle"
                                  f"{listed}; they are never unpickled here, for safety", hint=hint) from err
        raise PruningConfigError(f"{file} is not a file written by torch.save ({_first_line(err)})", hint=hint) from err
    except Exception as err:
        raise PruningConfigError(f"{file} could not be read by torch.load(weights_only=True): "
                                 f"{type(err).__name__}: {_first_line(err)}", hint=hint) from err


def _describe(data: Any) -> str:
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return f"a plain state_dict ({len(data)} tensors)"
    if isinstance(data, dict):
        return f"a dict with keys {sorted(map(str, data))[:6]}"
    return f"a {type(data).__name__}"


def _read(path: str | Path) -> tuple[list[list[tuple[str, list[int]]]], dict[str, torch.Tensor], torch.Tensor | None]:
    """The structural history, the weights and the example input recorded in an artifact or checkpoint."""
    data = load_weights_only(path, _HINT_PRUNED)
    file = Path(path)
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == FORMAT:
        state, weights = data, data.get("state_dict")
    elif isinstance(fmt, str) and fmt.startswith("lightning_prune.sparse/"):
        raise PruningConfigError(f"{file} is an unstructured-sparse weights file ({fmt}), not a pruned-model artifact",
                                 hint="load it with lightning_prune.load_sparse(path, model)")
    elif isinstance(fmt, str) and fmt.startswith("lightning_prune."):
        raise PruningConfigError(f"{file} has format {fmt!r}; this version reads {FORMAT!r}",
                                 hint="load it with the lightning_prune version that wrote it")
    elif isinstance(data, dict) and "callbacks" in data and "state_dict" in data:
        callbacks = data["callbacks"]
        check(isinstance(callbacks, dict), f"{file} is a damaged Lightning checkpoint: 'callbacks' is a "
              f"{type(callbacks).__name__}, not a dict", _HINT_PRUNED)
        states = [s for k, s in callbacks.items()
                  if str(k).startswith("StructuredPruning") and isinstance(s, dict) and "history" in s]
        check(len(states) == 1, f"{file} holds {len(states)} StructuredPruning states (exactly 1 is needed)",
              "pass a checkpoint written by a fit with one StructuredPruning callback")
        state, weights = states[0], data["state_dict"]
    else:
        raise PruningConfigError(f"{file} holds {_describe(data)}: neither a Lightning checkpoint of a pruning run "
                                 "nor a pruned-model artifact (a state_dict alone cannot rebuild the pruned structure)",
                                 hint=_HINT_PRUNED)
    try:
        history = [[(_text(name), [operator.index(i) for i in idxs]) for name, idxs in step]
                   for step in state["history"]]
    except (KeyError, TypeError, ValueError) as err:
        raise PruningConfigError(f"{file} holds a damaged structural history ({type(err).__name__}: {err})",
                                 hint=_HINT_PRUNED) from err
    check(isinstance(weights, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in weights.items()),
          f"{file} holds damaged weights: its state_dict is not a mapping of names to tensors", _HINT_PRUNED)
    if state.get("completed") is False:
        log.warning(f"[lightning_prune] {file} holds a model from a run that stopped before its pruning plan was "
                    "complete: it is not the planned result")
    example = state.get("example_input")
    check(example is None or isinstance(example, torch.Tensor),
          f"{file} holds a damaged example input (a {type(example).__name__}, not a tensor)", _HINT_PRUNED)
    return history, weights, example


def _text(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"layer name {name!r} is not a string")
    return name


# ---------------------------------------------------------------------- loading a pruned model
def _prefix_for(model: nn.Module, names: Sequence[str], source: str | Path = "the file") -> str:
    """The prefix to strip from recorded names so that they exist in ``model`` ('' or e.g. 'model.')."""
    modules = {n for n, _ in model.named_modules()}
    if all(n in modules for n in names):
        return ""
    for name in names:
        parts = name.split(".")
        for cut in range(1, len(parts)):
            prefix = ".".join(parts[:cut]) + "."
            if all(n.startswith(prefix) and n[len(prefix):] in modules for n in names):
                return prefix
    absent = next((n for n in names if n not in modules), names[0])
    raise PruningConfigError(
        f"the layers recorded in {source} (e.g. {absent!r}) are not in the given {type(model).__name__}",
        hint="pass a fresh instance of the same architecture that was pruned (or the LightningModule around it)",
    )


def _out_channels(module: nn.Module) -> int | None:
    """Output channels of a prunable root layer (conv or linear), else ``None``."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return int(module.out_channels)
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    return None


def _check_fits(
    file: Path,
    model: nn.Module,
    weights: Mapping[str, torch.Tensor],
    history: Sequence[Sequence[tuple[str, list[int]]]],
) -> None:
    """Before any surgery: the file's tensors, history and channel indices fit ``model``, unpruned."""
    kind = type(model).__name__
    current = model.state_dict()
    missing, unexpected = sorted(current.keys() - weights.keys()), sorted(weights.keys() - current.keys())
    check(not missing and not unexpected,
          f"{file} does not fit the given {kind}: the model has {len(missing)} tensors the file lacks "
          f"(e.g. {missing[:3]}) and the file {len(unexpected)} the model lacks (e.g. {unexpected[:3]})",
          _HINT_ARCHITECTURE)
    for key, value in weights.items():
        have = current[key]
        check(value.dim() == have.dim() and all(a <= b for a, b in zip(value.shape, have.shape, strict=True)),
              f"{file} does not fit the given {kind}: {key} is {list(value.shape)} in the file but "
              f"{list(have.shape)} in the model (pruning only removes channels)", _HINT_ARCHITECTURE)
    removals = [(name, idxs) for step in history for name, idxs in step if idxs]
    if not removals:
        return
    removed = sum(len(set(idxs)) for _, idxs in removals)
    check(any(tuple(v.shape) != tuple(current[k].shape) for k, v in weights.items()),
          f"the given {kind} already has the pruned structure recorded in {file} (every tensor has the file's "
          f"shape): replaying it would remove {removed} more channels",
          "pass a fresh, unpruned instance (to load only the weights into this one, use model.load_state_dict)")
    modules = dict(model.named_modules())
    left: dict[str, int] = {}
    for name, idxs in removals:
        channels = left.get(name, _out_channels(modules[name]))
        if channels is None:
            continue
        outside = [i for i in idxs if not 0 <= i < channels]
        if outside:
            raise PruningConfigError(
                f"{file} removes channel {outside[0]} of layer {name!r}, which has {channels} channels at that point "
                f"in the given {kind} (allowed: 0..{channels - 1}); the file was pruned from another architecture, "
                "or the model is already pruned", hint=_HINT_ARCHITECTURE)
        left[name] = channels - len(set(idxs))
    for name, channels in left.items():
        module, value = modules[name], weights.get(f"{name}.weight")
        if value is None or (isinstance(module, nn.modules.conv._ConvNd) and module.transposed):
            continue
        check(value.shape[0] <= channels,
              f"{file} holds {value.shape[0]} output channels for layer {name!r}, but replaying its history on the "
              f"given {kind} leaves at most {channels}; the model is already (partly) pruned or of another "
              "architecture", _HINT_ARCHITECTURE)


def _check_replayed(file: Path, model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """After the replay, every tensor of ``model`` has the file's shape."""
    current = model.state_dict()
    for key, value in weights.items():
        check(tuple(current[key].shape) == tuple(value.shape),
              f"after replaying the structure recorded in {file}, {key} is {list(current[key].shape)} in the given "
              f"{type(model).__name__} but {list(value.shape)} in the file: the file was pruned from another "
              "architecture", _HINT_ARCHITECTURE)


def _on_device(example: Any, model: nn.Module) -> Any:
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    if tensor is None:
        return example
    if isinstance(example, torch.Tensor):
        return example.to(tensor.device)
    if isinstance(example, list | tuple):
        return type(example)(t.to(tensor.device) if isinstance(t, torch.Tensor) else t for t in example)
    return example


def _naming(err: PruningConfigError, file: Path) -> PruningConfigError:
    """``err`` itself if its message names ``file``, else the same error prefixed with the file."""
    text = str(err)
    if str(file) in text:
        return err
    suffix = f". HINT: {err.hint}"
    message = text[: -len(suffix)] if text.endswith(suffix) else text
    return PruningConfigError(f"{file}: {message}", hint=err.hint)


def load_pruned(path: str | Path, model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module:
    """Load a pruned model into ``model``, a fresh, unpruned instance of the same architecture.

    The recorded structure is replayed on ``model`` (channel by channel, as it was pruned), then the
    weights are loaded. ``model`` may be the LightningModule that was trained or the bare network
    inside it (names are matched by stripping a common prefix such as ``model.``).

    All or nothing: the file, its tensors' names and shapes and its channel indices are checked
    against ``model`` before any surgery (a model that already has the pruned structure is refused),
    and if anything fails after that, ``model`` is put back exactly as it was (the same parameter,
    buffer and module objects, values, shapes and ``requires_grad`` flags).

    Args:
        path: A Lightning checkpoint of a pruning run, or the ``pruned_model.pt`` it wrote.
        model: A fresh, unpruned instance (``nn.Module`` or ``LightningModule``).
        example_input: An input for tracing if the file holds none.

    Returns:
        ``model`` itself, pruned and with the saved weights.

    Raises:
        PruningConfigError: naming ``path``: a missing, truncated, damaged or foreign file, one
            pruned from another architecture, or a ``model`` that is already pruned.

    Example:
        >>> # net = load_pruned("lightning_logs/version_0/pruned_model.pt", cifar_resnet(20))
    """
    history, weights, example = _read(path)
    file = Path(path)
    example = example if example_input is None else example_input
    names = [name for step in history for name, _ in step]
    try:
        if names:
            prefix = _prefix_for(model, names, file)
            history = [[(name[len(prefix):], idxs) for name, idxs in step] for step in history]
        else:
            first = [k.rpartition(".")[0] for k in weights if "." in k][:1]
            prefix = _prefix_for(model, first, file) if first else ""
        own = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        _check_fits(file, model, own, history)
        check(not names or example is not None, f"{file} holds no example input to trace the model with",
              "pass `example_input=` (one input batch)")
        with snapshot.transaction(model):
            if names:
                structure.replay(model, _on_device(example, model), history)
            _check_replayed(file, model, own)
            model.load_state_dict(own, strict=True)
    except PruningConfigError as err:
        raise _naming(err, file) from err
    except Exception as err:  # torch / torch-pruning errors from deep inside the surgery or the load
        raise PruningConfigError(f"{file} could not be loaded into the given {type(model).__name__}: "
                                 f"{type(err).__name__}: {_first_line(err)}", hint=_HINT_ARCHITECTURE) from err
    return model


# ---------------------------------------------------------------------- checkpoints before a resume
def _pickled_strings(file: Path) -> set[str]:
    """Every string in the archive's ``data.pkl``, read opcode by opcode: nothing is unpickled or run."""
    with zipfile.ZipFile(file) as archive:
        name = _data_pickle(archive)
        payload = archive.read(name) if name else b""
    strings: set[str] = set()
    try:
        for _opcode, arg, _pos in pickletools.genops(payload):
            if isinstance(arg, str):
                strings.add(arg)
    except Exception as err:  # a malformed pickle: pickletools raises ValueError and friends
        raise PruningConfigError(f"{file} holds a damaged pickle ({_first_line(err)})", hint=_HINT_CHECKPOINT) from err
    return strings


def check_checkpoint(path: str | Path) -> None:
    """Check that ``path`` is an intact Lightning checkpoint, before ``trainer.fit(ckpt_path=path)``.

    Checks, in order: the file exists and is not empty; it is a complete torch zip archive (its
    central directory is present, so it is not truncated, and every entry passes its CRC check, so
    no tensor data is damaged: this reads the file once without keeping it in memory); it loads with
    ``torch.load(weights_only=True, mmap=True)`` (tensor data is mapped, not read); and it is a dict
    holding ``state_dict``, ``callbacks`` (absent from a ``save_weights_only=True`` checkpoint),
    ``epoch`` and ``global_step`` of the expected types.

    Nothing from the file is ever unpickled with ``weights_only=False``. A checkpoint that Lightning
    wrote can hold objects ``weights_only`` refuses (e.g. ``hyper_parameters`` of custom classes, or
    an ``argparse.Namespace``); for such a file, already known to be an intact archive, the four
    keys are looked for among the strings of its pickle, read opcode by opcode with
    :mod:`pickletools` (which builds no object and runs no code), and the file is accepted if all
    four are there. Lightning then loads it as it always does.

    Args:
        path: The checkpoint to resume from.

    Raises:
        PruningConfigError: naming ``path``, for a missing, empty, truncated or damaged file, one
            that is not a torch archive, or one that is not a Lightning checkpoint.

    Example:
        >>> # check_checkpoint("checkpoints/last.ckpt")  # then trainer.fit(..., ckpt_path=...)
    """
    file = Path(path) if isinstance(path, str | os.PathLike) else path
    try:
        data = load_weights_only(path, _HINT_CHECKPOINT, mmap=True)
    except _NotWeightsOnly:
        strings = _pickled_strings(file)
        missing = [key for key in CHECKPOINT_KEYS if key not in strings]
        check(not missing, f"{file} is not a Lightning checkpoint: it has no {missing} entries "
              f"(a checkpoint holds {list(CHECKPOINT_KEYS)})", _HINT_CHECKPOINT)
        return
    check(isinstance(data, dict), f"{file} holds {_describe(data)}, not a Lightning checkpoint "
          f"(a dict with {list(CHECKPOINT_KEYS)})", _HINT_CHECKPOINT)
    missing = [key for key in CHECKPOINT_KEYS if key not in data]
    check(not missing, f"{file} is not a Lightning checkpoint that can be resumed: it lacks {missing} (it holds "
          f"{_describe(data)}; a ModelCheckpoint with save_weights_only=True writes no 'callbacks')", _HINT_CHECKPOINT)
    for key, kind in (("state_dict", dict), ("callbacks", dict), ("epoch", int), ("global_step", int)):
        value = data[key]
        check(isinstance(value, kind) and not isinstance(value, bool),
              f"{file} is a damaged Lightning checkpoint: {key!r} is a {type(value).__name__}, not a {kind.__name__}",
              _HINT_CHECKPOINT)
