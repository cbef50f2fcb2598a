"""``PruningAwareLR``: ICE-Pruning's learning rate set from how much has been pruned (eq. 1)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from lightning_prune.callbacks.base import (
    PruningController,
    PruningSatellite,
    check_resume_hparams,
    check_single,
)
from lightning_prune.callbacks.structured import StructuredPruning
from lightning_prune.errors import check as _check
from lightning_prune.schedules import pruning_aware_lr

_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


def _conv_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd))


def rescale_peak_lr(trainer: pl.Trainer, lr_max: float) -> None:
    """Make ``lr_max`` the peak of every optimizer's (and scheduler's) learning rate.

    A constant LR becomes ``lr_max``; ``initial_lr`` / ``max_lr`` / ``min_lr`` of the param groups and
    a scheduler's ``base_lrs`` are rescaled by the same factor (ratios between groups are kept).
    """
    for optimizer in trainer.optimizers:
        peaks = [float(g.get("max_lr", g.get("initial_lr", g["lr"]))) for g in optimizer.param_groups]
        factor = lr_max / max(max(peaks), 1e-30)
        for group in optimizer.param_groups:
            for key in _LR_KEYS:
                if key in group:
                    group[key] = group[key] * factor
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if getattr(scheduler, "optimizer", None) is optimizer and hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
                if hasattr(scheduler, "_last_lr"):
                    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


class PruningAwareLR(PruningSatellite, Callback):
    """Set the fine-tuning learning rate's upper bound from how much has been pruned (ICE eq. 1).

    After every structural change (when the controller has rebuilt the optimizers), ``lr_max`` is
    computed by :func:`~lightning_prune.schedules.pruning_aware_lr` from ``a``, the remaining fraction
    of conv weight parameters, and becomes the peak of whatever the optimizer and scheduler do (see
    :func:`rescale_peak_lr`). Logged as ``prune/lr_max``; the history is ``report.json``'s
    ``extra.pruning_aware_lr``. A satellite of :class:`~lightning_prune.StructuredPruning`.

    Args:
        lr_base: Peak LR for the unpruned model.
        delta: Total decrease, ``0 < delta < lr_base``.
        midpoint: Pruning level ``p`` at which half of ``delta`` is reached, ``0 < p <= 0.5``.
        beta: Sharpness of the step, ``> 0``.

    Example:
        >>> from lightning_prune import PruningAwareLR, StructuredPruning
        >>> from lightning_prune.demos import DemoModule, demo_loaders, demo_trainer
        >>> lr = PruningAwareLR(lr_base=1e-3, delta=7.5e-4, midpoint=0.12, beta=50.0)
        >>> trainer = demo_trainer([StructuredPruning(), lr])
        >>> trainer.fit(DemoModule(), *demo_loaders())
        >>> trainer.optimizers[0].param_groups[0]["lr"] == lr.history[-1]["lr_max"]
        True
    """

    def __init__(self, lr_base: float = 1e-3, delta: float = 7.5e-4, midpoint: float = 0.12, beta: float = 50.0) -> None:
        _check(isinstance(lr_base, int | float) and lr_base > 0, f"lr_base={lr_base!r} must be > 0", "use e.g. 1e-3")
        _check(isinstance(delta, int | float) and 0 < delta < lr_base,
               f"delta={delta!r} must be in (0, lr_base={lr_base!r})", "use e.g. delta=0.75 * lr_base")
        _check(isinstance(midpoint, int | float) and 0 < midpoint <= 0.5,
               f"midpoint={midpoint!r} must be in (0, 0.5]", "use e.g. midpoint=0.12")
        _check(isinstance(beta, int | float) and beta > 0, f"beta={beta!r} must be > 0", "use e.g. beta=50")
        self.lr_base, self.delta, self.midpoint, self.beta = float(lr_base), float(delta), float(midpoint), float(beta)
        self.original: int | None = None
        self.history: list[dict[str, float]] = []

    def _hparams(self) -> dict[str, Any]:
        return {"lr_base": self.lr_base, "delta": self.delta, "midpoint": self.midpoint, "beta": self.beta}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"hparams": self._hparams(), "original": self.original, "history": [dict(h) for h in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_resume_hparams(self, state_dict.get("hparams"), self._hparams())
        self.original = state_dict["original"]
        self.history = [dict(h) for h in state_dict["history"]]

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            StructuredPruning.find(trainer, self)
            check_single(trainer, self)

    def lr_max(self, remaining: float) -> float:
        """Eq. 1 with this callback's hyperparameters."""
        return pruning_aware_lr(remaining, self.lr_base, self.delta, self.midpoint, self.beta)

    @override
    def on_pruning_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                         controller: PruningController) -> None:
        if self.original is None:
            self.original = _conv_weights(pl_module)

    @override
    def on_structure_changed(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             controller: PruningController) -> None:
        if self.original is None:
            self.original = _conv_weights(pl_module)
        remaining = _conv_weights(pl_module) / max(1, self.original)
        lr_max = self.lr_max(remaining)
        rescale_peak_lr(trainer, lr_max)
        self.history.append({"remaining": remaining, "lr_max": lr_max})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"prune/lr_max": lr_max, "prune/remaining": remaining}, step=trainer.global_step)

    @override
    def report_section(self) -> dict[str, Any]:
        return {"pruning_aware_lr": [dict(h) for h in self.history]} if self.history else {}
