"""The Optuna study: samplers, settings and search-space checks, and recovery of interrupted trials.

Recovery. A trial interrupted mid-run is marked ``FAIL`` (with a user attribute ``interrupted``) and
**re-run**: a copy with the same parameters (and, for the grid sampler, the same grid point) is queued
as a ``WAITING`` trial, which the next trial of any worker picks up first (:func:`recover`; the
storage side, worker ids and heartbeats, is :mod:`.storage`). A re-run is queued once per
interrupted trial (the copy records ``retry_of``).

Refusals. :func:`inspect_study` reads the stored study, if any, without creating one, and refuses it
when it was made with other settings: another objective (or optimisation directions),
``max_drop``/``points_per_unit``/``subset_fraction``, or another search space (names, choices, ranges),
naming each difference; with ``require_completed`` it also refuses a missing study or one without a
completed trial. (A storage URL that cannot work is refused before, by :func:`.storage.check_storage`.)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_prune.errors import PruningConfigError
from lightning_prune.tuning.objectives import directions
from lightning_prune.tuning.space import SearchSpace
from lightning_prune.tuning.storage import (
    INTERRUPTED,
    RETRY_OF,
    WORKER,
    _retrying,
    _worker_gone,
    count_trials,
    display_url,
    make_storage,
    requeue,
    sqlite_file,
)

SAMPLERS = ("grid", "tpe", "random")

#: The pruners ``tune`` offers: ``"none"`` (every trial runs to the end) or ``"median"``
#: (:class:`StepMedianPruner`: stop a trial whose value after a pruning step is worse than the median of
#: the completed trials' values after the same step; see :mod:`lightning_prune.tuning.reporter`).
PRUNERS = ("none", "median")

#: Trials that complete before the median pruner stops any.
STARTUP_TRIALS = 2

#: The trial's user attribute naming the step after which the pruner stopped it.
STOPPED = "stopped_after_step"

_SETTINGS_KEY = "lightning_prune"
#: Study user attribute holding the search space the study was created with (``SearchSpace.to_dict()``).
_SPACE_KEY = "lightning_prune.search_space"
_HINT_OTHER_STUDY = ("run with the study's settings and search space, or give a new --study_name (or --storage, "
                     "--output_dir) to start another study")
_HINT_RUN_TRIALS = ("run trials first: omit --n_trials (the grid's remaining points) or give --n_trials N; "
                    "or point --storage / --study_name / --output_dir at the study that has them")


def make_sampler(name: str, space: SearchSpace, seed: int, existing_trials: int = 0) -> optuna.samplers.BaseSampler:
    """``GridSampler`` over the space's lists, ``TPESampler`` or ``RandomSampler``.

    The grid is shuffled with ``seed`` (every worker must use the same); TPE and random are seeded
    with ``seed + existing_trials`` so a fresh study is reproducible and a resumed one does not
    replay the points it already has.

    Example:
        >>> space = SearchSpace.from_mapping({"LayerFreezer.freeze_fraction": [0.3, 0.9]})
        >>> type(make_sampler("grid", space, seed=0)).__name__
        'GridSampler'
    """
    check_sampler(name)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed + existing_trials)
    return optuna.samplers.RandomSampler(seed=seed + existing_trials)


class StepMedianPruner(optuna.pruners.BasePruner):
    """Stop a trial whose value after step ``k`` is worse than the median of the completed trials' after ``k``.

    Unlike Optuna's ``MedianPruner``, which judges a trial by its best value so far, the trial's value at
    the current step is compared: a value that only grows (pruning time) would otherwise be judged by
    its first step forever. No trial is stopped at a step fewer than ``startup_trials`` completed
    trials reached. Single-objective studies only.

    Example:
        >>> study = optuna.create_study(pruner=StepMedianPruner(startup_trials=1))
        >>> study.add_trial(optuna.trial.create_trial(value=5.0, intermediate_values={0: 2.0}))
        >>> trial = study.ask()
        >>> trial.report(3.0, 0)
        >>> trial.should_prune()
        True
    """

    def __init__(self, startup_trials: int = STARTUP_TRIALS) -> None:
        self.startup_trials = int(startup_trials)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        earlier = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if step in t.intermediate_values and math.isfinite(t.intermediate_values[step])]
        if len(earlier) < self.startup_trials:
            return False
        value, median = trial.intermediate_values[step], statistics.median(earlier)
        if study.direction == optuna.study.StudyDirection.MINIMIZE:
            return bool(value > median)
        return bool(value < median)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """The Optuna pruner ``name`` stands for (:data:`PRUNERS`).

    Example:
        >>> type(make_pruner("median")).__name__, type(make_pruner("none")).__name__
        ('StepMedianPruner', 'NopPruner')
    """
    if name == "median":
        return StepMedianPruner()
    return optuna.pruners.NopPruner()


def check_sampler(name: str) -> None:
    """Raise :class:`PruningConfigError` unless ``name`` is a known sampler.

    Example:
        >>> check_sampler("tpe")
    """
    if name not in SAMPLERS:
        raise PruningConfigError(f"sampler={name!r} is unknown; valid: {', '.join(SAMPLERS)}",
                                 hint="use 'grid' (the paper's choice for a small space), 'tpe' or 'random'")


def study_settings(objective: str, max_drop: float, points_per_unit: float, subset_fraction: float) -> dict[str, Any]:
    """The settings a study's values depend on (stored with the study, checked on every resume).

    Example:
        >>> study_settings("budget", 0.01, 100.0, 0.02)
        {'objective': 'budget', 'subset_fraction': 0.02, 'max_drop': 0.01}
    """
    settings: dict[str, Any] = {"objective": objective, "subset_fraction": subset_fraction}
    if objective == "budget":
        settings["max_drop"] = max_drop
    if objective == "ice":
        settings["points_per_unit"] = points_per_unit
    return settings


def open_study(storage: optuna.storages.BaseStorage | str, study_name: str, objective: str, sampler: optuna.samplers.BaseSampler,
               settings: Mapping[str, Any], space: SearchSpace | None = None,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create the study or load the existing one, refusing one made with other settings or another space.

    A new study records ``settings`` (and ``space``) as user attributes; an existing one is checked
    against them with :func:`check_compatible` before anything is written to it.

    Raises:
        PruningConfigError: if the stored study was created with another objective, settings or space.

    Example:
        >>> study = open_study("sqlite:///:memory:", "demo", "budget", optuna.samplers.RandomSampler(),
        ...                    study_settings("budget", 0.01, 100.0, 0.02))
        >>> study.directions[0].name
        'MINIMIZE'
    """
    study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler, pruner=pruner,
                                directions=directions(objective), load_if_exists=True)
    check_compatible(study, objective, settings, space)
    if study.user_attrs.get(_SETTINGS_KEY) is None:
        study.set_user_attr(_SETTINGS_KEY, dict(settings))
    if space is not None and study.user_attrs.get(_SPACE_KEY) is None:
        study.set_user_attr(_SPACE_KEY, space.to_dict())
    return study


