"""Step plans and rates: which channels a pruning step removes, and ICE's pruning-aware LR (eq. 1).

Pure: no Lightning, no torch-pruning. A planner sees the prunable layers (name, component, current
channels) and one importance score per output channel, and returns, for one step, the channel
indices to remove from each layer. The controller owns everything else (surgery, evaluation,
fine-tuning). A satellite can supply its own planner (AAP's :class:`AdaptiveThresholdPlanner`) by
answering :meth:`~lightning_prune.PruningSatellite.provide_planner`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from lightning_prune.errors import PruningConfigError


class LayerInfo(Protocol):
    """What a planner needs to know of a prunable layer."""

    name: str
    component: str
    channels: int
    group_params: int
    module: Any


#: Channel indices to remove, per layer name.
StepPlan = dict[str, list[int]]


class PruningPlanner(abc.ABC):
    """Decides, step by step, which channels to remove.

    Example:
        >>> class DropFirst(PruningPlanner):
        ...     def num_steps(self): return 1
        ...     def layers_for_step(self, step): return list(self.original)
        ...     def plan(self, step, layers, scores): return {n: [0] for n in layers}
    """

    def __init__(self) -> None:
        self.original: dict[str, int] = {}
        self.components: list[str] = []
        self._components_of: dict[str, str] = {}

    def setup(self, layers: Sequence[LayerInfo]) -> None:
        """Called once, with the layers of the unpruned model (not again after a resume)."""
        self.original = {layer.name: layer.channels for layer in layers}
        self.components = list(dict.fromkeys(layer.component for layer in layers))
        self._components_of = {layer.name: layer.component for layer in layers}

    def component_of(self, name: str) -> str:
        """The component a layer belongs to."""
        return self._components_of[name]

    @abc.abstractmethod
    def num_steps(self) -> int | None:
        """Total number of steps, or ``None`` when another rule decides when to stop."""

    def is_done(self, step: int) -> bool:
        """Whether step ``step`` should not run; open-ended planners override this."""
        total = self.num_steps()
        return total is not None and step >= total

    @abc.abstractmethod
    def layers_for_step(self, step: int) -> list[str]:
        """Names of the layers step ``step`` may touch (only these are scored)."""

    @abc.abstractmethod
    def plan(self, step: int, layers: Mapping[str, LayerInfo], scores: Mapping[str, torch.Tensor]) -> StepPlan:
        """Channel indices to remove in step ``step``."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after a resume."""
        return {"original": dict(self.original), "components": list(self.components),
                "components_of": dict(self._components_of)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.original = dict(state["original"])
        self.components = list(state["components"])
        self._components_of = dict(state["components_of"])


def channels_to_keep(channels: int, ratio: float, round_to: int | None) -> int:
    """How many of ``channels`` survive removing ``ceil(ratio * channels)``, rounded to ``round_to``."""
    keep = channels - math.ceil(ratio * channels - 1e-9)
    if round_to and round_to > 1:
        keep = max(round_to, int(round(keep / round_to)) * round_to)
    return min(channels, max(1, keep))


def lowest(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``count`` lowest scores (ties broken by index, so every rank agrees)."""
    if count <= 0:
        return []
    order = sorted(range(scores.numel()), key=lambda i: (float(scores[i]), i))
    return sorted(order[:count])


class BlockwisePlanner(PruningPlanner):
    """ICE-Pruning's schedule: one component (e.g. a residual block) per step, in network order.

    Step ``i`` removes ``ceil(ratio * C)`` output channels of every prunable layer of component ``i``.

    Example:
        >>> planner = BlockwisePlanner(ratio=0.6)
    """

    def __init__(self, ratio: float, round_to: int | None = None) -> None:
        super().__init__()
        self.ratio = ratio
        self.round_to = round_to

    def num_steps(self) -> int:
        return len(self.components)

    def layers_for_step(self, step: int) -> list[str]:
        component = self.components[step]
        return [name for name in self.original if self.component_of(name) == component]

    def plan(self, step: int, layers: Mapping[str, LayerInfo], scores: Mapping[str, torch.Tensor]) -> StepPlan:
        out: StepPlan = {}
        for name in self.layers_for_step(step):
            channels = layers[name].channels
            keep = channels_to_keep(self.original[name], self.ratio, self.round_to)
            out[name] = lowest(scores[name], channels - keep)
        return out


class UniformPlanner(PruningPlanner):
    """Iterative pruning of all layers: ``steps`` steps with ratios rising linearly to ``ratio``.

    Ratios are relative to the original channel counts. ``scope="local"`` prunes every layer to the
    same ratio; ``scope="global"`` ranks channels of all layers together (scores normalised by each
    layer's mean) and keeps at least ``round_to`` (or one) channel per layer.

    Example:
        >>> planner = UniformPlanner(ratio=0.5, steps=5, scope="global")
    """

    def __init__(self, ratio: float, steps: int, scope: str = "local", round_to: int | None = None) -> None:
        super().__init__()
        self.ratio, self.steps, self.scope, self.round_to = ratio, steps, scope, round_to

    def num_steps(self) -> int:
        return self.steps

    def layers_for_step(self, step: int) -> list[str]:
        return list(self.original)

    def _ratio(self, step: int) -> float:
        return self.ratio * (step + 1) / self.steps

    def plan(self, step: int, layers: Mapping[str, LayerInfo], scores: Mapping[str, torch.Tensor]) -> StepPlan:
        ratio = self._ratio(step)
        if self.scope == "local":
            return {
                name: lowest(scores[name], layers[name].channels - channels_to_keep(orig, ratio, self.round_to))
                for name, orig in self.original.items()
            }
        return self._plan_global(ratio, layers, scores)

    def _plan_global(self, ratio: float, layers: Mapping[str, LayerInfo], scores: Mapping[str, torch.Tensor]) -> StepPlan:
        target_keep = sum(self.original.values()) - math.ceil(ratio * sum(self.original.values()) - 1e-9)
        to_remove = sum(layers[n].channels for n in self.original) - target_keep
        floor = max(1, self.round_to or 1)
        candidates: list[tuple[float, str, int]] = []
        for name in self.original:
            s = scores[name].double()
            normalised = s / s.mean().clamp_min(1e-12)
            candidates.extend((float(normalised[i]), name, i) for i in range(s.numel()))
        candidates.sort()
        removed: StepPlan = {name: [] for name in self.original}
        for _, name, idx in candidates:
            if to_remove <= 0:
                break
            if layers[name].channels - len(removed[name]) > floor:
                removed[name].append(idx)
                to_remove -= 1
        if self.round_to and self.round_to > 1:
            for name, idxs in removed.items():
                keep = layers[name].channels - len(idxs)
                excess = keep % self.round_to
                if excess and keep > self.round_to:
                    by_score = sorted((float(scores[name][i]), i) for i in range(layers[name].channels) if i not in idxs)
                    idxs.extend(i for _, i in by_score[:excess])
        return {name: sorted(idxs) for name, idxs in removed.items()}


SCHEDULES = ("blockwise", "uniform")


def make_planner(schedule: str, ratio: float, steps: int, scope: str, round_to: int | None) -> PruningPlanner:
    """Build a built-in planner by name."""
    if schedule == "blockwise":
        return BlockwisePlanner(ratio, round_to)
    if schedule == "uniform":
        return UniformPlanner(ratio, steps, scope, round_to)
    raise PruningConfigError(f"schedule={schedule!r} is unknown; valid: {', '.join(SCHEDULES)}",
                             hint="use schedule='blockwise' (ICE) or 'uniform'")


# ---------------------------------------------------------------------------------------- AAP
def layer_thresholds(threshold: float, sizes: Mapping[str, float]) -> dict[str, float]:
    """Per-layer thresholds ``T * N_i / N_total`` (AAP Algorithm 3).

    Example:
        >>> layer_thresholds(2.0, {"a": 30, "b": 10})
        {'a': 1.5, 'b': 0.5}
    """
    total = float(sum(sizes.values()))
    if total <= 0:
        return {name: 0.0 for name in sizes}
    return {name: threshold * size / total for name, size in sizes.items()}


def below_threshold(scores: torch.Tensor, threshold: float) -> list[int]:
    """Channels whose score is ``<= threshold``, never all of them (the best-scoring one stays).

    Example:
        >>> below_threshold(torch.tensor([0.5, 0.1, 0.9]), 0.5)
        [0, 1]
        >>> below_threshold(torch.tensor([0.5, 0.1]), 3.0)
        [1]
    """
    values = [float(v) for v in scores.flatten().tolist()]
    idxs = [i for i, v in enumerate(values) if v <= threshold]
    if len(idxs) >= len(values):
        keep = _best_index(values)
        idxs = [i for i in idxs if i != keep]
    return idxs


def _best_index(values: Sequence[float]) -> int:
    """The channel a layer always keeps: its best score (the first of equals)."""
    return min(range(len(values)), key=lambda i: (-values[i], i))


def smallest_pruning_threshold(scores: Mapping[str, torch.Tensor], sizes: Mapping[str, float]) -> float | None:
    """The smallest global ``T`` at which some layer's threshold ``T * N_i / N_total`` reaches a score.

    Layers with one channel (which always keeps its best filter) or no size do not count; ``None``
    when no layer can lose a filter.

    Example:
        >>> round(smallest_pruning_threshold({"a": torch.tensor([0.4, 0.9]), "b": torch.tensor([0.3, 0.5])},
        ...                                  {"a": 3.0, "b": 1.0}), 4)
        0.5333
    """
    total = float(sum(sizes.values()))
    found = [float(values.min()) * total / sizes[name] for name, values in scores.items()
             if values.numel() > 1 and sizes.get(name, 0) > 0]
    # a hair above, so that T * N_i / N_total is not rounded just under the score it is meant to reach
    if not found or total <= 0:
        return None
    lowest = min(found)
    return lowest + max(abs(lowest) * 1e-9, 1e-12)


def lowest_weighted(scores: Mapping[str, torch.Tensor], sizes: Mapping[str, float],
                    count: int) -> tuple[dict[str, list[int]], float | None]:
    """The ``count`` filters lowest in AAP's layer-aware order, and the global ``T`` that prunes exactly them.

    A filter of layer ``i`` with score ``s`` is pruned by ``T`` when ``s <= T * N_i / N_total``, i.e.
    when its weighted score ``s * N_total / N_i`` is ``<= T``: filters are taken in that order (ties by
    layer name, then index), each layer keeping its best-scoring one. The returned ``T`` is the largest
    weighted score taken (``None`` when none is).

    Example:
        >>> plan, T = lowest_weighted({"a": torch.tensor([0.4, 0.9]), "b": torch.tensor([0.3, 0.5, 0.6])},
        ...                           {"a": 3.0, "b": 1.0}, 2)
        >>> plan, round(T, 4)
        ({'a': [0], 'b': [0]}, 1.2)
    """
    total = float(sum(sizes.values()))
    candidates: list[tuple[float, str, int]] = []
    for name, values in scores.items():
        flat = [float(v) for v in values.flatten().tolist()]
        if len(flat) < 2 or sizes.get(name, 0) <= 0:
            continue
        keep = _best_index(flat)
        candidates += [(v * total / sizes[name], name, i) for i, v in enumerate(flat) if i != keep]
    chosen = sorted(candidates)[:max(count, 0)]
    plan = {name: sorted(i for _, n, i in chosen if n == name) for name in scores}
    return plan, (chosen[-1][0] if chosen else None)


class AdaptiveThresholdPlanner(PruningPlanner):
    """AAP's open-ended plan: every round, in every layer, the filters scoring ``<= T * N_i / N_total``.

    The planner owns the global threshold ``T`` (:attr:`threshold`) and its step ``lambda``
    (:attr:`lam`); the policy that moves them (:class:`~lightning_prune.AdaptiveThresholdRollback`)
    sets them between rounds and keeps them in its own checkpoint state, so that restoring a plan
    snapshot does not move them. ``N_i`` is a layer's parameters (``weighting="params"``: its group's,
    ``LayerInfo.group_params``) or its MACs per sample (``"flops"``: weight size times the output
    positions in :attr:`spatial`).

    ``units="score"`` (the paper's): ``T`` is in the criterion's units. ``units="quantile"``: ``T`` is
    the fraction of the unpruned network's prunable filters gone after the round; the round removes
    the remaining filters lowest in the same layer-aware order (:func:`lowest_weighted`) until that
    many are gone, so ``T`` means the same on every network and criterion. :attr:`score_threshold`
    is the round's ``T`` in score units either way.

    Example:
        >>> planner = AdaptiveThresholdPlanner(threshold=0.2, lam=0.1)
        >>> planner.num_steps() is None, planner.is_done(5)
        (True, False)
    """

    def __init__(self, threshold: float = 0.0, lam: float = 0.005, weighting: str = "params",
                 units: str = "score") -> None:
        super().__init__()
        self.threshold, self.lam, self.weighting, self.units = threshold, lam, weighting, units
        self.score_threshold: float | None = None
        self.finished = False
        self.spatial: dict[str, int] = {}
        self.last_layer_thresholds: dict[str, float] = {}
        self.raised_from: float | None = None

    def num_steps(self) -> None:
        return None

    def is_done(self, step: int) -> bool:
        return self.finished

    def layers_for_step(self, step: int) -> list[str]:
        return list(self.original)

    def layer_size(self, layer: LayerInfo) -> float:
        """``N_i`` of a layer: its group's parameters, or its own MACs per sample."""
        if self.weighting == "params":
            return float(layer.group_params)
        return float(layer.module.weight.numel() * self.spatial.get(layer.name, 1))

    def plan(self, step: int, layers: Mapping[str, LayerInfo], scores: Mapping[str, torch.Tensor]) -> StepPlan:
        """The filters at or under their layer's threshold; never an empty round.

        Where ``T`` would remove nothing (below every layer's smallest score, e.g. ``T <= 0``), it is
        raised to :func:`smallest_pruning_threshold`, the smallest ``T`` that removes a filter, and
        :attr:`raised_from` keeps the ``T`` asked for (``None`` when ``T`` was used as it was).
        """
        names = [name for name in self.original if name in layers]
        sizes = {name: self.layer_size(layers[name]) for name in names}
        if self.units == "quantile":
            return self._plan_fraction(names, layers, sizes, scores)
        self.score_threshold = self.threshold
        self.last_layer_thresholds = layer_thresholds(self.threshold, sizes)
        plan = {name: below_threshold(scores[name], self.last_layer_thresholds[name]) for name in names}
        self.raised_from = None
        if not any(plan.values()):
            lowest = smallest_pruning_threshold({n: scores[n] for n in names}, sizes)
            if lowest is not None and lowest > self.threshold:
                self.raised_from, self.threshold = self.threshold, lowest
                self.score_threshold = lowest
                self.last_layer_thresholds = layer_thresholds(self.threshold, sizes)
                plan = {name: below_threshold(scores[name], self.last_layer_thresholds[name]) for name in names}
        return plan

    def _plan_fraction(self, names: list[str], layers: Mapping[str, LayerInfo], sizes: Mapping[str, float],
                       scores: Mapping[str, torch.Tensor]) -> StepPlan:
        """``units="quantile"``: prune until ``T`` of the original filters are gone (one at least)."""
        total = sum(self.original[name] for name in names)
        removed = sum(self.original[name] - layers[name].channels for name in names)
        wanted = math.floor(self.threshold * total + 1e-9) - removed
        self.raised_from = None
        if wanted < 1:
            self.raised_from, self.threshold, wanted = self.threshold, (removed + 1) / max(total, 1), 1
        plan, self.score_threshold = lowest_weighted({n: scores[n] for n in names}, sizes, wanted)
        self.last_layer_thresholds = layer_thresholds(self.score_threshold or 0.0, sizes)
        return plan


# ---------------------------------------------------------------------------------------- ICE eq. 1
def pruning_aware_lr(remaining: float, lr_base: float, delta: float, midpoint: float, beta: float) -> float:
    """ICE-Pruning's eq. 1: ``lr_base - delta / (1 + (a / (2 (1 - p) - a)) ** beta)``.

    A smooth step from ``lr_base`` (nothing pruned, ``a = 1``) down to ``lr_base - delta``, centred
    at ``a = 1 - p``. Where ``2 (1 - p) - a <= 0`` (only ``a = 1, p = 0.5``) the ratio is infinite
    and the rate is ``lr_base``.

    Example:
        >>> round(pruning_aware_lr(0.5, 1e-3, 7.5e-4, 0.12, 50.0), 6)
        0.00025
    """
    denominator = 2 * (1 - midpoint) - remaining
    if denominator <= 0:
        return lr_base
    ratio = remaining / denominator
    try:
        power = ratio**beta
    except OverflowError:
        return lr_base
    return lr_base - delta / (1 + power)
