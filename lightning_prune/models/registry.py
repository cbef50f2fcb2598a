"""Name -> network registry: the CIFAR ResNets, the digits ResNet and all torchvision models."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.models.cifar_resnet import cifar_resnet, digits_resnet
from lightning_prune.models.torchvision_models import (
    torchvision_classification_models,
    torchvision_model,
)

__all__ = ["create_model", "list_models"]

_Builder = Callable[[int, "str | None"], nn.Module]


def _cifar_builder(depth: int) -> _Builder:
    def build(num_classes: int, weights: str | None) -> nn.Module:
        return cifar_resnet(depth, num_classes=num_classes, weights=weights)

    return build


_BUILDERS: dict[str, _Builder] = {
    **{f"cifar_resnet{d}": _cifar_builder(d) for d in (20, 32, 44, 56, 110)},
    "digits_resnet": lambda num_classes, weights: digits_resnet(num_classes, weights=weights),
}


def list_models() -> list[str]:
    """Every name accepted by :func:`create_model`.

    Returns:
        The project's own models first, then the torchvision classification models (sorted).

    Example:
        >>> names = list_models()
        >>> names[0], "resnet18" in names
        ('cifar_resnet20', True)
    """
    return list(_BUILDERS) + [n for n in torchvision_classification_models() if n not in _BUILDERS]


def create_model(name: str, num_classes: int = 10, weights: str | None = None) -> nn.Module:
    """Build a registered network by name.

    Args:
        name: A name from :func:`list_models`, e.g. ``"cifar_resnet20"`` or ``"resnet18"``.
        num_classes: Output classes.
        weights: Optional path of a local checkpoint to load strictly.

    Returns:
        The network.

    Raises:
        PruningConfigError: For an unknown name or a missing/mismatched weights file.

    Example:
        >>> create_model("cifar_resnet20").linear.out_features
        10
    """
    if not isinstance(name, str):
        raise PruningConfigError(
            f"model name must be a string, got {type(name).__name__}",
            hint="pass e.g. 'cifar_resnet20'; see lightning_prune.models.list_models()",
        )
    if name in _BUILDERS:
        return _BUILDERS[name](num_classes, weights)
    if name in torchvision_classification_models():
        return torchvision_model(name, num_classes=num_classes, weights=weights)
    raise PruningConfigError(
        f"unknown model name {name!r}",
        hint=f"use one of {', '.join(list(_BUILDERS))}, or a torchvision name such as "
        "'resnet18'; lightning_prune.models.list_models() lists all",
    )
