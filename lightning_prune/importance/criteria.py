"""The built-in channel importance criteria.

Weight-based: ``"l1"``, ``"l2"``, ``"random"``. Data-driven (post-ReLU activations observed
during calibration): ``"mean_activation"`` (Molchanov et al. 2017), ``"attention"`` (AAP,
Zhao et al.) and ``"entropy"`` (Luo & Wu 2017).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.importance.base import (
    ActivationImportance,
    ChannelImportance,
    Statistics,
    _all_reduce_packed,
    _check_state,
    output_channels,
)
from lightning_prune.importance.registry import register_importance

__all__ = [
    "AttentionImportance",
    "EntropyImportance",
    "L1Importance",
    "L2Importance",
    "MeanActivationImportance",
    "RandomImportance",
]

_REDUCTIONS = ("mean", "max", "sum")


def filter_weights(layer: nn.Module) -> torch.Tensor:
    """Detached weight of ``layer`` as ``[out_channels, -1]``, one row per output channel.

    Transposed convolutions (weight ``[in, out / groups, *k]``) are rearranged so that row ``o``
    holds every weight producing output channel ``o``.

    Args:
        layer: A module with a ``weight`` tensor.

    Returns:
        The reshaped weight (same device and dtype).

    Raises:
        PruningConfigError: If the layer has no weight tensor.

    Example:
        >>> filter_weights(nn.Conv2d(3, 8, 3)).shape
        torch.Size([8, 27])
    """
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim < 1:
        raise PruningConfigError(
            f"{type(layer).__name__} has no weight tensor to score",
            hint="weight criteria ('l1', 'l2') score Conv/Linear layers",
        )
    w = weight.detach()
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        groups = layer.groups
        w = w.reshape(groups, w.shape[0] // groups, w.shape[1], -1).transpose(1, 2)
        return w.reshape(groups * w.shape[1], -1)
    return w.reshape(w.shape[0], -1)


def _as_float64(w: torch.Tensor) -> torch.Tensor:
    return w.double() if w.device.type in ("cpu", "cuda") else w.float()


@register_importance("l1")
class L1Importance(ChannelImportance):
    """L1 norm of each output channel's weights (Li et al. 2017, "Pruning Filters").

    Example:
        >>> conv = nn.Conv2d(1, 2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = conv.weight.copy_(torch.tensor([1.0, -3.0]).view(2, 1, 1, 1))
        >>> L1Importance().score("conv", conv)
        tensor([1., 3.])
    """

    def score(self, name: str, layer: nn.Module) -> torch.Tensor:
        """Sum of ``|w|`` over each output channel's weight slice (float32 CPU ``[out]``)."""
        return _as_float64(filter_weights(layer)).abs().sum(dim=1).to("cpu", torch.float32)


@register_importance("l2")
class L2Importance(ChannelImportance):
    """L2 norm of each output channel's weights.

    Example:
        >>> lin = nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.tensor([[3.0, 4.0]]))
        >>> L2Importance().score("fc", lin)
        tensor([5.])
    """

    def score(self, name: str, layer: nn.Module) -> torch.Tensor:
        """Euclidean norm of each output channel's weight slice (float32 CPU ``[out]``)."""
        return _as_float64(filter_weights(layer)).norm(dim=1).to("cpu", torch.float32)


@register_importance("random")
class RandomImportance(ChannelImportance):
    """Uniform random scores from a private, seeded ``torch.Generator`` (a baseline).

    The global RNG is never touched. Instances with the same seed produce the same sequence of
    scores for the same sequence of calls, which is how DDP ranks agree without
    communication; the generator state is part of :meth:`state_dict` so a resumed run
    continues the sequence. :meth:`reset` does not rewind the generator.

    Args:
        seed: Seed of the private generator.

    Example:
        >>> a, b = RandomImportance(seed=3), RandomImportance(seed=3)
        >>> conv = nn.Conv2d(3, 4, 1)
        >>> torch.equal(a.score("c", conv), b.score("c", conv))
        True
    """

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise PruningConfigError(
                f"random importance seed={seed!r} is not an int", hint="pass e.g. seed=0"
            )
        self.seed = seed
        self._generator = torch.Generator(device="cpu").manual_seed(seed)

    def config(self) -> dict[str, Any]:
        """``{"seed": seed}``."""
        return {"seed": self.seed}

    def score(self, name: str, layer: nn.Module) -> torch.Tensor:
        """Uniform ``[0, 1)`` scores, float32 CPU ``[out_channels]``."""
        return torch.rand(output_channels(layer), generator=self._generator, dtype=torch.float32)

    def state_dict(self) -> dict[str, Any]:
        """Config plus the generator state."""
        return {**super().state_dict(), "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the generator state saved by :meth:`state_dict`."""
        state = _check_state(self, state)
        self._generator.set_state(state["generator"].clone())


@register_importance("mean_activation")
class MeanActivationImportance(ActivationImportance):
    """Mean post-ReLU activation per channel (Molchanov et al. 2017).

    Averaged over all calibration samples and spatial positions; stores a running sum and count.

    Example:
        >>> conv = nn.Conv2d(3, 4, 3)
        >>> crit = MeanActivationImportance()
        >>> with crit.attached({"conv": conv}):
        ...     _ = conv(torch.randn(2, 3, 8, 8))
        >>> crit.score("conv", conv).shape
        torch.Size([4])
    """

    def batch_statistics(self, activation: torch.Tensor) -> Statistics:
        """Per-channel sum over samples and positions, and the number of values summed."""
        count = activation.shape[0] * activation.shape[2]
        return {"sum": activation.sum(dim=(0, 2)), "count": torch.tensor(float(count))}

    def compute_scores(self, stats: Statistics) -> torch.Tensor:
        """``sum / count`` (NaN, hence an error in :meth:`score`, if no values were seen)."""
        return stats["sum"] / stats["count"]


@register_importance("attention")
class AttentionImportance(ActivationImportance):
    """Activation attention of AAP (Zhao et al.): mean over samples of ``F(A_j)``.

    ``F(A_j) = reduction over spatial positions of |a|^p`` of a sample's post-ReLU map; the
    power is applied per sample and position before any averaging over samples (the authors'
    code averages the batch before the power, which this avoids).

    Args:
        reduction: ``"mean"``, ``"max"`` or ``"sum"`` over spatial positions.
        p: Exponent, a finite number > 0.

    Example:
        >>> conv = nn.Conv2d(3, 4, 3)
        >>> crit = AttentionImportance(reduction="max", p=2.0)
        >>> with crit.attached({"conv": conv}):
        ...     _ = conv(torch.randn(2, 3, 8, 8))
        >>> crit.score("conv", conv).shape
        torch.Size([4])
    """

    def __init__(self, reduction: str = "mean", p: float = 1.0) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise PruningConfigError(
                f"attention reduction={reduction!r} is not one of {list(_REDUCTIONS)}",
                hint="use reduction='mean' (AAP default), 'max' or 'sum'",
            )
        if isinstance(p, bool) or not isinstance(p, Real) or not math.isfinite(p) or p <= 0:
            raise PruningConfigError(
                f"attention p={p!r} must be a finite number > 0", hint="use e.g. p=1.0 or p=2.0"
            )
        self.reduction = reduction
        self.p = float(p)

    def config(self) -> dict[str, Any]:
        """``{"reduction": ..., "p": ...}``."""
        return {"reduction": self.reduction, "p": self.p}

    def batch_statistics(self, activation: torch.Tensor) -> Statistics:
        """Per-channel sum over samples of ``F(A_j)``, and the number of samples."""
        powered = activation.abs() if self.p == 1.0 else activation.abs().pow(self.p)
        if self.reduction == "mean":
            per_sample = powered.mean(dim=2)
        elif self.reduction == "max":
            per_sample = powered.amax(dim=2)
        else:
            per_sample = powered.sum(dim=2)
        return {"sum": per_sample.sum(dim=0), "count": torch.tensor(float(activation.shape[0]))}

    def compute_scores(self, stats: Statistics) -> torch.Tensor:
        """``sum / count``: the mean of ``F(A_j)`` over calibration samples."""
        return stats["sum"] / stats["count"]


@register_importance("entropy")
class EntropyImportance(ActivationImportance):
    """Entropy of each channel's pooled post-ReLU activation (Luo & Wu 2017).

    Each sample's map is global-average-pooled to one value per channel. Over all calibration
    samples, the values are histogrammed into ``bins`` equal bins over ``[0, max]`` (``max`` per
    channel; values equal to ``max`` fall in the last bin, as in ``numpy.histogram``) and the
    score is ``H = -sum p log p`` (natural log). Constant channels, e.g. always zero, score 0.

    Storage: the pooled values (``[samples, C]`` float64 per layer) are kept on each rank until
    :meth:`sync`, which all-reduces the per-channel max (``MAX``), histograms every rank's values
    over that global range and all-reduces the histograms (``SUM``); the result equals the
    single-process entropy over the union of all ranks' samples. Meant for a few calibration
    batches: memory grows by ``8 * C`` bytes per sample and layer.

    Args:
        bins: Number of histogram bins, an int >= 2.

    Example:
        >>> conv = nn.Conv2d(3, 4, 3)
        >>> crit = EntropyImportance(bins=10)
        >>> with crit.attached({"conv": conv}):
        ...     _ = conv(torch.randn(8, 3, 8, 8))
        >>> crit.score("conv", conv).shape
        torch.Size([4])
    """

    def __init__(self, bins: int = 100) -> None:
        super().__init__()
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise PruningConfigError(
                f"entropy bins={bins!r} must be an int >= 2", hint="use e.g. bins=100 (default)"
            )
        self.bins = bins

    def config(self) -> dict[str, Any]:
        """``{"bins": bins}``."""
        return {"bins": self.bins}

    def batch_statistics(self, activation: torch.Tensor) -> Statistics:
        """Global-average-pooled values ``[N, C]``."""
        return {"values": activation.mean(dim=2)}

    def merge_statistics(self, old: Statistics, new: Statistics) -> Statistics:
        """Concatenate pooled values along the sample dimension."""
        return {"values": torch.cat([old["values"], new["values"]])}

    def empty_statistics(self, shapes: dict[str, tuple[int, ...]]) -> Statistics:
        """No values (``[0, C]``) for a layer this rank never saw."""
        return {"values": torch.zeros(0, shapes["values"][-1], dtype=torch.float64)}

    def reduce_statistics(
        self, stats: dict[str, Statistics], device: torch.device
    ) -> dict[str, Statistics]:
        """Global max (``MAX``), then histograms over ``[0, global max]`` (``SUM``)."""
        values = [s["values"] for s in stats.values()]
        maxima = _all_reduce_packed([_channel_max(v) for v in values], dist.ReduceOp.MAX, device)
        hists = [_histogram(v, m, self.bins) for v, m in zip(values, maxima, strict=True)]
        hists = _all_reduce_packed(hists, dist.ReduceOp.SUM, device)
        return {
            name: {"hist": h, "max": m}
            for name, h, m in zip(stats, hists, maxima, strict=True)
        }

    def compute_scores(self, stats: Statistics) -> torch.Tensor:
        """Entropy of the synced histogram, or of the local values' histogram."""
        if "hist" in stats:
            hist = stats["hist"]
        else:
            hist = _histogram(stats["values"], _channel_max(stats["values"]), self.bins)
        return _entropy(hist)


def _channel_max(values: torch.Tensor) -> torch.Tensor:
    """Per-channel max of ``[n, C]`` values (0 for ``n == 0``)."""
    if values.shape[0] == 0:
        return torch.zeros(values.shape[1], dtype=torch.float64)
    return values.amax(dim=0).clamp_min(0.0)


def _histogram(values: torch.Tensor, maxima: torch.Tensor, bins: int) -> torch.Tensor:
    """Per-channel counts ``[C, bins]`` of ``[n, C]`` values over ``[0, max_c]``."""
    scale = torch.where(maxima > 0, bins / maxima.clamp_min(torch.finfo(maxima.dtype).tiny), 0.0)
    index = (values * scale).floor().long().clamp_(0, bins - 1)
    hist = torch.zeros(values.shape[1], bins, dtype=torch.float64)
    return hist.scatter_add_(1, index.T, torch.ones_like(index.T, dtype=torch.float64))


def _entropy(hist: torch.Tensor) -> torch.Tensor:
    """``-sum p log p`` per row of a count histogram (NaN for an empty row)."""
    total = hist.sum(dim=1, keepdim=True)
    p = hist / total.clamp_min(1.0)
    entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(dim=1)
    return torch.where(total.squeeze(1) > 0, entropy, torch.nan)
