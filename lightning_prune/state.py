"""The controllers' state as pure, serialisable data (no Lightning, no torch): phases, reports, patience."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


class StructuredPhase(str, Enum):
    """Where a :class:`~lightning_prune.StructuredPruning` run is (a ``str``: compares equal to its value).

    Example:
        >>> StructuredPhase("pruning") is StructuredPhase.PRUNING, StructuredPhase.PRUNING == "pruning"
        (True, True)
    """

    PRETRAIN = "pretrain"
    PRUNING = "pruning"
    TRIAL = "trial"  # a step pruned on trial, fine-tuned, then undone (e.g. LayerFreezer's probe)
    FINAL = "final"
    DONE = "done"


class GradualPhase(str, Enum):
    """Where a :class:`~lightning_prune.GradualMagnitudePruning` run is (DG2PF's phases).

    Example:
        >>> [phase.value for phase in GradualPhase]
        ['pretrain', 'prune', 'converge', 'finetune', 'done']
    """

    PRETRAIN = "pretrain"
    PRUNE = "prune"
    CONVERGE = "converge"
    FINETUNE = "finetune"
    DONE = "done"


@dataclass
class Patience:
    """Early-stopping bookkeeping: the best value so far and the validations since it improved.

    Example:
        >>> patience = Patience(mode="max")
        >>> [patience.update(v) for v in (0.5, 0.6, 0.6, 0.55)]
        [0, 0, 1, 2]
        >>> patience.best
        0.6
    """

    mode: str = "max"
    min_delta: float = 0.0
    best: float | None = None
    wait: int = 0

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best by more than ``min_delta``."""
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, value: float) -> int:
        """Record a validation; returns the number of validations without improvement."""
        if self.improved(value):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
        return self.wait

    def reset(self, baseline: float | None) -> None:
        """Start counting afresh from ``baseline`` (``None``: the next value is an improvement)."""
        self.best, self.wait = baseline, 0


def largest_drop(before: float | None, mode: str | None) -> float | None:
    """The largest drop a metric measured ``before`` can still show, when that is known.

    For a non-negative ``"max"`` metric (accuracy) it is ``before`` itself: the metric can fall to 0
    and no further. For a ``"min"`` metric, a negative value or an unknown one it is None (no bound).
    A threshold, budget or delta in the wrong units (1.0 for an accuracy logged as a fraction) is
    caught by comparing it with this bound.

    Example:
        >>> largest_drop(0.98, "max"), largest_drop(0.98, "min"), largest_drop(None, "max")
        (0.98, None, None)
    """
    return before if mode == "max" and before is not None and before >= 0 else None


@dataclass
class StepRecord:
    """What one pruning step did and cost.

    Example:
        >>> StepRecord(step=0, components=["model.layer1.0"], params=1000, macs=5000).finetuned
        False
    """

    step: int
    components: list[str]
    params: int
    macs: int
    channels_removed: int = 0
    metric_after_prune: float | None = None
    metric_after_finetune: float | None = None
    finetuned: bool = False
    finetune_epochs: int = 0
    seconds_prune: float = 0.0
    seconds_eval: float = 0.0
    seconds_finetune: float = 0.0


