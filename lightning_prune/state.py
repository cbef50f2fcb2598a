"""The pruning report: pure, serialisable records (no Lightning, no torch)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StepRecord:
    """What one pruning step did and cost.

    Example:
        >>> StepRecord(step=0, components=["model.layer1.0"], params=1000, macs=5000).finetuned
        False
    """

    step: int
    components: list[str]
    params: int
    macs: int
    channels_removed: int = 0
    metric_after_prune: float | None = None
    metric_after_finetune: float | None = None
    finetuned: bool = False
    finetune_epochs: int = 0
    seconds_prune: float = 0.0
    seconds_eval: float = 0.0
    seconds_finetune: float = 0.0


@dataclass
class PruningReport:
    """The report written to ``report.json``: per-step records and totals.

    Example:
        >>> report = PruningReport(params_before=10, macs_before=20, metric_before=0.9)
        >>> sorted(report.to_dict())
        ['extra', 'steps', 'totals']
    """

    params_before: int = 0
    macs_before: int = 0
    metric_before: float | None = None
    params_after: int = 0
    macs_after: int = 0
    metric_after: float | None = None
    seconds_total: float = 0.0
    steps: list[StepRecord] = field(default_factory=list)
    #: Sections other callbacks add (e.g. a freezing probe's cost, AAP rounds).
    extra: dict[str, Any] = field(default_factory=dict)
    #: Whether the plan ran to its end; ``False`` while running and when the fit stopped short.
    completed: bool = False
    #: Why the fit ended before the plan did (``None`` when completed).
    stop_reason: str | None = None
    #: Steps the plan has (``None`` for an open-ended plan such as AAP's rounds).
    steps_planned: int | None = None

    def totals(self) -> dict[str, Any]:
        """The ``totals`` section."""
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "seconds_total": self.seconds_total,
            "seconds_prune": sum(s.seconds_prune for s in self.steps),
            "seconds_eval": sum(s.seconds_eval for s in self.steps),
            "seconds_finetune": sum(s.seconds_finetune for s in self.steps),
            "steps_finetuned": sum(s.finetuned for s in self.steps),
            "steps_skipped": sum(not s.finetuned for s in self.steps),
            "completed": self.completed,
            "stop_reason": self.stop_reason,
            "steps_planned": self.steps_planned,
            "steps_done": len(self.steps),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary: ``steps``, ``totals`` and any extra sections."""
        return {"steps": [asdict(s) for s in self.steps], "totals": self.totals(), "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningReport:
        """Inverse of :meth:`to_dict` plus the fields the totals do not derive."""
        totals = data["totals"]
        return cls(
            params_before=totals["params_before"],
            macs_before=totals["macs_before"],
            metric_before=totals["metric_before"],
            params_after=totals["params_after"],
            macs_after=totals["macs_after"],
            metric_after=totals["metric_after"],
            seconds_total=totals["seconds_total"],
            steps=[StepRecord(**s) for s in data["steps"]],
            extra=dict(data.get("extra", {})),
            completed=bool(totals.get("completed", False)),
            stop_reason=totals.get("stop_reason"),
            steps_planned=totals.get("steps_planned"),
        )

    def write(self, path: str | Path) -> Path:
        """Write the report as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path
