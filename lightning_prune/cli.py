"""The ``lightning-prune`` command: LightningCLI's subcommands with this library's modules and callbacks,
plus ``tune`` and ``report``.

Importing this module is cheap: torch and Lightning are imported only when a subcommand runs, so
``lightning-prune --help`` answers at once. ``fit|validate|test|predict`` run
:class:`lightning_prune.lightning_cli.PruneCLI`; ``tune`` runs :mod:`lightning_prune.tuning.command`;
``report`` runs :mod:`lightning_prune.report_command`.

Example:
    ``lightning-prune fit --config configs/quickstart.yaml``

    ``lightning-prune tune --config configs/ice_quickstart.yaml --n_trials 8``
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from lightning_prune.errors import PruningConfigError

if TYPE_CHECKING:
    from lightning_prune.lightning_cli import PruneCLI

__all__ = ["PruneCLI", "main", "make_cli"]  # noqa: F822 - PruneCLI and make_cli come from __getattr__

#: The subcommands and their one-line descriptions, as ``lightning-prune --help`` lists them. The first
#: four are LightningCLI's (``tests/test_cli.py`` checks they still are); ``tune`` and ``report`` are this library's.
SUBCOMMANDS: dict[str, str] = {
    "fit": "Train (and prune, through the config's callbacks).",
    "validate": "Run one evaluation epoch over the validation set.",
    "test": "Run one evaluation epoch over the test set.",
    "predict": "Run inference on the prediction set.",
    "tune": "Auto-tune the callbacks (Optuna), then run the best.",
    "report": "Print a run's summary table and draw its report.png.",
}


def __getattr__(name: str) -> Any:
    """``PruneCLI`` and ``make_cli`` from :mod:`lightning_prune.lightning_cli`, imported on first access."""
    if name in ("PruneCLI", "make_cli"):
        from lightning_prune import lightning_cli

        return getattr(lightning_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _top_level_parser() -> argparse.ArgumentParser:
    """The parser behind ``lightning-prune --help`` only (the subcommands parse their own arguments)."""
    parser = argparse.ArgumentParser(
        prog="lightning-prune",
        description="Structured and unstructured pruning as PyTorch Lightning callbacks: LightningCLI's "
                    "subcommands with this library's models, data modules and callbacks, plus `tune` and `report`.",
        epilog="Run `lightning-prune <subcommand> --help` for a subcommand's options, e.g. "
               "`lightning-prune fit --help`. Example: lightning-prune fit --config configs/quickstart.yaml",
    )
    parser.add_argument("-c", "--config", metavar="CONFIG",
                        help="a YAML config for fit/validate/test/predict (usually given after the subcommand)")
    subcommands = parser.add_subparsers(title="subcommands", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, description in SUBCOMMANDS.items():
        subcommands.add_parser(name, help=description, add_help=False)
    return parser


def _config_error(exc: BaseException) -> PruningConfigError | None:
    """The PruningConfigError ``exc`` is or was raised from (jsonargparse wraps errors raised while it
    instantiates the config's classes in a ValueError ``from`` the original), else ``None``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, PruningConfigError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def _error_text(error: PruningConfigError) -> str:
    """``error: <message>`` and ``HINT: <hint>`` lines for stderr."""
    message, separator, hint = str(error).rpartition(" HINT: ")
    if not separator:
        return f"error: {error}\n"
    return f"error: {message}\nHINT: {hint}\n"


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning-prune`` console script (``tune``, ``report``, or LightningCLI's subcommands).

    Without arguments, or with ``-h``/``--help`` first, it lists the subcommands (without importing
    torch). A :class:`~lightning_prune.errors.PruningConfigError` (a bad value in the config or on the
    command line, also one raised during the run) is written to stderr as ``error: ...`` and
    ``HINT: ...`` and ends the program with exit status 2; other exceptions keep their traceback.

    Args:
        args: Command-line arguments (``None``: ``sys.argv[1:]``).

    Example:
        >>> # main(["fit", "--config", "configs/quickstart.yaml"])
    """
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        _top_level_parser().print_help()
        if argv:
            raise SystemExit(0)
        return
    from lightning_prune._lightning import quiet_lightning

    quiet_lightning()
    try:
        if argv[0] == "tune":
            from lightning_prune.tuning.command import tune_command

            tune_command(argv[1:])
        elif argv[0] == "report":
            from lightning_prune.report_command import report_command

            report_command(argv[1:])
        else:
            from lightning_prune.lightning_cli import make_cli

            make_cli(args)
    except Exception as exc:
        error = _config_error(exc)
        if error is None:
            raise
        sys.stderr.write(_error_text(error))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
