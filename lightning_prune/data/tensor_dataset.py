"""In-memory image datasets held as one tensor, with fast tensor-level augmentation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset


class RandomCropFlip:
    """Random crop of the original size after zero padding, plus an optional horizontal flip.

    Works on a single ``[C, H, W]`` tensor; the equivalent of torchvision's
    ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()`` without PIL round trips. Uses the
    global torch RNG (seeded per worker by Lightning's ``seed_everything(workers=True)``).

    Args:
        padding: Zero padding on each side before cropping.
        flip: Whether to flip horizontally with probability 0.5.

    Example:
        >>> aug = RandomCropFlip(padding=4)
        >>> aug(torch.rand(3, 32, 32)).shape
        torch.Size([3, 32, 32])
    """

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        self.padding = int(padding)
        self.flip = flip

    def __call__(self, image: Tensor) -> Tensor:
        """Return an augmented copy of ``image`` (``[C, H, W]``)."""
        _, height, width = image.shape
        pad = self.padding
        if pad > 0:
            top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            image = F.pad(image, (pad, pad, pad, pad))[:, top : top + height, left : left + width]
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(padding={self.padding}, flip={self.flip})"


class TensorImageDataset(Dataset[tuple[Tensor, Tensor]]):
    """Images stored as one ``[N, C, H, W]`` tensor, scaled, augmented and normalised per item.

    Item ``i`` is ``((augment(images[i] * scale) - mean) / std, labels[i])`` as
    ``(float32 [C, H, W], int64 scalar)``.

    Args:
        images: ``[N, C, H, W]`` tensor (uint8 or float).
        labels: ``[N]`` integer labels.
        mean: Per-channel mean used for normalisation (after scaling).
        std: Per-channel standard deviation used for normalisation.
        scale: Factor applied first (``1/255`` for uint8 pixels).
        augment: Optional callable applied to the scaled ``[C, H, W]`` image before normalising.

    Example:
        >>> ds = TensorImageDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.arange(4),
        ...                         mean=(0.5,), std=(0.5,), scale=1 / 255)
        >>> x, y = ds[1]
        >>> x.shape, float(x[0, 0, 0]), int(y)
        (torch.Size([1, 8, 8]), -1.0, 1)
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        scale: float = 1.0,
        augment: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"expected images [N,C,H,W] and N labels, got {tuple(images.shape)}")
        self.images = images
        self.labels = labels.long()
        self._stats = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.scale = float(scale)
        self.augment = augment

    def with_augment(self, augment: Callable[[Tensor], Tensor] | None) -> TensorImageDataset:
        """A view of the same tensors with a different augmentation (no copy)."""
        mean, std = self._stats
        return TensorImageDataset(self.images, self.labels, mean, std, self.scale, augment)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index].to(torch.float32) * self.scale
        if self.augment is not None:
            image = self.augment(image)
        return (image - self.mean) / self.std, self.labels[index]