def check_compatible(study: optuna.Study, objective: str, settings: Mapping[str, Any],
                     space: SearchSpace | None = None) -> None:
    """Refuse a stored study whose directions, settings or search space differ from this run's.

    The search space is compared with the one the study recorded, else (a study from before that
    record) with the parameter distributions of its trials. Choices must match in value and order
    (the grid sampler numbers its points by that order).

    Raises:
        PruningConfigError: listing every difference, stored value first.

    Example:
        >>> study = optuna.create_study(storage="sqlite:///:memory:", directions=["maximize"])
        >>> check_compatible(study, "budget", {})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_prune.errors.PruningConfigError: study ... was created with other settings: directions ['maximize'] (this run: ['minimize'] for objective 'budget'). HINT: ...
    """
    differences = []
    stored_directions = [d.name.lower() for d in study.directions]
    wanted = directions(objective)
    if stored_directions != wanted:
        differences.append(f"directions {stored_directions} (this run: {wanted} for objective {objective!r})")
    stored = study.user_attrs.get(_SETTINGS_KEY)
    if stored is not None:
        differences += _settings_differences(stored, settings)
    if space is not None:
        differences += _space_differences(study, space)
    if differences:
        raise PruningConfigError(f"study {study.study_name!r} was created with other settings: {'; '.join(differences)}",
                                 hint=_HINT_OTHER_STUDY)


