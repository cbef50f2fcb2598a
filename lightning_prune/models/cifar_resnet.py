"""The He et al. (2015) CIFAR ResNet with option-A (parameter-free) shortcuts.

Module names match the widely used ``akamaster/pytorch_resnet_cifar10`` checkpoints
(``conv1``, ``bn1``, ``layer1..3`` of ``BasicBlock`` s with ``conv1 bn1 conv2 bn2``, ``linear``),
so those weights load strictly.
"""

from __future__ import annotations

import torch  # noqa: F401 - the docstring examples use it
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.models.weights import load_state_dict_file

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "PadShortcut",
    "cifar_resnet",
    "digits_resnet",
]


class PadShortcut(nn.Module):
    """Parameter-free "option A" shortcut: subsample by 2 and zero-pad the channels.

    Computes ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))``. It has no parameters and no
    buffers, hence no ``state_dict`` entries.

    Args:
        pad: Number of zero channels added on each side of the channel dimension.

    Example:
        >>> shortcut = PadShortcut(pad=4)
        >>> shortcut(torch.zeros(2, 16, 32, 32)).shape
        torch.Size([2, 24, 16, 16])
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = int(pad)

    def forward(self, x: Tensor) -> Tensor:
        """Subsample spatially by 2 and zero-pad ``pad`` channels on both sides."""
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 conv/BN layers plus an option-A shortcut, followed by ReLU.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution (1 or 2).

    Example:
        >>> block = BasicBlock(16, 32, stride=2)
        >>> block(torch.zeros(1, 16, 32, 32)).shape
        torch.Size([1, 32, 16, 16])
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(pad=planes // 4)

    def forward(self, x: Tensor) -> Tensor:
        """Residual block forward pass."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2`` (He et al. 2015), option-A shortcuts.

    Args:
        num_blocks: Number of ``BasicBlock`` s in each of the three stages (``n``).
        num_classes: Output classes of the final ``linear`` layer.
        in_channels: Channels of the input image.

    Example:
        >>> net = CifarResNet(num_blocks=3, num_classes=10)  # ResNet-20
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_blocks: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks, stride=1)
        self.layer2 = self._make_layer(32, num_blocks, stride=2)
        self.layer3 = self._make_layer(64, num_blocks, stride=2)
        self.linear = nn.Linear(64, num_classes)
        self.apply(_kaiming_init)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Return class logits of shape ``[N, num_classes]``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _kaiming_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)


def _blocks_for_depth(depth: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise PruningConfigError(
            f"cifar_resnet depth={depth!r} is not of the form 6n+2 with n >= 1",
            hint="use one of 20, 32, 44, 56, 110 (or 8, 14, ... for small variants)",
        )
    return (depth - 2) // 6


def cifar_resnet(
    depth: int,
    num_classes: int = 10,
    weights: str | None = None,
    in_channels: int = 3,
) -> CifarResNet:
    """Build the CIFAR ResNet of the given depth, optionally loading local weights.

    Args:
        depth: ``6n + 2`` with ``n >= 1`` (20, 32, 44, 56, 110 are the published ones).
        num_classes: Output classes.
        weights: Optional path of a local checkpoint (e.g. ``resnet20-12fca82f.th``).
        in_channels: Channels of the input image.

    Returns:
        The network (Kaiming-normal initialised when ``weights`` is None).

    Raises:
        PruningConfigError: For an invalid depth or a missing/mismatched weights file.

    Example:
        >>> net = cifar_resnet(20)
        >>> sum(p.numel() for p in net.parameters())
        269722
    """
    net = CifarResNet(_blocks_for_depth(depth), num_classes=num_classes, in_channels=in_channels)
    if weights is not None:
        load_state_dict_file(net, weights)
    return net


def digits_resnet(num_classes: int = 10, weights: str | None = None) -> CifarResNet:
    """A tiny residual CNN for the 1x8x8 scikit-learn digits: ``cifar_resnet(14, in_channels=1)``.

    Args:
        num_classes: Output classes.
        weights: Optional path of a local checkpoint.

    Returns:
        A 6-block CIFAR-style ResNet taking single-channel input.

    Example:
        >>> digits_resnet()(torch.zeros(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """
    return cifar_resnet(depth=14, num_classes=num_classes, weights=weights, in_channels=1)
