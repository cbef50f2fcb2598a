"""ICE-Pruning's satellites: skip fine-tuning by threshold, layer freezing, pruning-aware LR.

Each works with :class:`~lightning_prune.StructuredPruning` (found by type in ``setup``); together
with the blockwise schedule and L1 importance they are the ICE-Pruning pipeline (Hu et al., 2025).
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from lightning_prune._logging import info
from lightning_prune.callbacks.base import (
    PruningSatellite,
    check_resume_hparams,
    check_same_monitor,
    check_single,
    find_controller,
)
from lightning_prune.callbacks.structured import StructuredPruning
from lightning_prune.errors import PruningConfigError
from lightning_prune.errors import check as _check
from lightning_prune.state import StepRecord
from lightning_prune.structural import graph as structure


def _drop(reference: float, current: float, mode: str) -> float:
    """How much worse ``current`` is than ``reference`` (positive = worse)."""
    return reference - current if mode == "max" else current - reference


class ThresholdSkipFineTune(PruningSatellite, Callback):
    """Fine-tune a pruning step only if the metric dropped by at least ``threshold``.

    After each step the controller measures ``monitor`` before any fine-tuning; if the drop versus
    ``reference`` is under ``threshold`` the step is not fine-tuned and the next one is pruned at
    once (no training batch, no optimizer step). Thresholds are in the metric's own units: with
    accuracy logged as a fraction, one point is 0.01.

    Args:
        monitor: Must be the controller's monitor.
        threshold: Fine-tune when ``drop >= threshold`` (>= 0), in the metric's units: the default 0.01 is
            one point of accuracy logged as a fraction (use 1.0 for accuracy logged in percent). A
            threshold the drop can never reach (above the unpruned model's metric, for a non-negative
            ``"max"`` metric) is refused when pruning starts.
        mode: ``"max"`` if higher is better, else ``"min"``.
        reference: ``"original"`` (the unpruned model, as the authors' code) or ``"previous"`` (the
            metric before this step, i.e. after the previous step's fine-tuning).
        eval_batches: Measure on the first this many validation batches (sets the controller's).
        recover: The paper's case 4: fine-tune a step up to ``max_finetune_epochs`` epochs, stopping
            as soon as the drop is back under the threshold (checked after each epoch's validation).
        max_finetune_epochs: Upper bound of fine-tuning epochs per step with ``recover``.

    Example:
        >>> skip = ThresholdSkipFineTune(threshold=0.01)  # one accuracy point
    """

    def __init__(
        self,
        monitor: str = "val_acc",
        threshold: float = 0.01,
        mode: str = "max",
        reference: str = "original",
        eval_batches: int | None = None,
        recover: bool = False,
        max_finetune_epochs: int = 1,
    ) -> None:
        _check(isinstance(threshold, int | float) and threshold >= 0 and math.isfinite(threshold),
               f"threshold={threshold!r} must be a finite number >= 0",
               "thresholds are in the metric's units: 0.01 is one point of accuracy logged as a fraction")
        _check(mode in ("min", "max"), f"mode={mode!r} is unknown; valid: min, max", "use mode='max' for accuracy")
        _check(reference in ("original", "previous"), f"reference={reference!r} is unknown; valid: original, previous",
               "use 'original' (as the ICE authors) or 'previous'")
        _check(eval_batches is None or (isinstance(eval_batches, int) and eval_batches >= 1),
               f"eval_batches={eval_batches!r} must be None or an integer >= 1", "use None to validate on all batches")
        _check(isinstance(max_finetune_epochs, int) and max_finetune_epochs >= 1,
               f"max_finetune_epochs={max_finetune_epochs!r} must be an integer >= 1", "use e.g. max_finetune_epochs=3")
        self.monitor, self.threshold, self.mode, self.reference = monitor, float(threshold), mode, reference
        self.eval_batches, self.recover, self.max_finetune_epochs = eval_batches, recover, max_finetune_epochs
        self.decisions: list[dict[str, Any]] = []
        self._controller: StructuredPruning | None = None

    def _hparams(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "threshold": self.threshold, "mode": self.mode, "reference": self.reference,
                "eval_batches": self.eval_batches, "recover": self.recover,
                "max_finetune_epochs": self.max_finetune_epochs}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"hparams": self._hparams(), "decisions": [dict(d) for d in self.decisions]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_resume_hparams(self, state_dict.get("hparams"), self._hparams())
        self.decisions = [dict(d) for d in state_dict["decisions"]]

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        controller = find_controller(trainer, self)
        check_single(trainer, self)
        check_same_monitor(self, controller)
        if self.eval_batches is not None:
            _check(controller.eval_batches in (None, self.eval_batches),
                   f"eval_batches={self.eval_batches} differs from StructuredPruning's {controller.eval_batches}",
                   "set eval_batches on one of them only")
            controller.eval_batches = self.eval_batches
        self._controller = controller

    @override
    def on_pruning_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning) -> None:
        """Refuse a threshold the drop can never reach, before the first surgery."""
        before = controller.report.metric_before
        if before is not None and self.mode == "max" and 0 <= before < self.threshold:
            raise PruningConfigError(
                f"ThresholdSkipFineTune(threshold={self.threshold:g}) can never be reached: {self.monitor} measured "
                f"{before:.4g} before pruning, so no step can drop it by more than {before:.4g} and no step "
                "would ever be fine-tuned",
                hint="thresholds are in the metric's units: use threshold=0.01 for one point of an accuracy "
                "logged as a fraction (1.0 for one point of an accuracy logged in percent)",
            )

    def _reference_value(self, controller: StructuredPruning, record: StepRecord) -> float:
        assert controller.report.metric_before is not None
        if self.reference == "original":
            return controller.report.metric_before
        earlier = [s for s in controller.report.steps if s.step < record.step]
        value = earlier[-1].metric_after_finetune if earlier else None
        return controller.report.metric_before if value is None else value

    @override
    def finetune_decision(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning,
                          record: StepRecord) -> bool:
        assert record.metric_after_prune is not None
        drop = _drop(self._reference_value(controller, record), record.metric_after_prune, self.mode)
        finetune = drop >= self.threshold
        self.decisions.append({"step": record.step, "drop": drop, "finetune": finetune})
        controller.report.extra["threshold_skip"] = {"threshold": self.threshold, "reference": self.reference,
                                                     "decisions": self.decisions}
        return finetune

    @override
    def planned_finetune_epochs(self, controller: StructuredPruning) -> int | None:
        return self.max_finetune_epochs if self.recover else None

    @override
    def continue_finetuning(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning,
                            record: StepRecord) -> bool | None:
        if not self.recover:
            return None
        value = controller.last_validation()
        if value is None:
            value = controller.measure(trainer)
        return _drop(self._reference_value(controller, record), value, self.mode) >= self.threshold


def pruning_aware_lr(remaining: float, lr_base: float, delta: float, midpoint: float, beta: float) -> float:
    """ICE-Pruning's eq. 1: ``lr_base - delta / (1 + (a / (2 (1 - p) - a)) ** beta)``.

    A smooth step from ``lr_base`` (nothing pruned, ``a = 1``) down to ``lr_base - delta``, centred
    at ``a = 1 - p``. Where ``2 (1 - p) - a <= 0`` (only ``a = 1, p = 0.5``) the ratio is infinite
    and the rate is ``lr_base``.

    Example:
        >>> round(pruning_aware_lr(0.5, 1e-3, 7.5e-4, 0.12, 50.0), 6)
        0.00025
    """
    denominator = 2 * (1 - midpoint) - remaining
    if denominator <= 0:
        return lr_base
    ratio = remaining / denominator
    try:
        power = ratio**beta
    except OverflowError:
        return lr_base
    return lr_base - delta / (1 + power)


def _conv_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd))


class PruningAwareLR(PruningSatellite, Callback):
    """Set the fine-tuning learning rate's upper bound from how much has been pruned (ICE eq. 1).

    After every structural change (when the controller has rebuilt the optimizers), ``lr_max`` is
    computed from ``a``, the remaining fraction of conv weight parameters, and becomes the peak of
    whatever the optimizer and scheduler do: a constant LR becomes ``lr_max``; ``initial_lr`` /
    ``max_lr`` / ``min_lr`` of the param groups and a scheduler's ``base_lrs`` are rescaled by the same
    factor (ratios between param groups are kept; the largest becomes ``lr_max``). Logged as
    ``prune/lr_max``.

    Args:
        lr_base: Peak LR for the unpruned model.
        delta: Total decrease, ``0 < delta < lr_base``.
        midpoint: Pruning level ``p`` at which half of ``delta`` is reached, ``0 < p <= 0.5``.
        beta: Sharpness of the step, ``> 0``.

    Example:
        >>> lr = PruningAwareLR(lr_base=1e-3, delta=7.5e-4, midpoint=0.12, beta=50.0)
    """

    def __init__(self, lr_base: float = 1e-3, delta: float = 7.5e-4, midpoint: float = 0.12, beta: float = 50.0) -> None:
        _check(isinstance(lr_base, int | float) and lr_base > 0, f"lr_base={lr_base!r} must be > 0", "use e.g. 1e-3")
        _check(isinstance(delta, int | float) and 0 < delta < lr_base,
               f"delta={delta!r} must be in (0, lr_base={lr_base!r})", "use e.g. delta=0.75 * lr_base")
        _check(isinstance(midpoint, int | float) and 0 < midpoint <= 0.5,
               f"midpoint={midpoint!r} must be in (0, 0.5]", "use e.g. midpoint=0.12")
        _check(isinstance(beta, int | float) and beta > 0, f"beta={beta!r} must be > 0", "use e.g. beta=50")
        self.lr_base, self.delta, self.midpoint, self.beta = float(lr_base), float(delta), float(midpoint), float(beta)
        self.original: int | None = None
        self.history: list[dict[str, float]] = []

    def _hparams(self) -> dict[str, Any]:
        return {"lr_base": self.lr_base, "delta": self.delta, "midpoint": self.midpoint, "beta": self.beta}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"hparams": self._hparams(), "original": self.original, "history": [dict(h) for h in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_resume_hparams(self, state_dict.get("hparams"), self._hparams())
        self.original = state_dict["original"]
        self.history = [dict(h) for h in state_dict["history"]]

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            find_controller(trainer, self)
            check_single(trainer, self)

    def lr_max(self, remaining: float) -> float:
        """Eq. 1 with this callback's hyperparameters."""
        return pruning_aware_lr(remaining, self.lr_base, self.delta, self.midpoint, self.beta)

    @override
    def on_pruning_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning) -> None:
        if self.original is None:
            self.original = _conv_weights(pl_module)

    @override
    def on_structure_changed(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             controller: StructuredPruning) -> None:
        if self.original is None:
            self.original = _conv_weights(pl_module)
        remaining = _conv_weights(pl_module) / max(1, self.original)
        lr_max = self.lr_max(remaining)
        _rescale(trainer, lr_max)
        self.history.append({"remaining": remaining, "lr_max": lr_max})
        controller.report.extra["pruning_aware_lr"] = self.history
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"prune/lr_max": lr_max, "prune/remaining": remaining}, step=trainer.global_step)


