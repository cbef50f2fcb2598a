"""Stopping bad stage-1 trials early: ``tune(..., pruner="median")`` and its ``TrialReporter``.

A stand-in pipeline drives the reporter with scripted drops (the pruner's decisions are then exact); a
real run on digits shows the reporter wired into the controller's steps.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import yaml
from test_tuning import REAL_SPACE, tiny_config

from lightning_prune import PruningConfigError
from lightning_prune.state import StepRecord
from lightning_prune.tuning import (
    INFEASIBLE,
    Outcome,
    TuneSettings,
    pipeline,
    tune,
    tuner,
)
from lightning_prune.tuning.reporter import STOPPED, TrialReporter, intermediate_value

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter is intended")

STEPS = 4
THRESHOLDS = [0.5, 1.0, 2.0, 3.0, 4.0, 8.0]


class SteppingPipeline:
    """Stands in for the run: the trial config's ``TrialReporter`` sees ``STEPS`` steps whose drop after
    step ``k`` is ``0.01 * threshold * (k + 1)``, so a larger threshold is worse after every step."""

    def __init__(self) -> None:
        self.steps_run: dict[float, int] = {}

    def __call__(self, config_path: Path) -> Outcome:
        config = yaml.safe_load(config_path.read_text())
        names = [cb["class_path"] for cb in config["trainer"]["callbacks"]]
        assert "lightning_prune.tuning.reporter.TrialReporter" in names  # tune added it to the trial's callbacks
        threshold = next(cb["init_args"]["threshold"] for cb in config["trainer"]["callbacks"]
                         if cb["class_path"].endswith("ThresholdSkipFineTune"))
        controller = SimpleNamespace(report=SimpleNamespace(metric_before=0.9), mode="max")
        reporter = TrialReporter()
        reporter.on_pruning_start(None, None, controller)  # type: ignore[arg-type]
        self.steps_run[threshold] = 0
        for step in range(STEPS):
            after = 0.9 - 0.01 * threshold * (step + 1)
            record = StepRecord(step=step, components=[], params=0, macs=0, metric_after_finetune=after)
            reporter.on_step_end(None, None, controller, record)  # type: ignore[arg-type]
            self.steps_run[threshold] += 1
        drop = 0.01 * threshold * STEPS
        return Outcome(seconds=1.0, drop=drop, metric_before=0.9, metric_after=0.9 - drop)


@pytest.fixture
def stepping(monkeypatch: pytest.MonkeyPatch) -> SteppingPipeline:
    runner = SteppingPipeline()
    monkeypatch.setattr(pipeline, "run_pipeline", runner)
    monkeypatch.setattr(pipeline, "parse_check", lambda path: None)
    monkeypatch.setattr(tuner, "GC_AFTER_TRIAL", False)
    return runner


def test_intermediate_value_is_the_objective_of_a_run_ending_there() -> None:
    assert intermediate_value("budget", 12.0, 0.004, max_drop=0.01) == 12.0
    assert intermediate_value("budget", 12.0, 0.03, max_drop=0.01) == pytest.approx(INFEASIBLE * 1.02)
    assert intermediate_value("ice", 10.0, 0.01) == pytest.approx(1.1)


@pytest.mark.parametrize(("settings", "message"), [
    ({"pruner": "hyperband"}, "pruner='hyperband' is unknown; valid: none, median"),
    ({"pruner": "median", "objective": "pareto"}, "pruner='median' cannot stop trials of a 'pareto' study"),
])
def test_a_pruner_that_cannot_work_is_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(PruningConfigError, match=message) as caught:
        TuneSettings.resolve({}, settings)
    assert "HINT:" in str(caught.value)


def test_the_default_runs_every_trial_out_without_a_reporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def run(config_path: Path) -> Outcome:
        seen.append([cb["class_path"] for cb in yaml.safe_load(config_path.read_text())["trainer"]["callbacks"]])
        return Outcome(seconds=1.0, drop=0.0, metric_before=0.9, metric_after=0.9)

    monkeypatch.setattr(pipeline, "run_pipeline", run)
    monkeypatch.setattr(pipeline, "parse_check", lambda path: None)
    result = tune(tiny_config(), {"ThresholdSkipFineTune.threshold": THRESHOLDS}, output_dir=tmp_path, stage2=False)
    assert [t["state"] for t in result.trials] == ["COMPLETE"] * len(THRESHOLDS)
    assert len(seen) == len(THRESHOLDS) and not any(path.endswith("TrialReporter") for paths in seen for path in paths)


def test_median_pruner_stops_a_trial_behind_the_completed_trials_median(
        tmp_path: Path, stepping: SteppingPipeline, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lightning_prune")
    result = tune(tiny_config(), {"ThresholdSkipFineTune.threshold": THRESHOLDS}, output_dir=tmp_path, stage2=False,
                  pruner="median", max_drop=0.001)  # every drop is over budget: the values are the overshoots
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    completed: list[float] = []
    for trial in sorted(study.trials, key=lambda t: t.number):
        threshold = trial.params["ThresholdSkipFineTune.threshold"]
        first = trial.intermediate_values[0]
        assert first == pytest.approx(intermediate_value("budget", 1.0, 0.01 * threshold, max_drop=0.001))
        behind = len(completed) >= 2 and first > statistics.median(completed)
        if behind:  # stopped right after its first step, before the stand-in ran the second
            assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs[STOPPED] == 0
            assert stepping.steps_run[threshold] == 0 and list(trial.intermediate_values) == [0]
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE and stepping.steps_run[threshold] == STEPS
            assert list(trial.intermediate_values) == list(range(STEPS))
            completed.append(first)
    stopped = [t for t in result.trials if t["state"] == "PRUNED"]
    assert stopped and all(t[STOPPED] == 0 and "invalid" not in t for t in stopped)
    assert f"{len(stopped)} stopped early, 0 invalid" in result.summary()
    assert "stopped after pruning step 0: behind the completed trials' median there" in caplog.text
    assert result.best_params == {"ThresholdSkipFineTune.threshold": 0.5}  # the smallest overshoot


def test_a_real_trial_reports_after_every_pruning_step(tmp_path: Path) -> None:
    """Real (digits): the reporter rides on the controller's steps; a stopped trial leaves an unfinished report."""
    result = tune(tiny_config(), REAL_SPACE, output_dir=tmp_path, stage2=False, subset_fraction=0.3,
                  pruner="median", n_trials=3)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    for trial in study.trials:
        report = json.loads((Path(trial.user_attrs["dir"]) / "report.json").read_text())
        steps = len(report["steps"])
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert report["totals"]["completed"] is True and steps >= 2
            assert list(trial.intermediate_values) == list(range(steps))
            assert all(v > 0 for v in trial.intermediate_values.values())
        else:
            assert trial.state == optuna.trial.TrialState.PRUNED
            assert report["totals"]["completed"] is False
            assert list(trial.intermediate_values)[-1] == trial.user_attrs[STOPPED]
