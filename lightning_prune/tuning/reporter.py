"""Stage-1 trials report after every pruning step, so an Optuna pruner can stop a bad trial early.

``tune(..., pruner="median")`` adds :class:`TrialReporter` to every stage-1 trial's callbacks and runs
the trial inside :func:`reporting`. After each pruning step (fine-tuned or skipped) the reporter
reports the objective as if the run ended there (:func:`intermediate_value`: the pruning time so far
and the drop so far) at that step's index; when the study's pruner says the trial is worse than the
earlier trials were at the same step, it raises :class:`optuna.TrialPruned` and the run stops there.
Outside :func:`reporting` (a plain ``fit`` of a config that names the reporter) it does nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_prune.callbacks.base import PruningController, PruningSatellite
from lightning_prune.callbacks.threshold_skip import drop as metric_drop
from lightning_prune.state import StepRecord
from lightning_prune.tuning.objectives import objective_value
from lightning_prune.tuning.study import STOPPED

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class _Target:
    trial: optuna.Trial
    objective: str
    max_drop: float
    points_per_unit: float


_TARGET: ContextVar[_Target | None] = ContextVar("lightning_prune_trial_target", default=None)


@contextlib.contextmanager
def reporting(trial: optuna.Trial, objective: str, max_drop: float, points_per_unit: float) -> Iterator[None]:
    """Within this block, :class:`TrialReporter` reports to ``trial`` (one trial runs at a time per thread).

    Example:
        >>> import optuna
        >>> trial = optuna.create_study().ask()
        >>> with reporting(trial, "budget", 0.01, 100.0):
        ...     pass
    """
    token = _TARGET.set(_Target(trial, objective, max_drop, points_per_unit))
    try:
        yield
    finally:
        _TARGET.reset(token)


def intermediate_value(objective: str, seconds: float, drop: float, max_drop: float = 0.01,
                       points_per_unit: float = 100.0) -> float:
    """The objective of a run that ended after this step: ``seconds`` of pruning so far, ``drop`` so far.

    Under ``"budget"`` a step within the drop budget is worth its elapsed time and one over it ranks
    behind every step within it, as at the end of a trial.

    Example:
        >>> intermediate_value("budget", 12.0, 0.004)
        12.0
        >>> intermediate_value("budget", 1.0, 0.05) > intermediate_value("budget", 500.0, 0.0)
        True
    """
    value = objective_value(objective, max(seconds, 1e-9), drop, max_drop, points_per_unit)
    assert isinstance(value, float), "a pruner needs a single-objective study"
    return value


class TrialReporter(PruningSatellite, Callback):
    """Report a stage-1 trial's objective after every pruning step; stop it when the study's pruner says so.

    Added by ``tune(..., pruner="median")`` to every stage-1 trial; does nothing outside a trial.

    Example:
        >>> from lightning_prune import StructuredPruning
        >>> callbacks = [StructuredPruning(pruning_ratio=0.5), TrialReporter()]
    """

    def __init__(self) -> None:
        self._started: float | None = None

    @override
    def on_pruning_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                         controller: PruningController) -> None:
        self._started = time.perf_counter()

    @override
    def on_step_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController,
                    record: StepRecord) -> None:
        target = _TARGET.get()
        before, after = controller.report.metric_before, record.metric_after_finetune
        if target is None or self._started is None or before is None or after is None:
            return
        import optuna

        drop = metric_drop(before, after, controller.mode)
        value = intermediate_value(target.objective, time.perf_counter() - self._started, drop, target.max_drop,
                                   target.points_per_unit)
        target.trial.report(value, record.step)
        if target.trial.should_prune():
            target.trial.set_user_attr(STOPPED, record.step)
            raise optuna.TrialPruned(f"stopped after step {record.step}: drop {drop:.4f} so far, value {value:.4g}, "
                                     "worse than the earlier trials' median at that step")
