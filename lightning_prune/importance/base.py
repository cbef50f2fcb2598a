"""Base classes of the filter (output-channel) importance criteria.

:class:`ChannelImportance` is the interface the pruning controller talks to: one score per
output channel of a prunable layer, higher = more important. :class:`ActivationImportance`
implements the data-driven half of that interface once (forward hooks, running statistics,
``torch.distributed`` reduction, checkpointing) so that each data-driven criterion only states
how a batch of activations becomes statistics and how statistics become scores.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_prune.errors import PruningConfigError

__all__ = ["ActivationImportance", "ChannelImportance", "output_channels"]

Statistics = dict[str, torch.Tensor]


def output_channels(layer: nn.Module) -> int:
    """Number of output channels (filters / rows) of a prunable layer.

    Args:
        layer: A convolution (also transposed), a ``Linear`` or any module with a ``weight``
            whose first dimension indexes the output channels (e.g. a normalisation layer).

    Returns:
        The number of output channels.

    Raises:
        PruningConfigError: If the layer has neither ``out_channels``/``out_features`` nor a weight.

    Example:
        >>> output_channels(nn.Conv2d(3, 8, 3)), output_channels(nn.Linear(4, 5))
        (8, 5)
    """
    for attr in ("out_channels", "out_features", "num_features"):
        value = getattr(layer, attr, None)
        if isinstance(value, int):
            return value
    weight = getattr(layer, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim >= 1:
        return int(weight.shape[0])
    raise PruningConfigError(
        f"cannot tell the output channels of a {type(layer).__name__}",
        hint="score Conv/Linear layers, or modules with a weight whose dim 0 indexes the outputs",
    )


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def _comm_device() -> torch.device:
    """Device on which collective tensors must live for the current process group."""
    if "nccl" in str(dist.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce_packed(
    tensors: list[torch.Tensor], op: dist.ReduceOp.RedOpType, device: torch.device
) -> list[torch.Tensor]:
    """All-reduce many float64 tensors with one collective; returns CPU float64 copies."""
    if not tensors:
        return []
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors]).to(device)
    dist.all_reduce(flat, op=op)
    flat = flat.cpu()
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].reshape(t.shape).clone())
        start += t.numel()
    return out


def _check_state(owner: ChannelImportance, state: Any) -> dict[str, Any]:
    if not isinstance(state, Mapping) or state.get("name") != owner.name:
        got = state.get("name") if isinstance(state, Mapping) else type(state).__name__
        raise PruningConfigError(
            f"state_dict of {got!r} cannot be loaded into the {owner.name!r} criterion",
            hint="load the state_dict() of the same criterion type",
        )
    saved = dict(state.get("config", {}))
    if saved != owner.config():
        raise PruningConfigError(
            f"state_dict config {saved} differs from {owner.config()}",
            hint=f"construct the criterion with the saved arguments: {saved}",
        )
    return dict(state)


class ChannelImportance(abc.ABC):
    """One score per output channel of a prunable layer; higher means more important.

    Weight-based criteria only implement :meth:`score`. Data-driven criteria
    (``requires_data = True``) first observe activations through :meth:`attach` (usually via
    :func:`lightning_prune.importance.calibrate`), then :meth:`sync` across ranks.

    Subclasses registered with :func:`lightning_prune.importance.register_importance` must be
    constructible without arguments and should report their constructor arguments in
    :meth:`config`.

    Example:
        >>> class FirstWeight(ChannelImportance):
        ...     name = "first_weight"
        ...     def score(self, name: str, layer: nn.Module) -> torch.Tensor:
        ...         return layer.weight.detach().flatten(1)[:, 0].float().cpu()
        >>> FirstWeight().score("fc", nn.Linear(3, 4)).shape
        torch.Size([4])
    """

    name: ClassVar[str]
    requires_data: ClassVar[bool] = False

    def attach(self, sources: Mapping[str, nn.Module]) -> None:  # noqa: B027 - optional override
        """Register forward hooks (data-driven criteria only; a no-op here).

        Args:
            sources: Prunable layer name -> module whose output is that layer's pre-activation
                map ``[N, C, H, W]`` or ``[N, C]``.
        """

    def detach(self) -> None:  # noqa: B027 - optional override
        """Remove every hook registered by :meth:`attach`; idempotent."""

    def reset(self) -> None:  # noqa: B027 - optional override
        """Clear accumulated statistics."""

    def sync(self) -> None:  # noqa: B027 - optional override
        """Reduce statistics across ``torch.distributed`` ranks so every rank scores alike."""

    @abc.abstractmethod
    def score(self, name: str, layer: nn.Module) -> torch.Tensor:
        """Importance of each output channel of ``layer``.

        Args:
            name: The layer's name, e.g. ``"model.layer1.0.conv1"`` (its key in :meth:`attach`).
            layer: The prunable layer itself.

        Returns:
            A float32 CPU tensor of shape ``[out_channels]``.
        """

    def config(self) -> dict[str, Any]:
        """Constructor arguments of this criterion (stored in :meth:`state_dict`)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Serializable state (criterion name, config and any statistics / RNG state)."""
        return {"name": self.name, "config": self.config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output of a criterion of the same type and config.

        Raises:
            PruningConfigError: If the state belongs to another criterion or config.
        """
        _check_state(self, state)

    @contextmanager
    def attached(self, sources: Mapping[str, nn.Module]) -> Iterator[ChannelImportance]:
        """Context manager: :meth:`attach` on entry, :meth:`detach` on exit (also on errors).

        Args:
            sources: As for :meth:`attach`.

        Yields:
            This criterion.
        """
        self.attach(sources)
        try:
            yield self
        finally:
            self.detach()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _stat_shapes(stats: Mapping[str, Statistics]) -> dict[str, dict[str, tuple[int, ...]]]:
    return {name: {k: tuple(v.shape) for k, v in s.items()} for name, s in stats.items()}


