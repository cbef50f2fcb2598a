"""The fit loop: measurements inside ``fit``, its epoch bound, and why it ended."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar


def no_training_batches(trainer: pl.Trainer) -> bool:
    """Whether the fit had no training batch at all (empty loader): Lightning then skips the fit loop."""
    return trainer.num_training_batches == 0


def stop_reason(trainer: pl.Trainer) -> str:
    """Why the fit ended, in words, for a controller whose plan was not complete.

    Leans on: ``Trainer.max_steps``/``global_step``, ``Timer`` (``max_time``) and ``EarlyStopping``'s
    ``stopping_reason``.
    """
    if 0 <= trainer.max_steps <= trainer.global_step:
        return f"max_steps={trainer.max_steps} reached"
    for callback in trainer.callbacks:
        if isinstance(callback, Timer):
            remaining = callback.time_remaining()
            if remaining is not None and remaining <= 0:
                return f"max_time reached ({callback._duration:.0f} s)"
        if isinstance(callback, EarlyStopping) and callback.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
            message = callback.stopping_reason_message or callback.stopping_reason.value
            return f"EarlyStopping stopped the fit ({message})"
    if 0 <= trainer.fit_loop.max_epochs <= trainer.current_epoch:
        return f"max_epochs={trainer.fit_loop.max_epochs} reached"
    if trainer.should_stop:
        return "trainer.should_stop was set by another callback or the module"
    return "the fit ended before the plan was complete"


def end_on_should_stop(trainer: pl.Trainer) -> None:
    """Make ``trainer.should_stop`` (set by the caller) end the fit rather than ``max_epochs``.

    Lightning's fit loop checks ``max_epochs`` before ``should_stop`` and reports it as
    "`Trainer.fit` stopped: `max_epochs=N` reached"; a plan that ends at its own last epoch is not
    stopped by a limit, so the bound is raised past the current epoch.
    """
    trainer.should_stop = True
    if 0 <= trainer.fit_loop.max_epochs <= trainer.current_epoch + 1:
        trainer.fit_loop.max_epochs = trainer.current_epoch + 2


_LABELLED: dict[type, type] = {}
MEASUREMENT_LABEL = "Measuring (lightning_prune)"


def _labelled(cls: type) -> type:
    if cls not in _LABELLED:
        _LABELLED[cls] = type(cls.__name__, (cls,), {
            "sanity_check_description": property(lambda self: MEASUREMENT_LABEL),
            "__module__": cls.__module__,
        })
    return _LABELLED[cls]


@contextlib.contextmanager
def measurement_label(trainer: pl.Trainer) -> Iterator[None]:
    """Progress bars label a measurement as one, not as "Sanity Checking".

    A measurement runs the validation loop flagged as a sanity check (see ``evaluation.py``); the
    progress bars read their label from ``ProgressBar.sanity_check_description``, a read-only
    property, so the bar's class is swapped for a subclass overriding it for the duration.
    """
    bars = [cb for cb in trainer.callbacks if isinstance(cb, ProgressBar)]
    classes = [type(bar) for bar in bars]
    try:
        for bar, cls in zip(bars, classes):
            bar.__class__ = _labelled(cls)
        yield
    finally:
        for bar, cls in zip(bars, classes):
            bar.__class__ = cls


def run_validation_as_measurement(trainer: pl.Trainer, eval_batches: int | None) -> None:
    """Run the module's own validation now, from inside ``fit``, as a measurement rather than an epoch.

    Lightning behaviour relied on (``tests/test_lightning_seams.py`` and ``tests/test_evaluation.py``
    pin it): ``trainer.fit_loop.epoch_loop.val_loop.run()`` runs ``validation_step`` and refreshes
    ``trainer.callback_metrics``; flagged with ``trainer.sanity_checking``, ``EarlyStopping`` does not
    count it, ``ModelCheckpoint`` does not save on it, loggers do not record it, and
    ``trainer.num_sanity_val_steps`` limits it to ``eval_batches`` batches. Progress bars label it as a
    measurement (:func:`measurement_label`).
    """
    import math

    loop = trainer.fit_loop.epoch_loop.val_loop
    stage, sanity_steps = trainer.state.stage, trainer.num_sanity_val_steps
    try:
        trainer.sanity_checking = True
        trainer.num_sanity_val_steps = eval_batches if eval_batches is not None else math.inf
        with measurement_label(trainer):
            loop.run()
    finally:
        trainer.state.stage = stage
        trainer.num_sanity_val_steps = sanity_steps


def set_epoch_bound(trainer: pl.Trainer, bound: int) -> None:
    """Let the plan, not the Trainer's ``max_epochs``, decide how many epochs run (``-1``: open-ended).

    Lightning behaviour relied on: ``trainer.fit_loop.max_epochs`` is read at every epoch boundary
    and by the progress bar, so it can be set during ``fit``.
    """
    trainer.fit_loop.max_epochs = bound


def keep_running(trainer: pl.Trainer) -> None:
    """At an epoch's end, with the plan not finished: make sure ``max_epochs`` allows one more epoch."""
    if 0 <= trainer.fit_loop.max_epochs <= trainer.current_epoch + 1:
        trainer.fit_loop.max_epochs = trainer.current_epoch + 2


def allow_resume_past(trainer: pl.Trainer, epochs_done: int) -> None:
    """Lightning refuses to resume when ``max_epochs`` is below the checkpoint's epoch: lift it."""
    if 0 <= trainer.fit_loop.max_epochs <= epochs_done:
        trainer.fit_loop.max_epochs = epochs_done + 1
