"""``StructuredPruning``: the controller of iterative structured (filter) pruning, as a phase machine."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_prune import _lightning, artifacts
from lightning_prune._logging import info
from lightning_prune.callbacks._steps import (
    PRUNED_MODEL,
    PRUNED_MODEL_INCOMPLETE,
    StepExecution,
)
from lightning_prune.callbacks.base import check_resume_hparams
from lightning_prune.errors import check as _check
from lightning_prune.importance import ChannelImportance, get_importance
from lightning_prune.schedules import SCHEDULES, PruningPlanner, make_planner
from lightning_prune.state import PruningReport, StepRecord, StructuredPhase
from lightning_prune.structural import graph as structure

Phase = StructuredPhase


class StructuredPruning(StepExecution):
    """Iterative structured pruning inside ``Trainer.fit``: prune, measure, fine-tune, repeat.

    Each step removes output channels (filters) chosen by an importance criterion from the layers
    the schedule names, using dependency-aware surgery (the next layer's inputs, BatchNorm, depthwise
    convs follow). The monitored metric is measured with the module's own validation before the
    first step and after every step, before fine-tuning. After each structural change the optimizers
    and LR schedulers are rebuilt from ``configure_optimizers``, ``requires_grad`` flags are kept,
    and under DDP the module is re-wrapped.

    Epochs are the unit of work (:class:`~lightning_prune.state.StructuredPhase`): ``pretrain_epochs``
    plain epochs, then per step the step is pruned at the start of an epoch that fine-tunes it
    (``finetune_epochs`` epochs, or none if a satellite such as ``ThresholdSkipFineTune`` says skip: the
    next step is then pruned at once, costing no training batch), then ``final_finetune_epochs``; then
    the controller stops the Trainer: the plan, not the Trainer's ``max_epochs``, sets the number of
    epochs. Satellites take part through :class:`~lightning_prune.PruningSatellite`.

    Args:
        pruning_ratio: Fraction of output channels to remove from each pruned layer, in (0, 1).
        schedule: ``"blockwise"`` (ICE: one component, e.g. a residual block, per step) or
            ``"uniform"`` (``steps`` steps with ratio rising linearly to ``pruning_ratio``).
        steps: Number of steps of the uniform schedule.
        scope: Uniform schedule only: ``"local"`` (every layer to the same ratio) or ``"global"``.
        importance: ``"l1"``, ``"l2"``, ``"random"``, ``"entropy"``, ``"mean_activation"``,
            ``"attention"`` or a :class:`~lightning_prune.importance.ChannelImportance`.
        importance_kwargs: Keyword arguments for a criterion given by name.
        calibration_batches: Training batches data-driven criteria observe before each step.
        ignored_layers: Module names or glob patterns (relative to the LightningModule, e.g.
            ``"model.layer3.*"``) whose output channels are never removed.
        prune_head: Also prune the classifier head's outputs (the last ``nn.Linear``; off by default).
        prune_coupled: Also prune outputs that feed a residual sum or a concatenation.
        round_to: Keep channel counts a multiple of this (e.g. 8 for tensor cores).
        pretrain_epochs: Plain training epochs before the first step.
        finetune_epochs: Fine-tuning epochs after each step.
        final_finetune_epochs: Fine-tuning epochs after the last step.
        monitor: The metric the module logs in validation, e.g. ``"val_acc"``.
        mode: ``"max"`` if higher ``monitor`` is better, else ``"min"``.
        eval_batches: Measure ``monitor`` on the first this many validation batches (``None``: all).
        example_input: An input batch for tracing; default: the module's ``example_input_array``,
            else the first training batch's input.
        output_dir: Where ``report.json`` and ``pruned_model.pt`` go (default: ``trainer.log_dir``).
        seed: Seed of the ``"random"`` criterion's own generator.

    Example:
        >>> from lightning_prune import StructuredPruning
        >>> from lightning_prune.demos import DemoModule, demo_loaders, demo_trainer
        >>> pruning = StructuredPruning(pruning_ratio=0.5)
        >>> demo_trainer([pruning]).fit(DemoModule(), *demo_loaders())
        >>> pruning.report.totals()["steps_done"], pruning.report.completed
        (3, True)
    """

    def __init__(
        self,
        pruning_ratio: float = 0.5,
        schedule: str = "blockwise",
        steps: int = 5,
        scope: str = "local",
        importance: str | ChannelImportance = "l1",
        importance_kwargs: dict[str, Any] | None = None,
        calibration_batches: int = 8,
        ignored_layers: Sequence[str] | None = None,
        prune_head: bool = False,
        prune_coupled: bool = False,
        round_to: int | None = None,
        pretrain_epochs: int = 0,
        finetune_epochs: int = 1,
        final_finetune_epochs: int = 0,
        monitor: str = "val_acc",
        mode: str = "max",
        eval_batches: int | None = None,
        example_input: torch.Tensor | None = None,
        output_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check(isinstance(pruning_ratio, float | int) and 0 < pruning_ratio < 1,
               f"pruning_ratio={pruning_ratio!r} is outside (0, 1)", "use e.g. pruning_ratio=0.5 to remove half the channels")
        _check(schedule in SCHEDULES, f"schedule={schedule!r} is unknown; valid: {', '.join(SCHEDULES)}",
               "use 'blockwise' (ICE, a block per step) or 'uniform'")
        _check(isinstance(steps, int) and steps >= 1, f"steps={steps!r} must be an integer >= 1", "use e.g. steps=5")
        _check(scope in ("local", "global"), f"scope={scope!r} is unknown; valid: local, global", "use scope='local'")
        _check(isinstance(calibration_batches, int) and calibration_batches >= 1,
               f"calibration_batches={calibration_batches!r} must be an integer >= 1", "use e.g. calibration_batches=8")
        _check(round_to is None or (isinstance(round_to, int) and round_to >= 1),
               f"round_to={round_to!r} must be None or an integer >= 1", "use e.g. round_to=8")
        for name, value in (("pretrain_epochs", pretrain_epochs), ("finetune_epochs", finetune_epochs),
                            ("final_finetune_epochs", final_finetune_epochs)):
            _check(isinstance(value, int) and value >= 0, f"{name}={value!r} must be an integer >= 0", f"use e.g. {name}=1")
        _check(mode in ("min", "max"), f"mode={mode!r} is unknown; valid: min, max", "use mode='max' for accuracy")
        _check(isinstance(monitor, str) and bool(monitor), f"monitor={monitor!r} must be a metric name",
               "use the name your validation_step logs, e.g. 'val_acc'")
        _check(eval_batches is None or (isinstance(eval_batches, int) and eval_batches >= 1),
               f"eval_batches={eval_batches!r} must be None or an integer >= 1", "use None to validate on all batches")
        ignored = [ignored_layers] if isinstance(ignored_layers, str) else list(ignored_layers or [])
        _check(all(isinstance(p, str) and p for p in ignored), f"ignored_layers={ignored_layers!r} must be module names",
               "pass a list of names or glob patterns, e.g. ['model.conv1', 'model.layer3.*']")
        _check(example_input is None or isinstance(example_input, torch.Tensor),
               f"example_input of type {type(example_input).__name__} is not a tensor", "pass one input batch as a tensor")
        kwargs = dict(importance_kwargs or {})
        if importance == "random":
            kwargs.setdefault("seed", seed)
        self.importance = get_importance(importance, **kwargs)
        self.importance_kwargs = dict(importance_kwargs or {})
        self.pruning_ratio = float(pruning_ratio)
        self.schedule, self.steps, self.scope, self.round_to = schedule, steps, scope, round_to
        self.calibration_batches = calibration_batches
        self.ignored_layers, self.prune_head, self.prune_coupled = ignored, prune_head, prune_coupled
        self.pretrain_epochs, self.finetune_epochs = pretrain_epochs, finetune_epochs
        self.final_finetune_epochs = final_finetune_epochs
        self.monitor, self.mode, self.eval_batches = monitor, mode, eval_batches
        self.output_dir, self.seed = output_dir, seed
        self.planner: PruningPlanner = make_planner(schedule, self.pruning_ratio, steps, scope, round_to)
        self.report = PruningReport()
        self.history: list[list[tuple[str, list[int]]]] = []
        self._example: torch.Tensor | None = None if example_input is None else example_input.detach().cpu()
        self._phase = Phase.PRETRAIN
        self._epochs_in_phase = 0
        self._next_step = 0
        self._finetune_left = 0
        self._pending: int | None = None  # index into report.steps awaiting metric_after_finetune
        self._planner_ready = False
        self._last_val: tuple[int, float] | None = None  # (epoch, value) of the latest regular validation
        self._finetune_started: float | None = None
        self._trial: dict[str, Any] | None = None  # while a trial step is being fine-tuned
        self._undo_replay: Any = None

    # ------------------------------------------------------------------ identity and state
    def _hparams(self) -> dict[str, Any]:
        return {
            "pruning_ratio": self.pruning_ratio, "schedule": self.schedule, "steps": self.steps, "scope": self.scope,
            "importance": self.importance.name, "importance_kwargs": self.importance_kwargs,
            "calibration_batches": self.calibration_batches, "ignored_layers": self.ignored_layers,
            "prune_head": self.prune_head, "prune_coupled": self.prune_coupled, "round_to": self.round_to,
            "pretrain_epochs": self.pretrain_epochs, "finetune_epochs": self.finetune_epochs,
            "final_finetune_epochs": self.final_finetune_epochs, "monitor": self.monitor, "mode": self.mode,
            "seed": self.seed,
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        self.report.extra.update(self._sections())
        return {
            "hparams": self._hparams(), "phase": self._phase.value, "epochs_in_phase": self._epochs_in_phase,
            "next_step": self._next_step, "finetune_left": self._finetune_left, "pending": self._pending,
            "planner_ready": self._planner_ready, "planner": self.planner.state_dict() if self._planner_ready else {},
            "importance": self.importance.state_dict(),
            "history": [[[name, list(idxs)] for name, idxs in step] for step in self.history],
            "report": self.report.to_dict(), "example_input": self._example, "seconds_elapsed": self._elapsed(),
            "last_val": list(self._last_val) if self._last_val is not None else None, "trial": self._trial,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_resume_hparams(self, state_dict.get("hparams"), self._hparams())
        self._phase = Phase(state_dict["phase"])
        self._epochs_in_phase, self._next_step = state_dict["epochs_in_phase"], state_dict["next_step"]
        self._finetune_left, self._pending = state_dict["finetune_left"], state_dict["pending"]
        self._planner_ready = state_dict["planner_ready"]
        if self._planner_ready:
            self.planner.load_state_dict(state_dict["planner"])
        self.importance.load_state_dict(state_dict["importance"])
        self.history = [[(name, list(idxs)) for name, idxs in step] for step in state_dict["history"]]
        self.report = PruningReport.from_dict(state_dict["report"])
        if state_dict["example_input"] is not None:
            self._example = state_dict["example_input"]
        started = self.report.metric_before is not None
        self._clock_start = time.perf_counter() - state_dict["seconds_elapsed"] if started else None
        last = state_dict.get("last_val")
        self._last_val = (int(last[0]), float(last[1])) if last is not None else None
        self._trial = state_dict.get("trial")

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._setup_controller(trainer, pl_module)
        names = [n for n, _ in pl_module.named_modules() if n]
        unmatched = [p for p in self.ignored_layers if not structure.match_names(names, [p])]
        _check(not unmatched, f"ignored_layers {unmatched} match no module of {type(pl_module).__name__}",
               f"module names look like {', '.join(names[:4])}, ...; glob patterns such as 'model.layer3.*' work")
        planners = [p for s in self._satellites if (p := s.provide_planner(self)) is not None]
        _check(len(planners) <= 1, f"{len(planners)} satellites each provide a step plan", "use one of them")
        if planners:
            self.planner = planners[0]
        if self._example is None and isinstance(getattr(pl_module, "example_input_array", None), torch.Tensor):
            self._example = pl_module.example_input_array.detach().cpu()
        if self._undo_replay is None:
            self._undo_replay = _lightning.replay_before_weights(pl_module, lambda ckpt: self._replay(ckpt, pl_module))

    def _replays(self, checkpoint: dict[str, Any]) -> bool:
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        return bool(state and state.get("history"))

    def _replay(self, checkpoint: dict[str, Any], pl_module: pl.LightningModule) -> None:
        """The recorded structure on the fresh module, before Lightning loads the pruned weights."""
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state and state.get("history") and artifacts.needs_replay(pl_module, checkpoint["state_dict"]):
            structure.replay(pl_module, state["example_input"].to(pl_module.device),
                             [[(n, i) for n, i in step] for step in state["history"]])

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _lightning.unguard_checkpoint_loading(trainer)
        if self._undo_replay is not None:
            self._undo_replay()
            self._undo_replay = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._allow_resume(trainer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._planner_ready:
            self._prepare(trainer, pl_module)
        _lightning.set_epoch_bound(trainer, self._epochs_bound(trainer))

    def _epochs_bound(self, trainer: pl.Trainer) -> int:
        """The epochs the plan still needs, counted from the current one (``-1``: open-ended plan)."""
        total = self.planner.num_steps()
        if total is None or self._phase is Phase.DONE:
            return -1
        left = self.pretrain_epochs - self._epochs_in_phase if self._phase is Phase.PRETRAIN else 0
        left += self._finetune_left + (total - self._next_step) * self.finetune_epochs
        left += self.final_finetune_epochs - (self._epochs_in_phase if self._phase is Phase.FINAL else 0)
        left += 1 + self._trial["epochs_left"] if self._trial is not None else 0
        return trainer.current_epoch + max(left, 1)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._phase is Phase.PRETRAIN:
            if self._epochs_in_phase < self.pretrain_epochs:
                self._epochs_in_phase += 1
                return
            self._enter(trainer, pl_module, Phase.PRUNING)
        if self._phase is Phase.TRIAL:
            assert self._trial is not None
            if self._trial["epochs_left"] > 0:
                self._trial["epochs_left"] -= 1
                self._finetune_started = time.perf_counter()
                return
            self._end_trial(trainer, pl_module)
        if self._phase is Phase.PRUNING:
            if self._finetune_left > 0 and self._satellites_continue(trainer, pl_module):
                self._finetune_left -= 1
                self.report.steps[self._pending].finetune_epochs += 1  # type: ignore[index]
                self._finetune_started = time.perf_counter()
                return
            self._finetune_left = 0
            self._close_pending(trainer, trainer.current_epoch - 1)
            if self.report.metric_before is None:
                self._start_pruning(trainer, pl_module)
                if self._phase is Phase.TRIAL:  # a satellite asked for a trial step first
                    return
            while self._has_next_step():
                record = self._prune_step(trainer, pl_module)
                epochs = self._finetune_epochs_for(trainer, pl_module, record)
                if epochs > 0:
                    record.finetuned, record.finetune_epochs = True, 1
                    self._pending, self._finetune_left = record.step, epochs - 1
                    self._finetune_started = time.perf_counter()
                    return
                record.metric_after_finetune = record.metric_after_prune
                self._dispatch("on_step_end", trainer, pl_module, record)
            self._end_plan(trainer, pl_module)
        if self._phase is Phase.FINAL:
            if self._epochs_in_phase < self.final_finetune_epochs:
                self._epochs_in_phase += 1
                return
            self._finish(trainer, pl_module, trainer.current_epoch - 1)
        _lightning.end_on_should_stop(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._finetune_started is not None:
            seconds = time.perf_counter() - self._finetune_started
            if self._trial is not None:
                self._trial["seconds"] += seconds
            elif self._pending is not None:
                self.report.steps[self._pending].seconds_finetune += seconds
        self._finetune_started = None
        # End as soon as the plan is complete, rather than after one more (empty) epoch.
        last_step_tuned = self._phase is Phase.PRUNING and self._finetune_left == 0 and not self._has_next_step()
        if last_step_tuned and self.final_finetune_epochs == 0:
            self._close_pending(trainer, trainer.current_epoch)
            self._end_plan(trainer, pl_module)
        if self._phase is Phase.FINAL and self._epochs_in_phase >= self.final_finetune_epochs:
            self._finish(trainer, pl_module, trainer.current_epoch)
            _lightning.end_on_should_stop(trainer)
        else:
            _lightning.keep_running(trainer)  # the plan is not finished yet

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._measuring:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            self._last_val = (trainer.current_epoch, float(value))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._phase is Phase.DONE:
            self.report.completed, self.report.stop_reason = True, None
        else:  # stopped before the plan was complete: by a limit, another callback, or no data
            _check(not (self.report.metric_before is None and _lightning.no_training_batches(trainer)),
                   "the training dataloader has no batches: StructuredPruning cannot run its plan",
                   "check the DataModule's train split and batch_size (drop_last with fewer samples than a batch "
                   "gives an empty loader)")
            self._stopped_short(trainer, pl_module, _lightning.stop_reason(trainer))
        self._write_outputs(trainer, pl_module)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")  # Lightning skips teardown hooks when fit raises
        self.report.steps_planned = self._steps_planned()
        self._exception_report(trainer, exception, started=self.report.metric_before is not None
                               and self._phase is not Phase.DONE)

    # ------------------------------------------------------------------ the plan
    def _has_next_step(self) -> bool:
        return not self._planner_ready or not self.planner.is_done(self._next_step)

    def _steps_planned(self) -> int | None:
        return self.planner.num_steps() if self._planner_ready else None

    def _enter(self, trainer: pl.Trainer, pl_module: pl.LightningModule, phase: StructuredPhase) -> None:
        self._phase, self._epochs_in_phase = phase, 0
        self._dispatch("on_phase_change", trainer, pl_module, phase)

    def _satellites_continue(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        record = self.report.steps[self._pending]  # type: ignore[index]
        votes = [s.continue_finetuning(trainer, pl_module, self, record) for s in self._satellites]
        return bool(trainer.strategy.broadcast(False not in votes, src=0))

    def _finetune_epochs_for(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: StepRecord) -> int:
        """Fine-tuning epochs for a step just pruned: 0 to skip (decided on rank 0)."""
        votes = [s.finetune_decision(trainer, pl_module, self, record) for s in self._satellites]
        decision = True if True in votes else False if False in votes else self.finetune_epochs > 0
        planned = [s.planned_finetune_epochs(self) for s in self._satellites]
        epochs = max([p for p in planned if p is not None], default=self.finetune_epochs) if decision else 0
        return int(trainer.strategy.broadcast(epochs, src=0))

    def _validated_at(self, epoch: int) -> float | None:
        """The monitored value of the regular validation of ``epoch``, if that epoch validated."""
        return self._last_val[1] if self._last_val is not None and self._last_val[0] == epoch else None

    def _close_pending(self, trainer: pl.Trainer, epoch: int, measure_if_stale: bool = True, notify: bool = True) -> None:
        """Record the fine-tuned step's metric: from ``epoch``'s validation, else measured now."""
        if self._pending is None:
            return
        record = self.report.steps[self._pending]
        if self._validated_at(epoch) is not None:
            record.metric_after_finetune = self._validated_at(epoch)
        elif measure_if_stale:
            record.metric_after_finetune = self.measure(trainer)
        self._pending = None
        if notify:
            self._dispatch("on_step_end", trainer, trainer.lightning_module, record)

    def _end_plan(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The plan is complete: satellites may ask for their chosen model, then final fine-tuning."""
        self._dispatch("on_pruning_end", trainer, pl_module)
        self._enter(trainer, pl_module, Phase.FINAL)

    # ------------------------------------------------------------------ the end
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        metric = self._validated_at(epoch)
        if metric is None and self.report.steps and self.final_finetune_epochs == 0:
            metric = self.report.steps[-1].metric_after_finetune
        if metric is None:
            metric = self.measure(trainer)
        self._summarise(pl_module, metric)
        self._enter(trainer, pl_module, Phase.DONE)

    def _stopped_short(self, trainer: pl.Trainer, pl_module: pl.LightningModule, reason: str) -> None:
        """Close what can be closed and mark the report incomplete, with the reason."""
        if self._trial is not None:  # a trial step is undone, as it would have been at its end
            self.restore(trainer, pl_module, self._trial["snapshot"])
            self._trial = None
            self._phase = Phase.PRUNING
        if self.report.metric_before is not None:
            self._close_pending(trainer, trainer.current_epoch, measure_if_stale=False, notify=False)
            if self._phase is Phase.PRUNING:
                self._dispatch("on_pruning_end", trainer, pl_module)
        metric = self._last_val[1] if self._last_val is not None else None  # reset at every structural change
        if metric is None and self.report.steps:  # the model is the last step's (or a round a satellite restored)
            last = self.report.steps[-1]
            metric = last.metric_after_finetune if last.metric_after_finetune is not None else last.metric_after_prune
        if metric is None:
            metric = self.report.metric_before  # the unpruned model (None if never measured)
        if self.report.metric_before is None:  # stopped before pruning started: the model is unpruned
            self.report.params_before = structure.count_params(pl_module)
            if self._example is not None:
                self.report.macs_before = structure.count_macs(pl_module, self._example.to(pl_module.device))
        self._summarise(pl_module, metric=metric)
        self.report.completed, self.report.stop_reason = False, reason
        info(f"[lightning_prune] the fit stopped before the pruning plan was complete ({reason}): "
             f"{len(self.report.steps)} of {self._steps_planned() or '?'} steps done")


__all__ = ["PRUNED_MODEL", "PRUNED_MODEL_INCOMPLETE", "StructuredPruning"]
