"""Dependency-aware channel surgery: the only module that imports torch-pruning.

A *prunable layer* is a conv (or linear) whose output channels can be removed together with
everything that depends on them (the following BatchNorm, the next layer's input channels, a
depthwise conv in between): one torch-pruning ``Group`` rooted at that layer. Layers whose output
feeds a residual sum or a concatenation are *coupled*: removing a channel there touches several
blocks at once. They are excluded unless explicitly allowed, as the ICE-Pruning authors do for
basic blocks. Groups that cross a channel-padding shortcut (the CIFAR ResNet's option A) are never
pruned: torch-pruning cannot map channel indices through ``F.pad``.

Every structural change is recorded as ``(layer name, removed channel indices)`` so that the same
structure can be replayed on a fresh, unpruned instance of the model.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from lightning_prune.errors import PruningConfigError

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

#: One structural change: ``(layer name, indices of removed output channels)``.
HistoryEntry = tuple[str, list[int]]


@dataclass
class PrunableLayer:
    """A layer whose output channels can be removed as one dependency group.

    Attributes:
        name: Module name of the root layer, relative to the traced model.
        module: The root layer itself.
        component: The block it belongs to (a step of the blockwise schedule prunes one component).
        coupled: Whether its output feeds a residual sum or a concatenation.
        channels: Current number of output channels.
        group_params: Parameters that removing all its channels would remove (for layer weighting).
        source: The module whose output is the layer's pre-activation map (the BatchNorm right after
            it, else the layer itself): data-driven importance criteria observe this output.
    """

    name: str
    module: nn.Module = field(repr=False)
    component: str
    coupled: bool
    channels: int
    group_params: int
    source: str


def _pad_free(group: tp.Group) -> bool:
    for dep, _ in group:
        target = dep.target.module
        if isinstance(target, tp.ops._ElementWiseOp) and "ConstantPad" in str(target._grad_fn):
            return False
    return True


def _is_coupled(group: tp.Group, graph: tp.DependencyGraph) -> bool:
    out_layers = 0
    for dep, _ in group:
        target = dep.target.module
        if isinstance(target, tp.ops._ConcatOp | tp.ops._SplitOp):
            return True
        if isinstance(target, tp.ops._ElementWiseOp):
            fn = str(target._grad_fn)
            if fn.startswith(("AddBackward", "SubBackward", "MulBackward")):
                return True
        if (
            isinstance(target, _ROOT_TYPES)
            and graph.is_out_channel_pruning_fn(dep.handler)
            and not _is_depthwise(target)
        ):
            out_layers += 1
    return out_layers > 1


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups > 1


def _source(group: tp.Group, names: dict[nn.Module, str], root: str) -> str:
    for dep, _ in group[1:]:
        target = dep.target.module
        if isinstance(target, _ROOT_TYPES):
            break
        if isinstance(target, nn.modules.batchnorm._BatchNorm) and target in names:
            return names[target]
    return root


def _group_params(group: tp.Group, graph: tp.DependencyGraph) -> int:
    """Parameters the group's layers hold along the pruned dimension (weights and biases)."""
    total = 0
    seen: set[int] = set()
    for dep, _ in group:
        target = dep.target.module
        if not isinstance(target, nn.Module) or id(target) in seen:
            continue
        if isinstance(target, tp.ops._ElementWiseOp | tp.ops._ConcatOp | tp.ops._SplitOp):
            continue
        seen.add(id(target))
        weight = getattr(target, "weight", None)
        if isinstance(weight, torch.Tensor):
            if graph.is_out_channel_pruning_fn(dep.handler):
                total += weight.numel()
            elif weight.dim() > 1:
                total += weight.numel()
    return total


