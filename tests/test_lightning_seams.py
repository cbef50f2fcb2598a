"""Pins of the Lightning behaviour that ``lightning_prune._lightning`` and ``lightning_prune.cli`` rely on.

Each test fails if a Lightning upgrade changes what the library leans on: where a notice is logged,
which logger ``Trainer(logger=True)`` builds and where it writes, when ``max_epochs`` is defaulted,
how ``ckpt_path="last"`` picks a file and which folders it looks in.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from lightning.fabric.loggers import tensorboard as fabric_tensorboard
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.trainer.connectors.logger_connector import logger_connector

from lightning_prune import lightning_cli
from lightning_prune._lightning import (
    MEASUREMENT_LABEL,
    TIP_FILTER,
    TIP_PREFIX,
    end_on_should_stop,
    last_checkpoint,
    last_checkpoint_dirs,
    measurement_label,
    output_dir,
    quiet_lightning,
)
from lightning_prune._lightning.notices import RANK_ZERO_LOGGER

QUIET = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def rank_zero_records() -> Iterator[_Records]:
    """Every record of the logger Lightning's ``rank_zero_info`` writes to."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler = _Records()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


# ------------------------------------------------------------------------------- Lightning's tips
@pytest.fixture()
def tips_shown() -> Iterator[None]:
    """Lightning's tips as Lightning logs them, without this library's filter (loaded with the callbacks)."""
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    had = TIP_FILTER in logger.filters
    logger.removeFilter(TIP_FILTER)
    try:
        yield
    finally:
        if had:
            logger.addFilter(TIP_FILTER)


def test_trainer_logs_its_tips_through_the_rank_zero_logger(tips_shown: None, rank_zero_records: _Records) -> None:
    Trainer(logger=False, enable_checkpointing=False, **QUIET)
    tips = [r for r in rank_zero_records.records if r.getMessage().startswith(TIP_PREFIX)]
    assert len(tips) == 1
    assert tips[0].name == RANK_ZERO_LOGGER and tips[0].levelno == logging.INFO
    assert "litlogger" in tips[0].getMessage()


def test_quiet_lightning_drops_only_the_tips(tips_shown: None, rank_zero_records: _Records) -> None:
    quiet_lightning()
    quiet_lightning()  # idempotent
    assert logging.getLogger(RANK_ZERO_LOGGER).filters.count(TIP_FILTER) == 1
    Trainer(logger=False, enable_checkpointing=False, **QUIET)
    messages = rank_zero_records.messages()
    assert not any(m.startswith(TIP_PREFIX) for m in messages)
    assert any(m.startswith("GPU available") for m in messages)  # Lightning's other notices still show


def test_importing_the_callbacks_quiets_lightning() -> None:
    code = ("import logging, lightning_prune.callbacks.base\n"
            f"assert lightning_prune._lightning.TIP_FILTER in logging.getLogger({RANK_ZERO_LOGGER!r}).filters")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