_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


def _rescale(trainer: pl.Trainer, lr_max: float) -> None:
    """Make ``lr_max`` the peak of every optimizer's (and scheduler's) learning rate."""
    for optimizer in trainer.optimizers:
        peaks = [float(g.get("max_lr", g.get("initial_lr", g["lr"]))) for g in optimizer.param_groups]
        factor = lr_max / max(max(peaks), 1e-30)
        for group in optimizer.param_groups:
            for key in _LR_KEYS:
                if key in group:
                    group[key] = group[key] * factor
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if getattr(scheduler, "optimizer", None) is optimizer and hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
                if hasattr(scheduler, "_last_lr"):
                    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


class LayerFreezer(PruningSatellite, Callback):
    """Freeze the conv layers that move least during fine-tuning (ICE-Pruning's layer freezing).

    A probe prunes the first component on trial and fine-tunes one epoch; every conv layer is scored
    by ``| sum|W_after| - sum|W_before| | / ||W_original||_2`` (L1 norms after vs. before that epoch,
    over the original L2 norm); the unpruned model is then restored and the ``ceil(freeze_fraction *
    n)`` lowest-scoring convs are frozen (``requires_grad=False``, so they cost no weight-gradient
    computation), with their BatchNorm when ``freeze_bn``. Frozen layers are still pruned and stay
    frozen across every structural change and across resume. The probe's time is reported in
    ``report.json`` under ``extra.probe``.

    Args:
        freeze_fraction: Fraction of conv layers to freeze, in [0, 1].
        probe: ``"first_component"`` (the only probe: the authors').
        freeze_bn: Also freeze the affine parameters of each frozen conv's BatchNorm.
        freeze_bn_stats: Also stop those BatchNorms' running statistics (eval mode during
            training); the authors' code keeps them updating.

    Example:
        >>> freezer = LayerFreezer(freeze_fraction=0.3)
    """

    def __init__(self, freeze_fraction: float = 0.3, probe: str = "first_component", freeze_bn: bool = True,
                 freeze_bn_stats: bool = False) -> None:
        _check(isinstance(freeze_fraction, int | float) and 0 <= freeze_fraction <= 1,
               f"freeze_fraction={freeze_fraction!r} must be in [0, 1]", "use e.g. 0.3 to freeze 30 % of the conv layers")
        _check(probe == "first_component", f"probe={probe!r} is unknown; valid: first_component",
               "use probe='first_component'")
        self.freeze_fraction, self.probe, self.freeze_bn, self.freeze_bn_stats = (
            float(freeze_fraction), probe, freeze_bn, freeze_bn_stats)
        self.frozen: list[str] | None = None  # conv names, decided by the probe
        self.norms: dict[str, str] = {}
        self.scores: dict[str, float] = {}
        self._measurements: dict[str, dict[str, float]] = {}

    def _hparams(self) -> dict[str, Any]:
        return {"freeze_fraction": self.freeze_fraction, "probe": self.probe, "freeze_bn": self.freeze_bn,
                "freeze_bn_stats": self.freeze_bn_stats}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"hparams": self._hparams(), "frozen": self.frozen, "norms": dict(self.norms), "scores": dict(self.scores),
                "measurements": {k: dict(v) for k, v in self._measurements.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_resume_hparams(self, state_dict.get("hparams"), self._hparams())
        self.frozen = state_dict["frozen"]
        self.norms = dict(state_dict["norms"])
        self.scores = dict(state_dict["scores"])
        self._measurements = {k: dict(v) for k, v in state_dict["measurements"].items()}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            find_controller(trainer, self)
            check_single(trainer, self)

    @override
    def wants_probe(self, controller: StructuredPruning) -> bool:
        return self.frozen is None

    def _convs(self, pl_module: pl.LightningModule) -> dict[str, nn.Module]:
        return {n: m for n, m in pl_module.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}

    def _l1(self, pl_module: pl.LightningModule) -> dict[str, float]:
        return {n: float(m.weight.detach().abs().sum()) for n, m in self._convs(pl_module).items()}

    @override
    def on_probe_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning) -> None:
        self.norms = structure.conv_norm_pairs(pl_module, controller.example_input(trainer, pl_module))
        self._measurements = {
            "l2_original": {n: float(m.weight.detach().norm()) for n, m in self._convs(pl_module).items()}}

    @override
    def on_probe_pruned(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning) -> None:
        self._measurements["l1_before"] = self._l1(pl_module)

    @override
    def on_probe_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: StructuredPruning) -> None:
        after, before, l2 = self._l1(pl_module), self._measurements["l1_before"], self._measurements["l2_original"]
        self.scores = {n: abs(after[n] - before[n]) / max(l2[n], 1e-12) for n in after}
        count = math.ceil(self.freeze_fraction * len(self.scores))
        ranked = sorted(self.scores, key=lambda n: (self.scores[n], n))
        self.frozen = trainer.strategy.broadcast(ranked[:count], src=0)
        controller.report.extra["layer_freezer"] = {"scores": self.scores, "frozen": self.frozen}
        info(f"[lightning_prune] freezing {len(self.frozen)} of {len(self.scores)} conv layers: {', '.join(self.frozen)}")

    def _frozen_modules(self, pl_module: pl.LightningModule) -> list[nn.Module]:
        modules = dict(pl_module.named_modules())
        names = list(self.frozen or [])
        if self.freeze_bn:
            names += [self.norms[n] for n in names if n in self.norms]
        return [modules[n] for n in names if n in modules]

    def apply(self, pl_module: pl.LightningModule) -> None:
        """Set ``requires_grad=False`` on the frozen layers' parameters."""
        for module in self._frozen_modules(pl_module):
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(False)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.frozen is not None:  # resumed: flags are not part of a checkpoint
            self.apply(pl_module)

    @override
    def on_structure_changed(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             controller: StructuredPruning) -> None:
        if self.frozen is not None:
            self.apply(pl_module)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.freeze_bn_stats and self.frozen:
            modules = dict(pl_module.named_modules())
            for conv in self.frozen:
                if conv in self.norms and self.norms[conv] in modules:
                    modules[self.norms[conv]].eval()
