"""The end-of-run summary: steps numbered as in the log, no tuned value for a skipped step, the status in words."""

from __future__ import annotations

from lightning_prune.state import PruningReport, StepRecord
from lightning_prune.summary import status_line, summary_table


def _rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in text.splitlines() if line.startswith("│")]


def test_steps_are_numbered_from_one_and_skipped_steps_show_no_tuned_value() -> None:
    report = PruningReport(params_before=100, macs_before=1000, metric_before=0.9, completed=True, steps_planned=2,
                           steps=[StepRecord(step=0, components=["a"], params=80, macs=800, metric_after_prune=0.89,
                                             metric_after_finetune=0.89, finetuned=False),
                                  StepRecord(step=1, components=["b"], params=60, macs=600, metric_after_prune=0.7,
                                             metric_after_finetune=0.88, finetuned=True)])
    rows = _rows(summary_table(report, "val_acc"))
    assert [r[0] for r in rows] == ["1", "2"]
    assert rows[0][5] == "-" and rows[0][6] == "skipped"
    assert rows[1][5] == "0.8800" and rows[1][6] == "yes"


def test_status_line_says_how_far_an_incomplete_run_got() -> None:
    report = PruningReport(completed=False, stop_reason="EarlyStopping stopped the fit", steps_planned=6,
                           steps=[StepRecord(step=0, components=["a"], params=1, macs=1)])
    assert status_line(report) == ("INCOMPLETE: the fit stopped before the pruning plan was complete (EarlyStopping "
                                   "stopped the fit) after 1 of 6 steps; the model is not the planned result")
    assert status_line(PruningReport(completed=True, steps_planned=None)) == "completed: 0 of 0 steps"
