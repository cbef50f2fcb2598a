"""``StructuredPruning``: the controller of iterative structured (filter) pruning."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from typing_extensions import override

from lightning_prune import _lightning, artifacts, evaluation
from lightning_prune._logging import info
from lightning_prune.callbacks.base import PruningSatellite, check_resume_hparams, check_resumed_arguments
from lightning_prune.errors import PruningConfigError
from lightning_prune.errors import check as _check
from lightning_prune.importance import ChannelImportance, calibrate, get_importance
from lightning_prune.schedules import (
    SCHEDULES,
    BlockwisePlanner,
    PruningPlanner,
    UniformPlanner,
    channels_to_keep,
    make_planner,
)
from lightning_prune.state import PruningReport, StepRecord
from lightning_prune.summary import summary_table
from lightning_prune.structural import graph as structure
from lightning_prune.structural import snapshot as snapshots

_PHASES = ("pretrain", "pruning", "final", "done")
#: File names of the pruned model: a finished run, and one stopped before its plan's end.
PRUNED_MODEL, PRUNED_MODEL_INCOMPLETE = "pruned_model.pt", "pruned_model.incomplete.pt"


def batch_input(batch: Any) -> torch.Tensor:
    """The model input of a batch: the batch itself, its first element, or a known dict key."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, tuple | list) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("x", "input", "inputs", "image", "images", "pixel_values"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    raise PruningConfigError(
        f"cannot find the model input in a batch of type {type(batch).__name__}",
        hint="pass `example_input=` to StructuredPruning and use (inputs, targets) batches, or set "
        "`example_input_array` on your LightningModule",
    )


