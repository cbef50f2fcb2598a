"""Auto-tuning: objectives, search spaces, the persisted Optuna study (grid coverage, resume, shared
workers), stage 2's outputs and the ``lightning-prune tune`` command.

Study mechanics run with a stand-in pipeline (an outcome computed from the trial's parameters);
the tests marked "real" run the actual pruning pipeline on digits.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from lightning_prune import PruningConfigError, StructuredPruning
from lightning_prune.cli import main, make_cli
from lightning_prune.tuning import (
    ICE_CIFAR_GRID,
    INFEASIBLE,
    Outcome,
    Point,
    SearchSpace,
    TuneSettings,
    budget_objective,
    choose_from_front,
    ice_objective,
    objective_value,
    pareto_front,
    pipeline,
    tune,
    tuner,
)
from lightning_prune.tuning import config as configs

# make_cli(args=...) under pytest: sys.argv holds pytest's own arguments
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter is intended")

REPO = Path(__file__).parents[2]
SPACE = {"ThresholdSkipFineTune.threshold": [0.5, 1.0], "LayerFreezer.freeze_fraction": [0.3, 0.6]}
#: For the real runs: thresholds in the metric's units (accuracy as a fraction), which an untrained digits
#: network (val_acc about 0.18 before pruning) can reach.
REAL_SPACE = {"ThresholdSkipFineTune.threshold": [0.005, 0.01], "LayerFreezer.freeze_fraction": [0.3, 0.6]}


def tiny_config() -> dict[str, Any]:
    """The ICE pipeline on digits, as small as it gets: no pretraining, batch 128."""
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
            "enable_progress_bar": False, "enable_model_summary": False,
            "callbacks": [
                {"class_path": "lightning_prune.StructuredPruning",
                 "init_args": {"pruning_ratio": 0.5, "schedule": "blockwise", "pretrain_epochs": 0, "finetune_epochs": 1}},
                {"class_path": "lightning_prune.ThresholdSkipFineTune", "init_args": {"threshold": 0.01}},
                {"class_path": "lightning_prune.LayerFreezer", "init_args": {"freeze_fraction": 0.3}},
                {"class_path": "lightning_prune.PruningAwareLR", "init_args": {"lr_base": 0.05, "delta": 0.0375}},
            ],
        },
        "model": {"class_path": "lightning_prune.ImageClassifier",
                  "init_args": {"model": "digits_resnet", "num_classes": 10, "lr": 0.05}},
        "data": {"class_path": "lightning_prune.DigitsDataModule", "init_args": {"batch_size": 128}},
    }


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def study_of(result: Any) -> optuna.Study:
    return optuna.load_study(study_name=result.study_name, storage=result.storage)


def complete_params(study: optuna.Study) -> list[tuple[Any, ...]]:
    return [tuple(sorted(t.params.items())) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


class FakePipeline:
    """Stands in for the pruning run: PT and drop follow from the trial config's callback arguments."""

    def __init__(self, interrupt_on_call: int | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.interrupt_on_call = interrupt_on_call

    def __call__(self, config_path: Path) -> Outcome:
        config = yaml.safe_load(config_path.read_text())
        args = {cb["class_path"].rsplit(".", 1)[-1]: cb.get("init_args", {}) for cb in config["trainer"]["callbacks"]}
        self.calls.append({"threshold": args["ThresholdSkipFineTune"]["threshold"],
                           "freeze_fraction": args["LayerFreezer"]["freeze_fraction"],
                           "subset_fraction": config["data"]["init_args"].get("subset_fraction")})
        if self.interrupt_on_call == len(self.calls):
            raise KeyboardInterrupt
        threshold, freeze = self.calls[-1]["threshold"], self.calls[-1]["freeze_fraction"]
        seconds, drop = 10.0 - 10 * freeze + threshold, 0.01 * threshold  # more freezing: faster; higher threshold: worse
        return Outcome(seconds=seconds, drop=drop, metric_before=0.9, metric_after=0.9 - drop, macs_after=100)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakePipeline:
    runner = FakePipeline()
    monkeypatch.setattr(pipeline, "run_pipeline", runner)
    monkeypatch.setattr(pipeline, "parse_check", lambda path: None)
    monkeypatch.setattr(tuner, "GC_AFTER_TRIAL", False)  # nothing to collect after a stand-in run
    return runner


def fake_tune(tmp_path: Path, space: Any = SPACE, **kwargs: Any) -> Any:
    kwargs = {"output_dir": tmp_path / "tune", "stage2": False, "subset_fraction": 0.3, **kwargs}
    return tune(tiny_config(), space, **kwargs)


# ---------------------------------------------------------------------------------------------- objectives
def test_ice_objective_is_eq2_literally_and_rewards_slower_runs() -> None:
    assert ice_objective(20.0, 0.01) == pytest.approx((20.0 + 1.0) / 20.0)  # dA = 1 point
    assert ice_objective(0.5, 0.02) == pytest.approx((0.5 + 2.0) / 2.0)  # dA > PT: divided by dA
    assert ice_objective(4.0, 0.03, points_per_unit=1.0) == pytest.approx(1 + 0.03 / 4.0)
    # the flaw: same accuracy loss, ten times the pruning time, a better (lower) value
    assert ice_objective(100.0, 0.01) < ice_objective(10.0, 0.01)
    assert objective_value("ice", 100.0, 0.01) == ice_objective(100.0, 0.01)
    with pytest.raises(ValueError, match="seconds"):
        ice_objective(0.0, 0.0)


def test_budget_ranks_every_feasible_trial_before_any_infeasible() -> None:
    feasible = [budget_objective(s, d, max_drop=0.01) for s, d in [(1.0, 0.0), (50.0, 0.01), (1e6, -0.02)]]
    infeasible = [budget_objective(s, d, max_drop=0.01) for s, d in [(0.1, 0.0101), (0.1, 0.5), (1e6, 0.02)]]
    assert feasible == [1.0, 50.0, 1e6]  # feasible: the pruning time itself
    assert max(feasible) < INFEASIBLE <= min(infeasible)
    # among infeasible trials the smaller overshoot wins, whatever the time
    assert budget_objective(1e6, 0.02, 0.01) < budget_objective(0.1, 0.5, 0.01)


def test_pareto_front_and_the_point_stage_2_takes() -> None:
    points = [Point(0, 2.0, 0.03), Point(1, 5.0, 0.008), Point(2, 6.0, 0.01), Point(3, 9.0, 0.0)]
    front = pareto_front(points)
    assert [p.number for p in front] == [0, 1, 3]  # 2 is dominated by 1
    assert objective_value("pareto", 5.0, 0.008) == (5.0, 0.008)
    assert choose_from_front(front, max_drop=0.01).number == 1  # fastest within budget
    assert choose_from_front(front, max_drop=0.001).number == 3  # none but the smallest drop
    assert choose_from_front([Point(0, 2.0, 0.03), Point(1, 5.0, 0.02)], max_drop=0.01).number == 1


# ---------------------------------------------------------------------------------------------- search spaces
def test_search_space_parsing_and_the_default_grid(tmp_path: Path) -> None:
    default = SearchSpace.from_yaml(REPO / "configs" / "ice_search_space.yaml")
    assert default.to_dict() == ICE_CIFAR_GRID
    assert default.grid_size() == 216 and len(default.grid_points()) == 216
    assert SearchSpace.load(None) == SearchSpace.from_mapping(ICE_CIFAR_GRID)

    space = SearchSpace.from_mapping({"search_space": {
        "PruningAwareLR.lr_base": ["1e-3", 5.0e-3],  # YAML 1.1 reads 1e-3 as a string: it is a number here
        "PruningAwareLR.beta": {"low": 40, "high": 60},
        "PruningAwareLR.delta": {"low": "1e-4", "high": 8.0e-4, "log": True},
        "LayerFreezer.freeze_fraction": 0.3,
    }})
    lr, beta, delta, freeze = space.params
    assert lr.choices == (0.001, 0.005) and not lr.is_range
    assert beta.is_range and beta.is_int and (beta.low, beta.high) == (40, 60)
    assert delta.log and delta.low == pytest.approx(1e-4) and not delta.is_int
    assert freeze.choices == (0.3,)
    assert space.grid_size() is None
    with pytest.raises(PruningConfigError, match="grid sampler needs a list.*PruningAwareLR.beta"):
        space.grid()
    (tmp_path / "sub").mkdir()
    write_yaml(tmp_path / "sub" / "space.yaml", {"LayerFreezer.freeze_fraction": [0.3, 0.9]})
    # relative paths: from the working directory, else from the config's folder
    assert SearchSpace.load("sub/space.yaml").grid_size() == 2
    assert SearchSpace.load("space.yaml", base_dir=tmp_path / "sub").names == ["LayerFreezer.freeze_fraction"]
    with pytest.raises(PruningConfigError, match="does not exist"):
        SearchSpace.load("space.yaml", base_dir=tmp_path)


@pytest.mark.parametrize(("mapping", "message"), [
    ({"threshold": [0.1]}, "not of the form ClassName.argument"),
    ({"LayerFreezer.freeze_fraction": []}, "empty"),
    ({"LayerFreezer.freeze_fraction": [0.3, 0.3]}, "repeats"),
    ({"LayerFreezer.freeze_fraction": [[0.3]]}, "values must be numbers"),
    ({"PruningAwareLR.beta": {"low": 60, "high": 40}}, "low < high"),
    ({"PruningAwareLR.beta": {"low": 40}}, "needs `low` and `high`"),
    ({"PruningAwareLR.beta": {"low": 0, "high": 4, "log": True}}, "log range needs low > 0"),
    ({"PruningAwareLR.beta": {"low": 1, "high": 4, "scale": 2}}, "unknown keys"),
    ({}, "empty"),
])
def test_malformed_search_space_is_refused(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(PruningConfigError, match=message) as error:
        SearchSpace.from_mapping(mapping)
    assert "HINT:" in str(error.value)


@pytest.mark.parametrize(("space", "message", "hint"), [
    ({"EarlyStopping.patience": [1, 2]}, "no EarlyStopping in the config",
     "StructuredPruning (trainer.callbacks[0]), ThresholdSkipFineTune (trainer.callbacks[1]), LayerFreezer"),
    ({"PruningAwareLR.lr_max": [0.1]}, "PruningAwareLR has no argument 'lr_max'", "lr_base, delta, midpoint, beta"),
])
def test_unknown_class_or_argument_fails_before_any_trial(tmp_path: Path, fake: FakePipeline, space: dict[str, Any],
                                                          message: str, hint: str) -> None:
    with pytest.raises(PruningConfigError, match=message) as error:
        fake_tune(tmp_path, space)
    assert hint in error.value.hint
    assert fake.calls == [] and not (tmp_path / "tune").exists()


def test_config_without_a_controller_or_with_ranges_on_the_grid_is_refused(tmp_path: Path, fake: FakePipeline) -> None:
    config = tiny_config()
    config["trainer"]["callbacks"] = config["trainer"]["callbacks"][1:]
    with pytest.raises(PruningConfigError, match="0 StructuredPruning callbacks"):
        tune(config, SPACE, output_dir=tmp_path / "a")
    with pytest.raises(PruningConfigError, match="grid sampler needs a list"):
        fake_tune(tmp_path, {"LayerFreezer.freeze_fraction": {"low": 0.1, "high": 0.9}})
    with pytest.raises(PruningConfigError, match="unknown key.*'trials'"):
        tune({**tiny_config(), "tune": {"trials": 3}}, SPACE, output_dir=tmp_path / "b")
    assert fake.calls == []


# ---------------------------------------------------------------------------------------------- the study
def test_every_trial_runs_its_own_config_on_the_subset(tmp_path: Path, fake: FakePipeline) -> None:
    result = fake_tune(tmp_path, n_trials=1)
    row = result.trials[0]
    config = yaml.safe_load((Path(row["dir"]) / "trial_config.yaml").read_text())
    callbacks = {cb["class_path"].rsplit(".", 1)[-1]: cb["init_args"] for cb in config["trainer"]["callbacks"]}
    assert callbacks["ThresholdSkipFineTune"]["threshold"] == row["params"]["ThresholdSkipFineTune.threshold"]
    assert callbacks["LayerFreezer"]["freeze_fraction"] == row["params"]["LayerFreezer.freeze_fraction"]
    assert callbacks["StructuredPruning"]["output_dir"] == row["dir"] == config["trainer"]["default_root_dir"]
    assert config["data"]["init_args"]["subset_fraction"] == 0.3 and config["seed_everything"] == 0
    assert config["trainer"]["enable_progress_bar"] is False
    assert row["value"] == row["seconds"]  # budget objective, feasible trial: the value is the pruning time
    assert Path(row["dir"]).name == "trial_0"


def test_trial_config_seeds_every_trial_and_respects_the_users_callbacks(tmp_path: Path) -> None:
    config = tiny_config()
    del config["seed_everything"], config["trainer"]["enable_progress_bar"]
    config["trainer"]["callbacks"].append({"class_path": "lightning.pytorch.callbacks.RichProgressBar"})
    out = configs.trial_config(config, {"ImageClassifier.lr": 0.2, "PruningAwareLR.beta": 40.0}, tmp_path / "t",
                                subset_fraction=0.1, seed=7)
    assert out["seed_everything"] == 7  # no seed in the config: the same fixed seed for every trial
    assert "enable_progress_bar" not in out["trainer"]  # Lightning refuses False beside a progress-bar callback
    assert out["trainer"]["enable_model_summary"] is False
    assert out["model"]["init_args"]["lr"] == 0.2 and out["trainer"]["callbacks"][3]["init_args"]["beta"] == 40.0
    assert config["model"]["init_args"]["lr"] == 0.05  # the base config is left alone
    config["seed_everything"] = 3
    assert configs.trial_config(config, {}, tmp_path / "t", None, seed=7)["seed_everything"] == 3


def test_grid_covers_the_grid_and_resumes_after_a_killed_worker(tmp_path: Path, fake: FakePipeline) -> None:
    first = fake_tune(tmp_path, n_trials=2)
    assert len(fake.calls) == 2
    # a worker dies mid-trial: its trial stays RUNNING with the next grid point
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    space = SearchSpace.from_mapping(SPACE)
    study = optuna.load_study(study_name=first.study_name, storage=first.storage,
                              sampler=optuna.samplers.GridSampler(space.grid(), seed=0))
    orphan = study.ask()
    space.suggest(orphan)
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")

    second = fake_tune(tmp_path)  # n_trials defaults to the grid points not yet evaluated
    study = study_of(second)
    states = {t.number: t.state for t in study.trials}
    assert states[orphan.number] == optuna.trial.TrialState.FAIL
    assert "gone" in study.trials[orphan.number].user_attrs["interrupted"]
    completed = complete_params(study)
    assert len(completed) == 4 and len(set(completed)) == 4  # the whole grid, once each
    assert len(fake.calls) == 4  # 2 + the orphan's point re-run + the last point
    assert {tuple(sorted(p.items())) for p in space.grid_points()} == set(completed)
    rerun = [t for t in study.trials if t.user_attrs.get("retry_of") == orphan.number]
    assert len(rerun) == 1 and rerun[0].params == study.trials[orphan.number].params

    third = fake_tune(tmp_path)  # grid complete: nothing runs, the result is still reported
    assert len(fake.calls) == 4 and third.best_params == second.best_params


def test_n_trials_0_runs_only_stage_2_on_the_best_so_far(tmp_path: Path, fake: FakePipeline) -> None:
    first = fake_tune(tmp_path, n_trials=2)  # e.g. workers run with --no_stage2
    assert first.stage2 is None and len(fake.calls) == 2
    final = fake_tune(tmp_path, n_trials=0, stage2=True)
    assert len(study_of(final).trials) == 2 and len(fake.calls) == 3  # no new trial, one stage-2 run
    stage2 = yaml.safe_load((tmp_path / "tune" / "stage2" / "stage2_config.yaml").read_text())
    skip = next(cb for cb in stage2["trainer"]["callbacks"] if cb["class_path"].endswith("ThresholdSkipFineTune"))
    assert skip["init_args"]["threshold"] == final.best_params["ThresholdSkipFineTune.threshold"]
    assert "subset_fraction" not in stage2["data"]["init_args"] and fake.calls[-1]["subset_fraction"] is None
    assert final.stage2["seconds"] == min(t["seconds"] for t in final.trials)


def test_ctrl_c_mid_trial_is_rerun_on_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = FakePipeline(interrupt_on_call=2)
    monkeypatch.setattr(pipeline, "run_pipeline", runner)
    monkeypatch.setattr(pipeline, "parse_check", lambda path: None)
    monkeypatch.setattr(tuner, "GC_AFTER_TRIAL", False)
    with pytest.raises(KeyboardInterrupt):
        fake_tune(tmp_path)
    interrupted_params = runner.calls[1]
    runner.interrupt_on_call = None
    result = fake_tune(tmp_path)
    study = study_of(result)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["interrupted"] == "KeyboardInterrupt"
    assert len(set(complete_params(study))) == 4 == len(complete_params(study))
    assert runner.calls[2] == interrupted_params  # the interrupted point runs first on resume


def test_invalid_combination_is_a_pruned_trial_not_a_crash(tmp_path: Path, fake: FakePipeline) -> None:
    space = {"PruningAwareLR.lr_base": [0.001, 0.01], "PruningAwareLR.delta": [0.005]}  # delta >= lr_base once
    result = fake_tune(tmp_path, space)
    states = sorted(t["state"] for t in result.trials)
    assert states == ["COMPLETE", "PRUNED"]
    pruned = next(t for t in result.trials if t["state"] == "PRUNED")
    assert pruned["params"]["PruningAwareLR.lr_base"] == 0.001
    assert "delta=0.005 must be in (0, lr_base=0.001)" in pruned["invalid"]
    assert len(fake.calls) == 1 and result.best_params == {"PruningAwareLR.lr_base": 0.01, "PruningAwareLR.delta": 0.005}
    with pytest.raises(PruningConfigError, match="all 1 proposed combinations were invalid"):
        fake_tune(tmp_path / "all_invalid", {"PruningAwareLR.lr_base": [0.001], "PruningAwareLR.delta": [0.005]})


def test_budget_study_picks_the_fastest_within_budget(tmp_path: Path, fake: FakePipeline) -> None:
    # fake: PT = 10 - 10 * freeze + threshold, drop = 0.01 * threshold
    result = fake_tune(tmp_path, max_drop=0.006)
    assert result.best_params == {"ThresholdSkipFineTune.threshold": 0.5, "LayerFreezer.freeze_fraction": 0.6}
    assert result.feasible is True and result.best_value == pytest.approx(10 - 6 + 0.5)
    strict = fake_tune(tmp_path / "strict", max_drop=0.001)  # nothing feasible: the smallest overshoot
    assert strict.feasible is False and strict.best_params["ThresholdSkipFineTune.threshold"] == 0.5
    ice = fake_tune(tmp_path / "ice", objective="ice")  # eq. 2 prefers the slow runs
    assert ice.best_params == {"ThresholdSkipFineTune.threshold": 0.5, "LayerFreezer.freeze_fraction": 0.3}


def test_a_max_drop_the_metric_cannot_reach_is_refused_at_the_first_trial(tmp_path: Path, fake: FakePipeline) -> None:
    # fake: the metric measures 0.9 before pruning, so a drop budget of 1.0 accepts every trial
    with pytest.raises(PruningConfigError, match=r"max_drop=1 allows any drop: the monitored metric measured 0.9") as info:
        fake_tune(tmp_path, max_drop=1.0)
    assert "use max_drop=0.01 for one point" in str(info.value) and len(fake.calls) == 1


def test_pareto_study_reports_the_front(tmp_path: Path, fake: FakePipeline) -> None:
    result = fake_tune(tmp_path, objective="pareto", max_drop=0.006)
    study = study_of(result)
    assert len(study.directions) == 2
    assert sorted(p["number"] for p in result.pareto_front) == sorted(t.number for t in study.best_trials)
    front = {(p["params"]["ThresholdSkipFineTune.threshold"], p["params"]["LayerFreezer.freeze_fraction"])
             for p in result.pareto_front}
    assert front == {(0.5, 0.6)}  # dominates every other point of the fake
    assert result.best_params == {"ThresholdSkipFineTune.threshold": 0.5, "LayerFreezer.freeze_fraction": 0.6}
    summary = json.loads((tmp_path / "tune" / "tune_summary.json").read_text())
    assert summary["pareto_front"] == result.pareto_front


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_tpe_and_random_sample_ranges(tmp_path: Path, fake: FakePipeline, sampler: str) -> None:
    space = {"ThresholdSkipFineTune.threshold": {"low": 0.1, "high": 1.0, "log": True},
             "LayerFreezer.freeze_fraction": [0.3, 0.6]}
    result = fake_tune(tmp_path, space, sampler=sampler, n_trials=3)
    assert [t["state"] for t in result.trials] == ["COMPLETE"] * 3
    assert all(0.1 <= c["threshold"] <= 1.0 and c["freeze_fraction"] in (0.3, 0.6) for c in fake.calls)


def test_a_stored_study_with_other_settings_is_refused(tmp_path: Path, fake: FakePipeline) -> None:
    fake_tune(tmp_path, n_trials=1, study_name="s")
    with pytest.raises(PruningConfigError, match="was created with") as error:
        fake_tune(tmp_path, n_trials=1, study_name="s", max_drop=0.02)
    assert "--study_name" in error.value.hint
    assert len(fake.calls) == 1


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(("storage", "message"), [
    ("notaurl", "storage 'notaurl' is not a database URL"),
    ("nosuchdb://host/db", "SQLAlchemy knows no database 'nosuchdb'"),
    ("sqlite+pysqlcipher:///{tmp}/s.db", "needs the database driver 'pysqlcipher3', which is not installed"),
    ("sqlite:////nonexistent/dir/study.db", "the folder '/nonexistent/dir' of the SQLite file does not exist"),
    ("sqlite:///{tmp}/missing/study.db", "/missing' of the SQLite file does not exist (it is not created"),
    ("sqlite:///{tmp}", "names the folder"),
    ("sqlite:///{tmp}/not_a_db.txt", "could not be opened: DatabaseError: file is not a database"),
])
def test_a_storage_that_cannot_work_is_refused_before_anything_is_created(
        tmp_path: Path, fake: FakePipeline, storage: str, message: str) -> None:
    assert importlib.util.find_spec("pysqlcipher3") is None  # the driver the third case needs is absent here
    (tmp_path / "not_a_db.txt").write_text("hello")
    storage = storage.format(tmp=tmp_path)
    with pytest.raises(PruningConfigError) as error:
        fake_tune(tmp_path, storage=storage)
    assert message in str(error.value) and error.value.hint
    assert fake.calls == []
    assert not (tmp_path / "tune").exists() and not (tmp_path / "missing").exists()  # nothing half-created
    assert not Path("/nonexistent").exists()


def test_a_postgres_url_without_its_driver_is_refused_with_the_password_masked(tmp_path: Path, fake: FakePipeline) -> None:
    with pytest.raises(PruningConfigError) as error:
        fake_tune(tmp_path, storage="postgresql://me:secret@nohost/optuna")
    assert "postgresql://me:***@nohost/optuna" in str(error.value) and "secret" not in str(error.value)
    assert error.value.hint and fake.calls == [] and not (tmp_path / "tune").exists()


def test_cli_tune_with_a_bad_storage_exits_with_the_hint(tmp_path: Path, fake: FakePipeline,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = write_yaml(tmp_path / "config.yaml", tiny_config())
    space = write_yaml(tmp_path / "space.yaml", SPACE)
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--config", str(config), "--search_space", str(space), "--storage", "notaurl",
              "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: storage 'notaurl' is not a database URL" in err and "\nHINT: " in err
    assert fake.calls == [] and not (tmp_path / "out").exists()


def test_an_output_dir_that_cannot_be_created_is_refused(tmp_path: Path, fake: FakePipeline) -> None:
    (tmp_path / "a_file").write_text("in the way")
    with pytest.raises(PruningConfigError, match="output_dir .*a_file/tune' cannot be created: .*a_file' is a file") as error:
        fake_tune(tmp_path, output_dir=tmp_path / "a_file" / "tune")
    assert "--output_dir" in error.value.hint and fake.calls == []
    # a missing output_dir (and its parents) is created, with the default storage inside it
    result = fake_tune(tmp_path, output_dir=tmp_path / "new" / "deep" / "tune", n_trials=1)
    assert result.storage == f"sqlite:///{tmp_path / 'new' / 'deep' / 'tune' / 'study.db'}"
    assert (tmp_path / "new" / "deep" / "tune" / "study.db").is_file()


@pytest.mark.parametrize(("change", "named"), [
    ({"space": {"ThresholdSkipFineTune.threshold": [0.5, 1.0], "PruningAwareLR.beta": [40.0]}},
     ["a search space with LayerFreezer.freeze_fraction (this run's space lacks it)",
      "a search space without PruningAwareLR.beta (this run's space adds it)"]),
    ({"space": {**SPACE, "LayerFreezer.freeze_fraction": [0.3, 0.9]}},
     ["LayerFreezer.freeze_fraction choices [0.3, 0.6] (this run: choices [0.3, 0.9])"]),
    ({"space": {**SPACE, "ThresholdSkipFineTune.threshold": [1.0, 0.5]}},  # the grid numbers points by this order
     ["ThresholdSkipFineTune.threshold choices [0.5, 1.0] (this run: choices [1.0, 0.5])"]),
    ({"space": {**SPACE, "ThresholdSkipFineTune.threshold": {"low": 0.1, "high": 1.0, "log": True}}, "sampler": "tpe"},
     ["ThresholdSkipFineTune.threshold choices [0.5, 1.0] (this run: range [0.1, 1.0] log)"]),
    ({"objective": "pareto"},
     ["directions ['minimize'] (this run: ['minimize', 'minimize'] for objective 'pareto')",
      "objective 'budget' (this run: 'pareto')"]),
    ({"objective": "ice"}, ["objective 'budget' (this run: 'ice')", "points_per_unit unset (this run: 100.0)"]),
])
def test_reopening_a_study_with_another_space_or_objective_names_the_difference(
        tmp_path: Path, fake: FakePipeline, change: dict[str, Any], named: list[str]) -> None:
    fake_tune(tmp_path, n_trials=1, study_name="s")
    storage = f"sqlite:///{tmp_path / 'tune' / 'study.db'}"
    recorded = optuna.load_study(study_name="s", storage=storage).user_attrs
    change = dict(change)
    with pytest.raises(PruningConfigError, match="study 's' was created with other settings") as error:
        fake_tune(tmp_path, change.pop("space", SPACE), n_trials=1, study_name="s", **change)
    for difference in named:
        assert difference in str(error.value)
    assert "--study_name" in error.value.hint
    study = optuna.load_study(study_name="s", storage=storage)
    assert len(fake.calls) == 1 and len(study.trials) == 1  # no trial ran, nothing was queued
    assert study.user_attrs == recorded  # the stored settings and space are untouched
    fake_tune(tmp_path, n_trials=1, study_name="s")  # the same space and settings still resume it
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 2


def test_a_study_without_a_recorded_space_is_checked_against_its_trials(tmp_path: Path, fake: FakePipeline) -> None:
    """A study made before the space was recorded: its trials' distributions tell the space."""
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(storage=storage, study_name="old", directions=["minimize"])
    old.set_user_attr("lightning_prune", {"objective": "budget", "subset_fraction": 0.3, "max_drop": 0.01})
    old.add_trial(optuna.trial.create_trial(
        params={"ThresholdSkipFineTune.threshold": 0.5, "LayerFreezer.freeze_fraction": 0.3},
        distributions={"ThresholdSkipFineTune.threshold": optuna.distributions.CategoricalDistribution([0.5, 1.0]),
                       "LayerFreezer.freeze_fraction": optuna.distributions.CategoricalDistribution([0.3, 0.6])},
        value=9.0, user_attrs={"seconds": 9.0, "drop": 0.0, "metric_before": 0.9, "metric_after": 0.9}))
    with pytest.raises(PruningConfigError, match=r"LayerFreezer.freeze_fraction choices \[0.3, 0.6\] "
                                                 r"\(this run: choices \[0.3, 0.9\]\)"):
        fake_tune(tmp_path, {**SPACE, "LayerFreezer.freeze_fraction": [0.3, 0.9]}, storage=storage, study_name="old",
                  n_trials=1)
    assert fake.calls == []
    result = fake_tune(tmp_path, storage=storage, study_name="old", n_trials=1)  # the same space: resumed
    assert len(result.trials) == 2 and len(fake.calls) == 1


def test_n_trials_0_without_a_completed_trial_is_refused(tmp_path: Path, fake: FakePipeline) -> None:
    with pytest.raises(PruningConfigError, match="n_trials=0 but there is no study 'pipeline-budget'") as error:
        fake_tune(tmp_path, n_trials=0, stage2=True)
    assert "--n_trials" in error.value.hint
    assert not (tmp_path / "tune").exists()  # the output folder made for it is removed again, no study.db

    invalid = {"PruningAwareLR.lr_base": [0.001], "PruningAwareLR.delta": [0.005]}  # the only point is invalid
    with pytest.raises(PruningConfigError, match="all 1 proposed combinations were invalid"):
        fake_tune(tmp_path, invalid)
    with pytest.raises(PruningConfigError, match=r"study 'pipeline-budget' in sqlite:///.*study.db has no completed "
                                                 r"trial \(1 invalid \(pruned\)\) to choose stage 2's parameters"):
        fake_tune(tmp_path, invalid, n_trials=0, stage2=True)
    assert fake.calls == [] and not (tmp_path / "tune" / "stage2").exists()
    assert len(optuna.load_study(study_name="pipeline-budget", storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}").trials) == 1


def test_cli_tune_n_trials_0_on_a_new_study_exits_with_the_hint(tmp_path: Path, fake: FakePipeline,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = write_yaml(tmp_path / "config.yaml", tiny_config())
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--config", str(config), "--search_space", str(write_yaml(tmp_path / "space.yaml", SPACE)),
              "--n_trials", "0", "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: n_trials=0 but there is no study 'config-budget'" in err and "HINT: run trials first" in err
    assert fake.calls == [] and not (tmp_path / "out").exists()


def test_settings_come_from_defaults_then_the_tune_block_then_arguments() -> None:
    settings = TuneSettings.resolve({"objective": "ice", "n_trials": 5, "subset_fraction": 0.1},
                                    {"n_trials": 1, "sampler": None})
    assert (settings.objective, settings.n_trials, settings.subset_fraction, settings.sampler) == ("ice", 1, 0.1, "grid")
    for bad, message in [({"objective": "fast"}, "objective='fast' is unknown"), ({"sampler": "cmaes"}, "sampler='cmaes'"),
                         ({"subset_fraction": 0.0}, "subset_fraction=0.0"), ({"n_trials": -1}, "n_trials=-1"),
                         ({"max_drop": -1}, "max_drop=-1")]:
        with pytest.raises(PruningConfigError, match=message):
            TuneSettings.resolve(bad, {})


# ---------------------------------------------------------------------------------------------- real runs
def test_fit_accepts_a_config_with_a_tune_block(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", {**tiny_config(), "tune": {"n_trials": 2, "objective": "pareto"}})
    cli = make_cli(["--config", str(path)], run=False)
    assert len([cb for cb in cli.trainer.callbacks if isinstance(cb, StructuredPruning)]) == 1
    assert cli.config["tune"] == {"n_trials": 2, "objective": "pareto"}
    plain = make_cli(["--config", str(write_yaml(tmp_path / "plain.yaml", tiny_config()))], run=False)
    assert "tune" not in plain.config  # a config without the block parses exactly as before


def test_two_workers_share_one_study(tmp_path: Path) -> None:
    """Real: a second process and this one run one trial each of the same study at the same time."""
    config = write_yaml(tmp_path / "config.yaml", tiny_config())
    space = write_yaml(tmp_path / "space.yaml", REAL_SPACE)
    kwargs = {"n_trials": 1, "storage": f"sqlite:///{tmp_path / 'shared.db'}", "study_name": "shared",
              "output_dir": str(tmp_path / "tune"), "stage2": False, "subset_fraction": 0.3}
    code = f"from lightning_prune.tuning import tune; tune({str(config)!r}, {str(space)!r}, **{kwargs!r})"
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        tune(config, space, **kwargs)
    finally:
        output, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, output[-3000:]
    study = optuna.load_study(study_name="shared", storage=kwargs["storage"])
    completed = complete_params(study)
    assert len(completed) == 2 and len(set(completed)) == 2
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2
    # every trial started from the same weights on the same data
    assert len({t.user_attrs["metric_before"] for t in study.trials}) == 1


def test_stage_2_writes_the_report_best_params_and_a_config_fit_accepts(tmp_path: Path) -> None:
    """Real: one trial on 30 % of digits (choosing among trials is tested above), then stage 2 on 20 %."""
    space = {"ThresholdSkipFineTune.threshold": [0.01], "LayerFreezer.freeze_fraction": [0.6]}
    result = tune(tiny_config(), space, output_dir=tmp_path / "tune", subset_fraction=0.3, stage2_subset_fraction=0.2)
    (row,) = result.trials
    assert row["state"] == "COMPLETE" and result.best_trial == row["number"]
    report = json.loads(Path(row["report"]).read_text())["totals"]  # the trial's numbers are its report's
    assert report["seconds_total"] == pytest.approx(row["seconds"])
    assert row["value"] == pytest.approx(budget_objective(row["seconds"], row["drop"], max_drop=0.01))
    assert report["metric_before"] - report["metric_after"] == pytest.approx(row["drop"])
    assert report["macs_after"] == row["macs_after"] < report["macs_before"]

    assert yaml.safe_load(result.best_params_path.read_text()) == result.best_params
    cli = make_cli(["--config", str(result.best_config_path), "--trainer.logger=false"], run=False)
    freezer = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "LayerFreezer")
    assert freezer.freeze_fraction == result.best_params["LayerFreezer.freeze_fraction"] == 0.6
    best_config = yaml.safe_load(result.best_config_path.read_text())
    assert "subset_fraction" not in best_config["data"]["init_args"]  # the user's own data settings

    assert result.stage2_report == tmp_path / "tune" / "stage2" / "report.json" and result.stage2_report.is_file()
    stage2_config = yaml.safe_load((tmp_path / "tune" / "stage2" / "stage2_config.yaml").read_text())
    assert stage2_config["data"]["init_args"]["subset_fraction"] == 0.2
    stage2_totals = json.loads(result.stage2_report.read_text())["totals"]
    assert result.stage2["macs_after"] == stage2_totals["macs_after"] < stage2_totals["macs_before"]
    assert json.loads((tmp_path / "tune" / "tune_summary.json").read_text())["best_trial"] == result.best_trial


def test_cli_tune_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real: settings from the config's tune block, one overridden by a flag."""
    write_yaml(tmp_path / "space.yaml", REAL_SPACE)  # the tune block names it
    config = {**tiny_config(), "tune": {"search_space": "space.yaml", "objective": "ice", "n_trials": 3,
                                        "subset_fraction": 0.3, "stage2": False}}
    path = write_yaml(tmp_path / "config.yaml", config)
    monkeypatch.chdir(tmp_path.parent)  # the search space is found next to the config
    main(["tune", "--config", str(path), "--n_trials", "1", "--output_dir", str(tmp_path / "out")])
    study = optuna.load_study(study_name="config-ice", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == pytest.approx(ice_objective(trial.user_attrs["seconds"], trial.user_attrs["drop"]))
    assert (tmp_path / "out" / "best_params.yaml").is_file() and not (tmp_path / "out" / "stage2").exists()
