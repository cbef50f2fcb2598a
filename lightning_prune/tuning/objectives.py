"""Objectives of the auto-tuning study, as pure functions of a trial's pruning time and metric drop.

A trial yields two numbers: ``seconds``, the pruning time PT (``report.totals()["seconds_total"]``:
from the first pruning step to the end of the run), and ``drop``, how much worse the monitored
metric got (``metric_before - metric_after`` for ``mode="max"``, the reverse for ``"min"``), in
the metric's own units (0.01 is one point of accuracy logged as a fraction).

* ``"ice"``: the ICE-Pruning paper's eq. 2 taken literally, ``(PT + dA) / max(PT, dA)`` with PT in
  seconds and dA in points (``drop * points_per_unit``). Whenever ``PT > dA`` it equals
  ``1 + dA / PT``, which *decreases* as PT grows: for the same accuracy loss a slower run scores
  better. Offered for reproducing the paper only.
* ``"budget"`` (default): minimise PT subject to ``drop <= max_drop``. A feasible trial's value is
  its PT in seconds; an infeasible one's is ``INFEASIBLE * (1 + excess)`` with ``excess = drop -
  max_drop``, so every feasible trial ranks before every infeasible one (no run takes 1e9 s, 31
  years), and among infeasible trials the smaller overshoot wins.
* ``"pareto"``: two objectives (minimise PT, minimise drop); the study reports the Pareto front,
  and stage 2 takes the front's fastest point within ``max_drop`` (else the front's smallest drop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from lightning_prune.errors import PruningConfigError

OBJECTIVES = ("budget", "ice", "pareto")

#: Value floor of an infeasible trial under the ``"budget"`` objective (seconds; 31.7 years).
INFEASIBLE = 1e9


def ice_objective(seconds: float, drop: float, points_per_unit: float = 100.0) -> float:
    """ICE-Pruning's eq. 2, literally: ``(PT + dA) / max(PT, dA)``.

    Args:
        seconds: Pruning time PT in seconds (> 0).
        drop: Metric drop in the metric's units; converted to points as ``dA = drop * points_per_unit``
            (100 for accuracy logged as a fraction, as the paper counts accuracy in percent).
        points_per_unit: Points per unit of the metric.

    Returns:
        The value to minimise. For ``PT > dA`` this is ``1 + dA / PT``: at equal drop, the slower
        run gets the lower (better) value, which is why ``"budget"`` is the default.

    Example:
        >>> ice_objective(10.0, 0.01)  # dA = 1 point: 1 + 1/10
        1.1
        >>> ice_objective(100.0, 0.01) < ice_objective(10.0, 0.01)  # ten times slower, "better"
        True
    """
    _check_seconds(seconds, positive=True)  # eq. 2 divides by max(PT, dA); a real run always takes time
    _check_finite("drop", drop)
    if not (math.isfinite(points_per_unit) and points_per_unit > 0):
        raise PruningConfigError(f"points_per_unit={points_per_unit!r} must be a finite number > 0",
                                 hint="use 100 for accuracy logged as a fraction (one point = 0.01)")
    points = drop * points_per_unit
    return (seconds + points) / max(seconds, points)


def budget_objective(seconds: float, drop: float, max_drop: float = 0.01) -> float:
    """Pruning time if the drop is within budget, else a penalty above every feasible value.

    Args:
        seconds: Pruning time PT in seconds (>= 0).
        drop: Metric drop in the metric's units.
        max_drop: The budget, in the metric's units (0.01: one point of accuracy as a fraction).

    Returns:
        ``seconds`` when ``drop <= max_drop``; otherwise ``INFEASIBLE * (1 + drop - max_drop)``
        (>= 1e9, growing with the overshoot; the time no longer matters).

    Example:
        >>> budget_objective(12.5, 0.004, max_drop=0.01)
        12.5
        >>> budget_objective(1.0, 0.03, max_drop=0.01) > budget_objective(5000.0, 0.0, max_drop=0.01)
        True
    """
    _check_seconds(seconds)
    _check_finite("drop", drop)
    _check_finite("max_drop", max_drop)
    if drop <= max_drop:
        return float(seconds)
    return INFEASIBLE * (1.0 + (drop - max_drop))


def pareto_objectives(seconds: float, drop: float) -> tuple[float, float]:
    """The two values of the ``"pareto"`` study, both minimised: ``(PT, drop)``.

    Example:
        >>> pareto_objectives(3.0, 0.02)
        (3.0, 0.02)
    """
    _check_seconds(seconds)
    _check_finite("drop", drop)
    return float(seconds), float(drop)


def objective_value(objective: str, seconds: float, drop: float, max_drop: float = 0.01,
                    points_per_unit: float = 100.0) -> float | tuple[float, float]:
    """The value (or the two values for ``"pareto"``) a trial reports to the study.

    Example:
        >>> objective_value("budget", 4.0, 0.0)
        4.0
        >>> objective_value("pareto", 4.0, 0.0)
        (4.0, 0.0)
    """
    check_objective(objective)
    if objective == "ice":
        return ice_objective(seconds, drop, points_per_unit)
    if objective == "budget":
        return budget_objective(seconds, drop, max_drop)
    return pareto_objectives(seconds, drop)


def directions(objective: str) -> list[str]:
    """Optuna study directions for ``objective``.

    Example:
        >>> directions("pareto")
        ['minimize', 'minimize']
    """
    check_objective(objective)
    return ["minimize", "minimize"] if objective == "pareto" else ["minimize"]


@dataclass(frozen=True)
class Point:
    """A finished trial reduced to what the objectives need.

    Example:
        >>> Point(number=3, seconds=4.2, drop=0.001).seconds
        4.2
    """

    number: int
    seconds: float
    drop: float


def choose_from_front(front: Sequence[Point], max_drop: float) -> Point:
    """The Pareto-front point stage 2 uses: the fastest within ``max_drop``, else the smallest drop.

    Example:
        >>> front = [Point(0, 2.0, 0.03), Point(1, 5.0, 0.008), Point(2, 9.0, 0.0)]
        >>> choose_from_front(front, max_drop=0.01).number
        1
        >>> choose_from_front(front, max_drop=0.001).number
        2
    """
    if not front:
        raise ValueError("the Pareto front is empty")
    feasible = [p for p in front if p.drop <= max_drop]
    if feasible:
        return min(feasible, key=lambda p: (p.seconds, p.drop, p.number))
    return min(front, key=lambda p: (p.drop, p.seconds, p.number))


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point dominates (no worse in time and drop, better in one), by time.

    Example:
        >>> pts = [Point(0, 2.0, 0.03), Point(1, 5.0, 0.008), Point(2, 6.0, 0.01)]
        >>> [p.number for p in pareto_front(pts)]
        [0, 1]
    """
    def dominates(a: Point, b: Point) -> bool:
        return a.seconds <= b.seconds and a.drop <= b.drop and (a.seconds < b.seconds or a.drop < b.drop)

    return sorted((p for p in points if not any(dominates(q, p) for q in points)), key=lambda p: (p.seconds, p.number))


def check_objective(objective: str) -> None:
    """Raise :class:`PruningConfigError` unless ``objective`` is known.

    Example:
        >>> check_objective("budget")
    """
    if objective not in OBJECTIVES:
        raise PruningConfigError(f"objective={objective!r} is unknown; valid: {', '.join(OBJECTIVES)}",
                                 hint="use 'budget' (fastest run within max_drop), 'pareto', or 'ice' to reproduce the paper")


def _check_seconds(seconds: float, positive: bool = False) -> None:
    ok = isinstance(seconds, int | float) and math.isfinite(seconds) and (seconds > 0 if positive else seconds >= 0)
    if not ok:
        raise ValueError(f"seconds={seconds!r} must be a finite number {'>' if positive else '>='} 0")


def _check_finite(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value)):
        raise ValueError(f"{name}={value!r} must be a finite number")
