"""What a ``tune`` call is asked (:class:`TuneSettings`) and what it returns (:class:`TuneResult`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lightning_prune.errors import PruningConfigError
from lightning_prune.tuning.objectives import INFEASIBLE, check_objective
from lightning_prune.tuning.space import SearchSpace
from lightning_prune.tuning.storage import display_url
from lightning_prune.tuning.study import PRUNERS, STOPPED, check_sampler

#: Number of trials a TPE / random study runs per call when ``n_trials`` is not given.
DEFAULT_TRIALS = 20


@dataclass
class TuneSettings:
    """The study's settings: defaults, then the config's ``tune:`` block, then explicit arguments.

    Args:
        search_space: A search-space YAML path, a mapping, or ``None`` for the authors' CIFAR grid.
        objective: ``"budget"`` (minimise pruning time with drop <= ``max_drop``), ``"ice"`` (the
            paper's eq. 2, literally) or ``"pareto"`` (time and drop; the Pareto front is reported).
        max_drop: The drop budget in the metric's units (0.01 = one point of accuracy as a fraction);
            also picks the stage-2 point from a Pareto front.
        points_per_unit: ``"ice"`` only: dA in points is ``drop * points_per_unit``.
        sampler: ``"grid"`` (the paper's choice), ``"tpe"`` or ``"random"``.
        pruner: ``"none"`` (every stage-1 trial runs to the end) or ``"median"``: after every pruning
            step a trial reports the objective as if it ended there, and stops when that is worse than
            the median of the completed trials' values after the same step (from the third trial on;
            :class:`~lightning_prune.tuning.study.StepMedianPruner`). Not with ``"pareto"`` (Optuna
            cannot prune a two-objective study).
        n_trials: Trials this call runs (per worker; 0: none, only the choice and stage 2). Grid
            default: the points not yet evaluated, so re-running the same command resumes;
            TPE/random default: :data:`DEFAULT_TRIALS`.
        subset_fraction: Fraction of the training and validation splits each stage-1 trial uses.
        storage: Optuna storage URL; default ``sqlite:///<output_dir>/study.db``.
        study_name: Default ``<config file name>-<objective>``.
        output_dir: Default ``<trainer.default_root_dir>/tune`` (``outputs/tune`` without one).
        stage2: Run stage 2.
        stage2_subset_fraction: Data fraction of stage 2; ``None``: the config's own.
        seed: Seed of the samplers, and of ``seed_everything`` where the config sets none.
        quiet: Silence Lightning's and the controller's messages during stage-1 trials.

    Example:
        >>> TuneSettings.resolve({"n_trials": 4, "objective": "ice"}, {"n_trials": 2}).n_trials
        2
    """

    search_space: str | Mapping[str, Any] | SearchSpace | None = None
    objective: str = "budget"
    max_drop: float = 0.01
    points_per_unit: float = 100.0
    sampler: str = "grid"
    pruner: str = "none"
    n_trials: int | None = None
    subset_fraction: float = 0.02
    storage: str | None = None
    study_name: str | None = None
    output_dir: str | Path | None = None
    stage2: bool = True
    stage2_subset_fraction: float | None = None
    seed: int = 0
    quiet: bool = True

    @classmethod
    def resolve(cls, block: Mapping[str, Any], overrides: Mapping[str, Any]) -> TuneSettings:
        """Defaults, updated by the config's ``tune:`` block, updated by the non-``None`` ``overrides``."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(block) - set(names))
        if unknown:
            raise PruningConfigError(f"unknown key(s) {unknown} in the config's `tune:` block",
                                     hint=f"valid keys: {', '.join(names)}")
        values = {**dict(block), **{k: v for k, v in overrides.items() if v is not None}}
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Validate every value; raises :class:`PruningConfigError` naming the bad one."""
        check_objective(self.objective)
        check_sampler(self.sampler)
        if self.pruner not in PRUNERS:
            raise PruningConfigError(f"pruner={self.pruner!r} is unknown; valid: {', '.join(PRUNERS)}",
                                     hint="use 'median' to stop trials that fall behind, 'none' to run every trial out")
        if self.pruner != "none" and self.objective == "pareto":
            raise PruningConfigError(f"pruner={self.pruner!r} cannot stop trials of a 'pareto' study (two objectives)",
                                     hint="use objective='budget' with a pruner, or pruner='none' with 'pareto'")

        def fraction(name: str, value: Any, optional: bool = False) -> None:
            if optional and value is None:
                return
            if not (isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1):
                raise PruningConfigError(f"{name}={value!r} must be in (0, 1]",
                                         hint=f"e.g. {name}=0.02 for a 2 % subset" + (" or omit it" if optional else ""))

        fraction("subset_fraction", self.subset_fraction)
        fraction("stage2_subset_fraction", self.stage2_subset_fraction, optional=True)
        if not (isinstance(self.max_drop, int | float) and math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise PruningConfigError(f"max_drop={self.max_drop!r} must be a finite number >= 0",
                                     hint="in the metric's units: 0.01 is one point of accuracy logged as a fraction")
        if not (isinstance(self.points_per_unit, int | float) and math.isfinite(self.points_per_unit)
                and self.points_per_unit > 0):
            raise PruningConfigError(f"points_per_unit={self.points_per_unit!r} must be a finite number > 0",
                                     hint="100 for accuracy logged as a fraction")
        if self.n_trials is not None and not (isinstance(self.n_trials, int) and not isinstance(self.n_trials, bool)
                                              and self.n_trials >= 0):
            raise PruningConfigError(f"n_trials={self.n_trials!r} must be an integer >= 0",
                                     hint="omit it to run the whole grid; 0 runs no trial, only stage 2")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise PruningConfigError(f"seed={self.seed!r} must be an integer", hint="e.g. seed=0")


@dataclass
class TuneResult:
    """What :func:`tune` did: the study, its trials, the chosen parameters and the stage-2 report.

    Attributes:
        study_name, storage, objective, sampler: The study.
        best_params: The chosen ``{"ClassName.argument": value}`` (for ``"pareto"``: the front's
            fastest point within ``max_drop``, else its smallest drop).
        best_trial: Its trial number.
        best_value: Its objective value (two values for ``"pareto"``).
        feasible: Whether it meets ``max_drop`` (``None`` for ``"ice"``).
        pareto_front: ``"pareto"``: the front's trials (number, params, seconds, drop), fastest first.
        trials: One row per trial of the study: number, state, params, seconds, drop, value(s), ...
        output_dir: Where trials, ``best_params.yaml``, ``best_config.yaml`` and ``stage2/`` are.
        best_params_path, best_config_path: The written files.
        stage2_report: ``stage2/report.json`` (``None`` without stage 2).
        stage2: Stage 2's seconds, drop, metrics, params and MACs.

    Example:
        >>> TuneResult(study_name="s", storage="sqlite:///s.db", objective="budget", sampler="grid").best_params
    """

    study_name: str
    storage: str
    objective: str
    sampler: str
    best_params: dict[str, Any] | None = None
    best_trial: int | None = None
    best_value: float | list[float] | None = None
    feasible: bool | None = None
    pareto_front: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    output_dir: Path | None = None
    best_params_path: Path | None = None
    best_config_path: Path | None = None
    stage2_report: Path | None = None
    stage2: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        return data

    def summary(self) -> str:
        """A few human-readable lines: study, counts, the choice, the files."""
        states = [t["state"] for t in self.trials]
        stopped = sum(1 for t in self.trials if t["state"] == "PRUNED" and STOPPED in t)
        counts = (f"{states.count('COMPLETE')} complete, {stopped} stopped early, "
                  f"{states.count('PRUNED') - stopped} invalid, {states.count('FAIL')} failed")
        lines = [f"study {self.study_name!r} ({display_url(self.storage)}): objective {self.objective}, "
                 f"sampler {self.sampler}; {counts}"]
        if self.best_params is not None:
            row = next((t for t in self.trials if t["number"] == self.best_trial), {})
            lines.append(f"best: trial #{self.best_trial} {params_text(self.best_params)} -> {outcome_text(row)}"
                         + ("" if self.feasible in (None, True) else " (no trial met max_drop)"))
        for point in self.pareto_front:
            lines.append(f"  front: trial #{point['number']} PT {point['seconds']:.2f} s, drop {point['drop']:.4f}")
        for label, path in (("best params", self.best_params_path), ("best config", self.best_config_path),
                            ("stage-2 report", self.stage2_report)):
            if path is not None:
                lines.append(f"{label}: {path}")
        if self.stage2:
            lines.append(f"stage 2: PT {self.stage2['seconds']:.2f} s, drop {self.stage2['drop']:.4f} "
                         f"({self.stage2['metric_before']:.4f} -> {self.stage2['metric_after']:.4f}), "
                         f"MACs {self.stage2['macs_before']:,} -> {self.stage2['macs_after']:,}")
        return "\n".join(lines)


def params_text(params: Mapping[str, Any]) -> str:
    """A trial's parameters in one line, e.g. ``LayerFreezer.freeze_fraction=0.3, ThresholdSkipFineTune.threshold=0.01``."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def outcome_text(row: Mapping[str, Any]) -> str:
    """A trial's outcome in one line: pruning time, drop, MACs and the objective's value."""
    if "seconds" not in row:
        return row.get("state", "?")
    value = row.get("value")
    if isinstance(value, float):
        value_text = "over the drop budget" if value >= INFEASIBLE else f"{value:.4g}"
    elif isinstance(value, list):
        value_text = "(" + ", ".join(f"{v:.4g}" for v in value) + ")"
    else:
        value_text = "?"
    return (f"PT {row['seconds']:.2f} s, drop {row['drop']:.4f} ({row['metric_before']:.4f} -> {row['metric_after']:.4f}), "
            f"MACs {row.get('macs_after', 0):,}, value {value_text}")
