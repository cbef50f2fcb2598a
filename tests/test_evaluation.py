"""Measuring the monitored metric inside fit: the user's validation, not an epoch, limited, labelled."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import LitTiny, make_data, make_trainer
from lightning.pytorch.callbacks import Callback, EarlyStopping

from lightning_prune import PruningConfigError
from lightning_prune.evaluation import measure


class Measure(Callback):
    """Measures at the start of epoch 1 and records what the measurement did."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.value: float | None = None
        self.validation_steps: int | None = None
        self.after: tuple[bool, str] | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            before = pl_module.validation_steps
            self.value = measure(trainer, "val_acc", **self.kwargs)
            self.validation_steps = pl_module.validation_steps - before
            self.after = (trainer.sanity_checking, trainer.state.stage.value)


def test_measure_runs_the_modules_validation_without_counting_as_an_epoch() -> None:
    probe, stopping = Measure(), EarlyStopping(monitor="val_acc", mode="max", patience=0)
    module = LitTiny()
    train, val = make_data()
    trainer = make_trainer([probe, stopping], max_epochs=3)
    trainer.fit(module, train, val)
    assert probe.validation_steps == 4 and 0 <= probe.value <= 1  # all 4 validation batches
    assert stopping.wait_count <= 1  # the measurement did not count towards patience
    assert probe.after == (False, "train")  # the fit loop continues as it was


def test_eval_batches_limits_the_measurement() -> None:
    probe = Measure(eval_batches=2)
    train, val = make_data()
    make_trainer([probe], max_epochs=2).fit(LitTiny(), train, val)
    assert probe.validation_steps == 2


def test_a_metric_that_is_not_logged_is_named_with_what_was() -> None:
    class Wrong(Measure):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                measure(trainer, "val_accuracy")

    train, val = make_data()
    with pytest.raises(PruningConfigError, match=r"monitor='val_accuracy' was not logged.*val_acc, val_loss"):
        make_trainer([Wrong()], max_epochs=2).fit(LitTiny(), train, val)
