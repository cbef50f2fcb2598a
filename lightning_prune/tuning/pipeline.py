"""Running a trial: ``lightning-prune fit --config <trial config>`` in-process, and what it yields.

The config (:mod:`.config`) runs through :class:`lightning_prune.lightning_cli.PruneCLI`, and the
controller's :class:`~lightning_prune.PruningReport` gives the trial's pruning time and metric drop.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning_prune.errors import PruningConfigError

_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_prune")


class TrialFailed(RuntimeError):
    """A trial's run finished without a usable result (e.g. pruning never started).

    Example:
        >>> raise TrialFailed("no metric")
        Traceback (most recent call last):
        ...
        lightning_prune.tuning.pipeline.TrialFailed: no metric
    """


@dataclass(frozen=True)
class Outcome:
    """What a trial's run yields: pruning time, metric drop and the report's totals.

    Example:
        >>> Outcome(seconds=3.5, drop=0.002, metric_before=0.95, metric_after=0.948).drop
        0.002
    """

    seconds: float
    drop: float
    metric_before: float
    metric_after: float
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    report: str | None = None
    mode: str = "max"

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (stored as the trial's user attributes)."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------- running
@contextlib.contextmanager
def quiet_logging(enabled: bool = True) -> Iterator[None]:
    """Lightning's and this library's INFO messages off for the duration (warnings still show).

    Example:
        >>> with quiet_logging():
        ...     pass
    """
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _cli(args: list[str], run: bool = True) -> Any:
    """:func:`lightning_prune.lightning_cli.make_cli`, without LightningCLI's warning about ``sys.argv`` (which
    holds the ``tune`` command's own arguments, not the trial's)."""
    from lightning_prune.lightning_cli import make_cli

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
        return make_cli(args, run=run)


def parse_check(config_path: Path) -> None:
    """Let LightningCLI parse and build ``config_path`` without running it (fails fast on a bad config).

    Raises:
        PruningConfigError: if LightningCLI rejects the config (its own message is printed above).

    Example:
        >>> # parse_check(Path("outputs/tune/trial_0/trial_config.yaml"))
    """
    try:
        _cli(["--config", str(config_path), "--trainer.logger=false"], run=False)
    except SystemExit as exc:  # jsonargparse prints the problem and exits
        raise PruningConfigError(f"LightningCLI could not parse {config_path} (exit status {exc.code})",
                                 hint="see the parser's message above; the config must work with `lightning-prune fit`") from None


def run_pipeline(config_path: Path) -> Outcome:
    """Run ``lightning-prune fit --config config_path`` in-process and read the controller's report.

    Raises:
        TrialFailed: if the run produced no metric before or after pruning.
        RuntimeError: if LightningCLI rejected the config.

    Example:
        >>> # run_pipeline(Path("outputs/tune/trial_0/trial_config.yaml")).seconds
    """
    from lightning_prune.callbacks.structured import StructuredPruning

    try:
        cli = _cli(["fit", "--config", str(config_path)])
    except SystemExit as exc:  # jsonargparse prints the problem and exits: not an interruption
        raise RuntimeError(f"LightningCLI could not parse {config_path} (exit status {exc.code}); "
                           "see the message above") from None
    controller = next(cb for cb in cli.trainer.callbacks if isinstance(cb, StructuredPruning))
    totals = controller.report.totals()
    before, after = totals["metric_before"], totals["metric_after"]
    if before is None or after is None:
        raise TrialFailed(f"the run stopped before pruning finished (metric before {before}, after {after}); "
                          f"see {config_path.parent}")
    drop = before - after if controller.mode == "max" else after - before
    out = Path(controller.output_dir) if controller.output_dir else None
    report = out / "report.json" if out is not None and (out / "report.json").is_file() else None
    return Outcome(seconds=float(totals["seconds_total"]), drop=float(drop), metric_before=float(before),
                   metric_after=float(after), params_before=int(totals["params_before"]),
                   params_after=int(totals["params_after"]), macs_before=int(totals["macs_before"]),
                   macs_after=int(totals["macs_after"]), report=str(report) if report else None, mode=controller.mode)
