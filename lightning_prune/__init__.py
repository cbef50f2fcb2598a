"""lightning_prune: structured and unstructured pruning as PyTorch Lightning callbacks.

The public names below are imported on first use (PEP 562), so ``import lightning_prune`` does not
import torch or Lightning; ``from lightning_prune import StructuredPruning`` and
``lightning_prune.StructuredPruning`` work as usual, and so does ``lightning_prune.<submodule>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_prune._lazy import lazy_attributes

if TYPE_CHECKING:  # the names __getattr__ provides, for type checkers and IDEs
    from lightning_prune.artifacts import load_pruned
    from lightning_prune.callbacks.base import PruningController, PruningSatellite
    from lightning_prune.callbacks.gradual import GradualMagnitudePruning
    from lightning_prune.callbacks.layer_freezer import LayerFreezer
    from lightning_prune.callbacks.pruning_aware_lr import PruningAwareLR
    from lightning_prune.callbacks.rollback import AdaptiveThresholdRollback
    from lightning_prune.callbacks.self_distillation import SelfDistillation
    from lightning_prune.callbacks.simulated_pruning import SimulatedPruning
    from lightning_prune.callbacks.structured import StructuredPruning
    from lightning_prune.callbacks.threshold_skip import ThresholdSkipFineTune
    from lightning_prune.data.cifar import CIFAR10DataModule
    from lightning_prune.data.digits import DigitsDataModule
    from lightning_prune.data.image_folder import ImageFolderDataModule
    from lightning_prune.data.mnist import MNISTDataModule
    from lightning_prune.errors import PruningConfigError
    from lightning_prune.export import export_onnx, measure_latency
    from lightning_prune.losses import dg2pf_loss
    from lightning_prune.models.module import ImageClassifier
    from lightning_prune.sparse import load_sparse, save_sparse
    from lightning_prune.state import PruningReport, StepRecord
    from lightning_prune.tuning.settings import TuneResult
    from lightning_prune.tuning.tuner import tune

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "AdaptiveThresholdRollback": "lightning_prune.callbacks.rollback",
    "CIFAR10DataModule": "lightning_prune.data.cifar",
    "DigitsDataModule": "lightning_prune.data.digits",
    "GradualMagnitudePruning": "lightning_prune.callbacks.gradual",
    "ImageClassifier": "lightning_prune.models.module",
    "ImageFolderDataModule": "lightning_prune.data.image_folder",
    "LayerFreezer": "lightning_prune.callbacks.layer_freezer",
    "MNISTDataModule": "lightning_prune.data.mnist",
    "PruningAwareLR": "lightning_prune.callbacks.pruning_aware_lr",
    "PruningConfigError": "lightning_prune.errors",
    "PruningReport": "lightning_prune.state",
    "PruningController": "lightning_prune.callbacks.base",
    "PruningSatellite": "lightning_prune.callbacks.base",
    "SelfDistillation": "lightning_prune.callbacks.self_distillation",
    "SimulatedPruning": "lightning_prune.callbacks.simulated_pruning",
    "StepRecord": "lightning_prune.state",
    "StructuredPruning": "lightning_prune.callbacks.structured",
    "ThresholdSkipFineTune": "lightning_prune.callbacks.threshold_skip",
    "TuneResult": "lightning_prune.tuning.settings",
    "dg2pf_loss": "lightning_prune.losses",
    "export_onnx": "lightning_prune.export",
    "load_pruned": "lightning_prune.artifacts",
    "load_sparse": "lightning_prune.sparse",
    "measure_latency": "lightning_prune.export",
    "save_sparse": "lightning_prune.sparse",
    "tune": "lightning_prune.tuning.tuner",
}

__all__ = [
    "AdaptiveThresholdRollback",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "GradualMagnitudePruning",
    "ImageClassifier",
    "ImageFolderDataModule",
    "LayerFreezer",
    "MNISTDataModule",
    "PruningAwareLR",
    "PruningConfigError",
    "PruningController",
    "PruningReport",
    "PruningSatellite",
    "SelfDistillation",
    "SimulatedPruning",
    "StepRecord",
    "StructuredPruning",
    "ThresholdSkipFineTune",
    "TuneResult",
    "dg2pf_loss",
    "export_onnx",
    "load_pruned",
    "load_sparse",
    "measure_latency",
    "save_sparse",
    "tune",
]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _EXPORTS, __all__)
