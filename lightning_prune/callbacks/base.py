"""How satellite callbacks take part in a pruning run.

Satellites stay flat in ``trainer.callbacks`` and find the controller by type in ``setup``. The
controller calls their pruning events on every rank, in the order the callbacks were given, at fixed
points of a step; decisions are broadcast from rank zero so that every rank acts identically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl

from lightning_prune.errors import PruningConfigError

if TYPE_CHECKING:
    from lightning_prune.callbacks.structured import StructuredPruning
    from lightning_prune.state import StepRecord


class PruningSatellite:
    """Mixin for callbacks that influence a :class:`StructuredPruning` run.

    Override any of the events; each default does nothing.

    Example:
        >>> from lightning.pytorch.callbacks import Callback
        >>> class AlwaysSkip(PruningSatellite, Callback):
        ...     def finetune_decision(self, trainer, pl_module, controller, record):
        ...         return False
    """

    def on_pruning_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning
    ) -> None:
        """Once, before the first surgery, after the unpruned model's metric was measured."""

    def on_structure_changed(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning
    ) -> None:
        """After surgery, once optimizers and schedulers are rebuilt (and DDP re-wrapped)."""

    def finetune_decision(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning, record: StepRecord
    ) -> bool | None:
        """After a step was pruned and measured: ``True`` fine-tune, ``False`` skip, ``None`` no opinion.

        Any ``True`` wins over ``False``; with no opinion the controller fine-tunes for
        ``finetune_epochs`` epochs (none when that is 0).
        """
        return None

    def planned_finetune_epochs(self, controller: StructuredPruning) -> int | None:
        """Fine-tuning epochs for a step that is fine-tuned (the largest answer wins; ``None``: no opinion)."""
        return None

    def wants_probe(self, controller: StructuredPruning) -> bool:
        """Ask for a probe: the first step pruned on trial, fine-tuned one epoch, then undone."""
        return False

    def on_probe_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning) -> None:
        """Before the probe's surgery (the model is unpruned)."""

    def on_probe_pruned(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning) -> None:
        """After the probe's surgery, before its fine-tuning epoch."""

    def on_probe_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning) -> None:
        """After the probe's fine-tuning epoch, just before the unpruned model is restored."""

    def continue_finetuning(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning, record: StepRecord
    ) -> bool | None:
        """At the start of each further fine-tuning epoch of a step: ``False`` ends it early."""
        return None

    def on_step_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning, record: StepRecord
    ) -> None:
        """Once a step's ``metric_after_finetune`` is known (fine-tuned or skipped), before the next step is pruned.

        Not called for a step left unfinished when the fit is stopped early. A satellite may roll the
        model back here (``controller.restore``) or end an open-ended plan through its planner.
        """

    def on_pruning_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning) -> None:
        """Once, when the plan is complete (or the fit was stopped during it), before the final
        fine-tuning epochs, the report's totals and the artifacts. A satellite may put another model
        in place here with ``controller.restore`` (AAP returns its best acceptable round)."""


def check_same_monitor(owner: object, controller: StructuredPruning) -> None:
    """A satellite that judges the controller's measurements must watch the same metric, same direction."""
    monitor, mode = getattr(owner, "monitor"), getattr(owner, "mode")
    if controller.monitor != monitor or controller.mode != mode:
        raise PruningConfigError(
            f"{type(owner).__name__} watches {monitor!r} ({mode}) but StructuredPruning measures "
            f"{controller.monitor!r} ({controller.mode})",
            hint="give both the same monitor and mode",
        )


def find_controller(trainer: pl.Trainer, owner: object) -> StructuredPruning:
    """The one :class:`StructuredPruning` in ``trainer.callbacks`` (for satellites' ``setup``)."""
    from lightning_prune.callbacks.structured import StructuredPruning

    found = [cb for cb in trainer.callbacks if isinstance(cb, StructuredPruning)]
    if len(found) != 1:
        raise PruningConfigError(
            f"{type(owner).__name__} needs exactly one StructuredPruning callback, found {len(found)}",
            hint="add `StructuredPruning(...)` to the Trainer's callbacks (once)",
        )
    return found[0]


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists), for comparisons after a resume."""
    return json.loads(json.dumps(value, default=repr))


def check_resume_hparams(owner: object, saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    """Refuse to continue a run with arguments that differ from those it was started with.

    Callbacks' ``state_key`` is their class name (identity), so a changed argument reaches
    ``load_state_dict`` and is named here instead of surfacing as a shape mismatch or a silently
    ignored state. ``saved`` is ``None`` for states written before arguments were recorded.
    """
    if saved is None:
        return
    now = _plain(dict(current))
    changed = [(key, saved[key], now[key]) for key in now if key in saved and _plain(saved[key]) != now[key]]
    if changed:
        details = "; ".join(f"{key}={new!r} (the checkpoint has {key}={old!r})" for key, old, new in changed)
        raise PruningConfigError(
            f"{type(owner).__name__} cannot resume with changed arguments: {details}",
            hint="resume with the arguments the run was started with, or start a new run without ckpt_path",
        )


def check_resumed_arguments(trainer: pl.Trainer, checkpoint: Mapping[str, Any]) -> None:
    """Before Lightning restores anything: every callback of this library resumes with its own arguments.

    Callbacks that record their arguments (a ``_hparams()`` method, saved as ``"hparams"`` in their
    state) are compared with the checkpoint's state under their ``state_key``.
    """
    states = checkpoint.get("callbacks", {})
    for callback in trainer.callbacks:
        state = states.get(callback.state_key) if hasattr(callback, "_hparams") else None
        if isinstance(state, Mapping):
            check_resume_hparams(callback, state.get("hparams"), callback._hparams())  # type: ignore[attr-defined]


def check_single(trainer: pl.Trainer, owner: object) -> None:
    """One instance of a stateful callback per Trainer: their checkpoint state is keyed by class."""
    count = sum(type(cb) is type(owner) for cb in trainer.callbacks)
    if count != 1:
        name = type(owner).__name__
        raise PruningConfigError(f"found {count} {name} callbacks", hint=f"use one {name} callback per Trainer")
