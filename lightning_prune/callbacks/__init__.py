"""Pruning callbacks: the controller and its satellites.

The names below are imported on first use (PEP 562): importing one callback's module does not
import all the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune._lazy import lazy_attributes

if TYPE_CHECKING:  # the names __getattr__ provides, for type checkers and IDEs
    from lightning_prune.callbacks.base import (
        PruningController,
        PruningSatellite,
        Request,
        RestoreSnapshot,
        RewindWeights,
        TrialStep,
    )
    from lightning_prune.callbacks.gradual import GradualMagnitudePruning
    from lightning_prune.callbacks.layer_freezer import LayerFreezer
    from lightning_prune.callbacks.pruning_aware_lr import PruningAwareLR
    from lightning_prune.callbacks.rollback import AdaptiveThresholdRollback
    from lightning_prune.callbacks.self_distillation import SelfDistillation
    from lightning_prune.callbacks.simulated_pruning import SimulatedPruning
    from lightning_prune.callbacks.structured import StructuredPruning
    from lightning_prune.callbacks.threshold_skip import ThresholdSkipFineTune

#: Public name -> the module that defines it (one module per callback, named after it).
_EXPORTS: dict[str, str] = {
    "AdaptiveThresholdRollback": "lightning_prune.callbacks.rollback",
    "GradualMagnitudePruning": "lightning_prune.callbacks.gradual",
    "LayerFreezer": "lightning_prune.callbacks.layer_freezer",
    "PruningAwareLR": "lightning_prune.callbacks.pruning_aware_lr",
    "PruningController": "lightning_prune.callbacks.base",
    "PruningSatellite": "lightning_prune.callbacks.base",
    "Request": "lightning_prune.callbacks.base",
    "RestoreSnapshot": "lightning_prune.callbacks.base",
    "RewindWeights": "lightning_prune.callbacks.base",
    "SelfDistillation": "lightning_prune.callbacks.self_distillation",
    "SimulatedPruning": "lightning_prune.callbacks.simulated_pruning",
    "StructuredPruning": "lightning_prune.callbacks.structured",
    "ThresholdSkipFineTune": "lightning_prune.callbacks.threshold_skip",
    "TrialStep": "lightning_prune.callbacks.base",
}

__all__ = [
    "AdaptiveThresholdRollback",
    "GradualMagnitudePruning",
    "LayerFreezer",
    "PruningAwareLR",
    "PruningController",
    "PruningSatellite",
    "Request",
    "RestoreSnapshot",
    "RewindWeights",
    "SelfDistillation",
    "SimulatedPruning",
    "StructuredPruning",
    "ThresholdSkipFineTune",
    "TrialStep",
]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _EXPORTS, __all__)
