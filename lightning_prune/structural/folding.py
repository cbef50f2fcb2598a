"""Conv-BatchNorm folding of a frozen module, for inference-only copies such as a distillation teacher.

A BatchNorm in eval mode is an affine map per channel; when it follows a convolution whose output
nothing else reads, it can be folded into that convolution's weight and bias, saving one pass over
the activations. :func:`folded_copy` traces the module with ``torch.fx`` and folds every such pair;
it returns ``None`` (and the reason) when the module cannot be traced, so callers use the original.
"""

from __future__ import annotations

import copy

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["folded_copy"]

_PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


def _fold(traced: fx.GraphModule) -> int:
    """Fold every eval-mode BatchNorm that reads only a convolution's output into it; the count folded."""
    modules = dict(traced.named_modules())
    folded = 0
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        source = node.args[0]
        if source.op != "call_module" or len(source.users) != 1:
            continue
        conv, norm = modules.get(source.target), modules.get(node.target)
        if not any(isinstance(conv, c) and isinstance(norm, b) for c, b in _PAIRS):
            continue
        if norm.training or not norm.track_running_stats or norm.running_mean is None:
            continue
        fused = fuse_conv_bn_eval(conv, norm)
        parent, _, name = str(source.target).rpartition(".")
        setattr(traced.get_submodule(parent) if parent else traced, name, fused)
        modules[str(source.target)] = fused
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
        folded += 1
    traced.graph.lint()
    traced.recompile()
    traced.delete_all_unused_submodules()
    return folded


def folded_copy(module: nn.Module) -> tuple[nn.Module | None, str]:
    """A copy of an eval-mode ``module`` with its convolution + BatchNorm pairs folded.

    Returns ``(copy, "")``, or ``(None, reason)`` when the module is in training mode, cannot be
    traced by ``torch.fx``, or has nothing to fold. ``module`` itself is not changed. The copy
    computes the same function up to float rounding; callers that cannot trust tracing (a forward
    whose path depends on its inputs) compare the two outputs before using it.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> folded, reason = folded_copy(net)
        >>> [type(m).__name__ for m in folded.children()], reason
        (['Conv2d', 'ReLU'], '')
        >>> x = torch.randn(2, 3, 8, 8)
        >>> torch.allclose(folded(x), net(x), atol=1e-5)
        True
    """
    if module.training:
        return None, "it is in training mode"
    try:
        traced = fx.symbolic_trace(copy.deepcopy(module))
    except Exception as error:  # noqa: BLE001 - any tracing failure means: run the module as it is
        first = (str(error).splitlines() or [""])[0][:120]
        return None, f"torch.fx cannot trace it ({type(error).__name__}: {first})"
    if _fold(traced) == 0:
        return None, "it has no convolution followed by a BatchNorm"
    traced.eval()
    return traced, ""
