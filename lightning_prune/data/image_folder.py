"""ImageNet / Tiny-ImageNet style folders (``train/<class>/*``, ``val/<class>/*``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from lightning_prune.data._common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_positive_int,
    resolve_data_dir,
)
from lightning_prune.data.base import SplitDataModule
from lightning_prune.errors import PruningConfigError

Sample = tuple[str, int]

#: The image formats Pillow may decode here: those of torchvision's ``IMG_EXTENSIONS``. Pillow picks
#: a decoder from a file's content, not its name; restricting it keeps e.g. a PostScript file named
#: ``x.jpg`` (which Pillow would hand to Ghostscript, an interpreter) from being decoded at all.
IMAGE_FORMATS = ("JPEG", "PNG", "PPM", "BMP", "TIFF", "WEBP")


def load_image(path: str) -> Any:
    """Decode the image file ``path`` as an RGB PIL image, with one of :data:`IMAGE_FORMATS` only.

    Raises:
        PruningConfigError: naming the file, when it is not a readable image of those formats.

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
        >>> Image.new("L", (3, 2)).save(path)
        >>> load_image(path).mode, load_image(path).size
        ('RGB', (3, 2))
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as handle, Image.open(handle, formats=IMAGE_FORMATS) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise PruningConfigError(f"{path!r} is not an image of a format read here ({', '.join(IMAGE_FORMATS)})",
                                 hint="convert it to PNG or JPEG, or remove it from the data folder") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or damaged files; PIL raises SyntaxError too
        raise PruningConfigError(f"{path!r} could not be decoded: {type(err).__name__}: {str(err)[:200]}",
                                 hint="replace the damaged image or remove it from the data folder") from None


class ImageSampleDataset(Dataset[tuple[Tensor, int]]):
    """``(path, class index)`` samples decoded with PIL (:func:`load_image`) and passed through a transform.

    Args:
        samples: List of ``(image path, class index)``.
        transform: Callable mapping a PIL image to a tensor.

    Example:
        >>> ds = ImageSampleDataset([], transform=lambda img: img)
        >>> len(ds)
        0
    """

    def __init__(self, samples: list[Sample], transform: Callable[[Any], Tensor]) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, target = self.samples[index]
        return self.transform(load_image(path)), target


