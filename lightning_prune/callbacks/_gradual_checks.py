"""Argument checks of :class:`~lightning_prune.GradualMagnitudePruning`, each with a HINT."""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_prune.errors import check as _check
from lightning_prune.state import largest_drop
from lightning_prune.structural import masks as M


def is_int(value: Any, minimum: int) -> bool:
    """An ``int`` (not a ``bool``) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_arguments(*, sparsity: Any, pruning_epochs: Any, schedule: Any, scope: Any, monitor: Any, mode: Any,
                    patience: Any, min_delta: Any, ignored: list[Any], pretrain_epochs: Any, finetune_patience: Any, max_epochs: Any,
                    eval_batches: Any, restore_best: Any) -> None:
    """Raise :class:`~lightning_prune.errors.PruningConfigError` on the first bad argument."""
    _check(isinstance(sparsity, float | int) and not isinstance(sparsity, bool) and 0 < sparsity < 1,
           f"sparsity={sparsity!r} is outside (0, 1)", "use e.g. sparsity=0.9 to zero 90 % of the weights")
    _check(is_int(pruning_epochs, 1), f"pruning_epochs={pruning_epochs!r} must be an integer >= 1",
           "use e.g. pruning_epochs=15 (the paper), or 1 for one-shot pruning")
    _check(scope in M.SCOPES, f"scope={scope!r} is unknown; valid: {', '.join(M.SCOPES)}",
           "use scope='global' (the paper) or 'layerwise'")
    _check(isinstance(monitor, str) and bool(monitor), f"monitor={monitor!r} must be a metric name",
           "use the name your validation_step logs, e.g. 'val_acc'")
    _check(mode in ("min", "max"), f"mode={mode!r} is unknown; valid: min, max", "use mode='max' for accuracy")
    _check(is_int(patience, 0), f"patience={patience!r} must be an integer >= 0", "use e.g. patience=4")
    _check(isinstance(min_delta, float | int) and min_delta >= 0, f"min_delta={min_delta!r} must be >= 0",
           "use e.g. min_delta=0.0")
    _check(is_int(pretrain_epochs, 0), f"pretrain_epochs={pretrain_epochs!r} must be an integer >= 0",
           "use 0 for a pretrained model")
    _check(finetune_patience is None or is_int(finetune_patience, 1),
           f"finetune_patience={finetune_patience!r} must be None or an integer >= 1",
           "use e.g. finetune_patience=4")
    _check(max_epochs is None or is_int(max_epochs, 1),
           f"max_epochs={max_epochs!r} must be None or an integer >= 1",
           "use e.g. max_epochs=100 (the paper's cap), or None")
    _check(eval_batches is None or is_int(eval_batches, 1),
           f"eval_batches={eval_batches!r} must be None or an integer >= 1", "use None to validate on all batches")
    _check(all(isinstance(p, str) and p for p in ignored), f"ignored_layers={ignored!r} must be names",
           "pass a list of module/parameter names or glob patterns, e.g. ['model.linear']")
    _check(schedule in M.SPARSITY_SCHEDULES,
           f"schedule={schedule!r} is unknown; valid: {', '.join(M.SPARSITY_SCHEDULES)}",
           "use schedule='cubic' (Zhu & Gupta, the default) or 'linear' (the paper's equal steps)")
    _check(isinstance(restore_best, bool), f"restore_best={restore_best!r} must be True or False",
           "use restore_best=True to hand back the best validated weights at full sparsity")


def check_min_delta(min_delta: float, before: float, mode: str, monitor: str) -> None:
    """Refuse a ``min_delta`` larger than any change the metric, measured ``before`` pruning, can show."""
    scale = largest_drop(before, mode)
    _check(not (min_delta > 0 and scale is not None and scale <= min_delta),
           f"min_delta={min_delta:g} can never be reached: {monitor} measured {before:.4g} before "
           "pruning, so no improvement would ever count", "min_delta is in the metric's units: use e.g. 0.001 "
           "for a tenth of a point of an accuracy logged as a fraction, or 0")


def check_module(module: nn.Module, ignored: list[str], prunable: dict[str, Any]) -> None:
    """Every ``ignored_layers`` pattern names something in ``module``, and something is left to prune."""
    names = [n for n, _ in module.named_modules() if n] + [n for n, _ in module.named_parameters()]
    unmatched = [p for p in ignored if not any(M.name_matches(n, [p]) for n in names)]
    _check(not unmatched, f"ignored_layers {unmatched} match no module or parameter of {type(module).__name__}",
           f"names look like {', '.join(names[:4])}, ...; glob patterns such as 'model.layer3.*' work")
    _check(bool(prunable), f"nothing to prune in {type(module).__name__}: no conv or linear weights "
           "outside ignored_layers", "narrow ignored_layers, or set include_norm/include_bias")
