"""Filter (output-channel) importance criteria for structured pruning.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    >>> get_importance("l1").score("0", net[0]).shape
    torch.Size([8])
    >>> crit = calibrate(get_importance("entropy"), {"0": net[1]}, net, [torch.randn(4, 3, 8, 8)])
    >>> crit.score("0", net[0]).dtype
    torch.float32
"""

from lightning_prune.importance.base import (
    ActivationImportance,
    ChannelImportance,
    output_channels,
)
from lightning_prune.importance.calibration import calibrate
from lightning_prune.importance.criteria import (
    AttentionImportance,
    EntropyImportance,
    L1Importance,
    L2Importance,
    MeanActivationImportance,
    RandomImportance,
    filter_weights,
)
from lightning_prune.importance.registry import (
    IMPORTANCES,
    get_importance,
    register_importance,
)

__all__ = [
    "IMPORTANCES",
    "ActivationImportance",
    "AttentionImportance",
    "ChannelImportance",
    "EntropyImportance",
    "L1Importance",
    "L2Importance",
    "MeanActivationImportance",
    "RandomImportance",
    "calibrate",
    "filter_weights",
    "get_importance",
    "output_channels",
    "register_importance",
]
