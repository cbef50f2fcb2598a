"""ThresholdSkipFineTune: fine-tune a step only if the metric dropped by the threshold (ICE-Pruning)."""

from __future__ import annotations

import pytest
import torch
from helpers import LitTiny, Scripted, fit

from lightning_prune import (
    PruningConfigError,
    StructuredPruning,
    ThresholdSkipFineTune,
)


# ---------------------------------------------------------------- ThresholdSkipFineTune
@pytest.mark.parametrize(
    ("reference", "script", "decisions", "finetuned_epochs"),
    [
        # before, step0, step1, [epoch val], step2 ...
        ("original", [0.90, 0.86, 0.83, 0.88, 0.84, 0.89], [False, True, True], 2),
        ("previous", [0.90, 0.86, 0.83, 0.76, 0.89, 0.89], [False, False, True], 1),
        # drops add up over skipped steps (0.03, then 0.06 from the original), then count from the fine-tuned 0.88
        ("last_finetuned", [0.90, 0.87, 0.84, 0.88, 0.84, 0.84], [False, True, False], 1),
        ("original", [0.90, 0.87, 0.84, 0.88, 0.84, 0.84], [False, True, True], 2),
    ],
)
def test_threshold_decides_from_the_measured_drop(reference: str, script: list[float], decisions: list[bool],
                                                  finetuned_epochs: int) -> None:
    module = Scripted(script)
    skip = ThresholdSkipFineTune(threshold=0.05, reference=reference)
    pruning = StructuredPruning(pruning_ratio=0.5)
    trainer = fit(module, pruning, skip)
    assert [d["finetune"] for d in skip.decisions] == decisions
    assert [s.finetuned for s in pruning.report.steps] == decisions
    # skipped steps cost no batch and no optimizer step
    assert trainer.global_step == 4 * finetuned_epochs and module.training_steps == 4 * finetuned_epochs
    assert pruning.report.totals()["steps_skipped"] == decisions.count(False)
    assert pruning.report.extra["threshold_skip"]["decisions"] == skip.decisions


def test_last_finetuned_reference_measures_from_the_last_fine_tuned_step() -> None:
    module = Scripted([0.90, 0.87, 0.84, 0.88, 0.84, 0.84])
    skip = ThresholdSkipFineTune(threshold=0.05, reference="last_finetuned")
    pruning = StructuredPruning(pruning_ratio=0.5)
    fit(module, pruning, skip)
    assert [d["drop"] for d in skip.decisions] == pytest.approx([0.03, 0.06, 0.04], abs=1e-6)
    assert pruning.report.extra["threshold_skip"]["reference"] == "last_finetuned"
    with pytest.raises(PruningConfigError, match="reference='last' is unknown; valid: original, previous, "
                                                 "last_finetuned"):
        ThresholdSkipFineTune(reference="last")


def test_original_reference_drops_are_versus_the_unpruned_metric() -> None:
    module = Scripted([0.90, 0.86, 0.83, 0.88, 0.84, 0.89])
    skip = ThresholdSkipFineTune(threshold=0.05)
    fit(module, StructuredPruning(pruning_ratio=0.5), skip)
    assert [d["drop"] for d in skip.decisions] == pytest.approx([0.04, 0.07, 0.06], abs=1e-6)


def test_recover_stops_fine_tuning_once_the_drop_is_back_under_threshold() -> None:
    # one component only; measured drop 0.1 -> fine-tune; epoch validations 0.82 (still 0.08) then 0.87 (0.03)
    module = Scripted([0.90, 0.80, 0.82, 0.87, 0.99, 0.99])
    skip = ThresholdSkipFineTune(threshold=0.05, recover=True, max_finetune_epochs=4)
    pruning = StructuredPruning(pruning_ratio=0.5, ignored_layers=["model.layer1.*"])
    trainer = fit(module, pruning, skip)
    assert [s.finetune_epochs for s in pruning.report.steps] == [2]
    assert trainer.global_step == 2 * 4


def test_recover_is_bounded_by_max_finetune_epochs() -> None:
    module = Scripted([0.90, 0.80] + [0.81] * 10)
    skip = ThresholdSkipFineTune(threshold=0.05, recover=True, max_finetune_epochs=3)
    pruning = StructuredPruning(pruning_ratio=0.5, ignored_layers=["model.layer1.*"])
    fit(module, pruning, skip)
    assert [s.finetune_epochs for s in pruning.report.steps] == [3]


def test_threshold_needs_the_controllers_monitor() -> None:
    with pytest.raises(PruningConfigError, match="watches monitor='val_loss' but StructuredPruning has "
                                                 "monitor='val_acc'") as info:
        fit(LitTiny(), StructuredPruning(), ThresholdSkipFineTune(monitor="val_loss"))
    assert "HINT:" in str(info.value)


def test_threshold_takes_the_controllers_monitor_and_mode_by_default() -> None:
    skip = ThresholdSkipFineTune(threshold=0.0)
    pruning = StructuredPruning(monitor="val_loss", mode="min")
    fit(LitTiny(), pruning, skip)
    assert (skip.monitor, skip.mode) == ("val_loss", "min")
    # "min" mode, on the loss: a drop is how much the loss rose from the unpruned model's
    before = pruning.report.metric_before
    assert [d["drop"] for d in skip.decisions] == pytest.approx(
        [s.metric_after_prune - before for s in pruning.report.steps])


# ---------------------------------------------------------------- defaults, exactly as a user calls them
def test_default_threshold_fine_tunes_an_accuracy_logged_as_a_fraction() -> None:
    torch.manual_seed(0)
    module = LitTiny()  # logs val_acc as a fraction, as ImageClassifier and most users do
    pruning = StructuredPruning()
    skip = ThresholdSkipFineTune()
    fit(module, pruning, skip)
    assert skip.threshold == 0.01  # one point
    decisions = skip.decisions
    assert [d["finetune"] for d in decisions] == [d["drop"] >= 0.01 for d in decisions]
    assert pruning.report.totals()["steps_finetuned"] >= 1  # the old default (1.0) never fine-tuned


def test_a_threshold_the_metric_cannot_reach_is_refused_before_any_surgery() -> None:
    torch.manual_seed(0)
    module = LitTiny()
    shapes = {n: p.shape for n, p in module.named_parameters()}
    with pytest.raises(PruningConfigError, match=r"threshold=1\) can never be reached: val_acc measured") as info:
        fit(module, StructuredPruning(), ThresholdSkipFineTune(threshold=1.0))
    assert "use threshold=0.01 for one point" in str(info.value)
    assert {n: p.shape for n, p in module.named_parameters()} == shapes
