"""A run at a glance: ``report.png`` drawn from a ``report.json`` (structured steps, AAP rounds or gradual epochs).

Every controller writes the plot beside its ``report.json`` at the end of a run; ``lightning-prune report
PATH`` draws it again from any report and prints the summary table. Drawn with matplotlib's object API
(no ``pyplot``), so no GUI backend is chosen or touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_report", "report_kind"]

_TIME_PARTS = (("seconds_prune", "prune"), ("seconds_eval", "measure"), ("seconds_finetune", "fine-tune"))


def report_kind(report: Mapping[str, Any]) -> str:
    """``"gradual"`` (GradualMagnitudePruning), ``"rounds"`` (AAP) or ``"steps"`` (StructuredPruning).

    Raises:
        ValueError: If ``report`` is none of the three (not a ``report.json`` of this library).

    Example:
        >>> report_kind({"steps": [], "totals": {}, "extra": {"rounds": [{"round": 0}]}})
        'rounds'
    """
    if "history" in report and "target_sparsity" in report:
        return "gradual"
    if "steps" in report and "totals" in report:
        return "rounds" if report.get("extra", {}).get("rounds") else "steps"
    raise ValueError("not a lightning_prune report.json: it has neither 'steps' and 'totals' (structured pruning) "
                     "nor 'history' and 'target_sparsity' (gradual pruning)")


def _status(report: Mapping[str, Any]) -> str:
    totals = report.get("totals", report)
    if totals.get("completed"):
        return "completed"
    return f"INCOMPLETE ({totals.get('stop_reason') or 'stopped before the plan ended'})"


def _percent(values: Sequence[float], whole: float) -> list[float]:
    return [100.0 * v / whole if whole else 0.0 for v in values]


def _structured(figure: Any, report: Mapping[str, Any]) -> None:
    metric_axes, size_axes, time_axes = figure.subplots(1, 3)
    totals, steps = report["totals"], report["steps"]
    monitor = report.get("monitor") or "metric"
    rounds = report.get("extra", {}).get("rounds")
    if rounds:  # AAP: a round is a step on trial; rolled-back rounds are marked
        x = [r["round"] for r in rounds]
        metric_axes.plot(x, [r["metric"] for r in rounds], color="tab:blue", label=f"{monitor} after retraining")
        bad = [r for r in rounds if not r["acceptable"]]
        metric_axes.scatter([r["round"] for r in bad], [r["metric"] for r in bad], color="tab:red", marker="x",
                            zorder=3, label="unacceptable (rolled back)")
        sizes = [(r["round"], r["params"], r["macs"]) for r in rounds]
        metric_axes.set_xlabel("round")
    else:
        x = [s["step"] + 1 for s in steps]
        metric_axes.plot(x, [s["metric_after_prune"] for s in steps], "o-", color="tab:orange", markersize=3,
                         label=f"{monitor} after pruning")
        tuned = [s for s in steps if s["finetuned"] and s["metric_after_finetune"] is not None]
        metric_axes.plot([s["step"] + 1 for s in tuned], [s["metric_after_finetune"] for s in tuned], "o",
                         color="tab:blue", markersize=4, label="after fine-tuning")
        sizes = [(0, totals["params_before"], totals["macs_before"])] + [(s["step"] + 1, s["params"], s["macs"])
                                                                           for s in steps]
        metric_axes.set_xlabel("step")
    if totals.get("metric_before") is not None:
        metric_axes.axhline(totals["metric_before"], color="grey", linestyle="--", linewidth=1, label="unpruned")
    metric_axes.set(ylabel=monitor, title=monitor)
    metric_axes.legend(fontsize="small")
    size_x = [s[0] for s in sizes]
    size_axes.plot(size_x, _percent([s[1] for s in sizes], totals["params_before"]), "o-", markersize=3,
                   label="parameters")
    if totals.get("macs_before"):
        size_axes.plot(size_x, _percent([s[2] for s in sizes], totals["macs_before"]), "s-", markersize=3,
                       label="MACs")
    size_axes.set(xlabel=metric_axes.get_xlabel(), ylabel="% of the unpruned model", title="size", ylim=(0, 105))
    size_axes.legend(fontsize="small")
    bottom = [0.0] * len(steps)
    for key, label in _TIME_PARTS:
        heights = [float(s[key]) for s in steps]
        time_axes.bar([s["step"] + 1 for s in steps], heights, bottom=bottom, label=label)
        bottom = [b + h for b, h in zip(bottom, heights)]
    probe = report.get("extra", {}).get("probe", {}).get("seconds")
    extra = f", probe {probe:.1f} s" if probe else ""
    time_axes.set(xlabel="kept step" if rounds else "step", ylabel="seconds", title=f"time: {totals['seconds_total']:.1f} s in all{extra}")
    time_axes.legend(fontsize="small")
    removed = 100.0 * (1 - totals["params_after"] / max(1, totals["params_before"]))
    done = (f"{len(rounds) - 1} rounds, {sum(not r['acceptable'] for r in rounds)} unacceptable, {len(steps)} kept"
            if rounds else f"{len(steps)} steps, {totals['steps_finetuned']} fine-tuned")
    figure.suptitle(f"{done}; {removed:.1f} % of the parameters removed; {_status(report)}")


def _gradual(figure: Any, report: Mapping[str, Any]) -> None:
    metric_axes, sparsity_axes, time_axes = figure.subplots(1, 3)
    history, monitor = report["history"], report.get("monitor") or "metric"
    epochs = [h["epoch"] for h in history]
    for phase in dict.fromkeys(h["phase"] for h in history):
        points = [h for h in history if h["phase"] == phase and h.get("metric") is not None]
        metric_axes.plot([h["epoch"] for h in points], [h["metric"] for h in points], "o-", markersize=3, label=phase)
    if report.get("metric_before") is not None:
        metric_axes.axhline(report["metric_before"], color="grey", linestyle="--", linewidth=1, label="unpruned")
    if report.get("best_epoch") is not None:
        metric_axes.axvline(report["best_epoch"], color="tab:green", linestyle=":", linewidth=1, label="best epoch")
    metric_axes.set(xlabel="epoch", ylabel=monitor, title=monitor)
    metric_axes.legend(fontsize="small")
    sparsity_axes.plot(epochs, [100 * h["target_sparsity"] for h in history], "--", label="target")
    sparsity_axes.plot(epochs, [100 * h["sparsity"] for h in history], "o-", markersize=3, label="measured")
    sparsity_axes.set(xlabel="epoch", ylabel="% of the weights zero", title="sparsity", ylim=(0, 100))
    sparsity_axes.legend(fontsize="small")
    phases = list(report.get("seconds", {}))
    time_axes.bar(phases, [report["seconds"][p] for p in phases])
    time_axes.set(ylabel="seconds", title=f"time: {report.get('seconds_total', 0.0):.1f} s in all")
    overall = report.get("sparsity", {}).get("overall")
    reached = f"sparsity {100 * overall:.1f} %" if overall is not None else "no sparsity measured"
    figure.suptitle(f"gradual pruning to {100 * report['target_sparsity']:.0f} %: {reached}; {_status(report)}")


def plot_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Draw a run's ``report.json`` (as a dict) into a PNG: the metric, the size and the time split.

    Structured runs get one point per step (after pruning, after fine-tuning), AAP runs one per round
    (rolled-back rounds marked), gradual runs one per validated epoch, coloured by phase, with the
    sparsity reached.

    Args:
        report: The contents of a ``report.json`` written by a controller of this library.
        path: The PNG to write (parent folders are created).

    Returns:
        The path written.

    Raises:
        ValueError: If ``report`` is not such a report.

    Example:
        >>> import json, tempfile
        >>> from lightning_prune.state import PruningReport, StepRecord
        >>> report = PruningReport(params_before=100, params_after=60, metric_before=0.9, completed=True,
        ...                        steps=[StepRecord(step=0, components=["block"], params=60, macs=0,
        ...                                          metric_after_prune=0.8, metric_after_finetune=0.88,
        ...                                          finetuned=True, seconds_finetune=1.0)])
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     png = plot_report(report.to_dict(), Path(folder) / "report.png")
        ...     png.read_bytes()[:4] == b"\\x89PNG"
        True
    """
    from matplotlib.figure import Figure

    draw = _gradual if report_kind(report) == "gradual" else _structured
    figure = Figure(figsize=(15, 4.2))
    figure.subplots_adjust(left=0.05, right=0.99, bottom=0.13, top=0.86, wspace=0.22)  # fixed: a layout engine
    draw(figure, report)  # would double the drawing time
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return path


def write_plot(report: Mapping[str, Any], path: Path) -> Path | None:
    """:func:`plot_report` for the controllers' end of fit: a failure to draw is logged, never raised.

    Example:
        >>> write_plot({"not": "a report"}, Path("never-written.png")) is None
        True
    """
    try:
        return plot_report(report, path)
    except Exception as err:  # noqa: BLE001 - a plot must never cost a run its other outputs
        from lightning_prune._logging import warn

        warn(f"[lightning_prune] could not draw {path}: {type(err).__name__}: {err}")
        return None
