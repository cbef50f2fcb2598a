"""``PruneCLI``: Lightning's ``LightningCLI`` with this library's defaults, and :func:`make_cli`.

What ``lightning-prune fit|validate|test|predict`` run (the entry point is :mod:`lightning_prune.cli`);
``lightning-prune tune`` runs its trials through it too.

Example:
    >>> # make_cli(["fit", "--config", "configs/quickstart.yaml"])
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger

from lightning_prune._lightning import quiet_lightning
from lightning_prune.callbacks.base import PruningController
from lightning_prune.errors import PruningConfigError

__all__ = ["PruneCLI", "make_cli"]


class PruneCLI(LightningCLI):
    """LightningCLI whose ``model`` and ``data`` are any LightningModule / LightningDataModule (by class_path).

    On top of LightningCLI:

    * a top-level ``tune:`` block (the settings of ``lightning-prune tune``) is accepted and ignored,
      so one YAML serves both ``fit`` and ``tune``;
    * with ``trainer.logger`` left at its default, the Trainer gets the logger Lightning would pick
      (TensorBoard if ``tensorboard`` or ``tensorboardX`` is installed, else CSV, in
      ``trainer.default_root_dir``) without Lightning's notices about it;
    * with a pruning controller (``StructuredPruning``, ``GradualMagnitudePruning``) among the
      callbacks and ``trainer.max_epochs`` unset, ``max_epochs`` is ``-1``: the controller sets the
      number of epochs from its plan;
    * ``--ckpt_path last`` resumes from the newest ``last*.ckpt`` Lightning finds (in a
      ``ModelCheckpoint``'s ``dirpath``), else the newest one an earlier run saved in the same log
      folder (``<root>/version_N/checkpoints``), or is refused with a
      :class:`~lightning_prune.errors.PruningConfigError` naming the folders searched (Lightning
      itself only warns and starts afresh).

    Example:
        >>> # PruneCLI(LightningModule, LightningDataModule, subclass_mode_model=True,
        >>> #          subclass_mode_data=True, args=["fit", "--config", "configs/quickstart.yaml"])
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Accept (and ignore) the ``tune:`` block of ``lightning-prune tune``."""
        # SUPPRESS: without a tune block the parsed (and saved) config is exactly as before
        parser.add_argument("--tune", type=dict[str, Any] | None, default=argparse.SUPPRESS,
                            help="Settings of `lightning-prune tune` (ignored by fit, validate, test, predict).")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with this CLI's defaults for ``logger`` and ``max_epochs`` (see the class).

        Args:
            **kwargs: Trainer arguments overriding the config's (as in LightningCLI).

        Returns:
            The Trainer.
        """
        section = self.config_init[self.subcommand] if self.subcommand else self.config_init
        config = section.get("trainer") or {}
        logger = config.get("logger")
        if "logger" not in kwargs and (logger is None or logger is True):
            kwargs["logger"] = _default_logger(config.get("default_root_dir"))
        if "max_epochs" not in kwargs and config.get("max_epochs") is None and _has_controller(
                config.get("callbacks")):
            kwargs["max_epochs"] = -1
        quiet_lightning()
        return super().instantiate_trainer(**kwargs)

    def _parse_ckpt_path(self) -> None:
        """Merge the checkpoint's model hyperparameters only where LightningCLI can (see
        :func:`lightning_prune._lightning.cli_can_merge_checkpoint_hparams`): a checkpoint written by
        the Python API resumes from the CLI with the config's model."""
        from lightning_prune._lightning import cli_can_merge_checkpoint_hparams

        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is None or cli_can_merge_checkpoint_hparams(path):
            super()._parse_ckpt_path()

    def before_fit(self) -> None:
        """Resolve ``--ckpt_path last`` to a file, or refuse it."""
        self._resolve_last_checkpoint()

    def before_validate(self) -> None:
        """Resolve ``--ckpt_path last`` to a file, or refuse it."""
        self._resolve_last_checkpoint()

    def before_test(self) -> None:
        """Resolve ``--ckpt_path last`` to a file, or refuse it."""
        self._resolve_last_checkpoint()

    def before_predict(self) -> None:
        """Resolve ``--ckpt_path last`` to a file, or refuse it."""
        self._resolve_last_checkpoint()

    def _resolve_last_checkpoint(self) -> None:
        subcommand_config = self.config_init[self.subcommand]
        if subcommand_config.get("ckpt_path") == "last":
            # the explicit path: what was checked is what Lightning loads
            subcommand_config["ckpt_path"] = _last_checkpoint_or_refuse(self.trainer, self.subcommand)


def _default_logger(default_root_dir: str | os.PathLike[str] | None) -> Logger:
    """The logger Lightning's ``Trainer(logger=True)`` creates, built here so Lightning has no notice to give.

    TensorBoard if ``tensorboard`` or ``tensorboardX`` is importable, else CSV; ``save_dir`` is the
    Trainer's ``default_root_dir`` (normalised as the Trainer does; the working directory if unset).
    ``tests/test_lightning_seams.py`` checks it writes where Lightning's default logger would.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    save_dir = os.getcwd() if default_root_dir is None else os.fspath(default_root_dir)
    if "://" not in save_dir:  # a local path: Trainer.default_root_dir normalises it
        save_dir = os.path.normpath(os.path.expanduser(save_dir))
    if _tensorboard_available():
        return TensorBoardLogger(save_dir=save_dir, version=SLURMEnvironment.job_id())
    return CSVLogger(save_dir=save_dir)


def _tensorboard_available() -> bool:
    """Whether ``tensorboard`` or ``tensorboardX`` can be imported."""
    import importlib.util

    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))


def _has_controller(callbacks: Any) -> bool:
    """Whether ``callbacks`` (the Trainer's, as configured) hold a lightning_prune pruning controller."""
    if not callbacks:
        return False
    return any(isinstance(cb, PruningController)
               for cb in (callbacks if isinstance(callbacks, list | tuple) else [callbacks]))


def _last_checkpoint_or_refuse(trainer: Trainer, subcommand: str) -> str:
    """The checkpoint Lightning's ``ckpt_path="last"`` picks, or a PruningConfigError naming where it looked.

    Raises:
        PruningConfigError: if there is no ``last*.ckpt`` to resume from.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_prune._lightning import (
        earlier_run_checkpoint,
        last_checkpoint,
        last_checkpoint_dirs,
    )

    path = last_checkpoint(trainer) or earlier_run_checkpoint(trainer)
    if path is not None:
        return path
    dirs = last_checkpoint_dirs(trainer)
    if not dirs:
        where = "nowhere: the Trainer has no ModelCheckpoint (trainer.enable_checkpointing is false)"
    else:
        where = "in " + ", ".join(dirs)
        if any(isinstance(cb, ModelCheckpoint) and cb.dirpath is None for cb in trainer.callbacks):
            where += " and in the earlier runs' version_*/checkpoints folders beside it"
    raise PruningConfigError(
        f"`{subcommand} --ckpt_path last` found no last*.ckpt checkpoint to resume from, looking {where}",
        hint="save checkpoints with trainer.callbacks: [{class_path: lightning.pytorch.callbacks.ModelCheckpoint, "
             "init_args: {save_last: true}}] (the configs in configs/ do), or pass an explicit --ckpt_path <file.ckpt>",
    )


def make_cli(args: list[str] | None = None, run: bool = True) -> PruneCLI:
    """Build (and by default run) the ``lightning-prune`` LightningCLI.

    Args:
        args: Command-line arguments (``None``: ``sys.argv[1:]``).
        run: Run the subcommand; with ``False`` only parse and instantiate (no subcommand in ``args``).

    Returns:
        The :class:`PruneCLI`, after the subcommand ran.

    Example:
        >>> # make_cli(["--config", "configs/quickstart.yaml"], run=False).trainer
    """
    return PruneCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )
