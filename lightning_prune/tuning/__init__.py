"""Auto-tuning of a pruning pipeline's callbacks with Optuna (ICE-Pruning's two stages).

Example:
    >>> from lightning_prune.tuning import tune, SearchSpace, ICE_CIFAR_GRID
    >>> SearchSpace.from_mapping(ICE_CIFAR_GRID).grid_size()
    216
    >>> # result = tune("configs/ice_quickstart.yaml", n_trials=8); result.best_params
"""

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
from lightning_prune.tuning.space import ICE_CIFAR_GRID, Param, SearchSpace
from lightning_prune.tuning.study import SAMPLERS
from lightning_prune.tuning.tuner import TuneResult, TuneSettings, tune

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
