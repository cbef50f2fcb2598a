"""lightning_prune: structured and unstructured pruning as PyTorch Lightning callbacks."""

from lightning_prune.artifacts import load_pruned
from lightning_prune.callbacks import (
    LayerFreezer,
    PruningAwareLR,
    PruningSatellite,
    StructuredPruning,
    ThresholdSkipFineTune,
)
from lightning_prune.data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule, MNISTDataModule
from lightning_prune.errors import PruningConfigError
from lightning_prune.export import export_onnx, measure_latency
from lightning_prune.module import ImageClassifier
from lightning_prune.state import PruningReport, StepRecord

__version__ = "0.1.0"

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "ImageClassifier",
    "ImageFolderDataModule",
    "LayerFreezer",
    "MNISTDataModule",
    "PruningAwareLR",
    "PruningConfigError",
    "PruningReport",
    "PruningSatellite",
    "StepRecord",
    "StructuredPruning",
    "ThresholdSkipFineTune",
    "export_onnx",
    "load_pruned",
    "measure_latency",
]
