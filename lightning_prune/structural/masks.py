"""Unstructured (weight-level) pruning masks: pure torch, no Lightning.

A mask is a ``bool`` tensor of the parameter's shape, ``True`` where the weight is kept. Masks are
keyed by parameter name (``"model.layer1.0.conv1.weight"``) and never change the module: the
parameter keeps its name and shape and the pruned entries are plain zeros (no ``weight_orig`` /
``weight_mask`` reparametrisation as in ``torch.nn.utils.prune``), so ``state_dict`` keys are
unchanged and any optimizer keeps working.

Magnitude selection (DG2PF eq. 1) removes exactly ``round(s * n)`` weights with the smallest
``|w|``: over all prunable weights together (``scope="global"``) or in every tensor separately
(``"layerwise"``). Weights already pruned are always removed first, so masks only ever shrink.
Ties are broken by position (a stable sort), so the selection is deterministic on every rank.

Eq. 1 of the paper writes the margins as percentiles of the *signed* weights around the median;
for the zero-centred weight distributions of trained networks both read as "the fraction ``s`` of
weights closest to zero", and the exact ``|w|`` ranking used here is what the paper's Fig. 1 shows.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "CONV_LINEAR_TYPES",
    "NORM_TYPES",
    "SPARSITY_SCHEDULES",
    "apply_masks",
    "cubic_sparsity_schedule",
    "linear_sparsity_schedule",
    "magnitude_masks",
    "mask_gradients",
    "mask_optimizer_state",
    "name_matches",
    "prunable_parameters",
    "simulated_masks",
    "sparsity_schedule",
    "sparsity_stats",
]

CONV_LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
)
SCOPES = ("global", "layerwise")
#: How sparsity rises over the pruning epochs: DG2PF's equal steps, or Zhu & Gupta's cubic curve.
SPARSITY_SCHEDULES = ("linear", "cubic")


def prunable_parameters(
    model: nn.Module,
    include_bias: bool = False,
    include_norm: bool = False,
    ignored: Sequence[str] = (),
) -> dict[str, nn.Parameter]:
    """The parameters unstructured pruning may zero, by name, in registration order.

    Args:
        model: The network (or the LightningModule holding it).
        include_bias: Also prune the biases of conv and linear layers.
        include_norm: Also prune the affine weights (and, with ``include_bias``, biases) of norm layers.
        ignored: Parameter or module names, or glob patterns over them (``"model.linear"``,
            ``"model.layer3.*"``), that are never pruned.

    Returns:
        Name -> parameter (frozen parameters included: their zeros simply stay zeros).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
        >>> list(prunable_parameters(net))
        ['0.weight', '3.weight']
        >>> list(prunable_parameters(net, include_bias=True, ignored=["3"]))
        ['0.weight', '0.bias']
    """
    chosen: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, CONV_LINEAR_TYPES) or include_norm and isinstance(module, NORM_TYPES):
            kinds = ("weight", "bias") if include_bias else ("weight",)
        else:
            continue
        if name_matches(module_name, ignored):
            continue
        for kind in kinds:
            param = module._parameters.get(kind)
            name = f"{module_name}.{kind}" if module_name else kind
            if isinstance(param, nn.Parameter) and name not in chosen and not name_matches(name, ignored):
                chosen[name] = param
    return chosen


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` equals one of ``patterns`` or matches it as a glob pattern."""
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def linear_sparsity_schedule(sparsity: float, epochs: int) -> list[float]:
    """Target sparsity at the start of each pruning epoch: ``s * i / epochs`` for ``i = 1..epochs``.

    DG2PF's Alg. 1 samples ``s_e`` evenly spaced numbers in ``[0, s]``; read literally
    (``linspace(0, s, s_e)``) the first "prune" would remove nothing, so the schedule starts at
    ``s / s_e`` and ends at ``s``: one prune at the start of each of the ``s_e`` epochs, equal steps.

    Example:
        >>> linear_sparsity_schedule(0.9, 3)
        [0.3, 0.6, 0.9]
    """
    return [round(sparsity * (i + 1) / epochs, 12) for i in range(epochs)]


def cubic_sparsity_schedule(sparsity: float, epochs: int) -> list[float]:
    """Zhu & Gupta's gradual schedule (2017): ``s * (1 - (1 - i / epochs) ** 3)`` for ``i = 1..epochs``.

    Big prunes first, while many redundant weights remain, and ever smaller ones as the target
    nears, so the last epochs at almost full sparsity have the most training left to recover. Like
    the linear schedule it ends exactly at ``s``, one prune at the start of each pruning epoch.

    Example:
        >>> cubic_sparsity_schedule(0.9, 3)
        [0.633333333333, 0.866666666667, 0.9]
    """
    return [round(sparsity * (1.0 - (1.0 - (i + 1) / epochs) ** 3), 12) for i in range(epochs)]