@contextlib.contextmanager
def _tracing_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no BN statistics change) and all parameters trainable while tracing.

    torch-pruning traces through autograd: a frozen layer whose input needs no gradient would be
    missing from the graph. Flags and the training mode are restored afterwards.
    """
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    training = {name: m.training for name, m in model.named_modules()}
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
        yield
    finally:
        restore_requires_grad(model, flags)
        for name, m in model.named_modules():
            m.training = training.get(name, m.training)


def restore_requires_grad(model: nn.Module, flags: dict[str, bool]) -> None:
    """Set ``requires_grad`` of parameters by name (surgery creates new, trainable parameters)."""
    for name, p in model.named_parameters():
        if name in flags:
            p.requires_grad_(flags[name])


@contextlib.contextmanager
def _module_tracker(model: nn.Module) -> Iterator[list[str]]:
    """Track the innermost module being executed, to name the layer that breaks tracing."""
    stack: list[str] = []
    failing: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def pre(_m: nn.Module, _a: object, _name: str = name) -> None:
            stack.append(_name)

        def post(_m: nn.Module, _a: object, _o: object, _name: str = name) -> None:
            if stack and stack[-1] == _name:
                stack.pop()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield failing
    except Exception:
        failing.extend(stack[-1:])
        raise
    finally:
        for handle in handles:
            handle.remove()


def build_graph(model: nn.Module, example_input: torch.Tensor | Sequence[torch.Tensor]) -> tp.DependencyGraph:
    """Trace ``model`` with torch-pruning.

    Raises:
        PruningConfigError: if the model cannot be traced, naming the innermost failing layer.
    """
    failing: list[str] = []
    try:
        with _tracing_mode(model), _module_tracker(model) as failing:
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    except PruningConfigError:
        raise
    except Exception as err:  # torch-pruning raises bare exceptions from deep inside tracing
        where = f" in layer '{failing[0]}'" if failing else ""
        raise PruningConfigError(
            f"the model could not be traced for structured pruning{where}: {type(err).__name__}: {err}",
            hint="check that `example_input` has the shape the model's forward expects, and add layers "
            "torch-pruning cannot handle to `ignored_layers`",
        ) from err


def match_names(names: Sequence[str], patterns: Sequence[str]) -> set[str]:
    """Names matching any of ``patterns`` (exact module names or glob patterns)."""
    return {n for n in names if any(n == p or fnmatch.fnmatchcase(n, p) for p in patterns)}


def default_head(model: nn.Module) -> str | None:
    """The classifier head: the last ``nn.Linear`` registered, else the last conv."""
    last_linear = last_conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_linear = name
        elif isinstance(module, _ROOT_TYPES):
            last_conv = name
    return last_linear or last_conv


def _lowest_common_ancestor(names: Sequence[str]) -> str:
    parts = [n.split(".") for n in names]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _component_of(name: str, model: nn.Module, stop: str) -> str:
    """The outermost non-container ancestor of ``name`` strictly below ``stop``, else ``name``."""
    modules = dict(model.named_modules())
    parts = name.split(".")
    stop_depth = len(stop.split(".")) if stop else 0
    for depth in range(stop_depth + 1, len(parts)):
        ancestor = ".".join(parts[:depth])
        if not isinstance(modules[ancestor], _CONTAINERS):
            return ancestor
    return name


def discover_layers(
    model: nn.Module,
    graph: tp.DependencyGraph,
    ignored: Sequence[str] = (),
    prune_coupled: bool = False,
) -> list[PrunableLayer]:
    """The prunable layers of ``model``, in network (registration) order.

    Args:
        model: The traced model.
        graph: Its dependency graph from :func:`build_graph`.
        ignored: Module names or glob patterns whose output channels must not be removed.
        prune_coupled: Also return layers whose output feeds a residual sum or concatenation.
    """
    names = {module: name for name, module in model.named_modules()}
    ignored_names = match_names(list(names.values()), ignored)
    visited: set[nn.Module] = set()
    found: list[tuple[str, nn.Module, bool, int, int, str]] = []
    for name, root in model.named_modules():  # registration order = network order for roots
        if not isinstance(root, _ROOT_TYPES) or _is_depthwise(root) or root in visited:
            continue
        if root not in graph.module2node or name in ignored_names:
            continue
        channels = graph.get_out_channels(root)
        if not channels:
            continue
        group = graph.get_pruning_group(root, _pruning_fn(graph, root), list(range(channels)))
        members = [dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)]
        visited.update(members)
        if any(names.get(m) in ignored_names for m in members) or not _pad_free(group):
            continue
        coupled = _is_coupled(group, graph)
        if coupled and not prune_coupled:
            continue
        found.append((name, root, coupled, channels, _group_params(group, graph), _source(group, names, name)))
    if not found:
        return []
    stop = _lowest_common_ancestor([f[0] for f in found]) if len(found) > 1 else ""
    if stop == found[0][0]:  # a single layer: its parent is the stop
        stop = stop.rpartition(".")[0]
    return [
        PrunableLayer(name, module, _component_of(name, model, stop), coupled, channels, params, source)
        for name, module, coupled, channels, params, source in found
    ]


def untraced_layers(model: nn.Module, graph: tp.DependencyGraph, ignored: Sequence[str] = ()) -> list[str]:
    """Conv and linear layers missing from the traced graph: their output is unused or detached.

    They cannot be pruned (nothing depends on them in the graph); the controller reports them by name.
    """
    names = [name for name, _ in model.named_modules()]
    ignored_names = match_names(names, ignored)
    return [name for name, module in model.named_modules()
            if isinstance(module, _ROOT_TYPES) and module not in graph.module2node and name not in ignored_names]


def _pruning_fn(graph: tp.DependencyGraph, module: nn.Module):  # noqa: ANN202 - torch-pruning callable
    pruner = graph.get_pruner_of_module(module)
    if pruner is None:
        raise PruningConfigError(
            f"no channel pruner for layer of type {type(module).__name__}",
            hint="add it to `ignored_layers`",
        )
    return pruner.prune_out_channels


def prune_layer(model: nn.Module, graph: tp.DependencyGraph, name: str, idxs: Sequence[int]) -> None:
    """Remove output channels ``idxs`` of layer ``name`` and everything that depends on them.

    ``requires_grad`` flags survive: torch-pruning creates new, trainable parameters.

    Raises:
        PruningConfigError: unknown layer, or removing would leave a layer with no channels.
    """
    modules = dict(model.named_modules())
    if name not in modules:
        raise PruningConfigError(f"layer '{name}' is not in the model", hint="check the layer name")
    module = modules[name]
    idxs = sorted({int(i) for i in idxs})
    if not idxs:
        return
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    group = graph.get_pruning_group(module, _pruning_fn(graph, module), idxs)
    if not graph.check_pruning_group(group):
        raise PruningConfigError(
            f"removing {len(idxs)} channels from '{name}' would leave a layer with no channels",
            hint="lower the pruning ratio or add the layer to `ignored_layers`",
        )
    group.prune()
    restore_requires_grad(model, flags)


def replay(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    history: Sequence[Sequence[HistoryEntry]],
) -> None:
    """Apply a recorded structural history (a list of steps) to a fresh, unpruned model."""
    if not any(history):
        return
    graph = build_graph(model, example_input)
    for step in history:
        for name, idxs in step:
            prune_layer(model, graph, name, idxs)


def _run_with_hooks(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    kinds: tuple[type[nn.Module], ...],
    hook: Callable[[nn.Module, Any, Any], None],
) -> tuple[torch.Tensor, ...]:
    """One eval-mode, no-grad forward with ``hook`` on every module of ``kinds``; mode and hooks restored."""
    inputs = tuple(example_input) if isinstance(example_input, tuple | list) else (example_input,)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        for module, training in modes.items():
            module.training = training
        for handle in handles:
            handle.remove()
    return inputs


def count_macs(model: nn.Module, example_input: torch.Tensor | Sequence[torch.Tensor]) -> int:
    """Multiply-accumulates of conv and linear layers per sample of ``example_input``."""
    total = 0

    def hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        else:
            kernel = module.weight[0].numel()  # in_channels / groups * prod(kernel_size)
            total += output.numel() * kernel

    inputs = _run_with_hooks(model, example_input, _ROOT_TYPES, hook)
    return total // max(1, inputs[0].shape[0])


def output_positions(model: nn.Module, example_input: torch.Tensor | Sequence[torch.Tensor],
                     names: Sequence[str]) -> dict[str, int]:
    """Output positions (``H * W``; 1 for a flat output) of the named conv and linear layers."""
    named = set(names)
    wanted, found = {m: n for n, m in model.named_modules() if n in named}, {}

    def hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if module in wanted:
            found[wanted[module]] = int(output[0, 0].numel()) if output.dim() > 2 else 1

    _run_with_hooks(model, example_input, _ROOT_TYPES, hook)
    return found


def count_params(model: nn.Module) -> int:
    """All parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def conv_norm_pairs(model: nn.Module, example_input: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, str]:
    """Each conv's BatchNorm: the norm layer executed right after it, over the same channels."""
    order: list[tuple[str, nn.Module]] = []
    names = {m: n for n, m in model.named_modules()}
    kinds = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)

    def hook(module: nn.Module, _inputs: object, _output: object) -> None:
        order.append((names[module], module))

    _run_with_hooks(model, example_input, kinds, hook)
    pairs: dict[str, str] = {}
    for (name, module), (next_name, following) in zip(order, order[1:]):
        if (isinstance(module, nn.modules.conv._ConvNd) and isinstance(following, nn.modules.batchnorm._BatchNorm)
                and following.num_features == module.out_channels):
            pairs.setdefault(name, next_name)
    return pairs
