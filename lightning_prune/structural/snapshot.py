"""Snapshots of a model's weights *and structure*, as plain CPU tensors, and their exact restoration.

A snapshot is the model's ``state_dict`` copied to the CPU. Restoring it into the same model after
channels were removed puts back tensors of the saved shapes (new ``nn.Parameter`` objects, with the
``requires_grad`` flags the model has now) and updates the shape attributes of convolutions,
linear and normalisation layers, so the module objects stay the same (hooks survive) and the
structure is exactly the saved one. Snapshots are ``torch.load(weights_only=True)``-safe, so they
can live in a checkpoint.

:func:`transaction` is the all-or-nothing variant for an operation that may fail half-way (loading
a file into a model): it puts back the very same parameter, buffer and module objects.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.state import Patience


def to_cpu(value: Any) -> Any:
    """A deep copy of nested state (dicts, lists, tuples; e.g. optimizer or scheduler state) with every
    tensor detached and copied to the CPU.

    Example:
        >>> state = {"step": 3, "buf": [torch.ones(2)]}
        >>> copy = to_cpu(state)
        >>> copy["buf"][0] is state["buf"][0], torch.equal(copy["buf"][0], state["buf"][0])
        (False, True)
    """
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    return value


def capture(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state (parameters and buffers) as CPU tensors."""
    return to_cpu(dict(model.state_dict()))


def nbytes(value: Any) -> int:
    """Memory the tensors in a (nested) snapshot hold.

    Example:
        >>> nbytes({"model": {"w": torch.zeros(4)}, "optimizers": [{"m": torch.zeros(2, dtype=torch.float64)}]})
        32
    """
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(nbytes(v) for v in value)
    return 0


def _fix_shape_attributes(module: nn.Module) -> None:
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.modules.conv._ConvNd) and isinstance(weight, torch.Tensor):
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        if module.transposed:  # weight [in, out / groups, ...]
            in_c = weight.shape[0]
            groups = in_c if depthwise else module.groups
            out_c = weight.shape[1] * groups
        else:  # weight [out, in / groups, ...]
            out_c = weight.shape[0]
            groups = out_c if depthwise else module.groups
            in_c = weight.shape[1] * groups
        module.in_channels, module.out_channels, module.groups = in_c, out_c, groups
    elif isinstance(module, nn.Linear) and isinstance(weight, torch.Tensor):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        reference = module.running_mean if module.running_mean is not None else weight
        if reference is not None:
            module.num_features = reference.shape[0]
    elif isinstance(module, nn.GroupNorm) and isinstance(weight, torch.Tensor):
        module.num_channels = weight.shape[0]
    elif isinstance(module, nn.LayerNorm) and isinstance(weight, torch.Tensor):
        module.normalized_shape = tuple(weight.shape)
    elif isinstance(module, nn.PReLU) and isinstance(weight, torch.Tensor):
        module.num_parameters = weight.numel()


def restore(model: nn.Module, snapshot: Mapping[str, torch.Tensor]) -> None:
    """Put ``snapshot``'s tensors (and so its structure) back into ``model``.

    Raises:
        PruningConfigError: if the snapshot's names are not exactly the model's.
    """
    own = model.state_dict()
    if own.keys() != snapshot.keys():
        missing, extra = sorted(own.keys() - snapshot.keys()), sorted(snapshot.keys() - own.keys())
        raise PruningConfigError(f"snapshot does not fit the model (missing {missing[:3]}, unexpected {extra[:3]})",
                                 hint="restore a snapshot into the model it was taken from")
    modules = dict(model.named_modules())
    touched: set[str] = set()
    for key, value in snapshot.items():
        owner, _, attr = key.rpartition(".")
        module = modules[owner]
        device = own[key].device
        if attr in module._parameters and module._parameters[attr] is not None:
            old = module._parameters[attr]
            module._parameters[attr] = nn.Parameter(value.to(device, copy=True), requires_grad=old.requires_grad)
        elif attr in module._buffers and module._buffers[attr] is not None:
            module._buffers[attr] = value.to(device, copy=True)
        else:  # extra state or a tensor exposed by a custom state_dict: let the module load it
            module.load_state_dict({attr: value}, strict=False)
        touched.add(owner)
    for owner in touched:
        _fix_shape_attributes(modules[owner])


_CONTAINERS = ("_parameters", "_buffers", "_modules")