def sparsity_schedule(kind: str, sparsity: float, epochs: int) -> list[float]:
    """The targets of schedule ``kind`` (one of :data:`SPARSITY_SCHEDULES`).

    Example:
        >>> sparsity_schedule("linear", 0.5, 2)
        [0.25, 0.5]
    """
    return {"linear": linear_sparsity_schedule, "cubic": cubic_sparsity_schedule}[kind](sparsity, epochs)


def _ranked(scores: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` smallest ``scores`` (a 1-D tensor), ties broken by position."""
    if count <= 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    return torch.sort(scores, stable=True).indices[:count]


#: Values sampled to bracket the threshold of :func:`_smallest` (a strided sample of this size).
_SAMPLE = 1 << 18


def _smallest(scores: list[Tensor], count: int) -> list[Tensor]:
    """``bool`` masks of the ``count`` smallest values over ``scores`` (1-D tensors taken in order, no NaN),
    ties broken by position: the set :func:`_ranked` gives on their concatenation, found without sorting.

    The threshold (the ``count``-th smallest value) is bracketed from a strided sample, so only the values
    inside the bracket are selected from (``kthvalue``); when the bracket misses, from all of them.
    """
    total = sum(s.numel() for s in scores)
    if count <= 0 or count >= total:
        return [torch.full_like(s, count > 0, dtype=torch.bool) for s in scores]
    threshold = _kth_smallest(scores, count, total)
    chosen = [s < threshold for s in scores]
    remaining = count - sum(int(c.sum()) for c in chosen)
    for s, c in zip(scores, chosen):
        if remaining <= 0:
            break
        ties = (s == threshold).nonzero().flatten()[:remaining]
        c[ties] = True
        remaining -= ties.numel()
    return chosen


def _kth_smallest(scores: list[Tensor], count: int, total: int) -> Tensor:
    stride = total // _SAMPLE
    if stride > 1:
        sample = torch.cat([s[::stride] for s in scores])
        size, q = sample.numel(), count / total
        margin = 8 * math.sqrt(q * (1 - q) / size) + 2 / size  # 8 standard deviations of the sample quantile
        low_rank, high_rank = math.floor((q - margin) * size), math.ceil((q + margin) * size)
        low = torch.kthvalue(sample, low_rank).values if low_rank >= 1 else None
        high = torch.kthvalue(sample, high_rank).values if high_rank <= size else None
        below = sum(int((s < low).sum()) for s in scores) if low is not None else 0
        inside = [(s >= low if low is not None else torch.ones_like(s, dtype=torch.bool))
                  & (s <= high if high is not None else torch.ones_like(s, dtype=torch.bool)) for s in scores]
        if below < count <= below + sum(int(i.sum()) for i in inside):
            return torch.kthvalue(torch.cat([s[i] for s, i in zip(scores, inside)]), count - below).values
    return torch.kthvalue(torch.cat(scores), count).values


def _scores(param: Tensor, mask: Tensor | None) -> Tensor:
    """``|w|`` flattened, with already pruned entries ranked first (score -1)."""
    scores = param.detach().abs().flatten().float()
    if mask is not None:
        scores = scores.masked_fill(~mask.to(scores.device).flatten(), -1.0)
    return scores


def magnitude_masks(
    params: Mapping[str, Tensor],
    sparsity: float,
    scope: str = "global",
    masks: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Keep-masks that remove the ``sparsity`` fraction of weights with the smallest magnitude.

    Args:
        params: Name -> weight tensor (see :func:`prunable_parameters`).
        sparsity: Fraction of weights to remove, in [0, 1].
        scope: ``"global"`` (one ranking over all tensors: layers end up with different
            sparsities) or ``"layerwise"`` (every tensor to the same sparsity).
        masks: The current masks; their pruned entries stay pruned (masks only shrink).

    Returns:
        Name -> ``bool`` mask on the weights' device, ``True`` = kept.

    Example:
        >>> w = {"a": torch.tensor([0.1, -0.5, 0.2, 0.9]), "b": torch.tensor([-0.05, 0.3])}
        >>> magnitude_masks(w, 0.5)["a"].tolist(), magnitude_masks(w, 0.5)["b"].tolist()
        ([False, True, False, True], [False, True])
    """
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is not one of {SCOPES}")
    masks = masks or {}
    if scope == "layerwise":
        out = {}
        for name, param in params.items():
            keep = torch.ones(param.numel(), dtype=torch.bool, device=param.device)
            keep[_ranked(_scores(param, masks.get(name)), round(sparsity * param.numel()))] = False
            out[name] = keep.view_as(param)
        return out
    names = list(params)
    if not names:
        return {}
    scores = torch.cat([_scores(params[n], masks.get(n)).to(params[names[0]].device) for n in names])
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    keep[_ranked(scores, round(sparsity * scores.numel()))] = False
    out, start = {}, 0
    for name in names:
        param = params[name]
        out[name] = keep[start:start + param.numel()].view_as(param).to(param.device)
        start += param.numel()
    return out


def simulated_masks(
    params: Mapping[str, Tensor], masks: Mapping[str, Tensor], fraction: float, scope: str = "global"
) -> dict[str, Tensor]:
    """DG2PF eq. 2-3: the ``fraction`` of still-unpruned weights with the smallest magnitude.

    Eq. 3 ranks ``p = 1 - |w| / max|w|``, which orders weights exactly as ``|w|`` does, so the
    fraction with the largest ``p`` is the fraction with the smallest magnitude. Counts are taken
    over the weights ``masks`` keeps (globally or per tensor, as ``scope`` says).

    Returns:
        Name -> ``bool`` tensor, ``True`` where a weight is zeroed for this step only.

    Example:
        >>> w = {"a": torch.tensor([0.0, 0.4, 0.1, 0.9])}
        >>> simulated_masks(w, {"a": torch.tensor([False, True, True, True])}, 1 / 3)["a"].tolist()
        [False, False, True, False]
    """
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is not one of {SCOPES}")
    out: dict[str, Tensor] = {}
    names = list(params)
    if not names or fraction <= 0:
        return {n: torch.zeros_like(params[n], dtype=torch.bool) for n in names}
    groups = [[n] for n in names] if scope == "layerwise" else [names]
    for group in groups:
        # rank kept weights by magnitude; pruned ones go last (never selected)
        scores = [params[n].detach().abs().flatten().float() for n in group]
        kept = 0
        for i, name in enumerate(group):
            if name in masks:
                keep = masks[name].to(scores[i].device).flatten()
                scores[i] = scores[i].masked_fill(~keep, float("inf"))
                kept += int(keep.sum())
            else:
                kept += scores[i].numel()
        for name, chosen in zip(group, _smallest(scores, round(fraction * kept))):
            out[name] = chosen.view_as(params[name])
    return out


@torch.no_grad()
def apply_masks(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """Zero the pruned entries of every parameter in place (bit-exact zeros)."""
    for name, mask in masks.items():
        param = params.get(name)
        if param is not None:
            param.masked_fill_(~mask.to(param.device), 0.0)


@torch.no_grad()
def mask_gradients(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """Zero the gradients of pruned entries in place (so optimizers never move them)."""
    for name, mask in masks.items():
        param = params.get(name)
        if param is not None and param.grad is not None:
            param.grad.masked_fill_(~mask.to(param.grad.device), 0.0)


@torch.no_grad()
def mask_optimizer_state(
    optimizers: Iterable[torch.optim.Optimizer], params: Mapping[str, Tensor], masks: Mapping[str, Tensor]
) -> None:
    """Zero every per-parameter state tensor (momentum, ``exp_avg``, ``exp_avg_sq``) at pruned entries.

    A weight pruned after training has started still carries momentum; without this, SGD momentum
    or Adam's moments would move it away from zero at the next step.
    """
    by_param = {id(params[name]): mask for name, mask in masks.items() if name in params}
    for optimizer in optimizers:
        for param, state in optimizer.state.items():
            mask = by_param.get(id(param))
            if mask is None:
                continue
            for value in state.values():
                if isinstance(value, Tensor) and value.shape == param.shape:
                    value.masked_fill_(~mask.to(value.device), 0)


def sparsity_stats(params: Mapping[str, Tensor]) -> dict[str, object]:
    """Zeros per tensor and overall, measured on the weights themselves.

    Example:
        >>> stats = sparsity_stats({"w": torch.tensor([0.0, 1.0, 0.0, 2.0])})
        >>> stats["overall"], stats["layers"]["w"]
        (0.5, {'numel': 4, 'zeros': 2, 'sparsity': 0.5})
    """
    layers: dict[str, dict[str, float | int]] = {}
    total = zeros = 0
    for name, param in params.items():
        n, z = param.numel(), int((param.detach() == 0).sum())
        layers[name] = {"numel": n, "zeros": z, "sparsity": z / n if n else 0.0}
        total, zeros = total + n, zeros + z
    return {"overall": zeros / total if total else 0.0, "numel": total, "zeros": zeros, "layers": layers}
