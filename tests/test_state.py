"""The controllers' pure state: phases, reports (to/from dict, files), patience."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_prune.state import (
    GradualPhase,
    GradualReport,
    Patience,
    PruningReport,
    StepRecord,
    StructuredPhase,
)


def test_phases_are_strings_and_round_trip_by_value() -> None:
    assert [p.value for p in StructuredPhase] == ["pretrain", "pruning", "trial", "final", "done"]
    assert StructuredPhase("trial") is StructuredPhase.TRIAL and GradualPhase("finetune") == "finetune"
    assert json.dumps({"phase": GradualPhase.PRUNE}) == '{"phase": "prune"}'


def _report() -> PruningReport:
    steps = [StepRecord(step=0, components=["a"], params=80, macs=800, metric_after_prune=0.8,
                        metric_after_finetune=0.8, finetuned=False, seconds_eval=1.0),
             StepRecord(step=1, components=["b"], params=60, macs=600, metric_after_prune=0.6,
                        metric_after_finetune=0.85, finetuned=True, finetune_epochs=2, seconds_prune=0.5,
                        seconds_finetune=4.0)]
    return PruningReport(params_before=100, macs_before=1000, metric_before=0.9, params_after=60, macs_after=600,
                         metric_after=0.85, seconds_total=6.0, steps=steps, extra={"plan": {"layers": ["a", "b"]}},
                         completed=False, stop_reason="max_steps=8 reached", steps_planned=3, monitor="val_acc")


def test_totals_sum_the_steps_and_say_how_far_the_plan_got() -> None:
    totals = _report().totals()
    assert totals["seconds_prune"] == 0.5 and totals["seconds_eval"] == 1.0 and totals["seconds_finetune"] == 4.0
    assert (totals["steps_finetuned"], totals["steps_skipped"]) == (1, 1)
    assert (totals["completed"], totals["steps_planned"], totals["steps_done"]) == (False, 3, 2)
    assert totals["stop_reason"] == "max_steps=8 reached"


def test_pruning_report_round_trips_through_its_file(tmp_path: Path) -> None:
    report = _report()
    path = report.write(tmp_path / "nested" / "report.json")
    data = json.loads(path.read_text())
    assert sorted(data) == ["extra", "monitor", "steps", "totals"] and data["monitor"] == "val_acc"
    again = PruningReport.from_dict(data)
    assert again == report and again.to_dict() == report.to_dict()


def test_gradual_report_round_trips_and_counts_epochs_per_phase(tmp_path: Path) -> None:
    report = GradualReport(target_sparsity=0.9, scope="global", schedule=[0.45, 0.9], monitor="val_acc",
                           prunes_planned=2)
    assert report.epochs == {"pretrain": 0, "prune": 0, "converge": 0, "finetune": 0}
    report.epochs["prune"] += 2
    assert GradualReport.from_dict(json.loads(report.write(tmp_path / "r.json").read_text())) == report


@pytest.mark.parametrize(("mode", "values", "waits", "best"), [
    ("max", [0.5, 0.6, 0.6, 0.55, 0.7], [0, 0, 1, 2, 0], 0.7),
    ("min", [2.0, 1.5, 1.6, 1.4], [0, 0, 1, 0], 1.4),
])
def test_patience_counts_validations_without_improvement(mode: str, values: list[float], waits: list[int],
                                                         best: float) -> None:
    patience = Patience(mode=mode)
    assert [patience.update(v) for v in values] == waits and patience.best == best


def test_patience_min_delta_and_reset() -> None:
    patience = Patience(mode="max", min_delta=0.1)
    assert [patience.update(v) for v in (0.5, 0.55, 0.61)] == [0, 1, 0]
    patience.reset(0.9)
    assert (patience.best, patience.wait) == (0.9, 0) and patience.update(0.95) == 1
    patience.reset(None)
    assert patience.update(0.1) == 0


def test_largest_drop_bounds_only_a_non_negative_max_metric() -> None:
    from lightning_prune.state import largest_drop

    assert largest_drop(0.9815, "max") == 0.9815 and largest_drop(0.0, "max") == 0.0
    assert largest_drop(-1.5, "max") is None  # e.g. a negative log-likelihood logged as "max"
    assert largest_drop(0.3, "min") is None and largest_drop(None, "max") is None and largest_drop(0.5, None) is None
