"""Strategies: which ones pruning works under, the output folder, and what follows surgery."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    SingleDeviceXLAStrategy,
    XLAStrategy,
)
from lightning.pytorch.strategies.launchers.multiprocessing import (
    _MultiProcessingLauncher,
)

from lightning_prune.errors import PruningConfigError

#: Strategies that shard or otherwise own the parameters: surgery cannot work on them. Checked by
#: what the strategy is, before the families allowed below (DeepSpeed and XLA subclass DDPStrategy,
#: single-device XLA subclasses SingleDeviceStrategy).
_REFUSED = (DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, XLAStrategy, SingleDeviceXLAStrategy)
_ALLOWED = (SingleDeviceStrategy, DDPStrategy)


def check_strategy(trainer: pl.Trainer, owner: str) -> None:
    """Refuse strategies a pruning controller cannot work under, by what they are.

    Raises:
        PruningConfigError: for sharded strategies (FSDP, DeepSpeed, model parallel), XLA, spawned
            DDP (``ddp_spawn``, ``ddp_notebook``), and anything that is not single-device or DDP.
    """
    strategy = trainer.strategy
    name = type(strategy).__name__
    if isinstance(strategy, _REFUSED) or not isinstance(strategy, _ALLOWED):
        raise PruningConfigError(
            f"strategy {name} is not supported by {owner}",
            hint="use a single device or strategy='ddp'; strategies that shard parameters (FSDP, DeepSpeed, "
            "model parallel) and XLA cannot be pruned",
        )
    if isinstance(getattr(strategy, "launcher", None), _MultiProcessingLauncher):
        raise PruningConfigError(
            f"spawned DDP ({name} with start method {strategy.launcher._start_method!r}) cannot return a pruned "
            "model to the main process",
            hint="use strategy='ddp', which runs your script once per process",
        )


def check_trains(trainer: pl.Trainer, owner: str) -> None:
    """Refuse a Trainer that is set never to run a training batch (``limit_train_batches=0``)."""
    limit = trainer.limit_train_batches
    if limit is not None and float(limit) == 0:
        raise PruningConfigError(
            f"limit_train_batches={limit!r}: {owner} cannot run its plan without training epochs",
            hint="use limit_train_batches=None (all batches) or a fraction / count > 0",
        )


def output_dir(trainer: pl.Trainer, configured: str | None) -> Path:
    """Where a callback writes its files: ``configured``, else ``trainer.log_dir``, else ``default_root_dir``.

    ``trainer.log_dir`` broadcasts rank zero's folder, a collective: call this on every rank at the
    same point (the callbacks do it in ``setup``), never from inside a rank-zero-only branch.
    """
    if configured is not None:
        return Path(configured)
    return Path(trainer.log_dir or trainer.default_root_dir)


def rewrap_and_rebuild(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """After surgery: wrap the module in DDP afresh, then rebuild optimizers and LR schedulers.

    Lightning behaviour relied on: ``DDPStrategy.configure_ddp`` wraps ``strategy.model`` (the DDP
    wrapper registers parameters when it is built, so a pruned module needs a new one), and
    ``Strategy.setup_optimizers(trainer)`` calls ``configure_optimizers`` again and sets
    ``trainer.optimizers`` / ``trainer.lr_scheduler_configs`` (pruned parameters are new objects: an
    old optimizer would silently train nothing).
    """
    from lightning_prune._lightning.optim import rebuild_optimizers

    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy):
        strategy.model = pl_module
        strategy.configure_ddp()
    rebuild_optimizers(trainer)
