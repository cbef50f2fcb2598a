"""``ImageClassifier``: a LightningModule around any classification network."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_prune.errors import PruningConfigError
from lightning_prune.models.registry import create_model

__all__ = ["OPTIMIZERS", "SCHEDULERS", "ImageClassifier"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "step", "multistep", "onecycle")

Batch = tuple[Tensor, Tensor]


class ImageClassifier(L.LightningModule):
    """Cross-entropy classification of images with any network, ready for pruning.

    The network is stored as ``self.model`` (so its modules are named ``model.conv1``,
    ``model.layer1.0.conv1``, ...). :meth:`configure_optimizers` builds a fresh optimizer over
    the CURRENT parameters on every call, so it can be called again after structural pruning
    has replaced ``nn.Parameter`` objects.

    Logged metrics: ``train_loss``/``train_acc``, ``val_loss``/``val_acc``,
    ``test_loss``/``test_acc`` (accuracy = top-1 fraction in [0, 1], torchmetrics objects
    reduced across processes; losses logged with ``sync_dist=True``). Label smoothing applies
    to the training loss only, so validation/test losses stay comparable.

    Args:
        model: A registry name (see :func:`lightning_prune.models.list_models`) or a network.
        num_classes: Number of classes (also used to build a named model).
        weights: Local checkpoint for a named model; must be None when ``model`` is a module.
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: Learning rate (the peak rate for ``"onecycle"``).
        momentum: SGD momentum (ignored by Adam/AdamW).
        weight_decay: Weight decay (L2 for SGD/Adam, decoupled for AdamW).
        nesterov: Nesterov momentum for SGD.
        scheduler: None, ``"cosine"``, ``"step"``, ``"multistep"`` or ``"onecycle"``.
        scheduler_kwargs: Extra arguments of the scheduler, e.g. ``{"T_max": 30}`` for cosine,
            ``{"step_size": 30, "gamma": 0.1}`` for step, ``{"milestones": [100, 150]}`` for
            multistep, ``{"total_steps": 1000, "pct_start": 0.3}`` for onecycle.
        label_smoothing: Label smoothing of the training loss, in [0, 1).

    Example:
        >>> module = ImageClassifier("digits_resnet", num_classes=10, lr=0.05)
        >>> module(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
        >>> type(module.configure_optimizers()).__name__
        'SGD'
    """

    def __init__(
        self,
        model: nn.Module | str = "digits_resnet",
        num_classes: int = 10,
        weights: str | None = None,
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        nesterov: bool = False,
        scheduler: str | None = None,
        scheduler_kwargs: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        _check_config(
            num_classes, optimizer, lr, momentum, weight_decay, nesterov, scheduler,
            scheduler_kwargs, label_smoothing,
        )
        self.save_hyperparameters(ignore=["model"] if isinstance(model, nn.Module) else None)
        self.model = _build_network(model, num_classes, weights)
        self.num_classes = num_classes
        self.optimizer_name = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.nesterov = nesterov
        self.scheduler_name = scheduler
        self.scheduler_kwargs = dict(scheduler_kwargs or {})
        self.label_smoothing = label_smoothing
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        """Class logits of the wrapped network."""
        return self.model(x)

    # -- steps ----------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Cross-entropy (with label smoothing) on one batch; logs train_loss/train_acc."""
        inputs, targets = batch
        logits = self(inputs)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        self.train_acc(logits, targets)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Logs val_loss and val_acc."""
        return self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Logs test_loss and test_acc."""
        return self._eval_step(batch, "test", self.test_acc)

    def predict_step(self, batch: Batch | Tensor, batch_idx: int) -> Tensor:
        """Logits of the inputs of a ``(inputs, targets)`` batch or of a bare tensor."""
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(inputs)

    def _eval_step(self, batch: Batch, stage: str, metric: MulticlassAccuracy) -> Tensor:
        inputs, targets = batch
        logits = self(inputs)
        loss = F.cross_entropy(logits, targets)
        metric(logits, targets)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{stage}_acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    # -- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """A NEW optimizer over the current ``self.parameters()`` (plus the scheduler, if any)."""
        optimizer = self._make_optimizer()
        if self.scheduler_name is None:
            return optimizer
        scheduler, interval = self._make_scheduler(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval, "frequency": 1},
        }

    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = list(self.parameters())
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum,
                weight_decay=self.weight_decay, nesterov=self.nesterov,
            )
        factory = torch.optim.Adam if self.optimizer_name == "adam" else torch.optim.AdamW
        return factory(params, lr=self.lr, weight_decay=self.weight_decay)

    def _make_scheduler(
        self, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.optim.lr_scheduler.LRScheduler, str]:
        kwargs = dict(self.scheduler_kwargs)
        builder = _SCHEDULER_BUILDERS[self.scheduler_name]  # type: ignore[index]
        interval = "step" if self.scheduler_name == "onecycle" else "epoch"
        try:
            return builder(self, optimizer, kwargs), interval
        except TypeError as exc:
            raise PruningConfigError(
                f"scheduler_kwargs={self.scheduler_kwargs!r} rejected by "
                f"scheduler={self.scheduler_name!r}: {exc}",
                hint="pass only arguments of the matching torch.optim.lr_scheduler class",
            ) from exc

    def _trainer_value(self, name: str) -> int | None:
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return None
        value = getattr(trainer, name, None)
        if value is None or value == float("inf") or value < 1:
            return None
        return int(value)

    def _required(self, key: str, kwargs: dict[str, Any], trainer_attr: str) -> int:
        value = kwargs.pop(key, None) or self._trainer_value(trainer_attr)
        if value is None:
            raise PruningConfigError(
                f"scheduler={self.scheduler_name!r} needs {key}, but scheduler_kwargs has none "
                f"and trainer.{trainer_attr} is not available",
                hint=f"set scheduler_kwargs={{'{key}': ...}} or a finite Trainer(max_epochs=...)",
            )
        return int(value)