@contextlib.contextmanager
def transaction(model: nn.Module) -> Iterator[None]:
    """Undo every change made to ``model`` inside the block if the block raises.

    Records, for every submodule, its attributes (so parameters, buffers and submodules replaced by
    channel surgery come back as the *same objects*, and shape attributes such as ``out_channels``
    come back too), CPU copies of its parameters' and buffers' values (for changes made in place,
    e.g. a ``load_state_dict`` that fails half-way) and their ``requires_grad`` flags. On an
    exception all of it is put back and the exception propagates; on success nothing is undone.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> weight = net.weight
        >>> try:
        ...     with transaction(net):
        ...         net.weight = nn.Parameter(torch.zeros(1, 2))
        ...         raise RuntimeError("half-way")
        ... except RuntimeError:
        ...     pass
        >>> net.weight is weight, net.weight.shape
        (True, torch.Size([2, 2]))
    """
    modules = list(model.modules())
    attributes = [(module, dict(module.__dict__), {k: dict(module.__dict__[k]) for k in _CONTAINERS})
                  for module in modules]
    tensors: dict[int, tuple[torch.Tensor, torch.Tensor, bool]] = {}
    for module in modules:
        for tensor in itertools.chain(module._parameters.values(), module._buffers.values()):
            if tensor is not None and id(tensor) not in tensors:
                tensors[id(tensor)] = (tensor, tensor.detach().to("cpu", copy=True), tensor.requires_grad)
    try:
        yield
    except BaseException:
        for module, saved, containers in attributes:
            for key in [k for k in module.__dict__ if k not in saved]:
                del module.__dict__[key]
            for key, value in saved.items():
                if key in containers:  # the same dict objects, with their old contents
                    value.clear()
                    value.update(containers[key])
                module.__dict__[key] = value
        with torch.no_grad():
            for tensor, copy, requires_grad in tensors.values():
                if tensor.shape == copy.shape and tensor.dtype == copy.dtype:
                    tensor.copy_(copy)
                else:  # reshaped in place: give it back its old data
                    tensor.data = copy.to(tensor.device)
                if tensor.requires_grad != requires_grad and tensor.is_leaf:
                    tensor.requires_grad_(requires_grad)
        raise


class BestWeights:
    """The model's state at its best validation score so far: a CPU snapshot, restored in place.

    Restoring copies the saved values into the model's own tensors (``load_state_dict``), so the
    parameter objects, and with them optimizer references and hooks, stay the same; it is meant for
    a model whose structure does not change between the snapshot and the restore (unstructured
    pruning). Ties keep the earlier snapshot; a NaN score never counts as best.

    Example:
        >>> net = nn.Linear(2, 1, bias=False)
        >>> best = BestWeights(mode="max")
        >>> with torch.no_grad():
        ...     _ = net.weight.fill_(1.0)
        >>> best.offer(epoch=3, value=0.9, model=net), best.offer(epoch=4, value=0.8, model=net)
        (True, False)
        >>> with torch.no_grad():
        ...     _ = net.weight.fill_(2.0)
        >>> best.restore(net)
        >>> net.weight.tolist(), best.epoch, best.value
        ([[1.0, 1.0]], 3, 0.9)
    """

    def __init__(self, mode: str = "max") -> None:
        if mode not in ("min", "max"):
            raise PruningConfigError(f"mode={mode!r} is unknown; valid: min, max", hint="use mode='max' for accuracy")
        self.mode = mode
        self.epoch: int | None = None
        self.value: float | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def is_better(self, value: float) -> bool:
        """Whether ``value`` beats the best so far (strictly; NaN never does)."""
        return not math.isnan(value) and Patience(mode=self.mode, best=self.value).improved(value)

    def offer(self, epoch: int, value: float, model: nn.Module) -> bool:
        """Keep ``model``'s state if ``value`` is the best so far; returns whether it was kept."""
        if not self.is_better(value):
            return False
        self.epoch, self.value, self.state = epoch, float(value), capture(model)
        return True

    def restore(self, model: nn.Module) -> None:
        """Copy the best state back into ``model``'s own tensors (nothing happens without one)."""
        if self.state is not None:
            with torch.no_grad():
                model.load_state_dict(self.state)

    def state_dict(self) -> dict[str, Any]:
        """For a checkpoint: the epoch, the score and the weights (CPU tensors)."""
        return {"epoch": self.epoch, "value": self.value, "state": self.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.epoch, self.value, self.state = state["epoch"], state["value"], state["state"]
