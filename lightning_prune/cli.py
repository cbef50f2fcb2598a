"""The ``lightning-prune`` command: LightningCLI with this library's modules and callbacks, plus ``tune``.

Importing this module is cheap: torch and Lightning are imported only when a subcommand runs (or
``PruneCLI`` is first used), so ``lightning-prune --help`` answers at once.

Example:
    ``lightning-prune fit --config configs/quickstart.yaml``

    ``lightning-prune tune --config configs/ice_quickstart.yaml --n_trials 8``
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import TYPE_CHECKING, Any

from lightning_prune.errors import PruningConfigError

if TYPE_CHECKING:
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningCLI as PruneCLI  # the real class is built on first use
    from lightning.pytorch.loggers import Logger

__all__ = ["PruneCLI", "main", "make_cli", "tune_command"]

#: The subcommands and their one-line descriptions, as ``lightning-prune --help`` lists them. The first
#: four are LightningCLI's (``tests/test_cli.py`` checks they still are); ``tune`` is this library's.
SUBCOMMANDS: dict[str, str] = {
    "fit": "Train (and prune, through the config's callbacks).",
    "validate": "Run one evaluation epoch over the validation set.",
    "test": "Run one evaluation epoch over the test set.",
    "predict": "Run inference on the prediction set.",
    "tune": "Auto-tune the callbacks (Optuna), then run the best.",
}

#: The pruning controllers (callbacks) that set the number of epochs themselves, by (module, class name).
_CONTROLLERS = (
    ("lightning_prune.callbacks.structured", "StructuredPruning"),
    ("lightning_prune.callbacks.gradual", "GradualMagnitudePruning"),
)


def __getattr__(name: str) -> Any:
    """Build :class:`PruneCLI` (which subclasses Lightning's ``LightningCLI``) on first access."""
    if name == "PruneCLI":
        cls = _prune_cli_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


@functools.cache
def _prune_cli_class() -> type[PruneCLI]:
    """Define :class:`PruneCLI`; here rather than at module level so that importing this module
    does not import Lightning."""
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

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
            from lightning_prune._lightning import without_litlogger_tip

            with without_litlogger_tip():
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

    PruneCLI.__qualname__ = "PruneCLI"
    return PruneCLI


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
    import importlib

    classes = tuple(getattr(importlib.import_module(module), name) for module, name in _CONTROLLERS)
    return any(isinstance(cb, classes) for cb in (callbacks if isinstance(callbacks, list | tuple) else [callbacks]))


def _last_checkpoint_or_refuse(trainer: Trainer, subcommand: str) -> str:
    """The checkpoint Lightning's ``ckpt_path="last"`` picks, or a PruningConfigError naming where it looked.

    Raises:
        PruningConfigError: if there is no ``last*.ckpt`` to resume from.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_prune._lightning import earlier_run_checkpoint, last_checkpoint, last_checkpoint_dirs

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
    from lightning.pytorch import LightningDataModule, LightningModule

    return _prune_cli_class()(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def _top_level_parser() -> argparse.ArgumentParser:
    """The parser behind ``lightning-prune --help`` only (the subcommands parse their own arguments)."""
    parser = argparse.ArgumentParser(
        prog="lightning-prune",
        description="Structured and unstructured pruning as PyTorch Lightning callbacks: LightningCLI's "
                    "subcommands with this library's models, data modules and callbacks, plus `tune`.",
        epilog="Run `lightning-prune <subcommand> --help` for a subcommand's options, e.g. "
               "`lightning-prune fit --help`. Example: lightning-prune fit --config configs/quickstart.yaml",
    )
    parser.add_argument("-c", "--config", metavar="CONFIG",
                        help="a YAML config for fit/validate/test/predict (usually given after the subcommand)")
    subcommands = parser.add_subparsers(title="subcommands", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, description in SUBCOMMANDS.items():
        subcommands.add_parser(name, help=description, add_help=False)
    return parser


def _tune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-prune tune",
        description="Auto-tune the pipeline's callbacks with Optuna (stage 1, on a data subset), then run the "
                    "full pipeline with the best parameters (stage 2). Settings come from the config's `tune:` "
                    "block; flags given here override it.",
    )
    parser.add_argument("--config", required=True, help="the fit config (same YAML as `lightning-prune fit`)")
    parser.add_argument("--search_space", help="search-space YAML (default: the authors' CIFAR grid)")
    parser.add_argument("--objective", choices=["budget", "ice", "pareto"],
                        help="budget (default): fastest run with drop <= max_drop; ice: the paper's eq. 2; "
                             "pareto: time and drop, Pareto front")
    parser.add_argument("--max_drop", type=float, help="accuracy-drop budget in the metric's units (default 0.01)")
    parser.add_argument("--points_per_unit", type=float,
                        help="ice objective: points per metric unit (default 100: accuracy as a fraction)")
    parser.add_argument("--sampler", choices=["grid", "tpe", "random"], help="default: grid")
    parser.add_argument("--n_trials", type=int,
                        help="trials this call runs (grid default: the grid points not yet evaluated; "
                             "0: none, only choose the best so far and run stage 2)")
    parser.add_argument("--subset_fraction", type=float, help="stage-1 data fraction (default 0.02)")
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///<output_dir>/study.db)")
    parser.add_argument("--study_name", help="default: <config name>-<objective>")
    parser.add_argument("--output_dir", help="default: <trainer.default_root_dir>/tune")
    parser.add_argument("--no_stage2", dest="stage2", action="store_const", const=False,
                        help="stop after stage 1 (best_params.yaml and best_config.yaml are still written)")
    parser.add_argument("--stage2_subset_fraction", type=float,
                        help="stage-2 data fraction (default: the config's own)")
    parser.add_argument("--seed", type=int, help="seed of the samplers (and of seed_everything if the config has none)")
    parser.add_argument("--verbose", dest="quiet", action="store_const", const=False,
                        help="show Lightning's and the controller's messages during stage-1 trials")
    return parser


def tune_command(args: list[str]) -> Any:
    """``lightning-prune tune``: parse the flags and run :func:`lightning_prune.tuning.tune` (it logs a summary).

    Example:
        >>> # tune_command(["--config", "configs/ice_quickstart.yaml", "--n_trials", "4"])
    """
    options = vars(_tune_parser().parse_args(args))
    from lightning_prune.tuning import tune

    config = options.pop("config")
    return tune(config, **{k: v for k, v in options.items() if v is not None})


def _config_error(exc: BaseException) -> PruningConfigError | None:
    """The PruningConfigError ``exc`` is or was raised from (jsonargparse wraps errors raised while it
    instantiates the config's classes in a ValueError ``from`` the original), else ``None``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, PruningConfigError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def _error_text(error: PruningConfigError) -> str:
    """``error: <message>`` and ``HINT: <hint>`` lines for stderr."""
    message, separator, hint = str(error).rpartition(" HINT: ")
    if not separator:
        return f"error: {error}\n"
    return f"error: {message}\nHINT: {hint}\n"


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-prune`` console script (``tune``, or LightningCLI's subcommands).

    Without arguments, or with ``-h``/``--help`` first, it lists the subcommands (without importing
    torch). A :class:`~lightning_prune.errors.PruningConfigError` (a bad value in the config or on the
    command line, also one raised during the run) is written to stderr as ``error: ...`` and
    ``HINT: ...`` and ends the program with exit status 2; other exceptions keep their traceback.

    Args:
        args: Command-line arguments (``None``: ``sys.argv[1:]``).

    Example:
        >>> # main(["fit", "--config", "configs/quickstart.yaml"])
    """
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        _top_level_parser().print_help()
        if argv:
            raise SystemExit(0)
        return
    from lightning_prune._lightning import ignore_lightning_own_warnings

    ignore_lightning_own_warnings()
    try:
        if argv[0] == "tune":
            tune_command(argv[1:])
        else:
            make_cli(args)
    except Exception as exc:
        error = _config_error(exc)
        if error is None:
            raise
        sys.stderr.write(_error_text(error))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