def _per_sample_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape without the sample dimension (dim 0 of statistics with ndim >= 2)."""
    return shape[1:] if len(shape) >= 2 else shape


def _union_shapes(
    gathered: list[dict[str, dict[str, tuple[int, ...]]]],
) -> dict[str, dict[str, tuple[int, ...]]]:
    """Every layer seen by any rank, with its statistics' shapes, in a rank-independent order.

    Raises:
        PruningConfigError: If ranks hold differently shaped statistics for one layer.
    """
    union: dict[str, dict[str, tuple[int, ...]]] = {}
    for shapes in gathered:
        for name, stat_shapes in shapes.items():
            first = union.setdefault(name, stat_shapes)
            mine = {k: _per_sample_shape(s) for k, s in stat_shapes.items()}
            if {k: _per_sample_shape(s) for k, s in first.items()} != mine:
                raise PruningConfigError(
                    f"ranks hold statistics of layer {name!r} shaped {first} and {stat_shapes}",
                    hint="prune identically on every rank and call reset() after pruning",
                )
    return dict(sorted(union.items()))


class ActivationImportance(ChannelImportance):
    """Base of data-driven criteria: hooks, running statistics, DDP reduction, checkpointing.

    Subclasses implement :meth:`batch_statistics` (activation ``[N, C, S]`` -> named statistic
    tensors) and :meth:`compute_scores` (statistics -> ``[C]`` scores). The defaults add
    statistics across batches and all-reduce them with ``SUM`` across ranks; override
    :meth:`merge_statistics`, :meth:`empty_statistics` and :meth:`reduce_statistics` for other
    rules. A batch is reduced on the activation's device in float32 (float64 for float64
    activations, no float64 copy of large GPU maps); the per-batch statistics are then
    accumulated as float64 CPU tensors.

    If ``post_relu`` is true (the default) the hooked tensor passes through ``torch.relu``
    before :meth:`batch_statistics`, so shared ``ReLU`` modules never need to be hooked.

    Example:
        >>> class MaxActivation(ActivationImportance):
        ...     name = "max_activation_example"
        ...     def batch_statistics(self, activation):
        ...         return {"max": activation.amax(dim=(0, 2))}
        ...     def merge_statistics(self, old, new):
        ...         return {"max": torch.maximum(old["max"], new["max"])}
        ...     def compute_scores(self, stats):
        ...         return stats["max"]
        >>> conv = nn.Conv2d(3, 4, 3)
        >>> crit = MaxActivation()
        >>> with crit.attached({"conv": conv}):
        ...     _ = conv(torch.randn(2, 3, 8, 8))
        >>> crit.score("conv", conv).shape
        torch.Size([4])
    """

    requires_data: ClassVar[bool] = True
    post_relu: ClassVar[bool] = True

    def __init__(self) -> None:
        self._handles: dict[str, RemovableHandle] = {}
        self._attached_names: set[str] = set()
        self._local: dict[str, Statistics] = {}
        self._synced: dict[str, Statistics] = {}

    # ----------------------------------------------------------------- subclass interface
    @abc.abstractmethod
    def batch_statistics(self, activation: torch.Tensor) -> Statistics:
        """Statistics of one batch.

        Args:
            activation: Detached float tensor ``[N, C, S]`` (``S`` = flattened spatial
                positions, 1 for ``[N, C]`` outputs), post-ReLU if ``post_relu``.

        Returns:
            Named tensors; they are stored as float64 on the CPU.
        """

    @abc.abstractmethod
    def compute_scores(self, stats: Statistics) -> torch.Tensor:
        """Channel scores ``[C]`` from local (merged) or synced (reduced) statistics."""

    def merge_statistics(self, old: Statistics, new: Statistics) -> Statistics:
        """Combine accumulated statistics with a new batch's (default: add)."""
        return {k: old[k] + new[k] for k in old}

    def empty_statistics(self, shapes: dict[str, tuple[int, ...]]) -> Statistics:
        """Statistics of a rank that never saw a layer, given another rank's shapes (zeros).

        Statistics with ``ndim >= 2`` may differ across ranks in dim 0 (a sample dimension, as
        for ``"entropy"``); all other dimensions must agree.
        """
        return {k: torch.zeros(s, dtype=torch.float64) for k, s in shapes.items()}

    def reduce_statistics(
        self, stats: dict[str, Statistics], device: torch.device
    ) -> dict[str, Statistics]:
        """All-reduce every layer's statistics across ranks (default: ``SUM``).

        Called on every rank with the same layer names in the same order.
        """
        flat = [t for s in stats.values() for t in s.values()]
        reduced = iter(_all_reduce_packed(flat, dist.ReduceOp.SUM, device))
        return {name: {k: next(reduced) for k in s} for name, s in stats.items()}

    # ----------------------------------------------------------------- ChannelImportance
    def attach(self, sources: Mapping[str, nn.Module]) -> None:
        """Register one forward hook per source; re-attaching a name replaces its hook.

        Args:
            sources: Prunable layer name -> module whose output is that layer's pre-activation
                map (``[N, C, ...]``, channels in dim 1), usually the BatchNorm after the conv.

        Raises:
            PruningConfigError: If ``sources`` is not a mapping of names to modules.
        """
        if not isinstance(sources, Mapping):
            raise PruningConfigError(
                f"sources must be a mapping of layer name -> module, got {type(sources).__name__}",
                hint="pass e.g. {'layer1.0.conv1': model.layer1[0].bn1}",
            )
        for name, module in sources.items():
            if not isinstance(name, str) or not isinstance(module, nn.Module):
                raise PruningConfigError(
                    f"sources entry {name!r} -> {type(module).__name__} is not str -> nn.Module",
                    hint="map each prunable layer name to the module whose output to observe",
                )
        for name, module in sources.items():
            if name in self._handles:
                self._handles.pop(name).remove()
            self._handles[name] = module.register_forward_hook(self._make_hook(name))
            self._attached_names.add(name)

    def detach(self) -> None:
        """Remove every hook; idempotent. Statistics are kept."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()

    def reset(self) -> None:
        """Clear local and synced statistics (hooks stay attached)."""
        self._local.clear()
        self._synced.clear()

    def sync(self) -> None:
        """All-reduce statistics when ``torch.distributed`` is initialized; no-op otherwise.

        Layers seen by only some ranks are included (the others contribute empty statistics).
        Idempotent: the reduction always starts from this rank's local statistics.
        """
        if not _dist_ready():
            return
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, _stat_shapes(self._local))
        union = _union_shapes(gathered)
        stats = {
            name: self._local[name] if name in self._local else self.empty_statistics(shapes)
            for name, shapes in union.items()
        }
        self._synced = self.reduce_statistics(stats, _comm_device())

    def score(self, name: str, layer: nn.Module) -> torch.Tensor:
        """Scores of ``layer`` from synced statistics if current, else from local ones.

        Raises:
            PruningConfigError: If no calibration data reached ``name``, the statistics have
                another channel count than ``layer`` or the scores are not finite.
        """
        stats = self._synced.get(name, self._local.get(name))
        if stats is None:
            raise PruningConfigError(
                f"no calibration data reached layer {name!r} for the {self.name!r} criterion",
                hint=self._missing_hint(name),
            )
        scores = self.compute_scores(stats).to("cpu", torch.float32)
        expected = output_channels(layer)
        if scores.shape != (expected,):
            raise PruningConfigError(
                f"{self.name!r} statistics of layer {name!r} have shape {tuple(scores.shape)} "
                f"but the layer has {expected} output channels",
                hint="call reset() and recalibrate after pruning; check that the source module's "
                "output has the layer's channels in dim 1",
            )
        if not torch.isfinite(scores).all():
            raise PruningConfigError(
                f"{self.name!r} scores of layer {name!r} are not finite",
                hint="check that calibration batches are non-empty and activations contain no NaN",
            )
        return scores

    def state_dict(self) -> dict[str, Any]:
        """Config plus local and synced statistics (CPU tensors)."""
        return {
            **super().state_dict(),
            "local": _clone_stats(self._local),
            "synced": _clone_stats(self._synced),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore statistics saved by :meth:`state_dict`; hooks are left untouched."""
        state = _check_state(self, state)
        self._local = _clone_stats(state.get("local", {}))
        self._synced = _clone_stats(state.get("synced", {}))

    # ----------------------------------------------------------------- helpers
    def _missing_hint(self, name: str) -> str:
        if name not in self._attached_names:
            return (
                f"layer {name!r} was never attached; include it in the sources passed to "
                "calibrate()/attach()"
            )
        return (
            f"no calibration data reached layer {name!r}; check that its source module runs in "
            "forward and that calibration batches are not empty"
        )

    def _make_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._observe(name, module, output)

        return hook

    def _observe(self, name: str, module: nn.Module, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim < 2:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise PruningConfigError(
                f"source of layer {name!r} ({type(module).__name__}) produced {got}, "
                "expected a tensor [N, C, ...]",
                hint="map the layer to the module whose output is its pre-activation map",
            )
        x = output.detach()
        x = x.reshape(x.shape[0], x.shape[1], -1).to(_compute_dtype(x.dtype))
        if self.post_relu:
            x = torch.relu(x)
        new = {k: v.detach().to("cpu", torch.float64) for k, v in self.batch_statistics(x).items()}
        old = self._local.get(name)
        if old is not None and _stat_shapes({name: old}) != _stat_shapes({name: new}):
            self._check_channels(name, old, new)
        self._local[name] = new if old is None else self.merge_statistics(old, new)
        self._synced.pop(name, None)

    def _check_channels(self, name: str, old: Statistics, new: Statistics) -> None:
        for key in old:
            if old[key].shape[-1:] != new[key].shape[-1:]:
                raise PruningConfigError(
                    f"layer {name!r} now has {new[key].shape[-1]} channels but its {self.name!r} "
                    f"statistics have {old[key].shape[-1]}",
                    hint="call reset() after pruning before calibrating again",
                )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (incl. half/bfloat16) is reduced in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _clone_stats(stats: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, Statistics]:
    return {
        name: {k: v.detach().to("cpu", torch.float64).clone() for k, v in s.items()}
        for name, s in stats.items()
    }
