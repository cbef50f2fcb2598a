"""What a structured pruning step does, for :class:`~lightning_prune.StructuredPruning`.

The functions find the prunable layers, score them (with calibration batches for data-driven
criteria) and check the scores, without Lightning. :class:`StepExecution` is the controller's half
that runs steps: trace, score, plan, cut (surgery itself is ``structural/graph.py``), measure, trial
steps, the requests it resolves, and the snapshot / restore services; ``structured.py`` keeps the
phase machine and the Lightning hooks.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_prune import _lightning, artifacts, plots
from lightning_prune._logging import info
from lightning_prune.callbacks.base import (
    PruningController,
    Request,
    RewindWeights,
    TrialStep,
)
from lightning_prune.errors import PruningConfigError
from lightning_prune.errors import check as _check
from lightning_prune.importance import ChannelImportance, calibrate
from lightning_prune.schedules import (
    BlockwisePlanner,
    PruningPlanner,
    UniformPlanner,
    channels_to_keep,
)
from lightning_prune.state import PruningReport, StepRecord, StructuredPhase
from lightning_prune.structural import graph as structure
from lightning_prune.structural import snapshot as snapshots
from lightning_prune.summary import step_line, summary_table

#: File names of the pruned model: a finished run, and one stopped before its plan's end.
PRUNED_MODEL, PRUNED_MODEL_INCOMPLETE = "pruned_model.pt", "pruned_model.incomplete.pt"
#: Dict keys under which a batch may hold the model input.
INPUT_KEYS = ("x", "input", "inputs", "image", "images", "pixel_values")


def batch_input(batch: Any) -> torch.Tensor:
    """The model input of a batch: the batch itself, its first element, or a known dict key.

    Example:
        >>> batch_input((torch.zeros(2, 3), torch.ones(2))).shape, batch_input({"image": torch.zeros(1)}).shape
        (torch.Size([2, 3]), torch.Size([1]))
    """
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, tuple | list) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in INPUT_KEYS:
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    raise PruningConfigError(
        f"cannot find the model input in a batch of type {type(batch).__name__}",
        hint="pass `example_input=` to StructuredPruning and use (inputs, targets) batches, or set "
        "`example_input_array` on your LightningModule",
    )


def prunable_layers(module: nn.Module, example: torch.Tensor, ignored: Sequence[str], prune_head: bool,
                    prune_coupled: bool) -> tuple[Any, dict[str, structure.PrunableLayer]]:
    """Trace ``module`` and return its dependency graph and prunable layers by name.

    Raises:
        PruningConfigError: if nothing is left to prune.
    """
    graph = structure.build_graph(module, example)
    ignored = list(ignored)
    head = None if prune_head else structure.default_head(module)
    if head is not None:
        ignored.append(head)
    layers = structure.discover_layers(module, graph, ignored, prune_coupled)
    _check(bool(layers), f"nothing left to prune in {type(module).__name__}: every layer is ignored, "
           "coupled to a residual sum / concatenation, or the classifier head",
           "narrow `ignored_layers`, or set prune_coupled=True to prune layers feeding residual sums")
    return graph, {layer.name: layer for layer in layers}


def check_scores(criterion: str, layer: str, scores: Any, channels: int) -> None:
    """A criterion must give one finite score per output channel.

    Example:
        >>> check_scores("l1", "conv", torch.ones(4), 4)  # fine
        >>> check_scores("mine", "conv", torch.ones(3), 4)
        Traceback (most recent call last):
        ...
        lightning_prune.errors.PruningConfigError: importance 'mine' returned a tensor of shape (3,) for layer 'conv', which has 4 output channels. HINT: return a 1-D tensor with one score per output channel (higher = kept)
    """
    ok = isinstance(scores, torch.Tensor) and scores.dim() == 1 and scores.numel() == channels
    got = f"a tensor of shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
    _check(ok, f"importance {criterion!r} returned {got} for layer '{layer}', which has {channels} output channels",
           "return a 1-D tensor with one score per output channel (higher = kept)")
    _check(bool(torch.isfinite(scores).all()), f"importance {criterion!r} returned NaN or infinite scores for "
           f"layer '{layer}'", "return finite scores (check for divisions by zero in the criterion)")


def score_layers(importance: ChannelImportance, module: nn.Module, layers: Mapping[str, structure.PrunableLayer],
                 names: Sequence[str], batches: Iterable[torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Checked scores of ``names``; data-driven criteria first observe ``batches`` (model inputs)."""
    if importance.requires_data:
        _check(batches is not None, f"importance {importance.name!r} needs training batches",
               "give the Trainer a training dataloader")
        modules = dict(module.named_modules())
        importance.reset()
        calibrate(importance, {name: modules[layers[name].source] for name in names}, module, batches)
    scores = {name: importance.score(name, layers[name].module) for name in names}
    for name in names:
        check_scores(importance.name, name, scores[name], layers[name].channels)
    return scores


