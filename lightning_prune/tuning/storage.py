"""Where a study lives: the storage URL checked before anything is created, worker ids, heartbeats.

Cases of an interrupted trial the storage side covers (the re-run itself: :func:`.study.recover`):

* Ctrl-C (``KeyboardInterrupt``): Optuna marks the trial ``FAIL``; the objective records why; the
  next ``tune`` call queues the re-run.
* the worker process died (killed, out of memory): its trial is left ``RUNNING``. Each trial records
  its worker as ``host:pid`` (:func:`worker_id`); the next ``tune`` call on the same host finds the
  process gone, marks the trial ``FAIL`` and queues the re-run at once.
* a worker on another host died: RDB storages get Optuna's heartbeat (every
  :data:`HEARTBEAT_INTERVAL` seconds); a trial without a heartbeat for :data:`GRACE_PERIOD` seconds
  is failed and re-queued (:func:`requeue`) by the next trial any worker starts.

:func:`check_storage` refuses, before anything is created, a storage URL SQLAlchemy cannot parse,
one whose database driver is not installed, and a SQLite file in a folder that does not exist (the
folder is NOT created: a mistyped path should not silently start a new study elsewhere; the default
storage lives in ``output_dir``, which ``tune`` creates).
"""

from __future__ import annotations

import inspect
import os
import random
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_prune.errors import PruningConfigError

#: Seconds between heartbeats of a running trial (RDB storages).
HEARTBEAT_INTERVAL = 60
#: Seconds without a heartbeat after which another worker fails and re-queues a trial.
GRACE_PERIOD = 600
#: Trial user attributes: the re-run's original trial number, why a trial was interrupted, ``host:pid``.
RETRY_OF = "retry_of"
INTERRUPTED = "interrupted"
WORKER = "worker"

_T = TypeVar("_T")


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



def display_url(url: str) -> str:
    """``url`` with its password (if any) masked, for messages and logs.

    Example:
        >>> display_url("postgresql://me:secret@db/optuna")
        'postgresql://me:***@db/optuna'
        >>> display_url("sqlite:///out/study.db")
        'sqlite:///out/study.db'
    """
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: shown as given
        return str(url)
    return parsed.render_as_string(hide_password=True) if parsed.password else str(url)



def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite ``url`` (relative paths from the working directory); ``None`` for an
    in-memory database, a ``file:`` URI or another database.

    Example:
        >>> sqlite_file("sqlite:///out/study.db").name, sqlite_file("sqlite://"), sqlite_file("postgresql://h/d")
        ('study.db', None, None)
    """
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - check_storage reports it
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    if str(parsed.query.get("uri", "")).lower() in ("true", "1"):
        return None
    return Path(database).expanduser().absolute()



def check_storage(url: Any) -> None:
    """Refuse, before anything is created, a storage URL that cannot work.

    Checks that ``url`` is a SQLAlchemy URL (``dialect[+driver]://...``), that SQLAlchemy knows its
    database and that the database's Python driver is installed, and, for a SQLite file, that its
    folder exists (it is not created) and the path is not a folder.

    Raises:
        PruningConfigError: naming the URL (password masked) and what is wrong.

    Example:
        >>> check_storage("sqlite:///:memory:")
        >>> check_storage("notaurl")
        Traceback (most recent call last):
        ...
        lightning_prune.errors.PruningConfigError: storage 'notaurl' is not a database URL. HINT: ...
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    examples = "e.g. sqlite:///outputs/tune/study.db (a file), or postgresql://user:password@host/db for workers on several machines"
    if not isinstance(url, str) or not url.strip():
        raise PruningConfigError(f"storage {url!r} is not a database URL", hint=f"give an Optuna storage URL, {examples}")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise PruningConfigError(f"storage {url!r} is not a database URL",
                                 hint=f"write dialect[+driver]://..., {examples}") from None
    shown = display_url(url)
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise PruningConfigError(f"storage {shown!r}: SQLAlchemy knows no database {parsed.drivername!r}",
                                 hint=f"use sqlite, postgresql or mysql (optionally +driver), {examples}") from None
    load_driver = getattr(dialect, "import_dbapi", None) or getattr(dialect, "dbapi", None)  # SQLAlchemy 2 / 1.4
    try:
        if callable(load_driver):
            load_driver()
    except ImportError as err:
        missing = getattr(err, "name", None) or str(err)
        raise PruningConfigError(f"storage {shown!r} needs the database driver {missing!r}, which is not installed",
                                 hint="pip install the driver (e.g. psycopg2-binary for postgresql, PyMySQL with "
                                      "mysql+pymysql://), or use a sqlite:/// file") from None
    file = sqlite_file(url)
    if file is None:
        return
    if file.is_dir():
        raise PruningConfigError(f"storage {shown!r} names the folder {str(file)!r}, not a database file",
                                 hint=f"name a file inside it, e.g. sqlite:///{file / 'study.db'}")
    if not file.parent.is_dir():
        raise PruningConfigError(f"storage {shown!r}: the folder {str(file.parent)!r} of the SQLite file does not "
                                 "exist (it is not created, in case the path is mistyped)",
                                 hint="create the folder first, fix the path, or omit --storage to keep the study "
                                      "in <output_dir>/study.db")
    if not file.exists() and not os.access(file.parent, os.W_OK):
        raise PruningConfigError(f"storage {shown!r}: the folder {str(file.parent)!r} is not writable",
                                 hint="choose a folder you can write to, or omit --storage")



def _storage_failure(url: str, err: BaseException) -> PruningConfigError:
    """A storage error (unreachable server, not a database file, ...) as a PruningConfigError naming ``url``."""
    cause = getattr(err, "orig", None) or err
    text = (str(cause).strip().splitlines() or [""])[0][:300]
    return PruningConfigError(f"storage {display_url(url)!r} could not be opened: {type(cause).__name__}: {text}",
                              hint="check that the database exists and is reachable, that the file is an Optuna "
                                   "SQLite database, or give another --storage")



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



def _retrying(url: str, action: Callable[[], _T], attempts: int = 5) -> _T:
    """``action()``, retried on the errors two workers opening one database at once can cause; any
    storage error left is raised as a PruningConfigError naming ``url``."""
    from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

    for attempt in range(attempts):
        try:
            return action()
        except (OperationalError, IntegrityError) as err:
            if attempt == attempts - 1:
                raise _storage_failure(url, err) from err
            time.sleep(0.5 + random.random())
        except SQLAlchemyError as err:
            raise _storage_failure(url, err) from err
    raise AssertionError("unreachable")