# ------------------------------------------------------------------------------- default logger
@pytest.mark.parametrize("tensorboard", [False, True], ids=["csv", "tensorboard"])
def test_cli_default_logger_writes_where_lightnings_default_logger_does(
        tensorboard: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lightning's choice, forced both ways; the CLI's, forced the same way
    monkeypatch.setattr(logger_connector, "_TENSORBOARD_AVAILABLE", tensorboard)
    monkeypatch.setattr(logger_connector, "_TENSORBOARDX_AVAILABLE", False)
    monkeypatch.setattr(fabric_tensorboard, "_TENSORBOARD_AVAILABLE", tensorboard)  # the logger's own check
    monkeypatch.setattr(lightning_cli, "_tensorboard_available", lambda: tensorboard)
    root = str(tmp_path / "runs" / ".." / "runs")  # not normalised: the Trainer normalises it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lightning_default = Trainer(logger=True, default_root_dir=root, **QUIET).logger
    ours = lightning_cli._default_logger(root)
    expected_type = TensorBoardLogger if tensorboard else CSVLogger
    assert type(lightning_default) is type(ours) is expected_type
    assert ours.save_dir == lightning_default.save_dir == str(tmp_path / "runs")
    assert ours.log_dir == lightning_default.log_dir
    assert (ours.name, ours.version) == (lightning_default.name, lightning_default.version)


def test_cli_default_logger_without_default_root_dir_is_in_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lightning_default = Trainer(logger=True, **QUIET).logger
    assert lightning_cli._default_logger(None).log_dir == lightning_default.log_dir == str(tmp_path / "lightning_logs" / "version_0")


def test_tensorboard_availability_follows_importability(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    for available in ({"tensorboard"}, {"tensorboardX"}, set()):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *_, a=available: object() if name in a else None)
        assert lightning_cli._tensorboard_available() is bool(available)


def test_default_logger_without_tensorboard_gives_the_tensorboardx_notice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the CLI builds the default logger itself: Lightning's logger=True warns when it falls back to CSV."""
    monkeypatch.setattr(logger_connector, "_TENSORBOARD_AVAILABLE", False)
    monkeypatch.setattr(logger_connector, "_TENSORBOARDX_AVAILABLE", False)
    monkeypatch.setattr(logger_connector, "warning_cache", type(logger_connector.warning_cache)())  # warns once only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(logger=True, default_root_dir=str(tmp_path), **QUIET)
        notices = [w for w in caught if "`tensorboardX` has been removed" in str(w.message)]
        assert len(notices) == 1
        caught.clear()
        Trainer(logger=lightning_cli._default_logger(tmp_path), default_root_dir=str(tmp_path), **QUIET)
        assert not [w for w in caught if "tensorboardX" in str(w.message)]


# ------------------------------------------------------------------------------- max_epochs
class _Stop(Exception):
    pass


class _RecordMaxEpochs(Callback):
    """Record the fit loop's max_epochs when training starts, then end the fit."""

    max_epochs: int | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.max_epochs = trainer.fit_loop.max_epochs
        raise _Stop


@pytest.mark.parametrize(("max_epochs", "expected", "warns"), [(None, 1000, True), (-1, -1, False)],
                         ids=["unset", "minus-one"])
def test_fit_defaults_an_unset_max_epochs_to_1000_with_a_warning_and_keeps_minus_one_silently(
        max_epochs: int | None, expected: int, warns: bool) -> None:
    record = _RecordMaxEpochs()
    trainer = Trainer(logger=False, enable_checkpointing=False, max_epochs=max_epochs, callbacks=[record],
                      limit_train_batches=1, limit_val_batches=0, **QUIET)
    assert trainer.fit_loop.max_epochs == max_epochs  # Trainer.__init__ leaves it as given
    with warnings.catch_warnings(record=True) as caught, pytest.raises(_Stop):
        warnings.simplefilter("always")
        trainer.fit(BoringModel())
    assert record.max_epochs == expected
    assert any("`max_epochs` was not set" in str(w.message) for w in caught) is warns


# ------------------------------------------------------------------------------- ckpt_path="last"
def _touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))
    return path


def test_last_checkpoint_is_the_newest_last_file_by_modification_time(tmp_path: Path) -> None:
    folder = tmp_path / "ckpts"
    trainer = Trainer(logger=False, callbacks=[ModelCheckpoint(dirpath=folder, save_last=True)], **QUIET)
    assert last_checkpoint(trainer) is None  # folder missing
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Lightning's "no last checkpoint" warning is silenced
        assert last_checkpoint(trainer) is None
    _touch(folder / "epoch=9-step=90.ckpt", 3000)  # newest, but not a last*.ckpt
    _touch(folder / "last.ckpt", 1000)
    _touch(folder / "last-v1.ckpt", 2000)
    assert last_checkpoint(trainer) == str(folder / "last-v1.ckpt")
    os.utime(folder / "last.ckpt", (2500, 2500))
    assert last_checkpoint(trainer) == str(folder / "last.ckpt")


