"""Everything this library needs from Lightning beyond its public hooks, in one place.

Each function says in its docstring which Lightning behaviour it relies on;
``tests/test_lightning_seams.py`` pins that behaviour, so a Lightning upgrade that changes it fails
a test instead of silently changing what this library does. The CLI imports this module only when
a subcommand runs (its ``--help`` does not import Lightning).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    SingleDeviceXLAStrategy,
    XLAStrategy,
)
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from torch import nn

from lightning_prune.errors import PruningConfigError

#: The start of the notice Lightning logs when a Trainer has no ``LitLogger``.
LITLOGGER_TIP = "💡 Tip: For seamless cloud logging"


@contextlib.contextmanager
def without_litlogger_tip() -> Iterator[None]:
    """Drop Lightning's "💡 Tip: For seamless cloud logging ... litlogger" line while the block runs.

    Lightning behaviour relied on (``lightning.pytorch`` 2.6): ``Trainer.__init__`` calls
    ``_LoggerConnector.configure_logger``, which logs that tip with ``rank_zero_info`` whenever none of
    the Trainer's loggers is a ``LitLogger`` (even with ``logger=False``). ``rank_zero_info`` logs at
    INFO through the ``logging`` logger ``lightning.pytorch.utilities.rank_zero``. A filter on that
    logger removes only records whose message starts with :data:`LITLOGGER_TIP`; every other message
    (device summary, seeds, ...) still shows, and the filter is removed when the block ends.

    Example:
        >>> with without_litlogger_tip():
        ...     pass  # build the Trainer here
    """
    import logging

    class _DropTip(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not record.getMessage().startswith(LITLOGGER_TIP)

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    drop = _DropTip()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def last_checkpoint(trainer: pl.Trainer) -> str | None:
    """The checkpoint ``trainer.fit(ckpt_path="last")`` would resume from, or ``None`` if none.

    Lightning behaviour relied on (``lightning.pytorch`` 2.6): ``Trainer.fit`` resolves ``"last"``
    with ``trainer._checkpoint_connector._select_ckpt_path(state_fn, "last", model_provided=True,
    model_connected=...)``, which takes the newest (by modification time) of the files named
    ``last*.ckpt`` in the folder of every ``ModelCheckpoint`` (see :func:`last_checkpoint_dirs`) and of
    every ``OnExceptionCheckpoint``'s ``ckpt_path``; when there is none it only warns ("there is no
    last checkpoint available. No checkpoint will be loaded") and returns ``None``. That warning is
    silenced here: the caller decides what no checkpoint means.

    Example:
        >>> # last_checkpoint(trainer)  -> 'ckpts/last.ckpt' or None
    """
    import warnings

    from lightning.pytorch.trainer.states import TrainerFn

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*there is no last checkpoint available.*")
        path = trainer._checkpoint_connector._select_ckpt_path(
            TrainerFn.FITTING, "last", model_provided=True, model_connected=trainer.lightning_module is not None
        )
    return None if path is None else str(path)


def last_checkpoint_dirs(trainer: pl.Trainer) -> list[str]:
    """The folders :func:`last_checkpoint` (Lightning's ``ckpt_path="last"``) searches, in callback order.

    Lightning behaviour relied on (``lightning.pytorch`` 2.6): ``ModelCheckpoint._find_last_checkpoints``
    lists the folder returned by the name-mangled private ``ModelCheckpoint.__resolve_ckpt_dir(trainer)``:
    the callback's ``dirpath`` if one was given, else ``<logger save_dir>/<name>/<version>/checkpoints``
    of the first logger (``<default_root_dir>/checkpoints`` without loggers). Before ``fit`` the
    logger's version is the *new* run's, so a ``ModelCheckpoint`` without ``dirpath`` never finds an
    earlier run's checkpoint. ``OnExceptionCheckpoint`` contributes the folder of its ``ckpt_path``.

    Example:
        >>> # last_checkpoint_dirs(trainer)  -> ['ckpts']
    """
    import os

    from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint

    dirs: list[str] = []
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint):
            folder = str(callback._ModelCheckpoint__resolve_ckpt_dir(trainer))  # type: ignore[attr-defined]
        elif isinstance(callback, OnExceptionCheckpoint):
            folder = os.path.dirname(str(callback.ckpt_path))
        else:
            continue
        if folder not in dirs:
            dirs.append(folder)
    return dirs

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


CheckpointCheck = Callable[[Path, dict[str, Any]], None]


def guard_checkpoint_loading(trainer: pl.Trainer, validate: CheckpointCheck) -> None:
    """Check a resumed checkpoint before Lightning restores anything from it.

    ``fit(ckpt_path=...)`` reads the file with ``trainer.strategy.load_checkpoint`` after the
    callbacks' ``setup`` and before the module's weights or any callback state are restored; the path
    is not known earlier. The strategy instance's method is wrapped so that a missing, truncated or
    damaged file (:func:`~lightning_prune.artifacts.check_checkpoint`), or one that ``validate``
    refuses, raises a :class:`PruningConfigError` naming the file while the model is still untouched.
    :func:`unguard_checkpoint_loading` removes the wrapper.
    """
    from lightning_prune.artifacts import check_checkpoint

    strategy = trainer.strategy
    if "load_checkpoint" in strategy.__dict__:
        return
    original = strategy.load_checkpoint

    def load_checkpoint(checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        check_checkpoint(checkpoint_path)
        checkpoint = original(checkpoint_path, *args, **kwargs)
        validate(Path(checkpoint_path), checkpoint)
        return checkpoint

    strategy.load_checkpoint = load_checkpoint  # type: ignore[method-assign]


def unguard_checkpoint_loading(trainer: pl.Trainer) -> None:
    """Undo :func:`guard_checkpoint_loading`."""
    trainer.strategy.__dict__.pop("load_checkpoint", None)


def check_checkpoint_fits(path: Path, weights: dict[str, Any], module: nn.Module, replays: bool) -> None:
    """Refuse a checkpoint of another model: different parameter names, or other shapes that no
    recorded pruning history explains (``replays``: the checkpoint holds one)."""
    own = module.state_dict()
    if getattr(module, "strict_loading", True):
        missing, unexpected = sorted(own.keys() - weights.keys()), sorted(weights.keys() - own.keys())
        if missing or unexpected:
            raise PruningConfigError(
                f"{path} does not fit {type(module).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}",
                hint="resume from a checkpoint written by this model's pruning run",
            )
    if not replays:
        differ = [k for k, v in weights.items() if k in own and tuple(own[k].shape) != tuple(getattr(v, "shape", ()))]
        if differ:
            raise PruningConfigError(
                f"{path} does not fit {type(module).__name__}: {differ[0]} has shape "
                f"{tuple(weights[differ[0]].shape)} in the file and {tuple(own[differ[0]].shape)} in the model",
                hint="resume from a checkpoint written by this model's pruning run (with the same callbacks)",
            )


def earlier_run_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest ``last*.ckpt`` of an earlier run in the same log folder, or ``None``.

    A ``ModelCheckpoint`` without ``dirpath`` saves into ``<root_dir>/version_N/checkpoints`` of the
    first logger (``<default_root_dir>/checkpoints`` without one); Lightning's ``ckpt_path="last"``
    looks only in the *new* run's folder (:func:`last_checkpoint_dirs`), so it never finds a killed
    run's checkpoint. This looks where the earlier runs saved theirs. Relies on ``Logger.root_dir``
    (``save_dir/name`` for the CSV and TensorBoard loggers).
    """
    roots = [Path(trainer.loggers[0].root_dir)] if trainer.loggers and trainer.loggers[0].root_dir else []
    candidates = [p for root in roots for p in root.glob("version_*/checkpoints/last*.ckpt")]
    candidates += list(Path(trainer.default_root_dir).glob("checkpoints/last*.ckpt"))
    files = [p for p in candidates if p.is_file()]
    return str(max(files, key=lambda p: p.stat().st_mtime)) if files else None


def cli_can_merge_checkpoint_hparams(checkpoint_path: Any) -> bool:
    """Whether LightningCLI can merge this checkpoint's model hyperparameters into its config.

    Lightning behaviour relied on (``lightning.pytorch`` 2.6): with ``--ckpt_path``,
    ``LightningCLI._parse_ckpt_path`` reads ``checkpoint["hyper_parameters"]`` and parses them as the
    ``model`` entry. A module built by the CLI records its ``_class_path`` there and the merge works; a
    module built by a Python script does not, and with ``subclass_mode_model`` the merge fails ("Option
    'model' is not accepted"), so a checkpoint written by the Python API could not be resumed from the
    CLI. The config names the model itself, so the merge can be skipped then.
    """
    import torch

    if not Path(str(checkpoint_path)).is_file():
        return True  # nothing to merge: Lightning skips it too
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a damaged file is refused, naming it, when fit reads it (guard_checkpoint_loading)
        return False
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    return not hparams or "_class_path" in hparams


#: Warnings Lightning itself triggers (not our calls, nothing a user can act on), silenced by the CLI.
LIGHTNING_OWN_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)


def ignore_lightning_own_warnings() -> None:
    """Silence :data:`LIGHTNING_OWN_WARNINGS` for the rest of the process (the CLI calls it).

    Lightning behaviour relied on (``lightning.pytorch`` 2.6 on torch 2.15): ``_pytree._tree_flatten``
    builds ``torch.utils._pytree.LeafSpec`` objects, which torch reports as deprecated on every fit.
    """
    import warnings

    for message in LIGHTNING_OWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
