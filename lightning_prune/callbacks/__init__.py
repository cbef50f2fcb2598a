"""Pruning callbacks: the controller and its satellites.

The names below are imported on first use (PEP 562): importing one callback's module does not
import all the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    """Import a public name (or a submodule, e.g. ``callbacks.structured``) on first access."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if not name.startswith("__"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
