"""Measure the monitored metric now, with the user's own validation, from inside ``fit``.

The controllers measure between pruning and fine-tuning by running the fit loop's validation loop
as a measurement (:func:`lightning_prune._lightning.run_validation_as_measurement`: flagged as a
sanity check, so ``EarlyStopping``, ``ModelCheckpoint`` and loggers ignore it, and limited to
``eval_batches`` batches; progress bars show "Measuring (lightning_prune)"). The user's
``validation_step`` and ``self.log`` calls run as usual and refresh ``trainer.callback_metrics``.
``tests/test_evaluation.py`` pins the behaviour.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from lightning_prune._lightning import run_validation_as_measurement
from lightning_prune.errors import PruningConfigError


def monitored_value(trainer: pl.Trainer, monitor: str) -> float:
    """``trainer.callback_metrics[monitor]`` as a float.

    Raises:
        PruningConfigError: if ``monitor`` was not logged, listing the keys that were.
    """
    value = trainer.callback_metrics.get(monitor)
    if value is None:
        logged = sorted(trainer.callback_metrics) or ["(nothing)"]
        raise PruningConfigError(
            f"monitor={monitor!r} was not logged during validation; logged keys: {', '.join(logged)}",
            hint="log it in `validation_step` with `self.log(monitor, value)`, and make sure the Trainer "
            "has a validation dataloader and `limit_val_batches` > 0",
        )
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def measure(trainer: pl.Trainer, monitor: str, eval_batches: int | None = None) -> float:
    """Run the module's validation now and return ``trainer.callback_metrics[monitor]``.

    Args:
        trainer: A trainer inside ``fit``.
        monitor: The metric the module logs during validation.
        eval_batches: Validate on the first this many batches only (``None``: all of them).

    Raises:
        PruningConfigError: if there is no validation, or ``monitor`` was not logged.
    """
    trainer.callback_metrics.pop(monitor, None)
    run_validation_as_measurement(trainer, eval_batches)
    return monitored_value(trainer, monitor)