def test_last_checkpoint_also_considers_the_on_exception_checkpoint(tmp_path: Path) -> None:
    on_exception = OnExceptionCheckpoint(dirpath=tmp_path / "crash")
    trainer = Trainer(logger=False, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpts"), on_exception], **QUIET)
    _touch(tmp_path / "ckpts" / "last.ckpt", 1000)
    _touch(Path(on_exception.ckpt_path), 2000)
    assert last_checkpoint(trainer) == on_exception.ckpt_path
    assert last_checkpoint_dirs(trainer) == [str(tmp_path / "ckpts"), str(tmp_path / "crash")]


def test_last_checkpoint_dirs_without_dirpath_is_the_new_runs_folder(tmp_path: Path) -> None:
    """The folder named is the one ModelCheckpoint then really saves to, and it is a new one."""
    _touch(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", 1000)  # an earlier run's
    checkpoint = ModelCheckpoint(save_last=True)
    trainer = Trainer(logger=CSVLogger(tmp_path), callbacks=[checkpoint], max_epochs=1, limit_train_batches=2,
                      limit_val_batches=1, log_every_n_steps=1, **QUIET)
    new_run = str(tmp_path / "lightning_logs" / "version_1" / "checkpoints")
    assert last_checkpoint_dirs(trainer) == [new_run]
    assert last_checkpoint(trainer) is None  # the earlier run's last.ckpt is not found
    trainer.fit(BoringModel())
    assert checkpoint.dirpath == new_run and (Path(new_run) / "last.ckpt").is_file()


def test_last_checkpoint_dirs_without_loggers_is_default_root_dir(tmp_path: Path) -> None:
    trainer = Trainer(logger=False, default_root_dir=str(tmp_path), **QUIET)  # the default ModelCheckpoint
    assert last_checkpoint_dirs(trainer) == [str(tmp_path / "checkpoints")]
    assert last_checkpoint_dirs(Trainer(logger=False, enable_checkpointing=False, **QUIET)) == []


# ---------------------------------------------------------------- what the controllers lean on
def test_trainer_log_dir_is_a_collective_so_it_is_resolved_on_every_rank(tmp_path: Path) -> None:
    """``trainer.log_dir`` broadcasts rank zero's folder: read from one rank only, the others never answer."""
    trainer = Trainer(default_root_dir=tmp_path, logger=False, **QUIET)
    calls: list[object] = []
    original = trainer.strategy.broadcast
    trainer.strategy.broadcast = lambda obj, src=0: calls.append(obj) or original(obj, src)  # type: ignore
    assert output_dir(trainer, None) == tmp_path and calls == [str(tmp_path)]
    assert output_dir(trainer, "elsewhere") == Path("elsewhere") and len(calls) == 1  # no collective needed


def test_progress_bars_read_their_sanity_label_from_one_property() -> None:
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

    assert isinstance(ProgressBar.__dict__["sanity_check_description"], property)
    trainer = Trainer(callbacks=[TQDMProgressBar()], logger=False, accelerator="cpu", devices=1)
    bar = trainer.progress_bar_callback
    cls = type(bar)
    with measurement_label(trainer):
        assert bar.sanity_check_description == MEASUREMENT_LABEL and isinstance(bar, cls)
    assert type(bar) is cls and bar.sanity_check_description == "Sanity Checking"
    rich = RichProgressBar()
    assert rich.sanity_check_description == "Sanity Checking"  # the same property in both bars


def test_a_measurement_shows_as_one_in_the_progress_bar(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    from helpers import LitTiny, make_data

    from lightning_prune import StructuredPruning

    train, val = make_data()
    trainer = Trainer(callbacks=[StructuredPruning()], default_root_dir=tmp_path, logger=False,
                      enable_checkpointing=False, num_sanity_val_steps=0, max_epochs=-1, accelerator="cpu", devices=1)
    trainer.fit(LitTiny(), train, val)
    captured = capfd.readouterr()
    shown = captured.out + captured.err  # Lightning's default bar (rich when installed) writes to stdout
    assert MEASUREMENT_LABEL in shown and "Sanity Checking" not in shown


def test_max_epochs_is_checked_before_should_stop(tmp_path: Path) -> None:
    """Why ``end_on_should_stop`` raises the bound: at ``max_epochs`` Lightning reports the limit as the reason."""

    class StopAtEnd(Callback):
        def __init__(self, raise_bound: bool) -> None:
            self.raise_bound = raise_bound

        def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
            if self.raise_bound:
                end_on_should_stop(trainer)
            else:
                trainer.should_stop = True

    for raise_bound, expected in ((False, True), (True, False)):
        handler = _Records()
        logging.getLogger("lightning.pytorch.utilities.rank_zero").addHandler(handler)
        try:
            trainer = Trainer(callbacks=[StopAtEnd(raise_bound)], max_epochs=1, limit_train_batches=2,
                              limit_val_batches=0, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                              **QUIET)
            trainer.fit(BoringModel())
        finally:
            logging.getLogger("lightning.pytorch.utilities.rank_zero").removeHandler(handler)
        said = any("`max_epochs=1` reached" in r.getMessage() for r in handler.records)
        assert said is expected and trainer.current_epoch == 1


def test_early_stopping_and_timer_say_why_they_stopped() -> None:
    from lightning.pytorch.callbacks import EarlyStopping, Timer
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    assert EarlyStopping(monitor="x").stopping_reason is EarlyStoppingReason.NOT_STOPPED
    assert Timer(duration={"seconds": 5}).time_remaining() == 5  # before fit: nothing elapsed


def test_the_checkpoint_file_is_read_after_setup_and_before_anything_is_restored(tmp_path: Path) -> None:
    """``guard_checkpoint_loading`` relies on this order in ``fit(ckpt_path=...)``."""
    first = Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, default_root_dir=tmp_path, logger=False,
                    **QUIET)
    first.fit(BoringModel())
    path = tmp_path / "first.ckpt"
    first.save_checkpoint(path)
    events: list[str] = []

    class Model(BoringModel):
        def on_load_checkpoint(self, checkpoint: dict) -> None:
            events.append("module.on_load_checkpoint")

    class Order(Callback):
        def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
            events.append("setup")
            original = trainer.strategy.load_checkpoint

            def load(checkpoint_path: object, *args: object, **kwargs: object) -> dict:
                events.append("strategy.load_checkpoint")
                return original(checkpoint_path, *args, **kwargs)

            trainer.strategy.load_checkpoint = load  # type: ignore[method-assign]

        def load_state_dict(self, state_dict: dict) -> None:
            events.append("callback.load_state_dict")

        def state_dict(self) -> dict:
            return {"x": 1}

    trainer = Trainer(callbacks=[Order()], max_epochs=2, limit_train_batches=2, limit_val_batches=0,
                      default_root_dir=tmp_path, logger=False, **QUIET)
    trainer.fit(Model(), ckpt_path=path)
    assert events[:2] == ["setup", "strategy.load_checkpoint"]
    assert events.index("strategy.load_checkpoint") < events.index("module.on_load_checkpoint")


def test_lightning_itself_warns_about_leafspec_on_this_torch() -> None:
    """``quiet_lightning`` silences this; when a Lightning release stops it, drop the filter."""
    from lightning.pytorch.utilities._pytree import _tree_flatten

    from lightning_prune._lightning import LIGHTNING_OWN_WARNINGS

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _tree_flatten(1)
    assert any(re.search(LIGHTNING_OWN_WARNINGS[0], str(w.message)) for w in caught)


def test_cli_merges_checkpoint_hparams_only_with_a_class_path(tmp_path: Path) -> None:
    """A script-built module records no ``_class_path``: LightningCLI's merge would fail on it."""
    from lightning.pytorch.cli import LightningCLI

    from lightning_prune import DigitsDataModule, ImageClassifier
    from lightning_prune._lightning import cli_can_merge_checkpoint_hparams

    assert callable(LightningCLI._parse_ckpt_path)
    trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, default_root_dir=tmp_path,
                      logger=False, enable_checkpointing=False, **QUIET)
    trainer.fit(ImageClassifier("digits_resnet", num_classes=10), datamodule=DigitsDataModule(batch_size=32))
    trainer.save_checkpoint(tmp_path / "api.ckpt")
    hparams = torch.load(tmp_path / "api.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams and "_class_path" not in hparams
    assert not cli_can_merge_checkpoint_hparams(tmp_path / "api.ckpt")
    assert cli_can_merge_checkpoint_hparams(tmp_path / "missing.ckpt")
