"""``tune``: ICE-Pruning's two-stage auto-tuning of the pipeline's callbacks with Optuna.

Stage 1 runs the whole pruning pipeline (a ``lightning-prune fit`` config) once per trial, on a
seeded ``subset_fraction`` of the training and validation data, from the same starting weights
(``seed_everything``), with the trial's values of the search space's ``ClassName.argument`` keys.
Stage 2 runs the pipeline again with the chosen values on the config's own data and writes its
``report.json``; the values are also written as ``best_params.yaml`` and the whole ready-to-use fit
config as ``best_config.yaml``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_prune._logging import info
from lightning_prune.errors import PruningConfigError
from lightning_prune.state import largest_drop
from lightning_prune.tuning import config as configs
from lightning_prune.tuning import pipeline, reporter
from lightning_prune.tuning import storage as storages
from lightning_prune.tuning import study as studies
from lightning_prune.tuning.objectives import Point, choose_from_front, objective_value
from lightning_prune.tuning.settings import (
    DEFAULT_TRIALS,
    TuneResult,
    TuneSettings,
    outcome_text,
    params_text,
)
from lightning_prune.tuning.space import SearchSpace

#: Run the garbage collector after every trial (frees each run's model, optimizer and loaders).
GC_AFTER_TRIAL = True


def tune(
    config: str | Path | Mapping[str, Any],
    search_space: str | Path | Mapping[str, Any] | SearchSpace | None = None,
    *,
    objective: str | None = None,
    max_drop: float | None = None,
    points_per_unit: float | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    n_trials: int | None = None,
    subset_fraction: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    output_dir: str | Path | None = None,
    stage2: bool | None = None,
    stage2_subset_fraction: float | None = None,
    seed: int | None = None,
    quiet: bool | None = None,
) -> TuneResult:
    """Auto-tune the pipeline's callbacks (stage 1) and run the best parameters on the config's data (stage 2).

    Every argument left ``None`` comes from the config's ``tune:`` block, else from the defaults of
    :class:`TuneSettings` (which documents each one).

    Args:
        config: A ``lightning-prune fit`` YAML (path or mapping) with one ``StructuredPruning``
            callback, optionally with a top-level ``tune:`` block of settings.
        search_space: Path or mapping of ``ClassName.argument`` keys (see
            :mod:`lightning_prune.tuning.space`); default: the authors' CIFAR grid (216 points).
        objective: ``"budget"`` (default), ``"pareto"`` or ``"ice"``.
        max_drop: Drop budget in the metric's units (default 0.01).
        points_per_unit: ``"ice"``: points per metric unit (default 100).
        sampler: ``"grid"`` (default), ``"tpe"`` or ``"random"``.
        pruner: ``"none"`` (default) or ``"median"``: stop a stage-1 trial after a pruning step where it
            is behind the median of the completed trials at the same step (not with ``"pareto"``).
        n_trials: Trials this call runs (grid default: the points not yet evaluated; 0: none).
        subset_fraction: Stage-1 data fraction (default 0.02).
        storage: Optuna storage URL (default ``sqlite:///<output_dir>/study.db``).
        study_name: Default ``<config file name>-<objective>``.
        output_dir: Default ``<trainer.default_root_dir>/tune``.
        stage2: Run stage 2 (default ``True``).
        stage2_subset_fraction: Stage-2 data fraction (default: the config's own).
        seed: Seed of the samplers and of ``seed_everything`` where the config has none (default 0).
        quiet: Silence Lightning during stage-1 trials (default ``True``).

    Returns:
        A :class:`TuneResult`; also written to ``<output_dir>/tune_summary.json``.

    Raises:
        PruningConfigError: before any trial runs (and before any folder or study is created, where
            the check allows), for an unknown class or argument in the search space, bad settings, a
            storage URL that cannot work (not a URL, a driver that is not installed, a SQLite file in
            a folder that does not exist: that folder is not created, unlike ``output_dir``), an
            ``output_dir`` that cannot be created, a stored study made with other settings, another
            objective or another search space (each difference is named), or ``n_trials=0`` on a
            study without a completed trial.

    Example:
        >>> from lightning_prune.tuning import tune
        >>> # result = tune("configs/ice_quickstart.yaml", "configs/ice_search_space.yaml", n_trials=6)
        >>> # result.best_params, result.stage2_report
    """
    settings = {"search_space": search_space, "objective": objective, "max_drop": max_drop,
                "points_per_unit": points_per_unit, "sampler": sampler, "pruner": pruner, "n_trials": n_trials,
                "subset_fraction": subset_fraction, "storage": storage, "study_name": study_name,
                "output_dir": output_dir, "stage2": stage2, "stage2_subset_fraction": stage2_subset_fraction,
                "seed": seed, "quiet": quiet}
    fit_config, block, path = configs.load_config(config)
    opts = TuneSettings.resolve(block, settings)
    space = SearchSpace.load(opts.search_space, base_dir=path.parent if path is not None else None)
    configs.validate(space, fit_config)
    if opts.sampler == "grid":
        space.grid()  # ranges are refused here, before anything runs

    output_dir = _output_dir(opts, fit_config).resolve()
    storage_url = opts.storage or f"sqlite:///{(output_dir / 'study.db').resolve()}"
    study_name = opts.study_name or f"{path.stem if path is not None else 'pipeline'}-{opts.objective}"
    settings_record = studies.study_settings(opts.objective, opts.max_drop, opts.points_per_unit, opts.subset_fraction)
    if opts.storage is not None:  # before anything is created (the default one lives in output_dir, made below)
        storages.check_storage(opts.storage)
    created = _make_dirs(output_dir)

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        try:  # every refusal here comes before a trial runs and leaves no new folder or study behind
            studies.inspect_study(storage_url, study_name, opts.objective, settings_record, space,
                                  require_completed=opts.n_trials == 0)
            _parse_check(fit_config, output_dir, opts)
        except PruningConfigError:
            _remove_empty(created)
            raise
        study = studies.open_shared(storage_url, study_name, opts.objective, opts.sampler, space, opts.seed, settings_record,
                                    pruner=opts.pruner)
        requeued = studies.recover(study)
        n_trials = _trials_to_run(study, space, opts)
        info(f"[lightning_prune] tune: study {study_name!r} in {storages.display_url(storage_url)}; "
             f"objective {_objective_text(opts)}, "
             f"sampler {opts.sampler}, pruner {opts.pruner}, {len(space.params)} parameters"
             + (f" ({space.grid_size()} grid points)" if space.grid_size() else "")
             + f", {opts.subset_fraction:g} of the data per trial; "
             f"{sum(t.state == TrialState.COMPLETE for t in study.trials)} trials complete"
             + (f", re-running interrupted trial(s) {requeued}" if requeued else "")
             + f"; running {n_trials} now")
        if n_trials:
            _optimize(study, fit_config, space, opts, output_dir, n_trials)
        result = _collect(study, storage_url, opts, output_dir)
    finally:
        optuna.logging.set_verbosity(verbosity)

    _write_best(result, fit_config, opts, study_name, output_dir)
    if opts.stage2 and result.best_params is not None:
        _stage2(result, fit_config, opts, output_dir)
    (output_dir / "tune_summary.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    info(f"[lightning_prune] tune: done\n{result.summary()}")
    return result


# ---------------------------------------------------------------------------------------------- stage 1
class _Objective:
    """One trial: suggest, check the combination, write the config, run it, report PT and drop."""

    def __init__(self, config: dict[str, Any], space: SearchSpace, opts: TuneSettings, output_dir: Path) -> None:
        self.config, self.space, self.opts, self.output_dir = config, space, opts, output_dir

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        trial.set_user_attr(storages.WORKER, storages.worker_id())
        params = self.space.suggest(trial)
        try:
            configs.check_combination(self.config, params)
        except PruningConfigError as exc:
            trial.set_user_attr("invalid", str(exc))
            raise optuna.TrialPruned(f"invalid combination: {exc}") from None
        trial_dir = self.output_dir / f"trial_{trial.number}"
        config = configs.trial_config(self.config, params, trial_dir, self.opts.subset_fraction, self.opts.seed,
                                       quiet=self.opts.quiet, checkpoints=False)
        if self.opts.pruner != "none":
            config["trainer"]["callbacks"].append({"class_path": f"{reporter.__name__}.TrialReporter"})
        config_path = configs.write_config(config, trial_dir / "trial_config.yaml",
                                            header=f"lightning-prune tune: trial {trial.number} of study {trial.study.study_name!r}")
        trial.set_user_attr("dir", str(trial_dir))
        try:
            with pipeline.quiet_logging(self.opts.quiet), self._reporting(trial):
                outcome = pipeline.run_pipeline(config_path)
        except KeyboardInterrupt:
            trial.set_user_attr(storages.INTERRUPTED, "KeyboardInterrupt")
            raise
        for key, value in outcome.to_dict().items():
            trial.set_user_attr(key, value)
        largest = largest_drop(outcome.metric_before, outcome.mode)
        if largest is not None and largest <= self.opts.max_drop:
            raise PruningConfigError(
                f"max_drop={self.opts.max_drop:g} allows any drop: the monitored metric measured "
                f"{outcome.metric_before:.4g} before pruning in trial #{trial.number}",
                hint="max_drop is in the metric's units: use max_drop=0.01 for one point of an accuracy logged as a "
                     "fraction (1.0 for one point of an accuracy logged in percent)")
        return objective_value(self.opts.objective, outcome.seconds, outcome.drop, self.opts.max_drop,
                               self.opts.points_per_unit)


    def _reporting(self, trial: optuna.Trial) -> contextlib.AbstractContextManager[None]:
        if self.opts.pruner == "none":
            return contextlib.nullcontext()
        return reporter.reporting(trial, self.opts.objective, self.opts.max_drop, self.opts.points_per_unit)


class _Progress:
    """Optuna callback: one console line per finished trial."""

    def __init__(self, total: int) -> None:
        self.total, self.count = total, 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.count += 1
        head = f"[lightning_prune] tune trial {self.count}/{self.total} (#{trial.number})"
        params = params_text(trial.params)
        if trial.state == TrialState.COMPLETE:
            info(f"{head} {params} -> {outcome_text(_row(trial))}")
        elif trial.state == TrialState.PRUNED and studies.STOPPED in trial.user_attrs:
            info(f"{head} {params} -> stopped after pruning step {trial.user_attrs[studies.STOPPED]}: behind the "
                 "completed trials' median there")
        elif trial.state == TrialState.PRUNED:
            info(f"{head} {params} -> invalid combination, skipped: {trial.user_attrs.get('invalid', '')}")
        else:
            info(f"{head} {params} -> {trial.state.name}")


def _optimize(study: optuna.Study, config: dict[str, Any], space: SearchSpace, opts: TuneSettings,
              output_dir: Path, n_trials: int) -> None:
    try:
        study.optimize(_Objective(config, space, opts, output_dir), n_trials=n_trials, catch=(pipeline.TrialFailed,),
                       callbacks=[_Progress(n_trials)], gc_after_trial=GC_AFTER_TRIAL)
    except KeyboardInterrupt:
        info("[lightning_prune] tune: interrupted; run the same command again to resume (the interrupted trial is re-run)")
        raise


def _trials_to_run(study: optuna.Study, space: SearchSpace, opts: TuneSettings) -> int:
    if opts.sampler == "grid":
        pending = studies.pending_grid_points(study, space)
        return pending if opts.n_trials is None else min(opts.n_trials, pending)
    return opts.n_trials if opts.n_trials is not None else DEFAULT_TRIALS


def _make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones created, deepest first.

    Raises:
        PruningConfigError: naming the folder, when it cannot be created.
    """
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file in the way, no permission, read-only file system
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        why = f"{str(blocker)!r} is a file, not a folder" if blocker is not None else f"{type(err).__name__}: {err.strerror or err}"
        raise PruningConfigError(f"output_dir {str(folder)!r} cannot be created: {why}",
                                 hint="give --output_dir a folder you can write to") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders ``_make_dirs`` created (deepest first) while they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (e.g. another worker uses it): keep it and its parents
            return


def _parse_check(fit_config: dict[str, Any], output_dir: Path, opts: TuneSettings) -> None:
    """LightningCLI must accept the trial config before any trial runs (a file per process: workers share the folder)."""
    path = output_dir / f".parse_check_{os.getpid()}.yaml"
    config = configs.trial_config(fit_config, {}, output_dir / "parse_check", opts.subset_fraction, opts.seed)
    configs.write_config(config, path, header="lightning-prune tune: parse check")
    try:
        with pipeline.quiet_logging(True):
            pipeline.parse_check(path)
    finally:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- results
def _row(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    row: dict[str, Any] = {"number": trial.number, "state": trial.state.name, "params": dict(trial.params)}
    for key in ("seconds", "drop", "metric_before", "metric_after", "params_after", "macs_after", "report", "dir"):
        if key in attrs:
            row[key] = attrs[key]
    if trial.values is not None:
        row["value"] = trial.values[0] if len(trial.values) == 1 else list(trial.values)
    for key in ("invalid", studies.STOPPED, storages.INTERRUPTED, storages.RETRY_OF):
        if key in attrs:
            row[key] = attrs[key]
    return row


def _collect(study: optuna.Study, storage_url: str, opts: TuneSettings, output_dir: Path) -> TuneResult:
    trials = study.get_trials(deepcopy=False)
    result = TuneResult(study_name=study.study_name, storage=storage_url, objective=opts.objective, sampler=opts.sampler,
                        trials=[_row(t) for t in trials], output_dir=output_dir)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "seconds" in t.user_attrs]
    if not complete:
        invalid = [t.user_attrs["invalid"] for t in trials if "invalid" in t.user_attrs]
        if invalid and len(invalid) == len(trials):
            raise PruningConfigError(f"no trial completed: all {len(invalid)} proposed combinations were invalid, "
                                     f"e.g. {invalid[0]}", hint="narrow the search space to valid combinations")
        info("[lightning_prune] tune: no trial has completed yet")
        return result
    if opts.objective == "pareto":
        front = [t for t in study.best_trials if "seconds" in t.user_attrs]
        points = sorted((Point(t.number, t.user_attrs["seconds"], t.user_attrs["drop"]) for t in front),
                        key=lambda p: (p.seconds, p.number))
        by_number = {t.number: t for t in front}
        result.pareto_front = [{"number": p.number, "params": dict(by_number[p.number].params),
                                "seconds": p.seconds, "drop": p.drop} for p in points]
        best = next(t for t in front if t.number == choose_from_front(points, opts.max_drop).number)
    else:
        best = min(complete, key=lambda t: (t.values[0], t.number))
    result.best_trial, result.best_params = best.number, dict(best.params)
    result.best_value = best.values[0] if len(best.values) == 1 else list(best.values)
    if opts.objective != "ice":
        result.feasible = best.user_attrs["drop"] <= opts.max_drop
        if not result.feasible:
            info(f"[lightning_prune] tune: no trial kept the drop within max_drop={opts.max_drop:g}; "
                 f"taking trial #{best.number}, the smallest overshoot")
    return result


def _write_best(result: TuneResult, fit_config: dict[str, Any], opts: TuneSettings, study_name: str,
                output_dir: Path) -> None:
    if result.best_params is None:
        return
    row = next(t for t in result.trials if t["number"] == result.best_trial)
    about = (f"lightning-prune tune: study {study_name!r}, objective {_objective_text(opts)}, trial #{result.best_trial}\n"
             f"stage 1 ({opts.subset_fraction:g} of the data): {outcome_text(row)}")
    result.best_params_path = configs.write_config(result.best_params, output_dir / "best_params.yaml", header=about)
    best_config = configs.apply_params(fit_config, result.best_params)
    seed_value = best_config.get("seed_everything")
    if not isinstance(seed_value, int) or isinstance(seed_value, bool):
        best_config["seed_everything"] = opts.seed
    result.best_config_path = configs.write_config(
        best_config, output_dir / "best_config.yaml",
        header=f"{about}\nrun: lightning-prune fit --config {output_dir / 'best_config.yaml'}")


def _stage2(result: TuneResult, fit_config: dict[str, Any], opts: TuneSettings, output_dir: Path) -> None:
    assert result.best_params is not None
    stage_dir = output_dir / "stage2"
    config = configs.trial_config(fit_config, result.best_params, stage_dir, opts.stage2_subset_fraction, opts.seed,
                                   quiet=False)
    path = configs.write_config(config, stage_dir / "stage2_config.yaml",
                                 header=f"lightning-prune tune: stage 2 of study {result.study_name!r}")
    info(f"[lightning_prune] tune: stage 2 with trial #{result.best_trial}'s parameters {params_text(result.best_params)}")
    outcome = pipeline.run_pipeline(path)
    result.stage2 = outcome.to_dict()
    result.stage2_report = Path(outcome.report) if outcome.report else None


# ---------------------------------------------------------------------------------------------- text
def _output_dir(opts: TuneSettings, fit_config: dict[str, Any]) -> Path:
    if opts.output_dir is not None:
        return Path(opts.output_dir)
    root = (fit_config.get("trainer") or {}).get("default_root_dir")
    return Path(root) / "tune" if root else Path("outputs") / "tune"


def _objective_text(opts: TuneSettings) -> str:
    if opts.objective == "budget":
        return f"budget (max_drop {opts.max_drop:g})"
    if opts.objective == "ice":
        return f"ice (eq. 2, {opts.points_per_unit:g} points per unit)"
    return f"pareto (time, drop; stage 2 within max_drop {opts.max_drop:g})"
