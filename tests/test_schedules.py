"""Step plans and ICE's eq. 1, as pure functions: no Lightning, no surgery, milliseconds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from lightning_prune.errors import PruningConfigError
from lightning_prune.schedules import (
    AdaptiveThresholdPlanner,
    BlockwisePlanner,
    UniformPlanner,
    below_threshold,
    channels_to_keep,
    layer_thresholds,
    lowest,
    make_planner,
    pruning_aware_lr,
    smallest_pruning_threshold,
)


@dataclass
class Layer:
    """What a planner sees of a prunable layer."""

    name: str
    component: str
    channels: int
    group_params: int = 0
    module: Any = None


LAYERS = [Layer("a.conv", "a", 8, 100), Layer("b.conv", "b", 8, 300), Layer("c.conv", "c", 16, 600)]


def scores_by_index(layers: list[Layer]) -> dict[str, torch.Tensor]:
    """Filter i of every layer scores i (so the lowest-scoring are the first)."""
    return {layer.name: torch.arange(layer.channels, dtype=torch.float) for layer in layers}


# ---------------------------------------------------------------- helpers
@pytest.mark.parametrize(("channels", "ratio", "round_to", "kept"), [
    (16, 0.5, None, 8), (10, 0.6, None, 4), (8, 0.01, None, 7), (16, 0.5, 8, 8), (16, 0.6, 8, 8), (8, 0.5, 16, 8),
    (3, 0.99, None, 1),
])
def test_channels_to_keep(channels: int, ratio: float, round_to: int | None, kept: int) -> None:
    assert channels_to_keep(channels, ratio, round_to) == kept


def test_lowest_breaks_ties_by_index_so_every_rank_agrees() -> None:
    assert lowest(torch.tensor([0.5, 0.1, 0.5, 0.1]), 3) == [0, 1, 3]
    assert lowest(torch.tensor([1.0, 2.0]), 0) == []


# ---------------------------------------------------------------- built-in planners
def test_blockwise_prunes_one_component_per_step_in_order() -> None:
    planner = BlockwisePlanner(ratio=0.5)
    planner.setup(LAYERS)
    assert planner.num_steps() == 3 and [planner.layers_for_step(i) for i in range(3)] == [["a.conv"], ["b.conv"],
                                                                                          ["c.conv"]]
    layers = {layer.name: layer for layer in LAYERS}
    assert planner.plan(2, layers, scores_by_index(LAYERS)) == {"c.conv": list(range(8))}
    assert planner.is_done(3) and not planner.is_done(2)


def test_uniform_local_ratio_rises_linearly_from_the_original_counts() -> None:
    planner = UniformPlanner(ratio=0.5, steps=2)
    planner.setup(LAYERS)
    layers = {layer.name: layer for layer in LAYERS}
    first = planner.plan(0, layers, scores_by_index(LAYERS))
    assert {n: len(i) for n, i in first.items()} == {"a.conv": 2, "b.conv": 2, "c.conv": 4}  # 25 %
    pruned = [Layer(lay.name, lay.component, lay.channels - len(first[lay.name])) for lay in LAYERS]
    second = planner.plan(1, {lay.name: lay for lay in pruned}, scores_by_index(pruned))
    assert {n: len(i) for n, i in second.items()} == {"a.conv": 2, "b.conv": 2, "c.conv": 4}  # to 50 % of the original


def test_uniform_global_ranks_normalised_scores_and_keeps_a_channel_per_layer() -> None:
    planner = UniformPlanner(ratio=0.9, steps=1, scope="global")
    planner.setup(LAYERS)
    plan = planner.plan(0, {layer.name: layer for layer in LAYERS}, scores_by_index(LAYERS))
    assert sum(len(i) for i in plan.values()) == 29  # ceil(0.9 * 32)
    assert all(len(plan[layer.name]) < layer.channels for layer in LAYERS)


def test_state_round_trip() -> None:
    planner = BlockwisePlanner(ratio=0.5)
    planner.setup(LAYERS)
    fresh = BlockwisePlanner(ratio=0.5)
    fresh.load_state_dict(planner.state_dict())
    assert fresh.components == ["a", "b", "c"] and fresh.component_of("b.conv") == "b"


def test_make_planner_refuses_an_unknown_schedule() -> None:
    with pytest.raises(PruningConfigError, match="schedule='cyclic' is unknown"):
        make_planner("cyclic", 0.5, 5, "local", None)


# ---------------------------------------------------------------- AAP
def test_layer_thresholds_and_the_le_rule() -> None:
    assert layer_thresholds(3.0, {"a": 1, "b": 2}) == {"a": 1.0, "b": 2.0}
    assert layer_thresholds(3.0, {"a": 0}) == {"a": 0.0}
    assert below_threshold(torch.tensor([1.0, 2.0, 0.5, 2.0]), 1.0) == [0, 2]  # equal to the threshold goes
    assert below_threshold(torch.tensor([1.0, 1.0]), 1.0) == [1]  # never all: the first best one stays


def test_adaptive_planner_owns_T_and_lambda_and_weights_layers_by_size() -> None:
    planner = AdaptiveThresholdPlanner(threshold=10.0, lam=1.0)
    planner.setup(LAYERS)
    plan = planner.plan(0, {layer.name: layer for layer in LAYERS}, scores_by_index(LAYERS))
    assert planner.last_layer_thresholds == {"a.conv": 1.0, "b.conv": 3.0, "c.conv": 6.0}  # T * N_i / N
    assert plan == {"a.conv": [0, 1], "b.conv": [0, 1, 2, 3], "c.conv": list(range(7))}
    assert planner.num_steps() is None and not planner.is_done(99)
    planner.finished = True
    assert planner.is_done(0)
    assert "threshold" not in planner.state_dict()  # a restored plan snapshot does not move T


@pytest.mark.parametrize("threshold", [0.0, -0.5])
def test_adaptive_planner_never_plans_an_empty_round(threshold: float) -> None:
    """A T under every score (0 or negative, as rollbacks from round 0 give) is raised to the smallest that prunes."""
    planner = AdaptiveThresholdPlanner(threshold=threshold, lam=1.0)
    planner.setup(LAYERS)
    layers = {layer.name: layer for layer in LAYERS}
    scores = {name: values + 1.0 for name, values in scores_by_index(LAYERS).items()}  # every score >= 1
    plan = planner.plan(0, layers, scores)
    sizes = {name: float(layer.group_params) for name, layer in layers.items()}
    lowest = smallest_pruning_threshold(scores, sizes)
    assert planner.raised_from == threshold and planner.threshold == lowest
    assert sum(len(idxs) for idxs in plan.values()) >= 1
    assert all(idxs in ([], [0]) for idxs in plan.values())  # only filters scoring the smallest value go
    planner.threshold = 10.0 * lowest  # a T that prunes: used as it is
    planner.plan(1, layers, scores)
    assert planner.raised_from is None and planner.threshold == 10.0 * lowest


def test_smallest_pruning_threshold_skips_layers_that_cannot_lose_a_filter() -> None:
    assert smallest_pruning_threshold({"a": torch.tensor([2.0]), "b": torch.tensor([1.0, 3.0])},
                                      {"a": 1.0, "b": 1.0}) == pytest.approx(2.0)
    assert smallest_pruning_threshold({"a": torch.tensor([2.0])}, {"a": 1.0}) is None
    assert smallest_pruning_threshold({"a": torch.tensor([-1.0, 0.0])}, {"a": 1.0}) == pytest.approx(-1.0)


def test_adaptive_planner_flops_weighting_uses_the_output_positions() -> None:
    conv = torch.nn.Conv2d(2, 4, 3)
    layers = {"x": Layer("x", "x", 4, module=conv), "y": Layer("y", "y", 4, module=conv)}
    planner = AdaptiveThresholdPlanner(threshold=2.0, weighting="flops")
    planner.setup(list(layers.values()))
    planner.spatial = {"x": 3, "y": 1}
    planner.plan(0, layers, {"x": torch.zeros(4), "y": torch.zeros(4)})
    assert planner.last_layer_thresholds == pytest.approx({"x": 1.5, "y": 0.5})


# ---------------------------------------------------------------- ICE eq. 1
def reference_lr(a: float, base: float = 1e-3, delta: float = 7.5e-4, p: float = 0.12, beta: float = 50.0) -> float:
    return base - delta / (1 + (a / (2 * (1 - p) - a)) ** beta)


@pytest.mark.parametrize("a", [1.0, 0.95, 0.9, 0.88, 0.85, 0.7, 0.4, 0.1])
def test_eq1_matches_the_paper(a: float) -> None:
    assert pruning_aware_lr(a, 1e-3, 7.5e-4, 0.12, 50.0) == pytest.approx(reference_lr(a), rel=1e-12)


def test_eq1_shape_and_corner() -> None:
    assert pruning_aware_lr(1.0, 1e-3, 5e-4, 0.5, 10.0) == 1e-3  # a = 1, p = 0.5: division by zero guarded
    assert pruning_aware_lr(0.88, 1e-3, 7.5e-4, 0.12, 50.0) == pytest.approx(1e-3 - 7.5e-4 / 2)  # the midpoint
    values = [pruning_aware_lr(a / 20, 1e-3, 7.5e-4, 0.12, 50.0) for a in range(1, 21)]
    assert values == sorted(values)  # more pruned, smaller LR
