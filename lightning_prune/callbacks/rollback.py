"""``AdaptiveThresholdRollback``: AAP's adaptive, layer-aware threshold policy with rollback (Algorithms 2-5).

Each round removes every filter whose importance score is ``<=`` its layer's threshold
``T * N_i / N_total`` (the planner, :class:`~lightning_prune.schedules.AdaptiveThresholdPlanner`),
retrains ``epochs_per_round`` epochs and evaluates; an acceptable round raises ``T`` by ``lambda``, an
unacceptable one rolls the model back to the last acceptable round ``k`` with ``lambda = lambda_k / 2**N``.
When the loop ends the best acceptable round is put back in place, so ``report.json`` and
``pruned_model.pt`` describe it.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_prune._logging import info, warn
from lightning_prune.callbacks import _rollback_checks as checks
from lightning_prune.callbacks.base import (
    PruningController,
    PruningSatellite,
    RestoreSnapshot,
    RewindWeights,
    TrialStep,
    adopt_monitor,
    check_resume_hparams,
    check_single,
)
from lightning_prune.callbacks.structured import StructuredPruning
from lightning_prune.errors import PruningConfigError
from lightning_prune.errors import check as _check
from lightning_prune.schedules import AdaptiveThresholdPlanner, PruningPlanner
from lightning_prune.state import StepRecord, largest_drop
from lightning_prune.structural import graph as structure
from lightning_prune.structural import snapshot as snapshots

_EPS = 1e-12


class AdaptiveThresholdRollback(PruningSatellite, Callback):
    """AAP's adaptive pruning policy: raise a global threshold while rounds are acceptable, roll back when not.

    Round ``r`` prunes, in every prunable layer ``i``, each filter whose score (the controller's
    criterion: ``"attention"`` is the paper's) is ``<= T * N_i / N_total``, ``N_i`` the layer's
    parameters (its group's) or MACs, then retrains ``epochs_per_round`` epochs and evaluates. ``threshold_units="quantile"`` (default): ``T``
    is the fraction of the unpruned network's prunable filters gone after the round, the filters taken
    in the same layer-aware order (score over ``N_i / N_total``), so ``lambda_init=0.05`` (5 % of the
    filters a round, the paper's fixed-rate comparison) means the same on every network and criterion.
    ``"score"`` (the paper's): ``T`` in the criterion's units (for attention, the scale of the post-ReLU
    activations); choose ``lambda_init`` relative to typical scores. A layer always keeps its
    best-scoring filter. No round is empty: a ``T`` at which no filter would go (``T <= 0``; a retry
    after a rollback that would prune nothing new) is raised to the smallest ``T`` that prunes one, and
    the round records that ``T``, so no retraining is spent on an unchanged model. If every pruned round
    is unacceptable, a warning says so, with the smallest drop seen and what to change.

    Acceptable round (see ``target``): ``T += lambda``. Unacceptable: roll back structure, weights,
    optimizer state, ``T`` and ``lambda`` exactly to the last acceptable round ``k`` (kept as a CPU
    snapshot) and continue with ``lambda = lambda_k / 2**N``, ``T = T_k + lambda`` (``N``: rollbacks to
    ``k`` so far, this one included); after ``max_rollbacks`` rollbacks to ``k`` it is marked
    unacceptable and the rule goes further back. Round 0 is the unpruned model, acceptable by
    definition (for the rule it has ``T_0 = threshold_init - lambda_init``, so round 1 uses
    ``threshold_init``). The loop stops when the size (parameters, or MACs for ``target="flops"`` /
    ``layer_weighting="flops"``) of ``convergence_rounds`` successive acceptable rounds changed by less
    than ``convergence_tol`` (relative; counted only once something was pruned), when a size target
    is met to within ``convergence_tol``, after ``max_rounds`` rounds, or when no acceptable round is
    left. At the end the best round acceptable when evaluated (round 0 included) is restored: the
    smallest size (size targets: the largest reduction), then the best metric, then the latest round.

    Targets:
        ``"accuracy"``: acceptable when the metric dropped by at most ``max_drop`` (metric units; 0.01
        is one point of accuracy logged as a fraction) versus the reference. ``reference="retrained"``
        (default): when pruning starts, the unpruned model retrains ``epochs_per_round`` epochs on trial
        (then is restored); the reference is the worse of its metric before and after, so a drop that
        retraining alone causes (e.g. a learning rate too high for a trained model) is not blamed on
        pruning, and a gain it brings is not demanded of it. The final model can then sit up to
        ``max_drop`` under that retrained value; ``report.json`` has both. ``"unpruned"`` (the paper's):
        the metric before pruning.
        ``"params"`` / ``"flops"``: acceptable when the reduction of parameters / MACs versus the
        unpruned model is at most ``param_reduction`` / ``flops_reduction`` (the paper's Algorithms 4
        and 5: the rule approaches the target from below, halving ``lambda`` at every overshoot).

    Rewinding (what a round's retraining starts from): ``"lr"``: optimizer and LR schedule freshly
    built (the authors' LR rewinding; what the controller does after every structural change).
    ``"none"``: the LR schedules continue from the previous round (momentum is still reset).
    ``"weights"``: ``"lr"`` plus LTH weight rewinding (survivors get their round-0 values).

    Args:
        monitor: The controller's monitor (``None``: take it from the controller).
        mode: ``"max"`` if higher ``monitor`` is better, else ``"min"`` (``None``: the controller's).
        target: ``"accuracy"``, ``"params"`` or ``"flops"``.
        max_drop: Accuracy target: the largest acceptable drop, in the metric's units (>= 0).
        param_reduction: Params target: fraction of parameters to remove, in (0, 1).
        flops_reduction: FLOPs target: fraction of MACs to remove, in (0, 1).
        threshold_init: ``T`` of the first round (``None``: ``lambda_init`` for quantile units, 0 for score
            units, where only filters scoring 0 go, else the lowest-scoring one).
        lambda_init: The first step of ``T`` (``None``: 0.05 for quantile units; 0.005 for score units,
            the paper's; the authors' code used 1.0, ICE's re-run 0.2).
        max_rollbacks: Rollbacks to one round before it is marked unacceptable.
        convergence_tol: Relative size change under which a round counts as converged.
        convergence_rounds: Successive converged acceptable rounds that end the loop.
        max_rounds: Pruning rounds at most (round 0 not counted).
        epochs_per_round: Retraining epochs a round; must equal the controller's ``finetune_epochs``.
        rewind: ``"none"``, ``"lr"`` or ``"weights"`` (above).
        layer_weighting: ``N_i`` from ``"params"`` or ``"flops"``; default: ``"flops"`` for the FLOPs
            target, else ``"params"``.
        threshold_units: ``"quantile"`` (a fraction of the original filters) or ``"score"`` (above).
        reference: Accuracy target: ``"retrained"`` or ``"unpruned"`` (above).

    Budget: at most ``max_rounds * epochs_per_round`` epochs of rounds, rolled back or not, plus
    ``epochs_per_round`` for the reference retraining.

    The rule's ``T`` and ``lambda`` live in :class:`~lightning_prune.schedules.AdaptiveThresholdPlanner`;
    rollbacks are requests to the controller. ``report.json`` gains ``extra.rounds`` and ``extra.aap``.

    Example:
        >>> from lightning_prune import AdaptiveThresholdRollback, StructuredPruning
        >>> from lightning_prune.demos import DemoModule, demo_loaders, demo_trainer
        >>> aap = AdaptiveThresholdRollback(target="params", param_reduction=0.3, max_rounds=3)
        >>> demo_trainer([StructuredPruning(), aap]).fit(DemoModule(), *demo_loaders())
        >>> [r["round"] for r in aap.rounds], aap.stop_reason
        ([0, 1, 2, 3], 'max_rounds')
    """

    def __init__(
        self,
        monitor: str | None = None,
        mode: str | None = None,
        target: str = "accuracy",
        max_drop: float | None = 0.01,
        param_reduction: float | None = None,
        flops_reduction: float | None = None,
        threshold_init: float | None = None,
        lambda_init: float | None = None,
        max_rollbacks: int = 3,
        convergence_tol: float = 0.001,
        convergence_rounds: int = 3,
        max_rounds: int = 100,
        epochs_per_round: int = 1,
        rewind: str = "lr",
        layer_weighting: str | None = None,
        threshold_units: str = "quantile",
        reference: str = "retrained",
    ) -> None:
        checks.check_arguments(monitor=monitor, mode=mode, target=target, max_drop=max_drop, param_reduction=param_reduction,
                               flops_reduction=flops_reduction, threshold_init=threshold_init, lambda_init=lambda_init,
                               max_rollbacks=max_rollbacks, convergence_tol=convergence_tol,
                               convergence_rounds=convergence_rounds, max_rounds=max_rounds,
                               epochs_per_round=epochs_per_round, rewind=rewind, layer_weighting=layer_weighting,
                               threshold_units=threshold_units, reference=reference)
        self.monitor, self.mode, self.target = monitor, mode, target
        self._given = {"monitor": monitor, "mode": mode}
        self.max_drop = float(max_drop) if target == "accuracy" else None
        self.param_reduction = None if param_reduction is None else float(param_reduction)
        self.flops_reduction = None if flops_reduction is None else float(flops_reduction)
        self.threshold_units, self.reference = threshold_units, reference
        quantile = threshold_units == "quantile"
        self.lambda_init = float(lambda_init if lambda_init is not None else 0.05 if quantile else 0.005)
        self.threshold_init = float(threshold_init if threshold_init is not None else self.lambda_init if quantile else 0.0)
        self.max_rollbacks, self.convergence_tol = max_rollbacks, float(convergence_tol)
        self.convergence_rounds, self.max_rounds, self.epochs_per_round = convergence_rounds, max_rounds, epochs_per_round
        self.rewind = rewind
        self.layer_weighting = layer_weighting or ("flops" if target == "flops" else "params")
        self.planner = AdaptiveThresholdPlanner(self.threshold_init, self.lambda_init, self.layer_weighting,
                                                self.threshold_units)
        self._reset()

    def _reset(self) -> None:
        self.planner.threshold, self.planner.lam = self.threshold_init, self.lambda_init  # T, lambda of the next round
        self.planner.finished = False
        self.rounds: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.final_round: int | None = None
        self._round = 0  # number of the next round
        self._stack: list[dict[str, Any]] = []  # acceptable rounds the rule can return to, oldest first
        self._round0: dict[str, Any] | None = None  # round 0's entry, kept even when marked
        self._best: dict[str, Any] | None = None  # the best acceptable round so far, kept even when marked
        self._rollbacks: dict[int, int] = {}
        self._marked: list[int] = []
        self._stable = 0
        self._current: int | None = None  # the round whose snapshot the model equals now (once resolved)
        self._schedulers: list[dict[str, Any]] | None = None
        self._retrained: float | None = None  # the unpruned model's metric after one round's retraining on trial

    @property
    def threshold(self) -> float:
        """``T`` of the next round (the planner's)."""
        return self.planner.threshold

    @property
    def lam(self) -> float:
        """``lambda`` of the next round (the planner's)."""
        return self.planner.lam

    @property
    def finished(self) -> bool:
        """Whether the rule has stopped (the planner's plan is done)."""
        return self.planner.finished

    @property
    def last_layer_thresholds(self) -> dict[str, float]:
        """Per-layer thresholds of the latest round."""
        return self.planner.last_layer_thresholds

    # ------------------------------------------------------------------ identity and state
    def _hparams(self) -> dict[str, Any]:
        return {
            **self._given, "target": self.target, "max_drop": self.max_drop,
            "param_reduction": self.param_reduction, "flops_reduction": self.flops_reduction,
            "threshold_init": self.threshold_init, "lambda_init": self.lambda_init,
            "max_rollbacks": self.max_rollbacks, "convergence_tol": self.convergence_tol,
            "convergence_rounds": self.convergence_rounds, "max_rounds": self.max_rounds,
            "epochs_per_round": self.epochs_per_round, "rewind": self.rewind, "layer_weighting": self.layer_weighting,
            "threshold_units": self.threshold_units, "reference": self.reference,
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "hparams": self._hparams(),
            "threshold": self.planner.threshold, "lam": self.planner.lam, "rounds": [dict(r) for r in self.rounds],
            "finished": self.planner.finished, "stop_reason": self.stop_reason, "final_round": self.final_round,
            "round": self._round, "stack": list(self._stack), "round0": self._round0, "best": self._best,
            "rollbacks": [[k, v] for k, v in self._rollbacks.items()], "marked": list(self._marked),
            "stable": self._stable, "current": self._current, "spatial": dict(self.planner.spatial),
            "schedulers": self._schedulers, "retrained": self._retrained,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_resume_hparams(self, state_dict.get("hparams"), self._hparams())
        self.planner.threshold, self.planner.lam = float(state_dict["threshold"]), float(state_dict["lam"])
        self.rounds = [dict(r) for r in state_dict["rounds"]]
        self.planner.finished, self.stop_reason = bool(state_dict["finished"]), state_dict["stop_reason"]
        self.final_round = state_dict["final_round"]
        self._round = int(state_dict["round"])
        self._stack = list(state_dict["stack"])
        self._round0 = state_dict["round0"]
        self._best = state_dict["best"]
        self._rollbacks = {int(k): int(v) for k, v in state_dict["rollbacks"]}
        self._marked = [int(k) for k in state_dict["marked"]]
        self._stable = int(state_dict["stable"])
        self._current = state_dict["current"]
        self.planner.spatial = dict(state_dict["spatial"])
        self._schedulers = state_dict["schedulers"]
        self._retrained = state_dict.get("retrained")

    # ------------------------------------------------------------------ sizes
    def _size(self, params: int, macs: int) -> int:
        return macs if self.target == "flops" or (self.target == "accuracy" and self.layer_weighting == "flops") else params

    # ------------------------------------------------------------------ Lightning hooks and votes
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        controller = StructuredPruning.find(trainer, self)
        assert controller is not None
        check_single(trainer, self)
        adopt_monitor(self, controller)
        _check(controller.finetune_epochs == self.epochs_per_round,
               f"StructuredPruning.finetune_epochs={controller.finetune_epochs} differs from "
               f"AdaptiveThresholdRollback.epochs_per_round={self.epochs_per_round}",
               f"set finetune_epochs={self.epochs_per_round} on StructuredPruning (a round retrains that many epochs)")

    @override
    def provide_planner(self, controller: PruningController) -> PruningPlanner | None:
        return self.planner

    @override
    def report_section(self) -> dict[str, Any]:
        return {"rounds": [dict(r) for r in self.rounds], "aap": {
            "target": self.target, "max_drop": self.max_drop, "param_reduction": self.param_reduction,
            "flops_reduction": self.flops_reduction, "rewind": self.rewind, "layer_weighting": self.layer_weighting,
            "stop_reason": self.stop_reason, "final_round": self.final_round, "marked_unacceptable": list(self._marked),
            "snapshots_kept": len(self._kept()), "threshold_units": self.threshold_units,
            "reference": self.reference, "metric_retrained_unpruned": self._retrained,
            "reference_metric": self._reference_metric(self.rounds[0]["metric"]),
        }} if self.rounds else {}

    # ------------------------------------------------------------------ pruning events
    @override
    def on_pruning_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                         controller: PruningController) -> None:
        report = controller.report
        before = report.metric_before
        largest = largest_drop(before, self.mode)
        if self.target == "accuracy" and largest is not None and largest <= self.max_drop:  # type: ignore[operator]
            raise PruningConfigError(
                f"AdaptiveThresholdRollback(max_drop={self.max_drop:g}) accepts any model: {self.monitor} measured "
                f"{before:.4g} before pruning, so no drop can exceed max_drop",
                hint="max_drop is in the metric's units: use max_drop=0.01 for one point of an accuracy logged as a "
                "fraction (1.0 for one point of an accuracy logged in percent)",
            )
        self._reset()
        if self.layer_weighting == "flops":
            self.planner.spatial = structure.output_positions(pl_module, controller.example_input(trainer, pl_module),
                                                              list(self.planner.original))
        size = self._size(report.params_before, report.macs_before)
        entry = {"round": 0, "threshold": self.threshold_init - self.lambda_init, "lambda": self.lambda_init,
                 "size": size, "metric": report.metric_before, "snapshot": controller.snapshot(trainer, pl_module)}
        self._stack, self._round0, self._best, self._current = [entry], entry, entry, 0
        self.rounds.append({"round": 0, "threshold": None, "lambda": self.lambda_init, "params": report.params_before,
                            "macs": report.macs_before, "metric": report.metric_before, "acceptable": True,
                            "rolled_back_to": None})
        self._round = 1
        self.planner.finished = self.max_rounds < 1
        if self._judged_against_retraining() and not self.finished:
            controller.request(TrialStep(epochs=self.epochs_per_round, prune=False))

    @override
    def on_trial_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController) -> None:
        """The reference retraining of the unpruned model is done: its metric (the model is restored next)."""
        if not self._judged_against_retraining():
            return  # another satellite's trial
        # measured now, as the metric before pruning was: the trial epoch need not have validated
        self._retrained = controller.measure(trainer)
        before = controller.report.metric_before
        info(f"[lightning_prune] AAP reference: {self.monitor} {before:.4f} unpruned, {self._retrained:.4f} after "
             f"{self.epochs_per_round} epoch{'s' if self.epochs_per_round > 1 else ''} of retraining alone; rounds are "
             f"judged against {self._reference_metric(before):.4f}")

    @override
    def on_step_pruned(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController,
                       record: StepRecord) -> None:
        """After the round's prune, before its retraining: the rewinding."""
        self._current = None  # the model is no round's snapshot any more: a stop before the verdict restores the best
        if self.rewind == "weights" and self._round0 is not None:
            controller.request(RewindWeights(self._round0["snapshot"]["model"]))
        elif self.rewind == "none" and self._schedulers is not None:
            for config, state in zip(trainer.lr_scheduler_configs, self._schedulers):
                config.scheduler.load_state_dict(state)
                for group, lr in zip(config.scheduler.optimizer.param_groups, config.scheduler.get_last_lr()):
                    group["lr"] = lr

    @override
    def on_step_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController,
                    record: StepRecord) -> None:
        if self._round0 is None or self.finished:
            return
        if self.rewind == "none":
            self._schedulers = [snapshots.to_cpu(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs]
        r, size = self._round, self._size(record.params, record.macs)
        entry = {"round": r, "threshold": self.threshold, "lambda": self.lam, "params": record.params,
                 "macs": record.macs, "metric": record.metric_after_finetune,
                 "acceptable": self._acceptable(controller, record), "rolled_back_to": None}
        if entry["acceptable"]:
            previous = self._stack[-1]["size"] if self._stack else size
            pruned_any = size < self._round0["size"]
            converged = pruned_any and abs(previous - size) <= self.convergence_tol * max(previous, 1)
            self._stable = self._stable + 1 if converged else 0
            self._stack.append({"round": r, "threshold": self.threshold, "lambda": self.lam, "size": size,
                                "metric": record.metric_after_finetune,
                                "snapshot": controller.snapshot(trainer, pl_module)})
            self._current = r
            if self._rank(self._stack[-1]) > self._rank(self._best):  # type: ignore[arg-type]
                self._best = self._stack[-1]
            self.planner.threshold += self.lam
            if self._stable >= self.convergence_rounds:
                self._stop("converged")
            elif self._reached(size):
                self._stop("target reached")
        else:
            self._stable = 0
            self._current = None
            while self._stack and self._rollbacks.get(self._stack[-1]["round"], 0) >= self.max_rollbacks:
                self._marked.append(self._stack.pop()["round"])
            if self._stack:
                k = self._stack[-1]
                n = self._rollbacks[k["round"]] = self._rollbacks.get(k["round"], 0) + 1
                controller.request(RestoreSnapshot(k["snapshot"]))
                self._current = k["round"]
                self.planner.lam = k["lambda"] / 2.0**n
                self.planner.threshold = k["threshold"] + self.lam
                entry["rolled_back_to"] = k["round"]
            else:
                self._stop("no acceptable round left")
        self._round += 1
        self.rounds.append(entry)
        if self.planner.raised_from is not None:
            info(f"[lightning_prune] AAP round {r}: T {self.planner.raised_from:.4g} would prune nothing; raised to "
                 f"{entry['threshold']:.4g}, the smallest T that prunes a filter")
        info(f"[lightning_prune] AAP round {r}: T {entry['threshold']:.4g}, params {record.params:,}, "
             f"{self.monitor} {entry['metric'] if entry['metric'] is not None else float('nan'):.4f} -> "
             f"{'acceptable' if entry['acceptable'] else 'rolled back to round ' + str(entry['rolled_back_to'])}")
        if not self.finished and r >= self.max_rounds:
            self._stop("max_rounds")

    @override
    def on_pruning_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                       controller: PruningController) -> None:
        if self._round0 is None:
            return
        self.planner.finished = True
        if self.stop_reason is None:
            self.stop_reason = "stopped"
        best = self._best
        assert best is not None
        if self._current != best["round"]:
            controller.request(RestoreSnapshot(best["snapshot"]))
            self._current = best["round"]
        self.final_round = best["round"]
        info(f"[lightning_prune] AAP stopped ({self.stop_reason}); final model: round {best['round']}")
        if best["round"] == 0 and len(self.rounds) > 1:
            warn(checks.nothing_pruned_warning(self.rounds, stop_reason=self.stop_reason, target=self.target,
                                               monitor=self.monitor, drop=self._drop, max_drop=self.max_drop,
                                               reference=self.reference, against=self._reference_metric(self.rounds[0]["metric"])))

    # ------------------------------------------------------------------ the rule
    def _acceptable(self, controller: PruningController, record: StepRecord) -> bool:
        report = controller.report
        if self.target == "accuracy":
            metric, before = record.metric_after_finetune, self._reference_metric(report.metric_before)
            if metric is None or before is None or not math.isfinite(metric):
                return False
            return self._drop(before, metric) <= self.max_drop + _EPS  # type: ignore[operator]
        if self.target == "params":
            return 1 - record.params / max(report.params_before, 1) <= self.param_reduction + _EPS  # type: ignore[operator]
        return 1 - record.macs / max(report.macs_before, 1) <= self.flops_reduction + _EPS  # type: ignore[operator]

    def _reached(self, size: int) -> bool:
        """A size target met to within ``convergence_tol`` of the original size: more rounds only cost epochs."""
        goal = self.param_reduction if self.target == "params" else self.flops_reduction
        return goal is not None and goal - (1 - size / max(self._round0["size"], 1)) <= self.convergence_tol  # type: ignore[index]

    def _judged_against_retraining(self) -> bool:
        return self.target == "accuracy" and self.reference == "retrained"

    def _reference_metric(self, before: float | None) -> float | None:
        """What rounds are judged against: the unpruned model's metric, or (``reference="retrained"``) the
        worse of it and the unpruned model's after one round's retraining alone."""
        if self._retrained is None or before is None:
            return before
        return before if self._drop(before, self._retrained) <= 0 else self._retrained

    def _drop(self, before: float, metric: float) -> float:
        """How much worse ``metric`` is than ``before`` (negative: better)."""
        return before - metric if self.mode == "max" else metric - before

    def _rank(self, entry: dict[str, Any]) -> tuple[float, float, int]:
        """Order of acceptable rounds: smaller (= larger reduction), then better metric, then later."""
        sign = 1.0 if self.mode == "max" else -1.0
        metric = entry["metric"] if entry["metric"] is not None else -sign * math.inf
        return (-entry["size"], sign * metric, entry["round"])

    def _stop(self, reason: str) -> None:
        self.planner.finished, self.stop_reason = True, reason

    def snapshot_bytes(self) -> int:
        """CPU memory held by the kept snapshots (weights and optimizer states)."""
        return sum(snapshots.nbytes(entry["snapshot"]) for entry in self._kept())

    def _kept(self) -> list[dict[str, Any]]:
        kept = list(self._stack)
        for entry in (self._round0, self._best):
            if entry is not None and all(entry is not other for other in kept):
                kept.append(entry)
        return kept
