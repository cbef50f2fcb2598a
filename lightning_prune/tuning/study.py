"""The Optuna study: persistent storage, samplers, settings checks and recovery of interrupted trials.

Recovery. A trial interrupted mid-run is marked ``FAIL`` (with a user attribute ``interrupted``) and
**re-run**: a copy with the same parameters (and, for the grid sampler, the same grid point) is queued
as a ``WAITING`` trial, which the next trial of any worker picks up first. Three cases are covered:

* Ctrl-C (``KeyboardInterrupt``): Optuna marks the trial ``FAIL``; the objective records why; the
  next ``tune`` call queues the re-run.
* the worker process died (killed, out of memory): its trial is left ``RUNNING``. Each trial records
  its worker as ``host:pid``; the next ``tune`` call on the same host finds the process gone, marks
  the trial ``FAIL`` and queues the re-run at once.
* a worker on another host died: RDB storages get Optuna's heartbeat (every
  :data:`HEARTBEAT_INTERVAL` seconds); a trial without a heartbeat for :data:`GRACE_PERIOD` seconds
  is failed and re-queued by the next trial any worker starts.

A re-run is queued once per interrupted trial (the copy records ``retry_of``).
"""

from __future__ import annotations

import inspect
import math
import os
import random
import socket
import time
import warnings
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_prune.errors import PruningConfigError
from lightning_prune.tuning.objectives import directions
from lightning_prune.tuning.space import SearchSpace

SAMPLERS = ("grid", "tpe", "random")

#: Seconds between heartbeats of a running trial (RDB storages).
HEARTBEAT_INTERVAL = 60
#: Seconds without a heartbeat after which another worker fails and re-queues a trial.
GRACE_PERIOD = 600

_SETTINGS_KEY = "lightning_prune"
#: Trial user attributes: the re-run's original trial number, why a trial was interrupted, ``host:pid``.
RETRY_OF = "retry_of"
INTERRUPTED = "interrupted"
WORKER = "worker"


def worker_id() -> str:
    """``host:pid`` of this process, recorded on every trial it runs.

    Example:
        >>> worker_id().endswith(f":{os.getpid()}")
        True
    """
    return f"{socket.gethostname()}:{os.getpid()}"


def _worker_gone(worker: Any) -> bool:
    """Whether ``worker`` (``host:pid``) ran on this host and its process no longer exists."""
    if not isinstance(worker, str) or ":" not in worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a re-run of ``trial``: same parameters, same grid point, ``retry_of`` recorded.

    Also the heartbeat's stale-trial callback.

    Example:
        >>> # requeue(study, study.trials[3])
    """
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k in ("grid_id", "search_space")}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={RETRY_OF: trial.number}, system_attrs=system_attrs))


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage for ``url`` with heartbeats (stale trials re-queued) and a patient SQLite lock.

    Example:
        >>> storage = make_storage("sqlite:///:memory:")
    """
    kwargs: dict[str, Any] = {"heartbeat_interval": HEARTBEAT_INTERVAL, "grace_period": GRACE_PERIOD}
    signature = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    callback_key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in signature else "failed_trial_callback"
    kwargs[callback_key] = requeue
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat options are "experimental" in some Optuna versions
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)


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


def count_trials(storage: optuna.storages.BaseStorage | str, study_name: str) -> int:
    """Number of trials the stored study ``study_name`` has (0 if it does not exist yet).

    Example:
        >>> count_trials("sqlite:///:memory:", "nothing-here")
        0
    """
    try:
        return len(optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler()).trials)
    except KeyError:
        return 0


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
               settings: Mapping[str, Any]) -> optuna.Study:
    """Create the study or load the existing one, refusing one made with other settings.

    Raises:
        PruningConfigError: if the stored study was created with another objective or settings.

    Example:
        >>> study = open_study("sqlite:///:memory:", "demo", "budget", optuna.samplers.RandomSampler(),
        ...                    study_settings("budget", 0.01, 100.0, 0.02))
        >>> study.directions[0].name
        'MINIMIZE'
    """
    study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                directions=directions(objective), load_if_exists=True)
    stored = study.user_attrs.get(_SETTINGS_KEY)
    if stored is None:
        study.set_user_attr(_SETTINGS_KEY, dict(settings))
    elif not _same_settings(stored, settings):
        raise PruningConfigError(f"study {study_name!r} was created with {stored}; this run asks for {dict(settings)}",
                                 hint="run with the study's settings, or give a new --study_name (or --storage)")
    return study


def open_shared(url: str, study_name: str, objective: str, sampler: str, space: SearchSpace, seed: int,
                settings: Mapping[str, Any], attempts: int = 5) -> optuna.Study:
    """:func:`make_storage` + :func:`make_sampler` + :func:`open_study`, retried while another worker
    creates the same database or study at the same moment.

    Example:
        >>> space = SearchSpace.from_mapping({"LayerFreezer.freeze_fraction": [0.3, 0.9]})
        >>> study = open_shared("sqlite:///:memory:", "demo", "budget", "grid", space, 0,
        ...                     study_settings("budget", 0.01, 100.0, 0.02))
        >>> type(study.sampler).__name__
        'GridSampler'
    """
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            storage = make_storage(url)
            chosen = make_sampler(sampler, space, seed, existing_trials=count_trials(storage, study_name))
            return open_study(storage, study_name, objective, chosen, settings)
        except (OperationalError, IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


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
