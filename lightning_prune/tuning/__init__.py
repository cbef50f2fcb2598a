"""Auto-tuning of a pruning pipeline's callbacks with Optuna (ICE-Pruning's two stages).

The names below are imported on first use (PEP 562).

Example:
    >>> from lightning_prune.tuning import tune, SearchSpace, ICE_CIFAR_GRID
    >>> SearchSpace.from_mapping(ICE_CIFAR_GRID).grid_size()
    216
    >>> # result = tune("configs/ice_quickstart.yaml", n_trials=8); result.best_params
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune._lazy import lazy_attributes

if TYPE_CHECKING:  # the names __getattr__ provides, for type checkers and IDEs
    from lightning_prune.tuning.objectives import (
        INFEASIBLE,
        OBJECTIVES,
        Point,
        budget_objective,
        choose_from_front,
        ice_objective,
        objective_value,
        pareto_front,
        pareto_objectives,
    )
    from lightning_prune.tuning.pipeline import Outcome, TrialFailed
    from lightning_prune.tuning.settings import TuneResult, TuneSettings
    from lightning_prune.tuning.space import ICE_CIFAR_GRID, Param, SearchSpace
    from lightning_prune.tuning.study import SAMPLERS
    from lightning_prune.tuning.tuner import tune

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "ICE_CIFAR_GRID": "lightning_prune.tuning.space",
    "INFEASIBLE": "lightning_prune.tuning.objectives",
    "OBJECTIVES": "lightning_prune.tuning.objectives",
    "SAMPLERS": "lightning_prune.tuning.study",
    "Outcome": "lightning_prune.tuning.pipeline",
    "Param": "lightning_prune.tuning.space",
    "Point": "lightning_prune.tuning.objectives",
    "SearchSpace": "lightning_prune.tuning.space",
    "TrialFailed": "lightning_prune.tuning.pipeline",
    "TuneResult": "lightning_prune.tuning.settings",
    "TuneSettings": "lightning_prune.tuning.settings",
    "budget_objective": "lightning_prune.tuning.objectives",
    "choose_from_front": "lightning_prune.tuning.objectives",
    "ice_objective": "lightning_prune.tuning.objectives",
    "objective_value": "lightning_prune.tuning.objectives",
    "pareto_front": "lightning_prune.tuning.objectives",
    "pareto_objectives": "lightning_prune.tuning.objectives",
    "tune": "lightning_prune.tuning.tuner",
}

__all__ = [
    "ICE_CIFAR_GRID",
    "INFEASIBLE",
    "OBJECTIVES",
    "SAMPLERS",
    "Outcome",
    "Param",
    "Point",
    "SearchSpace",
    "TrialFailed",
    "TuneResult",
    "TuneSettings",
    "budget_objective",
    "choose_from_front",
    "ice_objective",
    "objective_value",
    "pareto_front",
    "pareto_objectives",
    "tune",
]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _EXPORTS, __all__)