def inert_layers(planner: PruningPlanner, layers: Mapping[str, structure.PrunableLayer], ratio: float,
                 round_to: int | None) -> list[str]:
    """Layers a built-in schedule would leave unchanged (``round_to`` above what the ratio removes)."""
    if round_to is None or not isinstance(planner, BlockwisePlanner | UniformPlanner):
        return []  # a satellite's planner decides by its own rule
    return [n for n, layer in layers.items() if channels_to_keep(layer.channels, ratio, round_to) >= layer.channels]


class StepExecution(PruningController):
    """The step-running half of :class:`~lightning_prune.StructuredPruning` (its attributes are set there)."""

    importance: ChannelImportance
    planner: PruningPlanner
    report: PruningReport
    history: list[list[tuple[str, list[int]]]]
    ignored_layers: list[str]
    prune_head: bool
    prune_coupled: bool
    pruning_ratio: float
    round_to: int | None
    calibration_batches: int
    schedule: str
    _example: torch.Tensor | None
    _phase: StructuredPhase
    _next_step: int
    _planner_ready: bool
    _last_val: tuple[int, float] | None
    _trial: dict[str, Any] | None
    _finetune_started: float | None
    monitor: str
    output_dir: str | None

    @abc.abstractmethod
    def _enter(self, trainer: pl.Trainer, pl_module: pl.LightningModule, phase: StructuredPhase) -> None:
        """Enter ``phase`` (the phase machine's)."""

    @abc.abstractmethod
    def _epochs_bound(self, trainer: pl.Trainer) -> int:
        """The epochs the plan still needs (the phase machine's)."""

    def last_validation(self) -> float | None:
        """The monitored value of the latest regular (epoch) validation, if any."""
        return None if self._last_val is None else self._last_val[1]

    def snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizers: bool = True) -> dict[str, Any]:
        return {
            "model": snapshots.capture(pl_module),
            "optimizers": [snapshots.to_cpu(opt.state_dict()) for opt in trainer.optimizers] if optimizers else [],
            "history": [[(n, list(i)) for n, i in step] for step in self.history],
            "next_step": self._next_step,
            "steps": [asdict(record) for record in self.report.steps],
            "planner": self.planner.state_dict(),
            "importance": self.importance.state_dict(),
        }

    def restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule, snapshot: dict[str, Any]) -> None:
        snapshots.restore(pl_module, snapshot["model"])
        self.history = [[(n, list(i)) for n, i in step] for step in snapshot["history"]]
        self._next_step = snapshot["next_step"]
        # the snapshot's own records: it need not be an ancestor of the present state
        self.report.steps = [StepRecord(**record) for record in snapshot["steps"]]
        self.planner.load_state_dict(snapshot["planner"])
        self.importance.load_state_dict(snapshot["importance"])
        self._last_val = None  # the latest validation describes a model that is gone
        self._after_structure_change(trainer, pl_module, snapshot["optimizers"])

    def example_input(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        """One input sample for tracing, on the module's device."""
        if self._example is None:
            loader = trainer.train_dataloader
            _check(loader is not None, "no example input: the Trainer has no training dataloader yet",
                   "pass `example_input=` to StructuredPruning or set `example_input_array` on your module")
            self._example = batch_input(next(iter(loader)))[:1].detach().cpu()
        return self._example.to(pl_module.device)

    def _resolve(self, trainer: pl.Trainer, pl_module: pl.LightningModule, request: Request) -> None:
        if isinstance(request, TrialStep):
            _check(self._trial is None, "two satellites asked for a trial epoch when pruning starts; only one can have it",
                   "LayerFreezer's probe and AdaptiveThresholdRollback(reference='retrained') each need one: use "
                   "reference='unpruned' beside LayerFreezer")
            _check(self._phase is StructuredPhase.PRUNING and not self.report.steps,
                   "a TrialStep can only be requested when pruning starts (from on_pruning_start)",
                   "request it in the satellite's on_pruning_start")
            self._start_trial(trainer, pl_module, request.epochs, request.prune)
            return
        if isinstance(request, RewindWeights):
            now = self.snapshot(trainer, pl_module, optimizers=False)
            snapshots.restore(pl_module, request.model)
            structure.replay(pl_module, self.example_input(trainer, pl_module), self.history)
            now["model"] = snapshots.capture(pl_module)
            self.restore(trainer, pl_module, now)
            return
        super()._resolve(trainer, pl_module, request)

    # ------------------------------------------------------------------ a step
    def _layers(self, pl_module: pl.LightningModule, example: torch.Tensor) -> tuple[Any, dict[str, Any]]:
        return prunable_layers(pl_module, example, self.ignored_layers, self.prune_head, self.prune_coupled)

    def _scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule, layers: dict[str, Any],
                names: list[str], calibration_batches: int | None = None) -> dict[str, torch.Tensor]:
        batches = None
        if self.importance.requires_data and trainer.train_dataloader is not None:
            loader, count = trainer.train_dataloader, calibration_batches or self.calibration_batches
            batches = (batch_input(b).to(pl_module.device) for _, b in zip(range(count), loader))
        return score_layers(self.importance, pl_module, layers, names, batches)

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
        self._last_val = None  # the latest validation describes a model that is gone
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
        metrics = {"prune/step": float(record.step + 1), "prune/params": float(record.params),
                   "prune/macs": float(record.macs), "prune/channels_removed": float(record.channels_removed),
                   "prune/metric_after_prune": float(record.metric_after_prune or 0.0)}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        info(step_line(record, total, self.report.params_before, self.monitor))
        self._dispatch("on_step_pruned", trainer, pl_module, record)
        return record

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Trace the model and fix the plan before any training: structural errors surface here."""
        graph, layers = self._layers(pl_module, self.example_input(trainer, pl_module))
        untraced = structure.untraced_layers(pl_module, graph, self.ignored_layers)
        inert = inert_layers(self.planner, layers, self.pruning_ratio, self.round_to)
        _check(len(inert) < len(layers), f"nothing would be pruned: with pruning_ratio={self.pruning_ratio} and "
               f"round_to={self.round_to} every prunable layer keeps all its channels (largest has "
               f"{max(layer.channels for layer in layers.values())})",
               "lower round_to below the layers' channel counts, or raise pruning_ratio")
        # a criterion's mistakes surface before any training: score every layer once (one calibration
        # batch for a data-driven criterion), then forget it, random number generators included
        state = self.importance.state_dict()
        with torch.random.fork_rng(devices=[]):
            self._scores(trainer, pl_module, layers, list(layers), calibration_batches=1)
        self.importance.reset()
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

    def _start_pruning(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock_start = time.perf_counter()
        self.report.params_before = structure.count_params(pl_module)
        self.report.macs_before = structure.count_macs(pl_module, self.example_input(trainer, pl_module))
        self.report.metric_before, self.report.monitor = self.measure(trainer), self.monitor
        info(f"[lightning_prune] {self.monitor} before pruning: {self.report.metric_before:.4f}")
        self._dispatch("on_pruning_start", trainer, pl_module)

    def _start_trial(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epochs: int, prune: bool = True) -> None:
        """Prune the next step (if ``prune``) on trial for ``epochs`` fine-tuning epochs; ``_end_trial`` undoes it."""
        started = time.perf_counter()
        snapshot = self.snapshot(trainer, pl_module, optimizers=False)
        components = self._apply_step(trainer, pl_module, self._next_step) if prune else []
        self._trial = {"snapshot": snapshot, "components": components, "epochs_left": epochs - 1,
                       "seconds": time.perf_counter() - started}
        self._enter(trainer, pl_module, StructuredPhase.TRIAL)
        self._dispatch("on_trial_start", trainer, pl_module)
        self._finetune_started = time.perf_counter()
        _lightning.set_epoch_bound(trainer, self._epochs_bound(trainer))
        what = f"{', '.join(components)} pruned" if prune else "the unpruned model trained"
        info(f"[lightning_prune] trial step: {what} on trial for {epochs} epoch{'s' if epochs > 1 else ''}, then undone")

    def _end_trial(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._trial is not None
        started = time.perf_counter()
        self._dispatch("on_trial_end", trainer, pl_module)
        self.restore(trainer, pl_module, self._trial["snapshot"])
        seconds = self._trial["seconds"] + time.perf_counter() - started
        self.report.extra["probe"] = {"components": self._trial["components"], "seconds": seconds}
        self._trial = None
        self._enter(trainer, pl_module, StructuredPhase.PRUNING)
        info(f"[lightning_prune] trial step done in {seconds:.1f} s; the model before it is restored")

    def _after_structure_change(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                optimizer_states: list[dict[str, Any]] | None = None) -> None:
        """DESIGN.md section 5: re-wrap DDP, rebuild optimizers and schedulers (with ``optimizer_states``
        put back when restoring), then tell satellites, which see the complete new state."""
        _lightning.rewrap_and_rebuild(trainer, pl_module)
        for optimizer, state in zip(trainer.optimizers, optimizer_states or []):
            optimizer.load_state_dict(state)
        self._dispatch("on_structure_changed", trainer, pl_module)

    # ------------------------------------------------------------------ outputs
    def _summarise(self, pl_module: pl.LightningModule, metric: float | None) -> None:
        example = self._example.to(pl_module.device) if self._example is not None else None
        self.report.params_after = structure.count_params(pl_module)
        self.report.macs_after = structure.count_macs(pl_module, example) if example is not None else 0
        self.report.metric_after = metric
        self.report.seconds_total = self._elapsed()
        self.report.extra.update(self._sections())

    def _write_outputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.report.steps_planned = self._steps_planned()
        if not trainer.is_global_zero:
            return
        out = self._out if self._out is not None else Path(self.output_dir or trainer.default_root_dir)
        name = PRUNED_MODEL if self.report.completed else PRUNED_MODEL_INCOMPLETE
        self.report.write(out / "report.json")
        artifacts.save_pruned(out / name, pl_module, self.history, self._example, completed=self.report.completed)
        plotted = plots.write_plot(self.report.to_dict(), out / "report.png")
        info(summary_table(self.report, self.monitor))
        info(f"[lightning_prune] wrote {out / 'report.json'}{', report.png' if plotted else ''} and {out / name}")