def _to_cpu(value: Any) -> Any:
    """A deep copy of (nested) optimizer state with tensors on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


class StructuredPruning(Callback):
    """Iterative structured pruning inside ``Trainer.fit``: prune, measure, fine-tune, repeat.

    Each step removes output channels (filters) chosen by an importance criterion from the layers
    the schedule names, using dependency-aware surgery (the next layer's inputs, BatchNorm, depthwise
    convs follow). The monitored metric is measured with the module's own validation before the
    first step and after every step, before fine-tuning. After each structural change the optimizers
    and LR schedulers are rebuilt from ``configure_optimizers``, ``requires_grad`` flags are kept,
    and under DDP the module is re-wrapped.

    Epochs are the unit of work: ``pretrain_epochs`` plain epochs, then per step the step is pruned
    at the start of an epoch that fine-tunes it (``finetune_epochs`` epochs, or none if a satellite
    such as ``ThresholdSkipFineTune`` says skip: the next step is then pruned at once, costing no
    training batch), then ``final_finetune_epochs``; then the controller stops the Trainer: the plan,
    not the Trainer's ``max_epochs``, sets the number of epochs.

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
        >>> pruning = StructuredPruning(pruning_ratio=0.6, schedule="blockwise", importance="l1")
        >>> # Trainer(callbacks=[pruning]).fit(model, datamodule=dm); pruning.report.to_dict()["totals"]
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
        self._phase = "pretrain"
        self._epochs_in_phase = 0
        self._next_step = 0
        self._finetune_left = 0
        self._pending: int | None = None  # index into report.steps awaiting metric_after_finetune
        self._planner_ready = False
        self._last_val: tuple[int, float] | None = None  # (epoch, value) of the latest regular validation
        self._finetune_started: float | None = None
        self._clock_start: float | None = None
        self._measuring = False
        self._probe: dict[str, Any] | None = None  # while a probe step is being fine-tuned
        self._probe_done = False
        self._satellites: list[PruningSatellite] = []
        self._original_on_load: Any = None
        self._out: Path | None = None  # resolved on every rank in setup (trainer.log_dir is a collective)

    # ------------------------------------------------------------------ identity and state
    def _hparams(self) -> dict[str, Any]:
        """The arguments a resumed run must share with the run that wrote the checkpoint."""
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
        return {
            "hparams": self._hparams(),
            "phase": self._phase,
            "epochs_in_phase": self._epochs_in_phase,
            "next_step": self._next_step,
            "finetune_left": self._finetune_left,
            "pending": self._pending,
            "planner_ready": self._planner_ready,
            "planner": self.planner.state_dict() if self._planner_ready else {},
            "importance": self.importance.state_dict(),
            "history": [[[name, list(idxs)] for name, idxs in step] for step in self.history],
            "report": self.report.to_dict(),
            "example_input": self._example,
            "seconds_elapsed": self._elapsed(),
            "last_val": list(self._last_val) if self._last_val is not None else None,
            "probe_done": self._probe_done,
            "probe": self._probe,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_resume_hparams(self, state_dict.get("hparams"), self._hparams())
        self._phase = state_dict["phase"]
        self._epochs_in_phase = state_dict["epochs_in_phase"]
        self._next_step = state_dict["next_step"]
        self._finetune_left = state_dict["finetune_left"]
        self._pending = state_dict["pending"]
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
        self._probe_done = state_dict.get("probe_done", False)
        self._probe = state_dict.get("probe")

    def set_planner(self, planner: PruningPlanner) -> None:
        """Let another callback decide the steps (call it from that callback's ``setup``)."""
        self.planner = planner

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        _lightning.check_strategy(trainer, "StructuredPruning")
        _lightning.check_trains(trainer, "StructuredPruning")
        controllers = [cb for cb in trainer.callbacks if isinstance(cb, StructuredPruning)]
        _check(len(controllers) == 1, f"found {len(controllers)} StructuredPruning callbacks",
               "use one StructuredPruning callback per Trainer")
        names = [n for n, _ in pl_module.named_modules() if n]
        unmatched = [p for p in self.ignored_layers if not structure.match_names(names, [p])]
        _check(not unmatched, f"ignored_layers {unmatched} match no module of {type(pl_module).__name__}",
               f"module names look like {', '.join(names[:4])}, ...; glob patterns such as 'model.layer3.*' work")
        self._satellites = [cb for cb in trainer.callbacks if isinstance(cb, PruningSatellite)]
        if self._example is None and getattr(pl_module, "example_input_array", None) is not None:
            example = pl_module.example_input_array
            if isinstance(example, torch.Tensor):
                self._example = example.detach().cpu()
        self._out = _lightning.output_dir(trainer, self.output_dir)
        self._install_restore_hook(pl_module)
        _lightning.guard_checkpoint_loading(trainer, lambda path, ckpt: self._check_resumed(trainer, path, ckpt, pl_module))

    def _check_resumed(self, trainer: pl.Trainer, path: Path, checkpoint: dict[str, Any],
                       pl_module: pl.LightningModule) -> None:
        """Before anything is restored: the same arguments for every callback, and a checkpoint of this model."""
        check_resumed_arguments(trainer, checkpoint)
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        _lightning.check_checkpoint_fits(path, checkpoint.get("state_dict", {}), pl_module,
                                       replays=bool(state and state.get("history")))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _lightning.unguard_checkpoint_loading(trainer)
        if self._original_on_load is not None:
            pl_module.on_load_checkpoint = self._original_on_load  # type: ignore[method-assign]
            if pl_module.__dict__.get("on_load_checkpoint") is self._original_on_load:
                del pl_module.__dict__["on_load_checkpoint"]
            self._original_on_load = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._planner_ready:
            self._prepare(trainer, pl_module)
        # The plan, not the Trainer's max_epochs, decides how many epochs run: skipped fine-tuning
        # shortens it, and the controller stops the Trainer when it is done. This bound is what the
        # progress bar shows; on_train_epoch_end raises it whenever the plan needs more.
        trainer.fit_loop.max_epochs = self._epochs_bound(trainer)

    def _epochs_bound(self, trainer: pl.Trainer) -> int:
        total = self.planner.num_steps()
        if total is None or self._phase == "done":
            return -1
        left = {"pretrain": self.pretrain_epochs - self._epochs_in_phase, "pruning": 0, "final": 0}[self._phase]
        left += self._finetune_left + (total - self._next_step) * self.finetune_epochs
        left += self.final_finetune_epochs - (self._epochs_in_phase if self._phase == "final" else 0)
        left += int(not self._probe_done and any(s.wants_probe(self) for s in self._satellites))
        return trainer.current_epoch + max(left, 1)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._phase == "pretrain":
            if self._epochs_in_phase < self.pretrain_epochs:
                self._epochs_in_phase += 1
                return
            self._enter("pruning")
        if self._phase == "probe":
            self._end_probe(trainer, pl_module)
        if self._phase == "pruning":
            if self._finetune_left > 0 and self._satellites_continue(trainer, pl_module):
                self._finetune_left -= 1
                self.report.steps[self._pending].finetune_epochs += 1  # type: ignore[index]
                self._finetune_started = time.perf_counter()
                return
            self._finetune_left = 0
            self._close_pending(trainer, trainer.current_epoch - 1)
            if self.report.metric_before is None:
                self._start_pruning(trainer, pl_module)
            if not self._probe_done and any(s.wants_probe(self) for s in self._satellites):
                self._start_probe(trainer, pl_module)
                return
            while self._has_next_step():
                record = self._prune_step(trainer, pl_module)
                epochs = self._finetune_epochs_for(trainer, pl_module, record)
                if epochs > 0:
                    record.finetuned = True
                    record.finetune_epochs = 1
                    self._pending = record.step
                    self._finetune_left = epochs - 1
                    self._finetune_started = time.perf_counter()
                    return
                record.metric_after_finetune = record.metric_after_prune
                self._step_end(trainer, pl_module, record)
            self._end_plan(trainer, pl_module)
        if self._phase == "final":
            if self._epochs_in_phase < self.final_finetune_epochs:
                self._epochs_in_phase += 1
                return
            self._finish(trainer, pl_module, trainer.current_epoch - 1)
        _lightning.end_on_should_stop(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._finetune_started is not None:
            seconds = time.perf_counter() - self._finetune_started
            if self._probe is not None:
                self._probe["seconds"] += seconds
            elif self._pending is not None:
                self.report.steps[self._pending].seconds_finetune += seconds
        self._finetune_started = None
        # End as soon as the plan is complete, rather than after one more (empty) epoch.
        last_step_tuned = self._phase == "pruning" and self._finetune_left == 0 and not self._has_next_step()
        if last_step_tuned and self.final_finetune_epochs == 0:
            self._close_pending(trainer, trainer.current_epoch)
            self._end_plan(trainer, pl_module)
        if self._phase == "final" and self._epochs_in_phase >= self.final_finetune_epochs:
            self._finish(trainer, pl_module, trainer.current_epoch)
            _lightning.end_on_should_stop(trainer)
        elif 0 <= trainer.fit_loop.max_epochs <= trainer.current_epoch + 1:
            trainer.fit_loop.max_epochs = trainer.current_epoch + 2  # the plan is not finished yet

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._measuring:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            self._last_val = (trainer.current_epoch, float(value))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._phase == "done":
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
        """A crashed or interrupted fit leaves a report that says so (the checkpoint is what resumes)."""
        self.teardown(trainer, pl_module, "fit")  # Lightning skips teardown hooks when fit raises
        if (not trainer.is_global_zero or self._out is None or self._phase == "done"
                or self.report.metric_before is None or isinstance(exception, PruningConfigError)):
            return  # a refusal leaves the output folder untouched; before pruning there is nothing to report
        self.report.completed = False
        self.report.stop_reason = f"the fit raised {type(exception).__name__}: {exception}"
        self.report.steps_planned = self._steps_planned()
        self.report.seconds_total = self._elapsed()
        try:
            self.report.write(self._out / "report.json")
        except OSError as err:  # never hide the original exception
            info(f"[lightning_prune] could not write {self._out / 'report.json'}: {err}")

    def _stopped_short(self, trainer: pl.Trainer, pl_module: pl.LightningModule, reason: str) -> None:
        """Close what can be closed and mark the report incomplete, with the reason."""
        if self.report.metric_before is not None:
            self._close_pending(trainer, trainer.current_epoch, measure_if_stale=False, notify=False)
            if self._phase in ("pruning", "probe"):
                for satellite in self._satellites:
                    satellite.on_pruning_end(trainer, pl_module, self)
        if self._last_val is not None:
            metric: float | None = self._last_val[1]
        elif self.report.steps:  # a satellite restored a model whose steps carry its metric
            metric = self.report.steps[-1].metric_after_finetune
        else:
            metric = self.report.metric_before  # the unpruned model (None if never measured)
        if self.report.metric_before is None:  # stopped before pruning started: the model is unpruned
            self.report.params_before = structure.count_params(pl_module)
            if self._example is not None:
                self.report.macs_before = structure.count_macs(pl_module, self._example.to(pl_module.device))
        self._summarise(pl_module, metric=metric)
        self.report.completed, self.report.stop_reason = False, reason
        info(f"[lightning_prune] the fit stopped before the pruning plan was complete ({reason}): "
             f"{len(self.report.steps)} of {self._steps_planned() or '?'} steps done")

    def _steps_planned(self) -> int | None:
        return self.planner.num_steps() if self._planner_ready else None

    # ------------------------------------------------------------------ the plan
    def _has_next_step(self) -> bool:
        return not self._planner_ready or not self.planner.is_done(self._next_step)

    def _enter(self, phase: str) -> None:
        self._phase, self._epochs_in_phase = phase, 0

    def _elapsed(self) -> float:
        return 0.0 if self._clock_start is None else time.perf_counter() - self._clock_start

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
            self._step_end(trainer, trainer.lightning_module, record)

    def _step_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: StepRecord) -> None:
        for satellite in self._satellites:
            satellite.on_step_end(trainer, pl_module, self, record)

    def _end_plan(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The plan is complete: satellites may put their chosen model in place, then final fine-tuning."""
        for satellite in self._satellites:
            satellite.on_pruning_end(trainer, pl_module, self)
        self._enter("final")

    # ------------------------------------------------------------------ services for satellites
    def measure(self, trainer: pl.Trainer, monitor: str | None = None, eval_batches: int | None = None) -> float:
        """Run the module's validation now and return ``monitor`` (default: the controller's), same on all ranks."""
        self._measuring = True
        try:
            value = evaluation.measure(trainer, monitor or self.monitor,
                                       self.eval_batches if monitor is None and eval_batches is None else eval_batches)
        finally:
            self._measuring = False
        return float(trainer.strategy.broadcast(value, src=0))

    def last_validation(self) -> float | None:
        """The monitored value of the latest regular (epoch) validation, if any."""
        return None if self._last_val is None else self._last_val[1]

    def snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizers: bool = True) -> dict[str, Any]:
        """Structure, weights, (optimizer states) and the plan's position, as CPU tensors and plain data."""
        return {
            "model": snapshots.capture(pl_module),
            "optimizers": [_to_cpu(opt.state_dict()) for opt in trainer.optimizers] if optimizers else [],
            "history": [[(n, list(i)) for n, i in step] for step in self.history],
            "next_step": self._next_step,
            "steps": [asdict(record) for record in self.report.steps],
            "planner": self.planner.state_dict(),
            "importance": self.importance.state_dict(),
        }

    def restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule, snapshot: dict[str, Any]) -> None:
        """Return exactly to ``snapshot``: structure, weights, optimizer states, plan position."""
        snapshots.restore(pl_module, snapshot["model"])
        self.history = [[(n, list(i)) for n, i in step] for step in snapshot["history"]]
        self._next_step = snapshot["next_step"]
        # the snapshot's own records: it need not be an ancestor of the present state
        self.report.steps = [StepRecord(**record) for record in snapshot["steps"]]
        self.planner.load_state_dict(snapshot["planner"])
        self.importance.load_state_dict(snapshot["importance"])
        self._after_structure_change(trainer, pl_module)
        for optimizer, state in zip(trainer.optimizers, snapshot["optimizers"]):
            optimizer.load_state_dict(state)
        self._last_val = None  # the latest validation describes a model that is gone

    def example_input(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        """One input sample for tracing, on the module's device."""
        if self._example is None:
            loader = trainer.train_dataloader
            _check(loader is not None, "no example input: the Trainer has no training dataloader yet",
                   "pass `example_input=` to StructuredPruning or set `example_input_array` on your module")
            self._example = batch_input(next(iter(loader)))[:1].detach().cpu()
        return self._example.to(pl_module.device)

    def _layers(self, pl_module: pl.LightningModule, example: torch.Tensor) -> tuple[Any, dict[str, structure.PrunableLayer]]:
        graph = structure.build_graph(pl_module, example)
        ignored = list(self.ignored_layers)
        head = None if self.prune_head else structure.default_head(pl_module)
        if head is not None:
            ignored.append(head)
        layers = structure.discover_layers(pl_module, graph, ignored, self.prune_coupled)
        _check(bool(layers), f"nothing left to prune in {type(pl_module).__name__}: every layer is ignored, "
               "coupled to a residual sum / concatenation, or the classifier head",
               "narrow `ignored_layers`, or set prune_coupled=True to prune layers feeding residual sums")
        return graph, {layer.name: layer for layer in layers}

    def _scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule, layers: dict[str, structure.PrunableLayer],
                names: list[str]) -> dict[str, torch.Tensor]:
        scores = self._raw_scores(trainer, pl_module, layers, names)
        for name in names:
            _check_scores(self.importance.name, name, scores[name], layers[name].channels)
        return scores

    def _raw_scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                    layers: dict[str, structure.PrunableLayer], names: list[str]) -> dict[str, torch.Tensor]:
        if self.importance.requires_data:
            modules = dict(pl_module.named_modules())
            sources = {name: modules[layers[name].source] for name in names}
            loader = trainer.train_dataloader
            _check(loader is not None, f"importance {self.importance.name!r} needs training batches",
                   "give the Trainer a training dataloader")
            batches = (batch_input(b).to(pl_module.device) for _, b in zip(range(self.calibration_batches), loader))
            self.importance.reset()
            calibrate(self.importance, sources, pl_module, batches)
        return {name: self.importance.score(name, layers[name].module) for name in names}

    def _apply_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> list[str]:
        """Score, plan (decided on rank 0), check, cut, record, rebuild; returns the step's components."""
        graph, layers = self._layers(pl_module, self.example_input(trainer, pl_module))
        names = [n for n in self.planner.layers_for_step(step) if n in layers]
        plan = self.planner.plan(step, layers, self._scores(trainer, pl_module, layers, names))
        plan = trainer.strategy.broadcast({n: [int(i) for i in idxs] for n, idxs in plan.items() if idxs}, src=0)
        for name, idxs in plan.items():
            _check(len(idxs) < layers[name].channels, f"step {step} would remove all {layers[name].channels} channels of '{name}'",
                   "lower pruning_ratio")
        for name, idxs in plan.items():
            structure.prune_layer(pl_module, graph, name, idxs)
        self.history.append([(name, idxs) for name, idxs in plan.items()])
        self._after_structure_change(trainer, pl_module)
        return list(dict.fromkeys(self.planner.component_of(n) for n in (plan or dict.fromkeys(names))))

    def _prune_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> StepRecord:
        started = time.perf_counter()
        step, total = self._next_step, self.planner.num_steps()
        components = self._apply_step(trainer, pl_module, step)
        record = StepRecord(
            step=step, components=components, params=structure.count_params(pl_module),
            macs=structure.count_macs(pl_module, self.example_input(trainer, pl_module)),
            channels_removed=sum(len(i) for _, i in self.history[-1]),
            seconds_prune=time.perf_counter() - started,
        )
        started = time.perf_counter()
        record.metric_after_prune = self.measure(trainer)
        record.seconds_eval = time.perf_counter() - started
        self.report.steps.append(record)
        self._next_step += 1
        self._log_step(trainer, record, total)
        return record

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Trace the model and fix the plan before any training: structural errors surface here."""
        example = self.example_input(trainer, pl_module)
        graph, layers = self._layers(pl_module, example)
        untraced = structure.untraced_layers(pl_module, graph, self.ignored_layers)
        inert = self._inert_layers(layers)
        _check(len(inert) < len(layers), f"nothing would be pruned: with pruning_ratio={self.pruning_ratio} and "
               f"round_to={self.round_to} every prunable layer keeps all its channels (largest has "
               f"{max(layer.channels for layer in layers.values())})",
               "lower round_to below the layers' channel counts, or raise pruning_ratio")
        if not self.importance.requires_data:  # a custom criterion's mistakes surface before any training
            state = self.importance.state_dict()
            self._scores(trainer, pl_module, layers, list(layers))
            self.importance.load_state_dict(state)
        self.planner.setup(list(layers.values()))
        self._planner_ready = True
        self.report.extra["plan"] = {"layers": list(layers), "untraced": untraced, "unchanged_by_round_to": inert}
        total = self.planner.num_steps()
        info(f"[lightning_prune] plan: {len(layers)} prunable layers in "
             f"{total if total is not None else 'an adaptive number of'} steps "
             f"({self.schedule}, ratio {self.pruning_ratio}, importance {self.importance.name})")
        if untraced:
            info(f"[lightning_prune] not in the traced graph (output unused or detached), left unpruned: "
                 f"{', '.join(untraced)}")
        if inert:
            info(f"[lightning_prune] round_to={self.round_to} leaves these layers unchanged: {', '.join(inert)}")

    def _inert_layers(self, layers: dict[str, structure.PrunableLayer]) -> list[str]:
        """Layers the built-in schedules would not change (``round_to`` above what the ratio removes)."""
        if self.round_to is None or not isinstance(self.planner, BlockwisePlanner | UniformPlanner):
            return []  # a satellite's planner decides by its own rule
        return [n for n, layer in layers.items()
                if channels_to_keep(layer.channels, self.pruning_ratio, self.round_to) >= layer.channels]

    def _start_pruning(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock_start = time.perf_counter()
        self.report.params_before = structure.count_params(pl_module)
        self.report.macs_before = structure.count_macs(pl_module, self.example_input(trainer, pl_module))
        self.report.metric_before = self.measure(trainer)
        info(f"[lightning_prune] {self.monitor} before pruning: {self.report.metric_before:.4f}")
        for satellite in self._satellites:
            satellite.on_pruning_start(trainer, pl_module, self)

    def _start_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Prune the first step on trial for one fine-tuning epoch; ``_end_probe`` undoes it."""
        started = time.perf_counter()
        snapshot = self.snapshot(trainer, pl_module, optimizers=False)
        for satellite in self._satellites:
            satellite.on_probe_start(trainer, pl_module, self)
        components = self._apply_step(trainer, pl_module, self._next_step)
        for satellite in self._satellites:
            satellite.on_probe_pruned(trainer, pl_module, self)
        self._probe = {"snapshot": snapshot, "components": components, "seconds": time.perf_counter() - started}
        self._phase = "probe"
        self._finetune_started = time.perf_counter()
        info(f"[lightning_prune] probe: {', '.join(components)} pruned on trial for one fine-tuning epoch")

    def _end_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._probe is not None
        started = time.perf_counter()
        for satellite in self._satellites:
            satellite.on_probe_end(trainer, pl_module, self)
        self.restore(trainer, pl_module, self._probe["snapshot"])
        seconds = self._probe["seconds"] + time.perf_counter() - started
        self.report.extra["probe"] = {"components": self._probe["components"], "seconds": seconds}
        self._probe, self._probe_done = None, True
        self._phase = "pruning"
        info(f"[lightning_prune] probe done in {seconds:.1f} s; the unpruned model is restored")

    def _after_structure_change(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """DESIGN.md section 5: rebuild optimizers and schedulers, re-wrap DDP, tell satellites."""
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy):
            strategy.model = pl_module
            strategy.configure_ddp()
        strategy.setup_optimizers(trainer)
        _optimizers_to_device(strategy.optimizers, strategy.root_device)
        for satellite in self._satellites:
            satellite.on_structure_changed(trainer, pl_module, self)

    def _log_step(self, trainer: pl.Trainer, record: StepRecord, total: int | None) -> None:
        metrics = {"prune/step": float(record.step), "prune/params": float(record.params), "prune/macs": float(record.macs),
                   "prune/channels_removed": float(record.channels_removed),
                   "prune/metric_after_prune": float(record.metric_after_prune or 0.0)}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        before = self.report.params_before or 1
        info(
            f"[lightning_prune] step {record.step + 1}/{total if total is not None else '?'} "
            f"{', '.join(record.components)}: -{record.channels_removed} channels, params {record.params:,} "
            f"({100 * (1 - record.params / before):.1f}% removed), {self.monitor} {record.metric_after_prune:.4f}"
        )

    # ------------------------------------------------------------------ the end
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        metric = self._validated_at(epoch)
        if metric is None and self.report.steps and self.final_finetune_epochs == 0:
            metric = self.report.steps[-1].metric_after_finetune
        if metric is None:
            metric = self.measure(trainer)
        self._summarise(pl_module, metric)
        self._enter("done")

    def _summarise(self, pl_module: pl.LightningModule, metric: float | None) -> None:
        example = self._example.to(pl_module.device) if self._example is not None else None
        self.report.params_after = structure.count_params(pl_module)
        self.report.macs_after = structure.count_macs(pl_module, example) if example is not None else 0
        self.report.metric_after = metric
        self.report.seconds_total = self._elapsed()

    def _write_outputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.report.steps_planned = self._steps_planned()
        if not trainer.is_global_zero:
            return
        out = self._out if self._out is not None else Path(self.output_dir or trainer.default_root_dir)
        name = PRUNED_MODEL if self.report.completed else PRUNED_MODEL_INCOMPLETE
        self.report.write(out / "report.json")
        artifacts.save_pruned(out / name, pl_module, self.history, self._example, completed=self.report.completed)
        info(summary_table(self.report, self.monitor))
        info(f"[lightning_prune] wrote {out / 'report.json'} and {out / name}")

    # ------------------------------------------------------------------ resume
    def _install_restore_hook(self, pl_module: pl.LightningModule) -> None:
        """Replay the recorded structure before Lightning loads a pruned checkpoint's weights."""
        if self._original_on_load is not None:
            return
        original = pl_module.on_load_checkpoint
        key = self.state_key

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            state = checkpoint.get("callbacks", {}).get(key)
            if state:  # before any change to the module: a changed argument is named, not a shape mismatch
                check_resume_hparams(self, state.get("hparams"), self._hparams())
            if state and state.get("history") and artifacts.needs_replay(pl_module, checkpoint["state_dict"]):
                structure.replay(pl_module, state["example_input"].to(pl_module.device),
                                 [[(n, i) for n, i in step] for step in state["history"]])
            original(checkpoint)

        self._original_on_load = original
        pl_module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]


def _check_scores(criterion: str, layer: str, scores: Any, channels: int) -> None:
    """A criterion must give one finite score per output channel."""
    ok = isinstance(scores, torch.Tensor) and scores.dim() == 1 and scores.numel() == channels
    got = f"a tensor of shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
    _check(ok, f"importance {criterion!r} returned {got} for layer '{layer}', which has {channels} output channels",
           "return a 1-D tensor with one score per output channel (higher = kept)")
    _check(bool(torch.isfinite(scores).all()), f"importance {criterion!r} returned NaN or infinite scores for "
           f"layer '{layer}'", "return finite scores (check for divisions by zero in the criterion)")