def completed_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that finished with a result stage 2 can choose from.

    Example:
        >>> completed_trials(optuna.create_study())
        []
    """
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and "seconds" in t.user_attrs]


def inspect_study(url: str, study_name: str, objective: str, settings: Mapping[str, Any], space: SearchSpace,
                  require_completed: bool = False) -> None:
    """Check the stored study ``study_name`` (if any) against this run, creating nothing.

    A SQLite file that does not exist yet holds no study and is not created. Otherwise the storage is
    opened (an RDB storage creates Optuna's tables in an empty database), and an existing study is
    checked with :func:`check_compatible`.

    Args:
        url: The storage URL (already checked by :func:`.storage.check_storage`).
        study_name: The study's name.
        objective: This run's objective.
        settings: This run's :func:`study_settings`.
        space: This run's search space.
        require_completed: Refuse a missing study or one without a completed trial (``n_trials=0``:
            stage 2's parameters must come from a finished trial).

    Raises:
        PruningConfigError: for an incompatible study, an unreachable storage or, with
            ``require_completed``, nothing to choose from.

    Example:
        >>> space = SearchSpace.from_mapping({"LayerFreezer.freeze_fraction": [0.3, 0.9]})
        >>> inspect_study("sqlite:///:memory:", "demo", "budget", study_settings("budget", 0.01, 100.0, 0.02), space)
    """
    where = f"study {study_name!r} in {display_url(url)}"
    file = sqlite_file(url)
    if file is not None and not file.exists():
        if require_completed:
            raise PruningConfigError(f"n_trials=0 but there is no {where} (the file does not exist), so no completed "
                                     "trial to choose stage 2's parameters from", hint=_HINT_RUN_TRIALS)
        return
    storage = _retrying(url, lambda: make_storage(url))
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
    except KeyError:  # no such study
        if require_completed:
            raise PruningConfigError(f"n_trials=0 but there is no {where} yet, so no completed trial to choose "
                                     "stage 2's parameters from", hint=_HINT_RUN_TRIALS) from None
        return
    check_compatible(study, objective, settings, space)
    if require_completed and not completed_trials(study):
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        names = {"PRUNED": "invalid (pruned)", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
        counts = ", ".join(f"{states.count(s)} {names.get(s, s.lower())}" for s in sorted(set(states))) or "no trial at all"
        raise PruningConfigError(f"n_trials=0 but {where} has no completed trial ({counts}) to choose stage 2's "
                                 "parameters from", hint=_HINT_RUN_TRIALS)


def open_shared(url: str, study_name: str, objective: str, sampler: str, space: SearchSpace, seed: int,
                settings: Mapping[str, Any], attempts: int = 5, pruner: str = "none") -> optuna.Study:
    """:func:`make_storage` + :func:`make_sampler` + :func:`open_study`, retried while another worker
    creates the same database or study at the same moment.

    Raises:
        PruningConfigError: for a study with other settings or search space, or a storage that still
            fails after ``attempts`` tries (unreachable server, a file that is not a database, ...).

    Example:
        >>> space = SearchSpace.from_mapping({"LayerFreezer.freeze_fraction": [0.3, 0.9]})
        >>> study = open_shared("sqlite:///:memory:", "demo", "budget", "grid", space, 0,
        ...                     study_settings("budget", 0.01, 100.0, 0.02))
        >>> type(study.sampler).__name__
        'GridSampler'
    """
    def attempt() -> optuna.Study:
        storage = make_storage(url)
        chosen = make_sampler(sampler, space, seed, existing_trials=count_trials(storage, study_name))
        return open_study(storage, study_name, objective, chosen, settings, space, make_pruner(pruner))

    return _retrying(url, attempt, attempts)


def _same_settings(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if set(a) != set(b):
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, int | float) and isinstance(y, int | float):
            if not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif x != y:
            return False
    return True


def _settings_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """``"key 'stored' (this run: 'wanted')"`` for every setting that differs."""
    if _same_settings(stored, wanted):
        return []
    differences = []
    for key in sorted(set(stored) | set(wanted)):
        if key not in stored or key not in wanted or not _same_settings({key: stored[key]}, {key: wanted[key]}):
            before = repr(stored[key]) if key in stored else "unset"
            differences.append(f"{key} {before} (this run: {repr(wanted[key]) if key in wanted else 'unset'})")
    return differences


def _spec(value: Any) -> dict[str, Any]:
    """A comparable form of a parameter's YAML value (a list of choices or a range mapping)."""
    if not isinstance(value, Mapping):
        return {"choices": list(value) if isinstance(value, list | tuple) else [value]}
    low, high, step = value.get("low"), value.get("high"), value.get("step")
    is_int = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high) + ((step,) if step is not None else ()))
    return {"low": low, "high": high, "log": bool(value.get("log", False)), "step": step if step is not None or not is_int else 1,
            "int": is_int}


