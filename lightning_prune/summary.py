"""The end-of-fit summaries and the step log lines of the controllers, as text (tables rendered with rich)."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.table import Table

from lightning_prune.state import GradualReport, PruningReport, StepRecord


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def status_line(report: PruningReport) -> str:
    """One sentence on whether the plan ran to its end, and if not, why and how far it got.

    Example:
        >>> status_line(PruningReport(completed=False, stop_reason="max_steps=5 reached", steps_planned=3))
        'INCOMPLETE: the fit stopped before the pruning plan was complete (max_steps=5 reached) after 0 of 3 steps; the model is not the planned result'
    """
    done = len(report.steps)
    if report.completed:
        return f"completed: {done} of {report.steps_planned if report.steps_planned is not None else done} steps"
    planned = report.steps_planned if report.steps_planned is not None else "?"
    return (f"INCOMPLETE: the fit stopped before the pruning plan was complete ({report.stop_reason}) after {done} "
            f"of {planned} steps; the model is not the planned result")


def summary_table(report: PruningReport, monitor: str) -> str:
    """The table printed at the end of a run: one row per step (numbered from 1, as in the step log lines).

    A skipped step has no fine-tuned value ("-"); the caption gives the totals and the status line.

    Example:
        >>> from lightning_prune.state import StepRecord
        >>> report = PruningReport(params_before=100, params_after=60, completed=True, steps_planned=1,
        ...                        steps=[StepRecord(step=0, components=["block"], params=60, macs=0)])
        >>> "completed: 1 of 1 steps" in summary_table(report, "val_acc")
        True
    """
    table = Table(title="lightning_prune summary")
    for column in ("step", "components", "params", "MACs", f"{monitor} pruned", f"{monitor} tuned", "fine-tuned",
                   "seconds"):
        table.add_column(column, justify="left" if column == "components" else "right")
    for s in report.steps:
        comps = ", ".join(s.components)
        table.add_row(str(s.step + 1), comps if len(comps) < 40 else comps[:37] + "...", f"{s.params:,}",
                      f"{s.macs:,}", _fmt(s.metric_after_prune),
                      _fmt(s.metric_after_finetune) if s.finetuned else "-", "yes" if s.finetuned else "skipped",
                      f"{s.seconds_prune + s.seconds_eval + s.seconds_finetune:.1f}")
    totals = report.totals()
    keep_p = totals["params_after"] / max(1, totals["params_before"])
    keep_m = totals["macs_after"] / max(1, totals["macs_before"])
    table.caption = (
        f"params {totals['params_before']:,} -> {totals['params_after']:,} ({100 * (1 - keep_p):.1f}% removed); "
        f"MACs {totals['macs_before']:,} -> {totals['macs_after']:,} ({100 * (1 - keep_m):.1f}% removed); "
        f"{monitor} {_fmt(totals['metric_before'])} -> {_fmt(totals['metric_after'])}; "
        f"{totals['steps_finetuned']} steps fine-tuned, {totals['steps_skipped']} skipped; "
        f"{totals['seconds_total']:.1f} s\n{status_line(report)}"
    )
    buffer = io.StringIO()
    Console(file=buffer, width=140, force_terminal=False, color_system=None).print(table)
    return buffer.getvalue()


def step_line(record: StepRecord, total: int | None, params_before: int, monitor: str) -> str:
    """The log line of a pruned step, numbered from 1 as the summary table's rows.

    Example:
        >>> step_line(StepRecord(step=0, components=["block"], params=75, macs=0, channels_removed=4,
        ...                      metric_after_prune=0.5), 3, 100, "val_acc")
        '[lightning_prune] step 1/3 block: -4 channels, params 75 (25.0% removed), val_acc 0.5000'
    """
    return (f"[lightning_prune] step {record.step + 1}/{total if total is not None else '?'} "
            f"{', '.join(record.components)}: -{record.channels_removed} channels, params {record.params:,} "
            f"({100 * (1 - record.params / (params_before or 1)):.1f}% removed), {monitor} "
            f"{_fmt(record.metric_after_prune)}")


def gradual_summary(report: GradualReport, sparse_file: str) -> list[str]:
    """The end-of-fit lines of a :class:`~lightning_prune.GradualMagnitudePruning` run.

    Example:
        >>> report = GradualReport(target_sparsity=0.5, scope="global", schedule=[0.5], monitor="val_acc",
        ...                        metric_before=0.9, metric_after=0.88, completed=True,
        ...                        sparsity={"overall": 0.5, "layers": {"w": {}}})
        >>> gradual_summary(report, "sparse_model.pt")[0]
        "[lightning_prune] sparsity 0.5000 over 1 tensors; val_acc 0.9000 -> 0.8800; epochs {'pretrain': 0, 'prune': 0, 'converge': 0, 'finetune': 0}"
    """
    status = "" if report.completed else f"INCOMPLETE ({report.stop_reason}): "
    before, after = (("n/a" if v is None else f"{v:.4f}") for v in (report.metric_before, report.metric_after))
    lines = [f"[lightning_prune] {status}sparsity {report.sparsity['overall']:.4f} over "
             f"{len(report.sparsity['layers'])} tensors; {report.monitor} {before} -> {after}; epochs {report.epochs}"]
    if report.size:
        lines.append(f"[lightning_prune] {sparse_file} {report.size['bytes']:,} bytes vs dense "
                     f"{report.size['dense_bytes']:,} ({report.size['ratio']:.2f}x smaller)")
    return lines


def gradual_table(report: GradualReport) -> str:
    """One row per validated epoch of a gradual run: phase, target and measured sparsity, the metric.

    Example:
        >>> report = GradualReport(target_sparsity=0.5, scope="global", schedule=[0.5], monitor="val_acc",
        ...                        history=[{"epoch": 0, "phase": "prune", "target_sparsity": 0.5,
        ...                                  "sparsity": 0.5, "metric": 0.9}])
        >>> "0.5000" in gradual_table(report)
        True
    """
    table = Table(title="lightning_prune gradual pruning")
    for column in ("epoch", "phase", "target sparsity", "sparsity", report.monitor):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for entry in report.history:
        best = " (best)" if entry["epoch"] == report.best_epoch else ""
        table.add_row(str(entry["epoch"]), entry["phase"], _fmt(entry["target_sparsity"]), _fmt(entry["sparsity"]),
                      _fmt(entry.get("metric")) + best)
    buffer = io.StringIO()
    Console(file=buffer, width=140, force_terminal=False, color_system=None).print(table)
    return buffer.getvalue()
