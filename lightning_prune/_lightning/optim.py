"""Optimizers: rebuilt from ``configure_optimizers`` after surgery, or replaced by a spec for a phase."""

from __future__ import annotations

import importlib
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.optimizer import _optimizers_to_device

from lightning_prune.errors import PruningConfigError
from lightning_prune.errors import check as _check

#: Optimizers known by a short name in a spec; anything else is a class path.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam,
                                                      "adamw": torch.optim.AdamW}


def rebuild_optimizers(trainer: pl.Trainer) -> None:
    """``configure_optimizers`` again, and the new optimizer state on the strategy's device.

    Lightning behaviour relied on: ``Strategy.setup_optimizers`` and the private
    ``lightning.fabric.utilities.optimizer._optimizers_to_device`` (what ``Strategy.setup`` does).
    """
    strategy = trainer.strategy
    strategy.setup_optimizers(trainer)
    _optimizers_to_device(strategy.optimizers, strategy.root_device)


def replace_optimizers(trainer: pl.Trainer, pl_module: pl.LightningModule, spec: tuple[str, dict[str, Any]]) -> None:
    """Replace the optimizers by one built from ``spec`` (LR schedulers dropped), or rebuild them
    from ``configure_optimizers`` for the name ``"module"``."""
    name, kwargs = spec
    if name == "module":
        rebuild_optimizers(trainer)
        return
    strategy = trainer.strategy
    params = [p for p in pl_module.parameters() if p.requires_grad]
    strategy.optimizers = [optimizer_class(name)(params, **kwargs)]
    strategy.lr_scheduler_configs = []
    _optimizers_to_device(strategy.optimizers, strategy.root_device)


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class of a short name (:data:`OPTIMIZERS`) or a class path.

    Example:
        >>> optimizer_class("sgd").__name__, optimizer_class("torch.optim.RMSprop").__name__
        ('SGD', 'RMSprop')
    """
    if name in OPTIMIZERS:
        return OPTIMIZERS[name]
    module, _, attr = name.rpartition(".")
    if not module:
        raise ValueError(f"unknown optimizer {name!r}")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise TypeError(f"{name} is not a torch.optim.Optimizer")
    return cls


def optimizer_spec(spec: dict[str, Any] | None, sgd_defaults: dict[str, Any], argument: str) -> tuple[str, dict[str, Any]]:
    """``(name, kwargs)`` of an optimizer spec, checked by building it on a dummy parameter.

    ``{"name": ..., **kwargs}``: ``"sgd"`` (missing keys from ``sgd_defaults``), ``"adam"``, ``"adamw"``,
    a class path, or ``"module"`` (``configure_optimizers``; no arguments).

    Example:
        >>> optimizer_spec({"lr": 0.1}, {"lr": 1e-4, "momentum": 0.9}, "finetune_optimizer")
        ('sgd', {'lr': 0.1, 'momentum': 0.9})
    """
    _check(spec is None or isinstance(spec, dict), f"{argument}={spec!r} is not a mapping",
           "pass e.g. {'name': 'sgd', 'lr': 1e-4, 'momentum': 0.9, 'weight_decay': 5e-4}")
    spec = dict(spec or {})
    name = spec.pop("name", "sgd")
    if name == "sgd":
        spec = {**sgd_defaults, **spec}
    if name == "module":
        _check(not spec, f"{argument} name 'module' takes no arguments, got {sorted(spec)}",
               "configure the optimizer in your module's configure_optimizers")
        return name, spec
    try:
        optimizer_class(name)([torch.nn.Parameter(torch.zeros(1))], **spec)
    except (TypeError, ValueError, ImportError, AttributeError) as exc:
        raise PruningConfigError(
            f"{argument}={{'name': {name!r}, **{spec!r}}} cannot be built: {exc}",
            hint="use name 'sgd', 'adam', 'adamw', 'module' (your configure_optimizers) or a class path such as "
            "'torch.optim.RMSprop', with that optimizer's keyword arguments",
        ) from exc
    return name, spec
