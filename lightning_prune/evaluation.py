"""Measure the monitored metric now, with the user's own validation, from inside ``fit``.

The controller calls the fit loop's validation loop (``trainer.fit_loop.epoch_loop.val_loop``)
between pruning and fine-tuning. The run is flagged as a *sanity check* for its duration, which is
what keeps it a measurement rather than an epoch's validation: ``EarlyStopping`` does not count it
towards patience, ``ModelCheckpoint`` does not save on it, loggers do not record it, and
``trainer.num_sanity_val_steps`` limits it to ``eval_batches`` batches; progress bars label it
"Measuring (lightning_prune)" rather than "Sanity Checking". The user's
``validation_step`` and ``self.log`` calls run as usual and refresh ``trainer.callback_metrics``.
This leans on Lightning's loop attributes; ``tests/test_evaluation.py`` pins the behaviour.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from lightning_prune._lightning import measurement_label
from lightning_prune.errors import PruningConfigError


def measure(trainer: pl.Trainer, monitor: str, eval_batches: int | None = None) -> float:
    """Run the module's validation now and return ``trainer.callback_metrics[monitor]``.

    Args:
        trainer: A trainer inside ``fit``.
        monitor: The metric the module logs during validation.
        eval_batches: Validate on the first this many batches only (``None``: all of them).

    Raises:
        PruningConfigError: if there is no validation, or ``monitor`` was not logged.
    """
    loop = trainer.fit_loop.epoch_loop.val_loop
    stage, sanity_steps = trainer.state.stage, trainer.num_sanity_val_steps
    trainer.callback_metrics.pop(monitor, None)
    try:
        trainer.sanity_checking = True
        trainer.num_sanity_val_steps = eval_batches if eval_batches is not None else math.inf
        with measurement_label(trainer):
            loop.run()
    finally:
        trainer.state.stage = stage
        trainer.num_sanity_val_steps = sanity_steps
    value = trainer.callback_metrics.get(monitor)
    if value is None:
        logged = sorted(trainer.callback_metrics) or ["(nothing)"]
        raise PruningConfigError(
            f"monitor={monitor!r} was not logged during validation; logged keys: {', '.join(logged)}",
            hint="log it in `validation_step` with `self.log(monitor, value)`, and make sure the Trainer "
            "has a validation dataloader and `limit_val_batches` > 0",
        )
    return float(value.item() if isinstance(value, torch.Tensor) else value)