def _distribution_spec(distribution: Any) -> dict[str, Any]:
    """The comparable form of an Optuna distribution a trial recorded."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return {"choices": list(distribution.choices)}
    return {"low": distribution.low, "high": distribution.high, "log": bool(distribution.log), "step": distribution.step,
            "int": isinstance(distribution, IntDistribution)}


def _spec_text(spec: Mapping[str, Any]) -> str:
    """``choices [0.3, 0.9]`` or ``range [0.0001, 0.01] log`` for messages."""
    if "choices" in spec:
        return f"choices {spec['choices']}"
    step = spec["step"] if spec["step"] is not None and not (spec["int"] and spec["step"] == 1) else None
    return (f"{'integer ' if spec['int'] else ''}range [{spec['low']}, {spec['high']}]" + (" log" if spec["log"] else "")
            + (f" step {step}" if step is not None else ""))


def _space_differences(study: optuna.Study, space: SearchSpace) -> list[str]:
    """How ``space`` differs from the space the stored study was created with (its record, else its trials')."""
    recorded = study.user_attrs.get(_SPACE_KEY)
    if isinstance(recorded, Mapping):
        stored = {name: _spec(value) for name, value in recorded.items()}
    else:
        stored = {}
        for trial in study.get_trials(deepcopy=False):
            for name, distribution in trial.distributions.items():
                stored.setdefault(name, _distribution_spec(distribution))
        if not stored:
            return []  # no record and no trial: nothing to compare with
    wanted = {p.name: _spec(p.to_yaml_value()) for p in space.params}
    differences = []
    dropped = [name for name in stored if name not in wanted]
    added = [name for name in wanted if name not in stored]
    if dropped:
        differences.append(f"a search space with {', '.join(dropped)} (this run's space lacks it)")
    if added:
        differences.append(f"a search space without {', '.join(added)} (this run's space adds it)")
    for name in stored:
        if name in wanted and not _same_spec(stored[name], wanted[name]):
            differences.append(f"{name} {_spec_text(stored[name])} (this run: {_spec_text(wanted[name])})")
    return differences


def _same_spec(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Same kind, same bounds, or the same choices in the same order (``1 == 1.0``, but ``True != 1``)."""
    if set(a) != set(b):
        return False
    if "choices" in a:
        return len(a["choices"]) == len(b["choices"]) and all(
            x == y and isinstance(x, bool) == isinstance(y, bool) for x, y in zip(a["choices"], b["choices"]))
    return all(a[key] == b[key] for key in a)


def recover(study: optuna.Study) -> list[int]:
    """Fail the trials of dead local workers and queue one re-run of every interrupted trial.

    Returns:
        The numbers of the trials re-queued now.

    Example:
        >>> # recover(study)  -> [2]  (trial 2's worker was killed; its point runs again)
    """
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state == TrialState.RUNNING and _worker_gone(trial.user_attrs.get(WORKER)):
            storage = study._storage
            try:
                storage.set_trial_user_attr(trial._trial_id, INTERRUPTED,
                                            f"worker {trial.user_attrs[WORKER]} is gone")
                storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker got there first
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    requeued = []
    for trial in trials:
        if trial.state == TrialState.FAIL and INTERRUPTED in trial.user_attrs and trial.number not in retried:
            requeue(study, trial)
            requeued.append(trial.number)
    return requeued


def pending_grid_points(study: optuna.Study, space: SearchSpace) -> int:
    """Grid points of ``space`` with no finished evaluation (an interrupted one does not count).

    Example:
        >>> # pending_grid_points(study, space)  -> 214 of 216 after two trials
    """
    grid = space.grid()
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    done = set()
    for trial in trials:
        if "grid_id" not in trial.system_attrs or not _same_grid(trial.system_attrs.get("search_space"), grid):
            continue
        rerun = INTERRUPTED in trial.user_attrs or trial.number in retried  # stale trials are re-queued by the heartbeat
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (trial.state == TrialState.FAIL and not rerun):
            done.add(trial.system_attrs["grid_id"])
    return (space.grid_size() or 0) - len(done)


def _same_grid(stored: Any, grid: Mapping[str, list[Any]]) -> bool:
    if not isinstance(stored, Mapping) or set(stored) != set(grid):
        return False
    return all(list(stored[k]) == list(grid[k]) for k in grid)
