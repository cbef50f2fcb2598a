"""``lightning-prune report PATH``: a finished (or stopped) run's summary table, and its ``report.png`` drawn again."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lightning_prune.errors import PruningConfigError

__all__ = ["find_report", "report_command"]


def report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-prune report",
        description="Print a run's summary table from its report.json and draw report.png (metric, size and "
                    "time split per step, round or epoch).",
    )
    parser.add_argument("path", help="a report.json, or a folder with one (the newest below it is taken)")
    parser.add_argument("--out", help="the PNG to write (default: report.png beside the report.json)")
    parser.add_argument("--no_plot", dest="plot", action="store_false", help="print the table only")
    return parser


def find_report(path: str | Path) -> Path:
    """``path`` itself if it is a file, else its ``report.json``, else the newest ``report.json`` below it.

    Raises:
        PruningConfigError: If there is no such file.

    Example:
        >>> try:
        ...     find_report("no/such/folder")
        ... except PruningConfigError as err:
        ...     str(err).split(" HINT: ")[0]
        'no/such/folder does not exist.'
    """
    path = Path(path)
    hint = "pass a run's report.json or the folder it was written to (the Trainer's log_dir, or the controller's output_dir)"
    if not path.exists():
        raise PruningConfigError(f"{path} does not exist", hint=hint)
    if path.is_file():
        return path
    if (path / "report.json").is_file():
        return path / "report.json"
    found = sorted(path.rglob("report.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise PruningConfigError(f"no report.json in {path} or below it", hint=hint)
    return found[-1]


def report_command(args: list[str]) -> Path | None:
    """Print the summary of the report at ``args``' path and write its plot; returns the PNG written, if any.

    Example:
        >>> # report_command(["outputs/ice_resnet20_cifar10/lightning_logs/version_0"])
    """
    from lightning_prune import plots, summary
    from lightning_prune.state import GradualReport, PruningReport

    options = report_parser().parse_args(args)
    file = find_report(options.path)
    try:
        data = json.loads(file.read_text())
        kind = plots.report_kind(data)
    except (json.JSONDecodeError, ValueError, TypeError) as err:
        raise PruningConfigError(f"{file} is not a lightning_prune report: {err}",
                                 hint="pass the report.json a StructuredPruning or GradualMagnitudePruning run wrote") from None
    lines = [f"{file}"]
    if kind == "gradual":
        gradual = GradualReport.from_dict(data)
        lines += [summary.gradual_table(gradual), *summary.gradual_summary(gradual, "sparse_model.pt")]
    else:
        report = PruningReport.from_dict(data)
        lines.append(summary.summary_table(report, report.monitor or "metric"))
        if kind == "rounds":
            rounds = data["extra"]["rounds"]
            lines.append(f"AAP: {len(rounds) - 1} rounds, {sum(not r['acceptable'] for r in rounds)} unacceptable; "
                         f"stopped: {data['extra'].get('aap', {}).get('stop_reason')}")
    written = plots.plot_report(data, Path(options.out) if options.out else file.with_name("report.png")) \
        if options.plot else None
    if written is not None:
        lines.append(f"wrote {written}")
    sys.stdout.write("\n".join(lines) + "\n")
    return written
