"""Argument checks of :class:`~lightning_prune.AdaptiveThresholdRollback`, each with a HINT, and its warning."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from lightning_prune.errors import check as _check

TARGETS = ("accuracy", "params", "flops")
REWINDS = ("none", "lr", "weights")
UNITS = ("quantile", "score")
REFERENCES = ("retrained", "unpruned")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_arguments(*, monitor: Any, mode: Any, target: Any, max_drop: Any, param_reduction: Any, flops_reduction: Any,
                    threshold_init: Any, lambda_init: Any, max_rollbacks: Any, convergence_tol: Any,
                    convergence_rounds: Any, max_rounds: Any, epochs_per_round: Any, rewind: Any,
                    layer_weighting: Any, threshold_units: Any, reference: Any) -> None:
    """Raise :class:`~lightning_prune.errors.PruningConfigError` on the first bad argument."""
    _check(monitor is None or (isinstance(monitor, str) and bool(monitor)),
           f"monitor={monitor!r} must be a metric name", "use the name your validation_step logs, or leave it unset")
    _check(mode in (None, "min", "max"), f"mode={mode!r} is unknown; valid: min, max",
           "use mode='max' for accuracy, or leave it unset")
    _check(target in TARGETS, f"target={target!r} is unknown; valid: {', '.join(TARGETS)}",
           "use target='accuracy' with max_drop=0.01, or target='params' with param_reduction=0.5")
    if target == "accuracy":
        _check(_is_number(max_drop) and max_drop >= 0, f"max_drop={max_drop!r} must be a finite number >= 0",
               "max_drop is in the metric's units: 0.01 is one point of accuracy logged as a fraction")
    for name, value, own in (("param_reduction", param_reduction, "params"), ("flops_reduction", flops_reduction, "flops")):
        if target == own:
            _check(_is_number(value) and 0 < value < 1, f"{name}={value!r} must be in (0, 1) for target={own!r}",
                   f"use e.g. {name}=0.5 to remove half")
        else:
            _check(value is None, f"{name}={value!r} is set but target={target!r}",
                   f"use target={own!r} to aim at {name}, or leave {name} unset")
    _check(threshold_units in UNITS, f"threshold_units={threshold_units!r} is unknown; valid: {', '.join(UNITS)}",
           "use 'quantile' (T is a fraction of the filters) or 'score' (the paper's criterion units)")
    _check(reference in REFERENCES, f"reference={reference!r} is unknown; valid: {', '.join(REFERENCES)}",
           "use 'retrained' (judge rounds against the unpruned model retrained alike) or 'unpruned' (the paper's)")
    quantile = threshold_units == "quantile"
    _check(threshold_init is None or (_is_number(threshold_init) and (not quantile or 0 <= threshold_init < 1)),
           f"threshold_init={threshold_init!r} must be None or a finite number{' in [0, 1)' if quantile else ''}",
           "leave it unset (the first round removes lambda_init of the filters)" if quantile else
           "use threshold_init=0.0 (the paper's start)")
    _check(lambda_init is None or (_is_number(lambda_init) and lambda_init > 0 and (not quantile or lambda_init < 1)),
           f"lambda_init={lambda_init!r} must be None or a finite number > 0{' and < 1' if quantile else ''}",
           "with threshold_units='quantile' lambda_init is a fraction of the filters, e.g. 0.05" if quantile else
           "thresholds are in score units: use a fraction of a typical importance score, e.g. 0.2")
    _check(_is_int(max_rollbacks) and max_rollbacks >= 0, f"max_rollbacks={max_rollbacks!r} must be an integer >= 0",
           "use max_rollbacks=3 (the paper's)")
    _check(_is_number(convergence_tol) and convergence_tol >= 0,
           f"convergence_tol={convergence_tol!r} must be a finite number >= 0", "use convergence_tol=0.001 (0.1 %)")
    for name, value in (("convergence_rounds", convergence_rounds), ("max_rounds", max_rounds),
                        ("epochs_per_round", epochs_per_round)):
        _check(_is_int(value) and value >= 1, f"{name}={value!r} must be an integer >= 1", f"use e.g. {name}=3")
    _check(rewind in REWINDS, f"rewind={rewind!r} is unknown; valid: {', '.join(REWINDS)}",
           "use rewind='lr' (fresh optimizer and schedule each round)")
    _check(layer_weighting in (None, "params", "flops"),
           f"layer_weighting={layer_weighting!r} is unknown; valid: params, flops",
           "use 'params' for size targets, 'flops' for the FLOPs target")


def nothing_pruned_warning(rounds: list[dict[str, Any]], *, stop_reason: str | None, target: str, monitor: str | None,
                           drop: Callable[[float, float], float], max_drop: float | None, reference: str,
                           against: float | None) -> str:
    """The warning when every pruned round was unacceptable: what was tried, and what to change.

    ``drop(before, metric)`` is the policy's own rule for how much worse ``metric`` is.
    """
    tried = [r for r in rounds[1:] if r["metric"] is not None]
    what = f"{len(rounds) - 1} pruned rounds were all unacceptable ({stop_reason})"
    if target != "accuracy" or not tried or against is None:
        return (f"[lightning_prune] AAP pruned nothing: {what}; the unpruned model is handed back. HINT: lower "
                "lambda_init so that a round prunes less")
    drops = {r["round"]: drop(against, r["metric"]) for r in tried}
    best = min(tried, key=lambda r: drops[r["round"]])
    cause = ("lower the learning rate if retraining alone lowers the metric (reference='retrained' judges rounds "
             "against that)" if reference == "unpruned" else "lower lambda_init so that a round prunes less")
    return (f"[lightning_prune] AAP pruned nothing: {what}. The smallest {monitor} drop was {drops[best['round']]:.4g} "
            f"(round {best['round']}, {best['params']:,} parameters, against {against:.4g}) with max_drop={max_drop:g}; "
            f"the unpruned model is handed back. HINT: {cause}; else raise max_drop or epochs_per_round")
