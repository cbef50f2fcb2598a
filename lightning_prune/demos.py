"""A tiny network, a LightningModule, data and a quiet Trainer to try the callbacks in seconds.

Like Lightning's ``BoringModel``: everything here runs on a CPU in well under a second an epoch, so
a callback can be tried (and tested) without a dataset. The data is a learnable 4-class problem
(the class is the brightest quadrant of a noisy 8x8 image).

Example:
    >>> from lightning_prune import StructuredPruning
    >>> from lightning_prune.demos import DemoModule, demo_loaders, demo_trainer
    >>> module = DemoModule()
    >>> demo_trainer([StructuredPruning(pruning_ratio=0.5)]).fit(module, *demo_loaders())
    >>> [block.conv1.out_channels for block in (*module.model.layer1, *module.model.layer2)]
    [4, 4, 8]
"""

from __future__ import annotations

import tempfile
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["Block", "DemoModule", "TinyConvNet", "TinyResNet", "demo_loaders", "demo_trainer"]


class Block(nn.Module):
    """A basic residual block; a 1x1 conv shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """Stem, three residual blocks (8, 8, 16 channels), pooled linear head: 3 blockwise components.

    Example:
        >>> TinyResNet()(torch.zeros(2, 3, 8, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(self, num_classes: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 8))
        self.layer2 = nn.Sequential(Block(8, 16, 2))
        self.linear = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TinyConvNet(nn.Module):
    """A plain conv net (no residuals): every conv is its own component.

    Example:
        >>> TinyConvNet()(torch.zeros(1, 3, 8, 8)).shape
        torch.Size([1, 4])
    """

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        )
        self.classifier = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class DemoModule(L.LightningModule):
    """A user's module as users write them: its own loss, its own logging (``val_acc`` as a fraction),
    SGD on ``self.parameters()``, and counters of the steps taken.

    Example:
        >>> module = DemoModule()
        >>> module(torch.zeros(2, 3, 8, 8)).shape, module.training_steps
        (torch.Size([2, 4]), 0)
    """

    def __init__(self, net: nn.Module | None = None, lr: float = 0.05) -> None:
        super().__init__()
        self.model = net if net is not None else TinyResNet()
        self.lr = lr
        self.training_steps = 0
        self.validation_steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.training_steps += 1
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.validation_steps += 1
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def demo_loaders(n: int = 64, batch_size: int = 16, seed: int = 0, size: int = 8) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders over the same ``n`` samples, in a fixed order.

    Example:
        >>> train, val = demo_loaders()
        >>> len(train), next(iter(train))[0].shape
        (4, torch.Size([16, 3, 8, 8]))
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    y = torch.randint(0, 4, (n,), generator=g)
    half = size // 2
    for i, label in enumerate(y.tolist()):
        r, c = divmod(label, 2)
        x[i, :, r * half:(r + 1) * half, c * half:(c + 1) * half] += 1.5
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=batch_size), DataLoader(ds, batch_size=batch_size)


def demo_trainer(callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    """A fast, quiet CPU Trainer: no logger, checkpoints, progress bar, summary or sanity check.

    With a pruning controller among ``callbacks``, ``max_epochs`` defaults to -1 (the controller's plan
    decides the number of epochs); without one, pass ``max_epochs``. Files (a controller's report and
    model) go to a new temporary folder unless ``default_root_dir`` is given.

    Example:
        >>> demo_trainer([], max_epochs=1).fit(DemoModule(), *demo_loaders())
    """
    from lightning_prune.callbacks.base import PruningController

    defaults: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, deterministic=True,
    )
    if any(isinstance(cb, PruningController) for cb in callbacks):
        defaults["max_epochs"] = -1
    if "default_root_dir" not in kwargs:
        defaults["default_root_dir"] = tempfile.mkdtemp(prefix="lightning_prune_demo_")
    defaults.update(kwargs)
    return L.Trainer(callbacks=callbacks, **defaults)
