"""The controller protocol: one abstract controller, flat satellites, events, votes and requests.

A run has one :class:`PruningController` (``StructuredPruning`` or ``GradualMagnitudePruning``): it
owns the plan, the structure, the report and the phase. Other callbacks take part as
:class:`PruningSatellite` s, flat in ``trainer.callbacks``. The controller calls them on every rank, in
callback order, through three kinds of methods:

* **events** (``on_*``) are notifications: a satellite updates its own state, and may ask for a change
  with :meth:`PruningController.request`;
* **votes** (``finetune_decision``, ``planned_finetune_epochs``, ``continue_finetuning``,
  ``provide_planner``, ``wanted_eval_batches``, ``report_section``) are pure: they answer, nothing else;
* **requests** (:class:`RestoreSnapshot`, :class:`RewindWeights`, :class:`TrialStep`) are resolved by the controller at one
  defined point: right after the event that made them has reached every satellite, in the order they
  were made. Satellites see the same broadcast measurements on every rank, so every rank makes and
  resolves the same requests.

Queries a satellite may use at any time: the controller's ``monitor``, ``mode``, ``report`` (read
only), ``measure``, ``last_validation``, ``snapshot`` and ``example_input``.

Importing the callbacks silences Lightning's "💡 Tip" advertisements and a deprecation warning
Lightning's own code triggers (:mod:`lightning_prune._lightning.notices`).
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_prune import _lightning, evaluation
from lightning_prune._logging import info
from lightning_prune.errors import PruningConfigError

if TYPE_CHECKING:
    from lightning_prune.schedules import PruningPlanner
    from lightning_prune.state import StepRecord

Controller = TypeVar("Controller", bound="PruningController")
_lightning.quiet_lightning()


@dataclass(frozen=True)
class Request:
    """A change a satellite asks the controller to make (see the module docstring)."""


@dataclass(frozen=True)
class RestoreSnapshot(Request):
    """Return exactly to ``snapshot`` (from :meth:`PruningController.snapshot`): structure, weights,
    optimizer states (if it holds them) and plan position."""

    snapshot: dict[str, Any]


@dataclass(frozen=True)
class RewindWeights(Request):
    """Give the surviving channels their values in ``model`` (the ``"model"`` of an earlier snapshot of the
    unpruned network): that snapshot pruned to the current structure, plan position kept (lottery-ticket
    weight rewinding)."""

    model: dict[str, Any]


@dataclass(frozen=True)
class TrialStep(Request):
    """Prune the next step on trial, fine-tune it ``epochs`` epochs, then undo it exactly.

    Only when pruning starts (from ``on_pruning_start``), one per run. Satellites hear ``on_trial_start``
    after the trial surgery and ``on_trial_end`` after its fine-tuning, before the model is restored.
    With ``prune=False`` nothing is pruned: the unpruned model trains ``epochs`` epochs on trial (what
    retraining alone does to it), then is restored.
    """

    epochs: int = 1
    prune: bool = True


class PruningSatellite:
    """Mixin for callbacks that take part in a pruning run (see the module docstring).

    Every method has a default that does nothing (events) or has no opinion (votes: ``None``).

    Example:
        >>> from lightning.pytorch.callbacks import Callback
        >>> class AlwaysSkip(PruningSatellite, Callback):
        ...     def finetune_decision(self, trainer, pl_module, controller, record):
        ...         return False
    """

    # -------------------------------------------------------------- votes (pure)
    def provide_planner(self, controller: PruningController) -> PruningPlanner | None:
        """A planner to replace the controller's step plan (asked once, in the controller's ``setup``)."""
        return None

    def wanted_eval_batches(self, controller: PruningController) -> int | None:
        """Measure on the first this many validation batches (``None``: no opinion)."""
        return None

    def finetune_decision(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController,
                          record: StepRecord) -> bool | None:
        """After a step was pruned and measured: ``True`` fine-tune, ``False`` skip, ``None`` no opinion.

        Any ``True`` wins over ``False``; with no opinion the controller fine-tunes for
        ``finetune_epochs`` epochs (none when that is 0).
        """
        return None

    def planned_finetune_epochs(self, controller: PruningController) -> int | None:
        """Fine-tuning epochs for a step that is fine-tuned (the largest answer wins; ``None``: no opinion)."""
        return None

    def continue_finetuning(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController,
                            record: StepRecord) -> bool | None:
        """At the start of each further fine-tuning epoch of a step: ``False`` ends it early."""
        return None

    def report_section(self) -> dict[str, Any]:
        """Sections this satellite adds to ``report.json``'s ``extra`` (``{}``: none)."""
        return {}

    # -------------------------------------------------------------- events (notifications)
    def on_pruning_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                         controller: PruningController) -> None:
        """Once, before the first surgery, after the unpruned model's metric was measured."""

    def on_structure_changed(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             controller: PruningController) -> None:
        """After surgery or a restore, once optimizers and schedulers are rebuilt (and DDP re-wrapped)."""

    def on_step_pruned(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController,
                       record: StepRecord) -> None:
        """A step was pruned and ``record.metric_after_prune`` measured; votes on fine-tuning follow."""

    def on_step_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController,
                    record: StepRecord) -> None:
        """A step's ``metric_after_finetune`` is known (fine-tuned or skipped); the next step is not pruned
        yet. Not called for a step left unfinished when the fit is stopped early."""

    def on_trial_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                       controller: PruningController) -> None:
        """A :class:`TrialStep` was pruned, before its fine-tuning."""

    def on_trial_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     controller: PruningController) -> None:
        """A :class:`TrialStep`'s fine-tuning is done; the model before it is restored next."""

    def on_phase_change(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController,
                        phase: str) -> None:
        """The controller entered ``phase`` (its phase enum; a ``str``, e.g. ``"finetune"``)."""

    def on_pruning_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                       controller: PruningController) -> None:
        """Once, when the plan is complete (or the fit was stopped during it), before the final epochs,
        the report's totals and the artifacts (AAP requests its best round here)."""


