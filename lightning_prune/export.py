"""Deployment helpers: ONNX export of (pruned) networks and latency measurement."""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_prune.errors import PruningConfigError

__all__ = ["EXPORTERS", "export_onnx", "measure_latency"]

EXPORTERS = ("auto", "dynamo", "legacy")
_EXTERNAL_DATA_BYTES = 1_500_000_000  # protobuf files are limited to 2 GB
_DYNAMO_MIN_OPSET = 18  # lowest opset the dynamo exporter implements (it would convert down)
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")
_INPUT_NAME, _OUTPUT_NAME = "input", "logits"


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_input: Tensor,
    opset: int | None = None,
    *,
    dynamic_batch: bool = True,
    exporter: str = "auto",
) -> Path:
    """Export a (possibly pruned) network or LightningModule to ONNX and check the file.

    The model is exported in eval mode and its training flag is restored afterwards. With
    ``exporter="auto"`` the ``torch.export``-based (dynamo) exporter is tried first and the
    legacy TorchScript exporter is the fallback. The graph has one input named ``"input"`` and
    one output named ``"logits"``; with ``dynamic_batch`` their first dimension is symbolic.
    Weights are stored inside the ``.onnx`` file unless the model exceeds 1.5 GB.

    Args:
        model: The network (``nn.Module`` or ``LightningModule``).
        path: Destination ``.onnx`` file (parent folders are created).
        example_input: An input batch, e.g. ``datamodule.example_input(1)``.
        opset: ONNX opset version; the exporter's default when None.
        dynamic_batch: Make the batch dimension symbolic.
        exporter: ``"auto"``, ``"dynamo"`` or ``"legacy"``.

    Returns:
        The path of the written, checked ONNX file.

    Raises:
        PruningConfigError: If onnx is missing, the arguments are invalid, or export fails.

    Example:
        >>> from lightning_prune.models import cifar_resnet
        >>> import os, tempfile
        >>> out = export_onnx(cifar_resnet(20), os.path.join(tempfile.mkdtemp(), "r20.onnx"), torch.zeros(1, 3, 32, 32))
        >>> out.suffix
        '.onnx'
    """
    onnx = _import_onnx()
    _check_export_args(example_input, opset, exporter)
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with _eval_mode(model):
        example_input = example_input.to(_model_device(model))
        for name in _exporter_order(exporter, opset):
            try:
                _EXPORT_FUNCTIONS[name](model, path, example_input, opset, dynamic_batch)
                break
            except Exception as exc:  # noqa: BLE001 - reported below, with a hint
                errors.append(f"{name} exporter: {type(exc).__name__}: {_first_line(exc)}")
        else:
            raise PruningConfigError(
                f"ONNX export of {type(model).__name__} failed ({'; '.join(errors)})",
                hint="try exporter='legacy' or 'dynamo', dynamic_batch=False, or another opset; "
                "the model's forward must take one tensor",
            )
    _check_onnx_file(onnx, path)
    return path


def measure_latency(
    model: nn.Module,
    example_input: Tensor,
    device: str | torch.device | None = None,
    warmup: int = 10,
    repeats: int = 50,
) -> dict[str, Any]:
    """Time forward passes of ``model`` on ``example_input`` (eval mode, no grad).

    The model is moved to ``device`` for the measurement and moved back afterwards; its
    training flag is restored. On CUDA (and MPS) the device is synchronised around every
    timed forward pass, so the numbers are wall-clock latencies of complete passes.

    Args:
        model: The network.
        example_input: The input batch (its first dimension is the batch size).
        device: Where to run; the model's current device when None.
        warmup: Untimed passes before measuring.
        repeats: Timed passes.

    Returns:
        ``{"median_ms", "mean_ms", "p90_ms", "min_ms", "max_ms", "std_ms", "device",
        "batch_size", "repeats", "warmup", "throughput_per_s"}``.

    Raises:
        PruningConfigError: For non-positive ``repeats``, negative ``warmup`` or a bad device.

    Example:
        >>> stats = measure_latency(nn.Linear(4, 2), torch.zeros(8, 4), warmup=1, repeats=3)
        >>> stats["batch_size"], stats["median_ms"] > 0
        (8, True)
    """
    _check_latency_args(example_input, warmup, repeats)
    target = _resolve_device(device, model)
    original_device = _model_device(model)
    sync = _synchronizer(target)
    times_ms: list[float] = []
    with _eval_mode(model), torch.no_grad():
        try:
            model.to(target)
            inputs = example_input.to(target)
            for _ in range(warmup):
                model(inputs)
            sync()
            for _ in range(repeats):
                start = time.perf_counter()
                model(inputs)
                sync()
                times_ms.append((time.perf_counter() - start) * 1000.0)
        finally:
            model.to(original_device)
    return _latency_stats(times_ms, target, int(example_input.shape[0]), warmup)


