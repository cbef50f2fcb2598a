"""Feed calibration batches through a model while a data-driven criterion observes it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from itertools import islice
from typing import Any

import torch
from torch import nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.importance.base import ChannelImportance

__all__ = ["calibrate"]

ForwardFn = Callable[[nn.Module, Any], Any]


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def _default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(batch)``; for a ``(inputs, targets, ...)`` tuple/list, ``model(inputs)``.

    Tensor inputs are moved to the model's device first.
    """
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    device = _model_device(model)
    if isinstance(inputs, torch.Tensor) and device is not None:
        inputs = inputs.to(device)
    return model(inputs)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's previous mode on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _check_args(importance: Any, model: Any, max_batches: Any) -> None:
    if not isinstance(importance, ChannelImportance):
        raise PruningConfigError(
            f"calibrate() needs a ChannelImportance, got {type(importance).__name__}",
            hint="resolve names first with get_importance('entropy')",
        )
    if not isinstance(model, nn.Module):
        raise PruningConfigError(
            f"calibrate() needs an nn.Module model, got {type(model).__name__}",
            hint="pass the network (or LightningModule) whose sources are hooked",
        )
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise PruningConfigError(
            f"max_batches={max_batches!r} must be None or an int >= 1",
            hint="use e.g. max_batches=8 to stop early on a long dataloader",
        )


def calibrate(
    importance: ChannelImportance,
    sources: Mapping[str, nn.Module],
    model: nn.Module,
    batches: Iterable[Any],
    forward: ForwardFn | None = None,
    *,
    max_batches: int | None = None,
) -> ChannelImportance:
    """Collect a data-driven criterion's statistics over calibration batches, then sync.

    Attaches the criterion's hooks to ``sources``, runs ``forward(model, batch)`` for each batch
    under ``torch.no_grad`` with the model in eval mode, and always (also on exceptions)
    detaches every hook of the criterion and restores each submodule's previous train/eval
    mode. On success it calls :meth:`ChannelImportance.sync`, so under DDP every rank must call
    it. Statistics accumulate across calls until ``importance.reset()``. Criteria that need no
    data are returned untouched without running the model.

    Args:
        importance: The criterion.
        sources: Prunable layer name -> module whose output is that layer's pre-activation map.
        model: The network that contains the sources.
        batches: Iterable of inputs (e.g. tensors, or ``(x, y)`` tuples with the default forward).
        forward: ``forward(model, batch)``; default ``model(batch)``, or ``model(batch[0])`` for
            tuples/lists, with tensor inputs moved to the model's device.
        max_batches: Stop after this many batches (default: all).

    Returns:
        ``importance``, for chaining: ``calibrate(...).score(name, layer)``.

    Raises:
        PruningConfigError: For a non-criterion, non-module model or invalid ``max_batches``.

    Example:
        >>> from lightning_prune.importance import MeanActivationImportance
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        >>> batches = [torch.randn(2, 3, 8, 8)]
        >>> crit = calibrate(MeanActivationImportance(), {"0": net[1]}, net, batches)
        >>> crit.score("0", net[0]).shape, net.training
        (torch.Size([4]), True)
    """
    _check_args(importance, model, max_batches)
    if not importance.requires_data:
        return importance
    run = forward if forward is not None else _default_forward
    with importance.attached(sources), _eval_mode(model), torch.no_grad():
        for batch in islice(batches, max_batches):
            run(model, batch)
    importance.sync()
    return importance
