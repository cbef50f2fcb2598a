"""Pruning callbacks: the controller and its satellites."""

from lightning_prune.callbacks.aap import AdaptiveThresholdRollback
from lightning_prune.callbacks.base import PruningSatellite
from lightning_prune.callbacks.distillation import SelfDistillation
from lightning_prune.callbacks.gradual import GradualMagnitudePruning
from lightning_prune.callbacks.ice import LayerFreezer, PruningAwareLR, ThresholdSkipFineTune
from lightning_prune.callbacks.simulated import SimulatedPruning
from lightning_prune.callbacks.structured import StructuredPruning

__all__ = [
    "AdaptiveThresholdRollback",
    "GradualMagnitudePruning",
    "LayerFreezer",
    "PruningAwareLR",
    "PruningSatellite",
    "SelfDistillation",
    "SimulatedPruning",
    "StructuredPruning",
    "ThresholdSkipFineTune",
]