@dataclass
class PruningReport:
    """The report written to ``report.json``: per-step records and totals.

    Example:
        >>> report = PruningReport(params_before=10, macs_before=20, metric_before=0.9)
        >>> sorted(report.to_dict())
        ['extra', 'monitor', 'steps', 'totals']
    """

    params_before: int = 0
    macs_before: int = 0
    metric_before: float | None = None
    params_after: int = 0
    macs_after: int = 0
    metric_after: float | None = None
    seconds_total: float = 0.0
    steps: list[StepRecord] = field(default_factory=list)
    #: Sections other callbacks add (e.g. a freezing probe's cost, AAP rounds).
    extra: dict[str, Any] = field(default_factory=dict)
    #: Whether the plan ran to its end; ``False`` while running and when the fit stopped short.
    completed: bool = False
    #: Why the fit ended before the plan did (``None`` when completed).
    stop_reason: str | None = None
    #: Steps the plan has (``None`` for an open-ended plan such as AAP's rounds).
    steps_planned: int | None = None
    #: The metric the controller measures (``metric_before``, ``metric_after`` and the steps' values).
    monitor: str | None = None

    def totals(self) -> dict[str, Any]:
        """The ``totals`` section."""
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "seconds_total": self.seconds_total,
            "seconds_prune": sum(s.seconds_prune for s in self.steps),
            "seconds_eval": sum(s.seconds_eval for s in self.steps),
            "seconds_finetune": sum(s.seconds_finetune for s in self.steps),
            "steps_finetuned": sum(s.finetuned for s in self.steps),
            "steps_skipped": sum(not s.finetuned for s in self.steps),
            "completed": self.completed,
            "stop_reason": self.stop_reason,
            "steps_planned": self.steps_planned,
            "steps_done": len(self.steps),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary: ``steps``, ``totals`` and any extra sections."""
        return {"monitor": self.monitor, "steps": [asdict(s) for s in self.steps], "totals": self.totals(),
                "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningReport:
        """Inverse of :meth:`to_dict` plus the fields the totals do not derive."""
        totals = data["totals"]
        return cls(
            params_before=totals["params_before"],
            macs_before=totals["macs_before"],
            metric_before=totals["metric_before"],
            params_after=totals["params_after"],
            macs_after=totals["macs_after"],
            metric_after=totals["metric_after"],
            seconds_total=totals["seconds_total"],
            steps=[StepRecord(**s) for s in data["steps"]],
            extra=dict(data.get("extra", {})),
            completed=bool(totals.get("completed", False)),
            stop_reason=totals.get("stop_reason"),
            steps_planned=totals.get("steps_planned"),
            monitor=data.get("monitor"),
        )

    def write(self, path: str | Path) -> Path:
        """Write the report as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


@dataclass
class GradualReport:
    """What a :class:`~lightning_prune.GradualMagnitudePruning` run did, written to ``report.json``.

    ``sparsity`` holds ``overall``, ``numel``, ``zeros`` and per-parameter ``layers`` entries
    (``numel``, ``zeros``, ``sparsity``) measured on the final weights; ``history`` one entry per
    validated epoch (``epoch``, ``phase``, ``target_sparsity``, ``sparsity``, ``metric``); ``epochs``
    and ``seconds`` are split by phase (``pretrain``, ``prune``, ``converge``, ``finetune``);
    ``size`` compares the compact save (:func:`lightning_prune.sparse.save_sparse`) with the dense one.

    Example:
        >>> report = GradualReport(target_sparsity=0.9, scope="global", schedule=[0.45, 0.9], monitor="val_acc")
        >>> sorted(report.to_dict())[:4]
        ['best_epoch', 'best_metric', 'completed', 'epochs']
    """

    target_sparsity: float
    scope: str
    schedule: list[float]
    monitor: str
    metric_before: float | None = None
    metric_after: float | None = None
    best_metric: dict[str, float] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=lambda: {p.value: 0 for p in list(GradualPhase)[:-1]})
    seconds: dict[str, float] = field(default_factory=lambda: {p.value: 0.0 for p in list(GradualPhase)[:-1]})
    seconds_total: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    sparsity: dict[str, Any] = field(default_factory=dict)
    size: dict[str, Any] = field(default_factory=dict)
    #: Whether the run reached its planned end (target sparsity, then its phases or its own epoch cap).
    completed: bool = False
    #: Why the fit ended before the plan did (``None`` when completed).
    stop_reason: str | None = None
    #: Prunes done and planned (one at the start of each pruning epoch).
    prunes_done: int = 0
    prunes_planned: int = 0
    #: The epoch of the best validation at full sparsity, and whether the weights handed back are its
    #: (``restore_best``); ``metric_after`` is then that epoch's score.
    best_epoch: int | None = None
    restored_best: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GradualReport:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)

    def write(self, path: str | Path) -> Path:
        """Write the report as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path
