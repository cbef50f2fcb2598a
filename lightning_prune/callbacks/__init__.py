"""Pruning callbacks: the controller and its satellites."""

from lightning_prune.callbacks.base import PruningSatellite
from lightning_prune.callbacks.structured import StructuredPruning

__all__ = ["PruningSatellite", "StructuredPruning"]