class PruningController(Callback, abc.ABC):
    """What every pruning controller offers its satellites, and the machinery they share.

    Subclasses set ``monitor``, ``mode``, ``pretrain_epochs``, ``eval_batches``, ``output_dir`` and a
    ``report`` in ``__init__``, call :meth:`_setup_controller` from ``setup``, and implement
    :meth:`snapshot`, :meth:`restore` and :meth:`_hparams`.
    """

    monitor: str
    mode: str
    pretrain_epochs: int
    eval_batches: int | None
    output_dir: str | None
    report: Any

    def __init__(self) -> None:
        super().__init__()
        self._satellites: list[PruningSatellite] = []
        self._requests: list[Request] = []
        self._measuring = False
        self._out: Path | None = None  # resolved on every rank in setup (trainer.log_dir is a collective)
        self._clock_start: float | None = None
        self._resumed_epoch: int | None = None  # the epoch of the checkpoint a fit resumes from

    @classmethod
    def find(cls: type[Controller], trainer: pl.Trainer, owner: object, required: bool = True) -> Controller | None:
        """The one ``cls`` controller in ``trainer.callbacks`` (for satellites' ``setup``).

        Raises:
            PruningConfigError: if there is none (and ``required``) or more than one.
        """
        found = [cb for cb in trainer.callbacks if isinstance(cb, cls)]
        if len(found) > 1 or (required and not found):
            raise PruningConfigError(
                f"{type(owner).__name__} needs exactly one {cls.__name__} callback, found {len(found)}",
                hint=f"add `{cls.__name__}(...)` to the Trainer's callbacks (once)",
            )
        return found[0] if found else None

    # -------------------------------------------------------------- services
    def measure(self, trainer: pl.Trainer, monitor: str | None = None, eval_batches: int | None = None) -> float:
        """Run the module's validation now and return ``monitor`` (default: the controller's), same on all ranks."""
        batches = eval_batches if eval_batches is not None or monitor is not None else self._eval_batches()
        self._measuring = True
        try:
            value = evaluation.measure(trainer, monitor or self.monitor, batches)
        finally:
            self._measuring = False
        return float(trainer.strategy.broadcast(value, src=0))

    def request(self, request: Request) -> None:
        """Ask for a change; resolved right after the current event has reached every satellite."""
        self._requests.append(request)

    @abc.abstractmethod
    def snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizers: bool = True) -> dict[str, Any]:
        """The model, optimizer states (optionally) and plan position, as CPU tensors and plain data."""

    @abc.abstractmethod
    def restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule, snapshot: dict[str, Any]) -> None:
        """Return exactly to ``snapshot`` (satellites ask for it with :class:`RestoreSnapshot`)."""

    @abc.abstractmethod
    def _hparams(self) -> dict[str, Any]:
        """The arguments a resumed run must share with the run that wrote the checkpoint."""

    # -------------------------------------------------------------- machinery for subclasses
    def _setup_controller(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Checks and wiring every controller does in ``setup`` (stage ``"fit"``)."""
        name = type(self).__name__
        _lightning.check_strategy(trainer, name)
        _lightning.check_trains(trainer, name)
        controllers = [cb for cb in trainer.callbacks if isinstance(cb, PruningController)]
        if len(controllers) != 1:
            raise PruningConfigError(f"found {len(controllers)} pruning controllers ("
                                     f"{', '.join(type(c).__name__ for c in controllers)})",
                                     hint="use one StructuredPruning or GradualMagnitudePruning per Trainer "
                                     "(structured and unstructured pruning run in separate fits)")
        self._satellites = [cb for cb in trainer.callbacks if isinstance(cb, PruningSatellite)]
        wanted = {n for s in self._satellites if (n := s.wanted_eval_batches(self)) is not None}
        if wanted:
            if len(wanted) > 1 or (self.eval_batches is not None and wanted != {self.eval_batches}):
                raise PruningConfigError(f"satellites ask for eval_batches {sorted(wanted)} but {name} has "
                                         f"eval_batches={self.eval_batches}", hint="set eval_batches in one place only")
        self._out = _lightning.output_dir(trainer, self.output_dir)
        _lightning.guard_checkpoint_loading(trainer, lambda path, ckpt: self._check_resumed(trainer, path, ckpt,
                                                                                           pl_module))

    def _eval_batches(self) -> int | None:
        if self.eval_batches is not None:
            return self.eval_batches
        wanted = [n for s in self._satellites if (n := s.wanted_eval_batches(self)) is not None]
        return wanted[0] if wanted else None

    def _check_resumed(self, trainer: pl.Trainer, path: Path, checkpoint: dict[str, Any],
                       pl_module: pl.LightningModule) -> None:
        """Before anything is restored: the same callbacks with the same arguments, and a checkpoint of this model."""
        check_resumed_arguments(trainer, checkpoint)
        _lightning.check_checkpoint_fits(path, checkpoint.get("state_dict", {}), pl_module,
                                         replays=self._replays(checkpoint))
        epoch = checkpoint.get("epoch")
        self._resumed_epoch = epoch if isinstance(epoch, int) else None

    def _allow_resume(self, trainer: pl.Trainer) -> None:
        """In ``on_fit_start``: the plan, not the Trainer's ``max_epochs``, decides when a resumed fit ends
        (Lightning would end it at once when ``max_epochs`` is below the checkpoint's epoch)."""
        if self._resumed_epoch is not None:
            _lightning.allow_resume_past(trainer, self._resumed_epoch + 1)

    def _replays(self, checkpoint: dict[str, Any]) -> bool:
        """Whether the checkpoint's state holds a structure to replay (shapes may then differ)."""
        return False

    def _dispatch(self, event: str, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """Call ``event`` on every satellite, in callback order, then resolve the requests it made, in order.

        Events dispatched while resolving (a restore notifies ``on_structure_changed``) resolve their
        own requests first.
        """
        outer, self._requests = self._requests, []
        for satellite in self._satellites:
            getattr(satellite, event)(trainer, pl_module, self, *args)
        made, self._requests = self._requests, outer
        for request in made:
            self._resolve(trainer, pl_module, request)

    def _resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule, request: Request) -> None:
        """Carry out a satellite's request (subclasses handle the requests they support)."""
        if isinstance(request, RestoreSnapshot):
            self.restore(trainer, pl_module, request.snapshot)
            return
        raise PruningConfigError(f"{type(self).__name__} cannot carry out {type(request).__name__}",
                                 hint="use that satellite with the controller it is made for")

    def _sections(self) -> dict[str, Any]:
        """The satellites' report sections, merged in callback order."""
        sections: dict[str, Any] = {}
        for satellite in self._satellites:
            sections.update(satellite.report_section())
        return sections

    def _elapsed(self) -> float:
        return 0.0 if self._clock_start is None else time.perf_counter() - self._clock_start

    def _exception_report(self, trainer: pl.Trainer, exception: BaseException, started: bool) -> None:
        """A crashed or interrupted fit leaves a report that says so (the checkpoint is what resumes).

        Lightning skips teardown hooks when fit raises, so the checkpoint guard is removed here too. A
        refusal (``PruningConfigError``) leaves the output folder untouched, and before pruning started
        there is nothing to report. Rank zero writes, with no collective.
        """
        _lightning.unguard_checkpoint_loading(trainer)
        if not trainer.is_global_zero or self._out is None or not started or isinstance(exception, PruningConfigError):
            return
        self.report.completed = False
        self.report.stop_reason = f"the fit raised {type(exception).__name__}: {exception}"
        self.report.seconds_total = self._elapsed()
        try:
            self.report.write(self._out / "report.json")
        except OSError as err:  # never hide the original exception
            info(f"[lightning_prune] could not write {self._out / 'report.json'}: {err}")


def adopt_monitor(owner: Any, controller: PruningController) -> None:
    """A satellite that judges the controller's measurements watches its metric: ``monitor`` / ``mode``
    left at ``None`` take the controller's; an explicit value that disagrees is refused."""
    for attr in ("monitor", "mode"):
        mine, theirs = getattr(owner, attr), getattr(controller, attr)
        if mine is None:
            setattr(owner, attr, theirs)
        elif mine != theirs:
            raise PruningConfigError(
                f"{type(owner).__name__} watches {attr}={mine!r} but {type(controller).__name__} has {attr}={theirs!r}",
                hint=f"leave {attr} unset on {type(owner).__name__} (it takes the controller's), or give both the same",
            )


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
    state) are compared with the checkpoint's state under their ``state_key``; one that is missing now,
    or was not in the run that wrote the checkpoint, is refused too.
    """
    states = checkpoint.get("callbacks", {})
    ours = {cb.state_key: cb for cb in trainer.callbacks if hasattr(cb, "_hparams")}
    written = {str(key) for key, state in states.items() if isinstance(state, Mapping) and "hparams" in state}
    if written != set(ours):
        missing, added = sorted(written - set(ours)), sorted(set(ours) - written)
        raise PruningConfigError(
            "the callbacks differ from those of the run that wrote the checkpoint: "
            + "; ".join([f"{name} is missing" for name in missing] + [f"{name} was added" for name in added]),
            hint="resume with the same pruning callbacks the run was started with, or start a new run without ckpt_path",
        )
    for key, callback in ours.items():
        check_resume_hparams(callback, states[key].get("hparams"), callback._hparams())


def check_single(trainer: pl.Trainer, owner: object) -> None:
    """One instance of a stateful callback per Trainer: their checkpoint state is keyed by class."""
    count = sum(type(cb) is type(owner) for cb in trainer.callbacks)
    if count != 1:
        name = type(owner).__name__
        raise PruningConfigError(f"found {count} {name} callbacks", hint=f"use one {name} callback per Trainer")
