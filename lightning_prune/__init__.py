"""lightning_prune: structured and unstructured pruning as PyTorch Lightning callbacks."""

from lightning_prune.artifacts import load_pruned
from lightning_prune.callbacks import (
    AdaptiveThresholdRollback,
    GradualMagnitudePruning,
    LayerFreezer,
    PruningAwareLR,
    PruningSatellite,
    SelfDistillation,
    SimulatedPruning,
    StructuredPruning,
    ThresholdSkipFineTune,
)
from lightning_prune.data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule, MNISTDataModule
from lightning_prune.errors import PruningConfigError
from lightning_prune.export import export_onnx, measure_latency
from lightning_prune.losses import dg2pf_loss
from lightning_prune.module import ImageClassifier
from lightning_prune.sparse import load_sparse, save_sparse
from lightning_prune.state import PruningReport, StepRecord
from lightning_prune.tuning import TuneResult, tune

__version__ = "0.1.0"

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