class ImageFolderDataModule(SplitDataModule):
    """Class-folder image data sets: ImageNet, Tiny-ImageNet, or any ``ImageFolder`` layout.

    ``data_dir`` must contain ``train/`` and ``val/``, each with one sub-folder per class
    (torchvision ``ImageFolder`` conventions; Tiny-ImageNet's ``val/images`` +
    ``val_annotations.txt`` layout is also understood). The validation split is carved from
    ``train/`` (seeded) and ``val/`` serves as the TEST set. Train transform:
    ``RandomResizedCrop(image_size)`` + horizontal flip (or the eval transform when
    ``augment=False``); eval transform: ``Resize(image_size / 0.875)`` + ``CenterCrop``.
    Normalised with the ImageNet statistics.

    Args:
        data_dir: Folder with ``train/`` and ``val/``; ``$LIGHTNING_PRUNE_DATA`` when None.
        image_size: Side of the square network input.
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (``batch_size`` when None).
        val_fraction: Fraction of the ``val_from`` split used for validation, in (0, 1); None: 0.05 of
            ``train/``, or 0.5 of ``val/`` (the test set) with ``val_from="test"``.
        subset_fraction: Fraction of the train and val splits kept, in (0, 1].
        seed: Seed of the splits, subsets and shuffling.
        num_workers: DataLoader worker processes.
        augment: RandomResizedCrop + flip for the training split.
        val_from: ``"train"`` (default) or ``"test"``: carve the validation set from the test split, for
            weights trained on the whole training split (see :class:`~lightning_prune.data.SplitDataModule`).

    Example:
        >>> dm = ImageFolderDataModule("tiny-imagenet-200", image_size=64)  # doctest: +SKIP
        >>> dm.num_classes, dm.input_shape  # doctest: +SKIP
        (200, (3, 64, 64))
    """

    default_val_fraction = 0.05

    def __init__(
        self,
        data_dir: str | None = None,
        image_size: int = 224,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_fraction: float | None = None,
        subset_fraction: float = 1.0,
        seed: int = 0,
        num_workers: int = 0,
        augment: bool = True,
        val_from: str = "train",
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_fraction=val_fraction,
            subset_fraction=subset_fraction,
            seed=seed,
            num_workers=num_workers,
            augment=augment,
            val_from=val_from,
        )
        self.save_hyperparameters()
        check_positive_int("image_size", image_size)
        self.image_size = image_size
        self.data_dir = resolve_data_dir(data_dir, "ImageFolderDataModule")
        self.train_dir, self.test_dir = _split_dirs(self.data_dir)
        self.classes, self.class_to_idx = _find_classes(self.train_dir)
        self.num_classes = len(self.classes)
        self.input_shape = (3, image_size, image_size)

    def _load_pool(self) -> tuple[Dataset[Any], Dataset[Any], Dataset[Any]]:
        train_samples = _folder_samples(self.train_dir, self.class_to_idx)
        test_samples = _test_samples(self.test_dir, self.class_to_idx)
        eval_tf = self._eval_transform()
        train_tf = self._train_transform() if self.augment else eval_tf
        return (
            ImageSampleDataset(train_samples, train_tf),
            ImageSampleDataset(train_samples, eval_tf),
            ImageSampleDataset(test_samples, eval_tf),
        )

    def _train_transform(self) -> Callable[[Any], Tensor]:
        from torchvision import transforms as T

        return T.Compose(
            [
                T.RandomResizedCrop(self.image_size, antialias=True),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def _eval_transform(self) -> Callable[[Any], Tensor]:
        from torchvision import transforms as T

        return T.Compose(
            [
                T.Resize(round(self.image_size / 0.875), antialias=True),
                T.CenterCrop(self.image_size),
                T.ToTensor(),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )


def _split_dirs(root: Path) -> tuple[Path, Path]:
    train_dir, val_dir = root / "train", root / "val"
    if not train_dir.is_dir() or not val_dir.is_dir():
        raise PruningConfigError(
            f"{str(root)!r} lacks a train/ and a val/ folder",
            hint="point data_dir at the data-set root holding train/<class>/... and "
            "val/<class>/... (ImageNet / Tiny-ImageNet layout)",
        )
    return train_dir, val_dir


def _find_classes(train_dir: Path) -> tuple[list[str], dict[str, int]]:
    from torchvision.datasets.folder import find_classes

    try:
        return find_classes(str(train_dir))
    except FileNotFoundError as exc:
        raise PruningConfigError(
            f"no class folders in {str(train_dir)!r}",
            hint="train/ must hold one sub-folder of images per class",
        ) from exc


def _folder_samples(folder: Path, class_to_idx: dict[str, int]) -> list[Sample]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    present = {c: i for c, i in class_to_idx.items() if (folder / c).is_dir()}
    try:
        return make_dataset(str(folder), present, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as exc:
        raise PruningConfigError(
            f"no images found in {str(folder)!r}: {exc}",
            hint=f"images must have one of the extensions {', '.join(IMG_EXTENSIONS)}",
        ) from exc


def _test_samples(val_dir: Path, class_to_idx: dict[str, int]) -> list[Sample]:
    annotations = val_dir / "val_annotations.txt"
    if annotations.is_file() and (val_dir / "images").is_dir():
        return _tiny_imagenet_val(val_dir, annotations, class_to_idx)
    return _folder_samples(val_dir, class_to_idx)


def _tiny_imagenet_val(
    val_dir: Path, annotations: Path, class_to_idx: dict[str, int]
) -> list[Sample]:
    samples: list[Sample] = []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in class_to_idx:
            samples.append((str(val_dir / "images" / fields[0]), class_to_idx[fields[1]]))
    return samples