def _cosine(
    module: ImageClassifier, optimizer: torch.optim.Optimizer, kwargs: dict[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler:
    t_max = module._required("T_max", kwargs, "max_epochs")
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, **kwargs)


def _step(
    module: ImageClassifier, optimizer: torch.optim.Optimizer, kwargs: dict[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler:
    kwargs.setdefault("step_size", 30)
    return torch.optim.lr_scheduler.StepLR(optimizer, **kwargs)


def _multistep(
    module: ImageClassifier, optimizer: torch.optim.Optimizer, kwargs: dict[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler:
    if "milestones" not in kwargs:
        epochs = module._required("max_epochs", {}, "max_epochs")
        kwargs["milestones"] = sorted({max(1, epochs // 2), max(1, (epochs * 3) // 4)})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, **kwargs)


def _onecycle(
    module: ImageClassifier, optimizer: torch.optim.Optimizer, kwargs: dict[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler:
    total = module._required("total_steps", kwargs, "estimated_stepping_batches")
    kwargs.setdefault("max_lr", module.lr)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, total_steps=total, **kwargs)


_SchedulerBuilder = Callable[
    [ImageClassifier, torch.optim.Optimizer, dict[str, Any]], torch.optim.lr_scheduler.LRScheduler
]
_SCHEDULER_BUILDERS: dict[str, _SchedulerBuilder] = {
    "cosine": _cosine,
    "step": _step,
    "multistep": _multistep,
    "onecycle": _onecycle,
}


def _build_network(model: nn.Module | str, num_classes: int, weights: str | None) -> nn.Module:
    if isinstance(model, nn.Module):
        if weights is not None:
            raise PruningConfigError(
                f"weights={weights!r} given together with a network instance",
                hint="load the weights into the network yourself, or pass a registry name "
                "such as model='cifar_resnet20'",
            )
        return model
    if isinstance(model, str):
        return create_model(model, num_classes=num_classes, weights=weights)
    raise PruningConfigError(
        f"model must be a registry name or an nn.Module, got {type(model).__name__}",
        hint="pass e.g. model='cifar_resnet20' (lightning_prune.models.list_models())",
    )


def _check_config(
    num_classes: int,
    optimizer: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    scheduler: str | None,
    scheduler_kwargs: dict[str, Any] | None,
    label_smoothing: float,
) -> None:
    checks: list[tuple[bool, str, str]] = [
        (
            isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 2,
            f"num_classes={num_classes!r} must be an integer >= 2",
            "use the number of classes of the data set, e.g. 10",
        ),
        (
            optimizer in OPTIMIZERS,
            f"optimizer={optimizer!r} is not one of {list(OPTIMIZERS)}",
            "use 'sgd' (default), 'adam' or 'adamw'",
        ),
        (
            scheduler is None or scheduler in SCHEDULERS,
            f"scheduler={scheduler!r} is not None or one of {list(SCHEDULERS)}",
            "use e.g. scheduler='cosine', or leave it None for a constant learning rate",
        ),
        (
            scheduler_kwargs is None or isinstance(scheduler_kwargs, dict),
            f"scheduler_kwargs={scheduler_kwargs!r} is not a dict",
            "pass a mapping such as {'T_max': 30}",
        ),
        (lr > 0, f"lr={lr!r} must be positive", "use e.g. lr=0.1 for SGD, 1e-3 for Adam"),
        (momentum >= 0, f"momentum={momentum!r} must be >= 0", "use e.g. momentum=0.9"),
        (
            weight_decay >= 0,
            f"weight_decay={weight_decay!r} must be >= 0",
            "use e.g. weight_decay=5e-4, or 0 to disable",
        ),
        (
            not (nesterov and optimizer == "sgd" and momentum <= 0),
            "nesterov=True needs momentum > 0",
            "set momentum=0.9 or nesterov=False",
        ),
        (
            0.0 <= label_smoothing < 1.0,
            f"label_smoothing={label_smoothing!r} is outside [0, 1)",
            "use e.g. 0.1, or 0 to disable",
        ),
    ]
    for ok, message, hint in checks:
        if not ok:
            raise PruningConfigError(message, hint=hint)
