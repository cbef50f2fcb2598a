"""Torchvision classification architectures by name, never downloading weights."""

from __future__ import annotations

from functools import lru_cache

from torch import nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.models.weights import load_state_dict_file

__all__ = ["torchvision_classification_models", "torchvision_model"]


@lru_cache(maxsize=1)
def _classification_names() -> tuple[str, ...]:
    import torchvision.models as tvm

    return tuple(sorted(tvm.list_models(module=tvm)))


def torchvision_classification_models() -> list[str]:
    """Names of every torchvision classification architecture (e.g. ``"resnet18"``).

    Returns:
        Sorted list of names accepted by :func:`torchvision_model`.

    Example:
        >>> "resnet18" in torchvision_classification_models()
        True
    """
    return list(_classification_names())


def torchvision_model(name: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """Build a torchvision classification network with ``num_classes`` outputs.

    Args:
        name: Torchvision architecture name, e.g. ``"resnet18"`` or ``"mobilenet_v2"``.
        num_classes: Output classes of the classifier head.
        weights: Optional path of a LOCAL state_dict file; nothing is ever downloaded.

    Returns:
        The randomly initialised (or locally loaded) network.

    Raises:
        PruningConfigError: For an unknown name or a missing/mismatched weights file.

    Example:
        >>> net = torchvision_model("resnet18", num_classes=10)
        >>> net.fc.out_features
        10
    """
    names = _classification_names()
    if name not in names:
        raise PruningConfigError(
            f"unknown torchvision classification model {name!r}",
            hint=f"use one of {', '.join(_few(names))}, ... "
            "(torchvision.models.list_models(module=torchvision.models) lists all)",
        )
    import torchvision.models as tvm

    extra = {"aux_logits": False, "init_weights": True} if name in _AUX_MODELS else {}
    net = tvm.get_model(name, weights=None, num_classes=num_classes, **extra)
    if weights is not None:
        load_state_dict_file(net, weights)
    return net


_AUX_MODELS = frozenset({"googlenet", "inception_v3"})


def _few(names: tuple[str, ...]) -> list[str]:
    preferred = ["resnet18", "resnet50", "mobilenet_v2", "vgg16_bn", "efficientnet_b0", "vit_b_16"]
    return [n for n in preferred if n in names] or list(names[:6])
