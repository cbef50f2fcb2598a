"""``GradualMagnitudePruning``: the controller of DG2PF's unstructured pruning and pruned fine-tuning."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from typing_extensions import override

from lightning_prune import _lightning, evaluation, plots
from lightning_prune._logging import info
from lightning_prune.callbacks import _gradual_checks as checks
from lightning_prune.callbacks.base import PruningController, check_resume_hparams
from lightning_prune.errors import check as _check
from lightning_prune.sparse import save_sparse
from lightning_prune.state import GradualPhase, GradualReport, Patience
from lightning_prune.structural import masks as M
from lightning_prune.structural import snapshot as snapshots
from lightning_prune.summary import gradual_summary

__all__ = ["DEFAULT_FINETUNE_OPTIMIZER", "GradualMagnitudePruning"]

#: File names of the compact sparse model: a finished run, and one stopped before its plan's end.
SPARSE_MODEL, SPARSE_MODEL_INCOMPLETE = "sparse_model.pt", "sparse_model.incomplete.pt"
#: Phase 2 of DG2PF (pruned fine-tuning): SGD, lr 1e-4, momentum 0.9, weight decay 5e-4.
DEFAULT_FINETUNE_OPTIMIZER: dict[str, Any] = {"name": "sgd", "lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4}
Phase = GradualPhase


class GradualMagnitudePruning(PruningController):
    """Gradual unstructured magnitude pruning, then training to convergence, then pruned fine-tuning.

    The run, in epochs (DG2PF, Alg. 1 and 2):

    1. ``pretrain_epochs`` plain epochs (0 for a pretrained model);
    2. **prune**: ``pruning_epochs`` epochs; at the start of each the weights are pruned to the next
       sparsity of the ``schedule`` (``"linear"``: ``s/E, 2s/E, ..., s``, the paper's; ``"cubic"``: Zhu &
       Gupta's, big steps first, :func:`~lightning_prune.structural.masks.cubic_sparsity_schedule`) by
       magnitude, over all prunable weights (``scope="global"``) or per tensor (``"layerwise"``).
       ``SimulatedPruning`` works during these epochs only;
    3. **converge**: training goes on until ``monitor`` has not improved for ``patience``
       validations, counted from the last pruning epoch (the first at full sparsity);
    4. **finetune** (``finetune=True``): satellites hear ``on_phase_change("finetune")`` (a
       ``SelfDistillation`` teacher detaches), the optimizer is
       replaced by ``finetune_optimizer`` (default SGD lr 1e-4, momentum 0.9, weight decay 5e-4;
       LR schedulers are dropped) and training goes on until ``monitor`` has not improved on the
       score at the switch for ``finetune_patience`` validations; then the controller stops the Trainer.

    The Trainer's ``max_epochs`` is extended as needed; ``max_epochs`` here caps the whole run. With
    ``restore_best`` the weights handed back are those of the best validation at full sparsity (masks
    unchanged), wherever the run ends; ``report.best_epoch`` names it.

    Masks are ``bool`` tensors keyed by parameter name, kept by this callback (and in its checkpoint
    state); parameters keep their names, shapes and ``state_dict`` keys. Pruned weights are exact
    zeros through every optimizer step: their gradients are zeroed before each step, their optimizer
    state (momentum, Adam moments) is zeroed when they are pruned, and the weights are re-zeroed after
    every training batch. ``report.json`` (:class:`~lightning_prune.state.GradualReport`) and, with ``save_sparse_model``,
    ``sparse_model.pt`` (:func:`lightning_prune.sparse.save_sparse`) are written on rank zero.

    Args:
        sparsity: Final fraction of prunable weights set to zero, in (0, 1).
        pruning_epochs: Epochs over which sparsity rises (one prune at the start of each).
        schedule: How it rises: ``"linear"`` (DG2PF) or ``"cubic"`` (Zhu & Gupta's gradual pruning).
        scope: ``"global"`` (one magnitude ranking over all prunable weights) or ``"layerwise"``.
        monitor: The metric the module logs in validation, e.g. ``"val_acc"``.
        mode: ``"max"`` if higher ``monitor`` is better, else ``"min"``.
        patience: Validations without improvement that end the converge phase (0: end at once).
        min_delta: Smallest change of ``monitor`` that counts as an improvement.
        pretrain_epochs: Plain training epochs before the first prune.
        include_bias: Also prune conv/linear biases.
        include_norm: Also prune norm layers' affine parameters.
        ignored_layers: Module or parameter names, or glob patterns (``"model.linear"``,
            ``"model.layer3.*"``), never pruned.
        finetune: Run the pruned fine-tuning phase after the converge phase.
        finetune_optimizer: ``{"name": ..., **kwargs}``; name ``"sgd"`` (missing keys from the paper's
            defaults), ``"adam"``, ``"adamw"``, a class path such as ``"torch.optim.RMSprop"``, or
            ``"module"`` (call ``configure_optimizers`` again). ``None``: the paper's SGD.
        finetune_patience: Patience of the fine-tuning phase, >= 1 (``None``: ``max(patience, 1)``).
        max_epochs: Cap on the epochs of the whole run (``None``: none); the run ends where it is.
        eval_batches: Measure the metric before pruning on this many validation batches (``None``: all).
        output_dir: Where ``report.json`` and ``sparse_model.pt`` go (default: ``trainer.log_dir``).
        save_sparse_model: Write ``sparse_model.pt`` (bitmask + values) and its size to the report.
        restore_best: At the end, put back the weights of the best validation at full sparsity (a CPU
            copy is kept, and saved in checkpoints); ``False`` hands back the last epoch's weights.

    Example:
        >>> from lightning_prune import GradualMagnitudePruning, SelfDistillation, SimulatedPruning
        >>> from lightning_prune.demos import DemoModule, demo_loaders, demo_trainer
        >>> pruning = GradualMagnitudePruning(sparsity=0.9, pruning_epochs=15, patience=4)
        >>> pruning.schedule[:3]
        [0.06, 0.12, 0.18]
        >>> pruning = GradualMagnitudePruning(sparsity=0.5, pruning_epochs=2, patience=0, finetune_patience=1)
        >>> demo_trainer([pruning, SimulatedPruning(0.1), SelfDistillation()]).fit(DemoModule(), *demo_loaders())
        >>> round(pruning.report.sparsity["overall"], 2), pruning.report.completed
        (0.5, True)
    """

    def __init__(
        self,
        sparsity: float = 0.9,
        pruning_epochs: int = 15,
        schedule: str = "linear",
        scope: str = "global",
        monitor: str = "val_acc",
        mode: str = "max",
        patience: int = 4,
        min_delta: float = 0.0,
        pretrain_epochs: int = 0,
        include_bias: bool = False,
        include_norm: bool = False,
        ignored_layers: list[str] | None = None,
        finetune: bool = True,
        finetune_optimizer: dict[str, Any] | None = None,
        finetune_patience: int | None = None,
        max_epochs: int | None = None,
        eval_batches: int | None = None,
        output_dir: str | None = None,
        save_sparse_model: bool = True,
        restore_best: bool = True,
    ) -> None:
        super().__init__()
        ignored = [ignored_layers] if isinstance(ignored_layers, str) else list(ignored_layers or [])
        checks.check_arguments(sparsity=sparsity, pruning_epochs=pruning_epochs, schedule=schedule, scope=scope,
                               monitor=monitor, mode=mode, patience=patience, min_delta=min_delta, ignored=ignored,
                               pretrain_epochs=pretrain_epochs, finetune_patience=finetune_patience,
                               max_epochs=max_epochs, eval_batches=eval_batches, restore_best=restore_best)
        sgd = {k: v for k, v in DEFAULT_FINETUNE_OPTIMIZER.items() if k != "name"}
        self.finetune_spec = (_lightning.optimizer_spec(finetune_optimizer, sgd, "finetune_optimizer") if finetune
                              else ("sgd", {}))
        self.sparsity, self.pruning_epochs, self.scope = float(sparsity), pruning_epochs, scope
        self.schedule_kind, self.restore_best = schedule, restore_best
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, float(min_delta)
        self.pretrain_epochs, self.include_bias, self.include_norm = pretrain_epochs, include_bias, include_norm
        self.ignored_layers, self.finetune = ignored, finetune
        self.finetune_patience = finetune_patience if finetune_patience is not None else max(patience, 1)
        self.max_epochs, self.eval_batches = max_epochs, eval_batches
        self.output_dir, self.save_sparse_model = output_dir, save_sparse_model
        self.schedule = M.sparsity_schedule(schedule, self.sparsity, pruning_epochs)
        self.report = GradualReport(target_sparsity=self.sparsity, scope=scope, schedule=list(self.schedule),
                                    monitor=monitor, prunes_planned=pruning_epochs)
        self._phase = Phase.PRETRAIN
        self._prunes_done = 0
        self._patience = Patience(mode=mode, min_delta=self.min_delta)
        self._switched = False
        self._started_epoch: int | None = None
        self._last_val: tuple[int, float] | None = None
        self._masks: dict[str, Tensor] = {}
        self._params: dict[str, torch.nn.Parameter] = {}
        self._epoch_phase: GradualPhase | None = None
        self._epoch_started: float | None = None
        self._elapsed_before = 0.0
        self._best = snapshots.BestWeights(mode)

    # ------------------------------------------------------------------ public state
    @property
    def phase(self) -> GradualPhase:
        """The current phase (a ``str``: ``"pretrain"``, ``"prune"``, ``"converge"``, ``"finetune"``, ``"done"``)."""
        return self._phase

    @property
    def pruning(self) -> bool:
        """True during the pruning epochs (where ``SimulatedPruning`` is active)."""
        return self._phase is Phase.PRUNE

    @property
    def masks(self) -> dict[str, Tensor]:
        """Parameter name -> ``bool`` keep-mask (empty before the first prune)."""
        return self._masks

    @property
    def parameters(self) -> dict[str, torch.nn.Parameter]:
        """Parameter name -> the prunable parameters of the module being trained."""
        return self._params

    def _hparams(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity, "pruning_epochs": self.pruning_epochs, "schedule": self.schedule_kind,
            "scope": self.scope, "restore_best": self.restore_best,
            "monitor": self.monitor, "mode": self.mode, "patience": self.patience, "min_delta": self.min_delta,
            "pretrain_epochs": self.pretrain_epochs, "include_bias": self.include_bias,
            "include_norm": self.include_norm, "ignored_layers": self.ignored_layers, "finetune": self.finetune,
            "finetune_optimizer": [self.finetune_spec[0], self.finetune_spec[1]],
            "finetune_patience": self.finetune_patience, "max_epochs": self.max_epochs,
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "hparams": self._hparams(), "phase": self._phase.value, "prunes_done": self._prunes_done,
            "best": self._patience.best, "wait": self._patience.wait,
            "last_val": list(self._last_val) if self._last_val is not None else None,
            "switched": self._switched, "started_epoch": self._started_epoch,
            "masks": {name: mask.detach().cpu().clone() for name, mask in self._masks.items()},
            "report": self.report.to_dict(), "seconds_elapsed": self._elapsed(),
            "best_weights": self._best.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_resume_hparams(self, state_dict.get("hparams"), self._hparams())
        self._phase = Phase(state_dict["phase"])
        self._prunes_done = state_dict["prunes_done"]
        self._patience.best, self._patience.wait = state_dict["best"], state_dict["wait"]
        last = state_dict["last_val"]
        self._last_val = (int(last[0]), float(last[1])) if last is not None else None
        self._switched = bool(state_dict["switched"])
        self._started_epoch = state_dict["started_epoch"]
        self._masks = {name: mask.bool() for name, mask in state_dict["masks"].items()}
        self.report = GradualReport.from_dict(state_dict["report"])
        self._elapsed_before = float(state_dict["seconds_elapsed"])
        if "best_weights" in state_dict:
            self._best.load_state_dict(state_dict["best_weights"])
        self._clock_start = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_params"], state["_satellites"] = {}, []
        state["_masks"] = {name: mask.detach().cpu() for name, mask in self._masks.items()}
        return state

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._setup_controller(trainer, pl_module)
        self._params = self._prunable(pl_module)
        checks.check_module(pl_module, self.ignored_layers, self._params)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _lightning.unguard_checkpoint_loading(trainer)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._params = self._prunable(pl_module)
        self._clock_start = time.perf_counter()
        self._allow_resume(trainer)
        if self._masks:  # resumed: masks back on the device, before Lightning restores optimizer state
            self._masks = {n: m.to(self._params[n].device) for n, m in self._masks.items() if n in self._params}
            M.apply_masks(self._params, self._masks)
            if self._switched:
                _lightning.replace_optimizers(trainer, pl_module, self.finetune_spec)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = time.perf_counter()
        if self._started_epoch == trainer.current_epoch and self._phase is not Phase.DONE:
            self._epoch_phase = self._phase  # resumed from a mid-epoch checkpoint: this epoch's start already ran
            return
        self._started_epoch = trainer.current_epoch
        if self._phase is Phase.DONE or self._over_budget(trainer.current_epoch):
            self._finish(trainer)
            self._epoch_phase = None
            return
        if self._phase is Phase.PRETRAIN and self.report.epochs["pretrain"] >= self.pretrain_epochs:
            self._start_pruning(trainer, pl_module)
        if self._phase is Phase.PRUNE and self._prunes_done == self.pruning_epochs:
            self._enter(trainer, pl_module, Phase.CONVERGE, None)  # the last pruning epoch did not validate
        if self._phase is Phase.PRUNE:
            self._prune(trainer, self.schedule[self._prunes_done])
            self._prunes_done += 1
        self._epoch_phase = self._phase
        self.report.epochs[self._phase.value] += 1

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._masks:
            M.mask_gradients(self._params, self._masks)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._masks:
            M.apply_masks(self._params, self._masks)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._measuring or self._epoch_phase is None or self._phase is Phase.DONE:
            return
        value = float(trainer.strategy.broadcast(evaluation.monitored_value(trainer, self.monitor), src=0))
        epoch = trainer.current_epoch
        self._last_val = (epoch, value)
        target = self.schedule[self._prunes_done - 1] if self._prunes_done else 0.0
        self.report.history.append({"epoch": epoch, "phase": self._epoch_phase.value, "target_sparsity": target,
                                    "sparsity": self._overall_sparsity(), "metric": value})
        if self.restore_best and self._prunes_done == self.pruning_epochs:  # at full sparsity: a candidate
            self._best.offer(epoch, value, pl_module)
        if self._phase is Phase.PRUNE and self._prunes_done == self.pruning_epochs:
            self._enter(trainer, pl_module, Phase.CONVERGE, value)  # counting starts at full sparsity
            if self.patience == 0:
                self._end_converge(trainer, pl_module, value)
        elif self._phase is Phase.CONVERGE:
            if self._update(value) >= self.patience:
                self._end_converge(trainer, pl_module, value)
        elif self._phase is Phase.FINETUNE and self._update(value) >= self.finetune_patience:
            self._finish(trainer)
        if self._phase is not Phase.DONE and self._over_budget(epoch + 1):
            self._finish(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_phase is not None and self._epoch_started is not None:
            self.report.seconds[self._epoch_phase.value] += time.perf_counter() - self._epoch_started
        self._epoch_started = None
        if self._phase is not Phase.DONE and self._over_budget(trainer.current_epoch + 1):
            self._finish(trainer)
        if self._phase is not Phase.DONE:
            _lightning.keep_running(trainer)  # the plan is not finished yet

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._phase is not Phase.DONE:
            _check(not (self.report.epochs["pretrain"] == 0 and not self._masks
                        and _lightning.no_training_batches(trainer)),
                   "the training dataloader has no batches: GradualMagnitudePruning cannot run its plan",
                   "check the DataModule's train split and batch_size")
            self.report.completed, self.report.stop_reason = False, _lightning.stop_reason(trainer)
            info(f"[lightning_prune] the fit stopped before the pruning plan was complete "
                 f"({self.report.stop_reason}): {self._prunes_done} of {self.pruning_epochs} prunes done, "
                 f"phase {self._phase.value}")
        self._restore_best(pl_module)
        self._summarise()
        if not trainer.is_global_zero:
            return
        out = self._out if self._out is not None else Path(self.output_dir or trainer.default_root_dir)
        name = SPARSE_MODEL if self.report.completed else SPARSE_MODEL_INCOMPLETE
        if self.save_sparse_model:
            self.report.size = save_sparse(pl_module, out / name, completed=self.report.completed)
        self.report.write(out / "report.json")
        plotted = plots.write_plot(self.report.to_dict(), out / "report.png")
        for line in gradual_summary(self.report, name):
            info(line)
        info(f"[lightning_prune] wrote {out / 'report.json'}{' and report.png' if plotted else ''}")

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.report.prunes_done = self._prunes_done
        self._exception_report(trainer, exception, started=bool(self._masks) and self._phase is not Phase.DONE)

    # ------------------------------------------------------------------ services
    @override
    def snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizers: bool = True) -> dict[str, Any]:
        return {"model": snapshots.capture(pl_module), "masks": {n: m.cpu().clone() for n, m in self._masks.items()},
                "optimizers": [snapshots.to_cpu(o.state_dict()) for o in trainer.optimizers] if optimizers else []}

    @override
    def restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule, snapshot: dict[str, Any]) -> None:
        snapshots.restore(pl_module, snapshot["model"])
        self._params = self._prunable(pl_module)
        self._masks = {n: m.to(self._params[n].device) for n, m in snapshot["masks"].items()}
        for optimizer, state in zip(trainer.optimizers, snapshot["optimizers"]):
            optimizer.load_state_dict(state)

    # ------------------------------------------------------------------ the plan
    def _prunable(self, pl_module: pl.LightningModule) -> dict[str, torch.nn.Parameter]:
        return M.prunable_parameters(pl_module, self.include_bias, self.include_norm, self.ignored_layers)

    def _elapsed(self) -> float:
        return self._elapsed_before + super()._elapsed()

    def _over_budget(self, epochs_done: int) -> bool:
        return self.max_epochs is not None and epochs_done >= self.max_epochs

    def _update(self, value: float) -> int:
        """Patience bookkeeping; returns the number of validations without improvement."""
        wait = self._patience.update(value)
        self.report.best_metric[self._phase.value] = self._patience.best  # type: ignore[assignment]
        return wait

    def _enter(self, trainer: pl.Trainer, pl_module: pl.LightningModule, phase: GradualPhase,
               baseline: float | None) -> None:
        self._phase = phase
        self._patience.reset(baseline)
        if baseline is not None:
            self.report.best_metric[phase.value] = baseline
        self._dispatch("on_phase_change", trainer, pl_module, phase)

    def _start_pruning(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        previous = trainer.current_epoch - 1
        if self._last_val is not None and self._last_val[0] == previous:
            self.report.metric_before = self._last_val[1]
        else:
            self.report.metric_before = self.measure(trainer)
        checks.check_min_delta(self.min_delta, self.report.metric_before, self.mode, self.monitor)
        info(f"[lightning_prune] {self.monitor} before pruning: {self.report.metric_before:.4f}; "
             f"{len(self._params)} tensors, {sum(p.numel() for p in self._params.values()):,} prunable weights")
        self._dispatch("on_pruning_start", trainer, pl_module)
        self._enter(trainer, pl_module, Phase.PRUNE, None)

    def _prune(self, trainer: pl.Trainer, target: float) -> None:
        masks = M.magnitude_masks(self._params, target, self.scope, self._masks)
        if trainer.world_size > 1:  # every rank holds the same weights; rank zero's decision is the one
            cpu = trainer.strategy.broadcast({n: m.cpu() for n, m in masks.items()}, src=0)
            masks = {n: m.to(self._params[n].device) for n, m in cpu.items()}
        self._masks = masks
        M.apply_masks(self._params, masks)
        M.mask_optimizer_state(trainer.optimizers, self._params, masks)
        achieved = self._overall_sparsity()
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"prune/target_sparsity": target, "prune/sparsity": achieved},
                                   step=trainer.global_step)
        info(f"[lightning_prune] epoch {trainer.current_epoch}: pruned to sparsity {achieved:.4f} "
             f"(step {self._prunes_done + 1}/{self.pruning_epochs}, target {target:.4f}, {self.scope})")

    def _overall_sparsity(self) -> float:
        kept = sum(int(m.sum()) for m in self._masks.values())
        total = sum(p.numel() for p in self._params.values())
        return 1.0 - kept / total if total and self._masks else 0.0

    def _end_converge(self, trainer: pl.Trainer, pl_module: pl.LightningModule, value: float) -> None:
        if not self.finetune:
            self._finish(trainer)
            return
        _lightning.replace_optimizers(trainer, pl_module, self.finetune_spec)
        self._switched = True
        self._enter(trainer, pl_module, Phase.FINETUNE, value)
        name, kwargs = self.finetune_spec
        info(f"[lightning_prune] epoch {trainer.current_epoch}: {self.monitor} stopped improving; pruned "
             f"fine-tuning with {name} {kwargs}, no teacher, masks kept")

    def _finish(self, trainer: pl.Trainer) -> None:
        if self._phase is not Phase.DONE:
            if self._prunes_done < self.pruning_epochs:  # the epoch cap came before the target sparsity
                self.report.stop_reason = f"max_epochs={self.max_epochs} (GradualMagnitudePruning) reached " \
                                          f"after {self._prunes_done} of {self.pruning_epochs} prunes"
            else:
                self.report.completed = True
            self._phase = Phase.DONE
            self._dispatch("on_phase_change", trainer, trainer.lightning_module, Phase.DONE)
            info(f"[lightning_prune] epoch {trainer.current_epoch}: done")
        _lightning.end_on_should_stop(trainer)

    def _restore_best(self, pl_module: pl.LightningModule) -> None:
        """Hand back the best validated weights at full sparsity (every rank decides alike: the value is broadcast)."""
        best = self._best
        if best.epoch is None or self._last_val is None:
            return
        self.report.best_epoch, self.report.restored_best = best.epoch, True
        if best.epoch != self._last_val[0]:
            best.restore(pl_module)
            M.apply_masks(self._params, self._masks)
            info(f"[lightning_prune] restored the weights of epoch {best.epoch} ({self.monitor} {best.value:.4f}, "
                 f"the best at full sparsity; the last epoch, {self._last_val[0]}, had {self._last_val[1]:.4f})")

    def _summarise(self) -> None:
        self.report.prunes_done = self._prunes_done
        last = self._last_val[1] if self._last_val is not None else None
        self.report.metric_after = self._best.value if self.report.restored_best else last
        self.report.sparsity = M.sparsity_stats(self._params)
        self.report.seconds_total = self._elapsed()
