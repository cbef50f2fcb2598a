"""``ThresholdSkipFineTune``: ICE-Pruning's rule to fine-tune a step only if the metric dropped enough."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_prune.callbacks.base import (
    PruningController,
    PruningSatellite,
    adopt_monitor,
    check_resume_hparams,
    check_single,
)
from lightning_prune.callbacks.structured import StructuredPruning
from lightning_prune.errors import PruningConfigError
from lightning_prune.errors import check as _check
from lightning_prune.state import StepRecord, largest_drop


def drop(reference: float, current: float, mode: str) -> float:
    """How much worse ``current`` is than ``reference`` (positive = worse).

    Example:
        >>> round(drop(0.9, 0.85, "max"), 2), round(drop(0.3, 0.5, "min"), 2)
        (0.05, 0.2)
    """
    return reference - current if mode == "max" else current - reference


#: What a step's drop is measured against (``reference``).
REFERENCES = ("original", "previous", "last_finetuned")


class ThresholdSkipFineTune(PruningSatellite, Callback):
    """Fine-tune a pruning step only if the metric dropped by at least ``threshold``.

    After each step the controller measures the monitored metric before any fine-tuning; if the
    drop versus ``reference`` is under ``threshold`` the step is not fine-tuned and the next one is
    pruned at once (no training batch, no optimizer step). A satellite of
    :class:`~lightning_prune.StructuredPruning`; with the blockwise schedule, L1 importance,
    :class:`~lightning_prune.LayerFreezer` and :class:`~lightning_prune.PruningAwareLR` it is
    ICE-Pruning (Hu et al., 2025).

    Args:
        monitor: The controller's monitor (``None``: take it from the controller).
        threshold: Fine-tune when ``drop >= threshold`` (>= 0), in the metric's units: the default 0.01 is
            one point of accuracy logged as a fraction (use 1.0 for accuracy logged in percent). A
            threshold the drop can never reach (above the unpruned model's metric, for a non-negative
            ``"max"`` metric) is refused when pruning starts.
        mode: ``"max"`` if higher is better, else ``"min"`` (``None``: the controller's).
        reference: ``"original"`` (the unpruned model, as the authors' code), ``"previous"`` (the
            metric before this step, i.e. after the previous step and its fine-tuning if any) or
            ``"last_finetuned"`` (the metric after the most recent fine-tuned step, the original before
            any: the drops of skipped steps add up until together they reach ``threshold``, so several
            blocks share one fine-tune; not in the paper).
        eval_batches: Measure on the first this many validation batches (asks the controller to).
        recover: The paper's case 4: fine-tune a step up to ``max_finetune_epochs`` epochs, stopping
            as soon as the drop is back under the threshold (checked after each epoch's validation).
        max_finetune_epochs: Upper bound of fine-tuning epochs per step with ``recover``.

    Example:
        >>> from lightning_prune import StructuredPruning, ThresholdSkipFineTune
        >>> from lightning_prune.demos import DemoModule, demo_loaders, demo_trainer
        >>> skip = ThresholdSkipFineTune(threshold=0.01)  # one accuracy point
        >>> demo_trainer([StructuredPruning(), skip]).fit(DemoModule(), *demo_loaders())
        >>> [d["finetune"] == (d["drop"] >= 0.01) for d in skip.decisions]
        [True, True, True]
    """

    def __init__(
        self,
        monitor: str | None = None,
        threshold: float = 0.01,
        mode: str | None = None,
        reference: str = "original",
        eval_batches: int | None = None,
        recover: bool = False,
        max_finetune_epochs: int = 1,
    ) -> None:
        _check(isinstance(threshold, int | float) and threshold >= 0 and math.isfinite(threshold),
               f"threshold={threshold!r} must be a finite number >= 0",
               "thresholds are in the metric's units: 0.01 is one point of accuracy logged as a fraction")
        _check(mode in (None, "min", "max"), f"mode={mode!r} is unknown; valid: min, max",
               "use mode='max' for accuracy, or leave it unset")
        _check(reference in REFERENCES, f"reference={reference!r} is unknown; valid: {', '.join(REFERENCES)}",
               "use 'original' (as the ICE authors), 'previous' or 'last_finetuned'")
        _check(eval_batches is None or (isinstance(eval_batches, int) and eval_batches >= 1),
               f"eval_batches={eval_batches!r} must be None or an integer >= 1", "use None to validate on all batches")
        _check(isinstance(max_finetune_epochs, int) and max_finetune_epochs >= 1,
               f"max_finetune_epochs={max_finetune_epochs!r} must be an integer >= 1", "use e.g. max_finetune_epochs=3")
        self.monitor, self.threshold, self.mode, self.reference = monitor, float(threshold), mode, reference
        self.eval_batches, self.recover, self.max_finetune_epochs = eval_batches, recover, max_finetune_epochs
        self._given = {"monitor": monitor, "mode": mode}
        self.decisions: list[dict[str, Any]] = []

    def _hparams(self) -> dict[str, Any]:
        return {**self._given, "threshold": self.threshold, "reference": self.reference,
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
        if stage == "fit":
            adopt_monitor(self, StructuredPruning.find(trainer, self))
            check_single(trainer, self)

    @override
    def wanted_eval_batches(self, controller: PruningController) -> int | None:
        return self.eval_batches

    @override
    def on_pruning_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                         controller: PruningController) -> None:
        """Refuse a threshold the drop can never reach, before the first surgery."""
        before = controller.report.metric_before
        largest = largest_drop(before, self.mode)
        if largest is not None and largest < self.threshold:
            raise PruningConfigError(
                f"ThresholdSkipFineTune(threshold={self.threshold:g}) can never be reached: {self.monitor} measured "
                f"{before:.4g} before pruning, so no step can drop it by more than {before:.4g} and no step "
                "would ever be fine-tuned",
                hint="thresholds are in the metric's units: use threshold=0.01 for one point of an accuracy "
                "logged as a fraction (1.0 for one point of an accuracy logged in percent)",
            )

    def _reference_value(self, controller: PruningController, record: StepRecord) -> float:
        before = controller.report.metric_before
        assert before is not None
        if self.reference == "original":
            return before
        earlier = [s for s in controller.report.steps if s.step < record.step]
        if self.reference == "last_finetuned":
            earlier = [s for s in earlier if s.finetuned]
        value = earlier[-1].metric_after_finetune if earlier else None
        return before if value is None else value

    @override
    def on_step_pruned(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController,
                       record: StepRecord) -> None:
        assert record.metric_after_prune is not None
        value = drop(self._reference_value(controller, record), record.metric_after_prune, self.mode or "max")
        self.decisions.append({"step": record.step, "drop": value, "finetune": value >= self.threshold})

    @override
    def finetune_decision(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController,
                          record: StepRecord) -> bool | None:
        return next((d["finetune"] for d in reversed(self.decisions) if d["step"] == record.step), None)

    @override
    def planned_finetune_epochs(self, controller: PruningController) -> int | None:
        return self.max_finetune_epochs if self.recover else None

    @override
    def continue_finetuning(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController,
                            record: StepRecord) -> bool | None:
        if not self.recover:
            return None
        value = controller.last_validation()  # type: ignore[attr-defined]
        if value is None:
            value = controller.measure(trainer)
        return drop(self._reference_value(controller, record), value, self.mode or "max") >= self.threshold

    @override
    def report_section(self) -> dict[str, Any]:
        if not self.decisions:
            return {}
        return {"threshold_skip": {"threshold": self.threshold, "reference": self.reference,
                                   "decisions": [dict(d) for d in self.decisions]}}
