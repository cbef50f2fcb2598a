"""Checkpoints: the one ``ckpt_path="last"`` means, and checks before Lightning restores anything."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import nn

from lightning_prune.errors import PruningConfigError


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


def replay_before_weights(pl_module: pl.LightningModule, replay: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
    """Call ``replay(checkpoint)`` before Lightning loads a checkpoint's weights into ``pl_module``.

    Lightning behaviour relied on (``tests/test_resume.py::test_module_hook_runs_before_weights_are_loaded``):
    ``fit(ckpt_path=...)`` calls the module's ``on_load_checkpoint`` before it loads the weights, and
    callbacks' ``on_load_checkpoint`` only after. The instance's method is wrapped (nothing to write in
    the user's module); the returned function puts the module's own method back.
    """
    original = pl_module.on_load_checkpoint
    had_instance_attr = "on_load_checkpoint" in pl_module.__dict__

    def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
        replay(checkpoint)
        original(checkpoint)

    pl_module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]

    def undo() -> None:
        if had_instance_attr:
            pl_module.on_load_checkpoint = original  # type: ignore[method-assign]
        else:
            pl_module.__dict__.pop("on_load_checkpoint", None)

    return undo
