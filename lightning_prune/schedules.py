"""Step plans: which channels a pruning step removes. Pure: no Lightning, no torch-pruning.

A planner sees the prunable layers (name, component, current channels) and one importance score per
output channel, and returns, for one step, the channel indices to remove from each layer. The
controller owns everything else (surgery, evaluation, fine-tuning). Another callback can supply its
own planner (AAP's adaptive thresholds do) through :meth:`StructuredPruning.set_planner`.
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