# -- export helpers ----------------------------------------------------------------------------
def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise PruningConfigError(
            "ONNX export needs the 'onnx' package, which is not installed",
            hint="pip install onnx onnxscript (or lightning-prune[dev])",
        ) from exc
    return onnx


def _check_export_args(example_input: Tensor, opset: int | None, exporter: str) -> None:
    if not isinstance(example_input, Tensor):
        raise PruningConfigError(
            f"example_input must be a torch.Tensor, got {type(example_input).__name__}",
            hint="pass e.g. datamodule.example_input(1) or torch.zeros(1, 3, 32, 32)",
        )
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise PruningConfigError(
            f"opset={opset!r} is not a valid ONNX opset version",
            hint="leave opset=None for the exporter's default, or use e.g. 17 or 18",
        )
    if exporter not in EXPORTERS:
        raise PruningConfigError(
            f"exporter={exporter!r} is not one of {list(EXPORTERS)}",
            hint="use 'auto' (dynamo, falling back to legacy)",
        )


def _exporter_order(exporter: str, opset: int | None) -> list[str]:
    if exporter != "auto":
        return [exporter]
    if opset is not None and opset < _DYNAMO_MIN_OPSET:
        return ["legacy"]
    try:
        import onnxscript  # noqa: F401  (required by the dynamo exporter)
    except ImportError:
        return ["legacy"]
    return ["dynamo", "legacy"]


def _export_dynamo(
    model: nn.Module, path: Path, example: Tensor, opset: int | None, dynamic_batch: bool
) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    with _quiet():
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            opset_version=opset,
            input_names=[_INPUT_NAME],
            output_names=[_OUTPUT_NAME],
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
        if program is None:
            raise RuntimeError("the dynamo exporter returned no program")
        program.save(str(path), external_data=_parameter_bytes(model) > _EXTERNAL_DATA_BYTES)
    _check_opset(path, opset)


def _export_legacy(
    model: nn.Module, path: Path, example: Tensor, opset: int | None, dynamic_batch: bool
) -> None:
    axes = {_INPUT_NAME: {0: "batch"}, _OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with _quiet():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[_INPUT_NAME],
            output_names=[_OUTPUT_NAME],
            dynamic_axes=axes,
            do_constant_folding=True,
        )


_EXPORT_FUNCTIONS: dict[str, Callable[[nn.Module, Path, Tensor, int | None, bool], None]] = {
    "dynamo": _export_dynamo,
    "legacy": _export_legacy,
}


def _check_opset(path: Path, opset: int | None) -> None:
    if opset is None:
        return
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    versions = {entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")}
    if versions != {opset}:
        raise RuntimeError(f"requested opset {opset}, the exported graph uses {sorted(versions)}")


def _check_onnx_file(onnx: Any, path: Path) -> None:
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001
        raise PruningConfigError(
            f"the exported file {str(path)!r} fails onnx.checker: {_first_line(exc)}",
            hint="try exporter='legacy' or a different opset",
        ) from exc


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter warnings, log records and progress prints (the library never prints)."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _parameter_bytes(model: nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# -- shared helpers ----------------------------------------------------------------------------
@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` (and all submodules) in eval mode, restoring every module's flag."""
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag


def _model_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


# -- latency helpers ---------------------------------------------------------------------------
def _check_latency_args(example_input: Tensor, warmup: int, repeats: int) -> None:
    if not isinstance(example_input, Tensor) or example_input.ndim == 0:
        raise PruningConfigError(
            "example_input must be a batched torch.Tensor",
            hint="pass e.g. torch.zeros(1, 3, 32, 32)",
        )
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise PruningConfigError(f"repeats={repeats!r} must be >= 1", hint="use e.g. 50")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise PruningConfigError(f"warmup={warmup!r} must be >= 0", hint="use e.g. 10")


def _resolve_device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    if device is None:
        return _model_device(model)
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PruningConfigError(
            f"device={device!r} is not a valid torch device", hint="use 'cpu' or 'cuda'"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise PruningConfigError(
            f"device={device!r} requested but CUDA is not available",
            hint="use device='cpu' or leave device=None",
        )
    return resolved


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def _latency_stats(
    times_ms: list[float], device: torch.device, batch_size: int, warmup: int
) -> dict[str, Any]:
    ordered = sorted(times_ms)
    median = statistics.median(ordered)
    p90_index = min(len(ordered) - 1, max(0, round(0.9 * (len(ordered) - 1))))
    return {
        "median_ms": median,
        "mean_ms": statistics.fmean(ordered),
        "p90_ms": ordered[p90_index],
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "std_ms": statistics.pstdev(ordered),
        "device": str(device),
        "batch_size": batch_size,
        "repeats": len(ordered),
        "warmup": warmup,
        "throughput_per_s": batch_size / (median / 1000.0) if median > 0 else float("inf"),
    }
