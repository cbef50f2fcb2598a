"""Pruning callbacks: the controller and its satellites."""

from lightning_prune.callbacks.base import PruningSatellite
from lightning_prune.callbacks.ice import LayerFreezer, PruningAwareLR, ThresholdSkipFineTune
from lightning_prune.callbacks.structured import StructuredPruning

__all__ = ["LayerFreezer", "PruningAwareLR", "PruningSatellite", "StructuredPruning", "ThresholdSkipFineTune"]
