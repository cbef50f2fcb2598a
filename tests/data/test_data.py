"""Tests of lightning_prune.data: splits, subsets, normalisation, formats, resumable shuffling."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from helpers import DATA_DIR, needs_data

from lightning_prune.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    EpochSeededSampler,
    ImageFolderDataModule,
    MNISTDataModule,
    RandomCropFlip,
    SplitDataModule,
    TensorImageDataset,
)
from lightning_prune.errors import PruningConfigError


def _sizes(dm: SplitDataModule) -> tuple[int, int, int]:
    return len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)  # type: ignore[arg-type]


def _all(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


# -- digits ----------------------------------------------------------------------------------
def test_digits_split_sizes_and_disjoint_indices() -> None:
    dm = DigitsDataModule(val_fraction=0.1, test_fraction=0.2)
    dm.setup("fit")
    assert _sizes(dm) == (1294, 144, 359)
    train, val = set(dm.train_indices.tolist()), set(dm.val_indices.tolist())
    assert not train & val
    assert train | val == set(range(1438))


def test_digits_splits_are_seeded() -> None:
    a, b, c = DigitsDataModule(seed=3), DigitsDataModule(seed=3), DigitsDataModule(seed=4)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.val_indices, b.val_indices)
    assert not torch.equal(a.val_indices, c.val_indices)
    # the test set does not depend on the seed
    assert torch.equal(_all(a.test_dataloader())[1], _all(c.test_dataloader())[1])


def test_digits_subset_fraction_sizes_and_seeding() -> None:
    full = DigitsDataModule()
    full.setup()
    half = DigitsDataModule(subset_fraction=0.5)
    half.setup()
    assert len(half.train_dataset) == 647 and len(half.val_dataset) == 72
    assert len(half.test_dataset) == len(full.test_dataset) == 359
    assert set(half.train_indices.tolist()) <= set(full.train_indices.tolist())
    assert set(half.val_indices.tolist()) <= set(full.val_indices.tolist())
    again = DigitsDataModule(subset_fraction=0.5)
    again.setup()
    assert torch.equal(half.train_indices, again.train_indices)
    other = DigitsDataModule(subset_fraction=0.5, seed=1)
    other.setup()
    assert not torch.equal(half.train_indices, other.train_indices)


def test_digits_batches_and_normalisation() -> None:
    dm = DigitsDataModule(batch_size=32)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    train_x, train_y = _all(dm.train_dataloader())
    assert abs(train_x.mean().item()) < 1e-3 and train_x.std().item() == pytest.approx(1, abs=1e-2)
    assert set(train_y.tolist()) == set(range(10))
    assert dm.num_classes == 10 and dm.input_shape == (1, 8, 8)
    assert torch.equal(dm.example_input(4), torch.zeros(4, 1, 8, 8))


def test_digits_augment_keeps_shape_and_eval_is_unaugmented() -> None:
    dm = DigitsDataModule(augment=True)
    dm.setup()
    torch.manual_seed(0)
    samples = torch.stack([dm.train_dataset[0][0] for _ in range(8)])
    assert samples.shape == (8, 1, 8, 8)
    assert not all(torch.equal(samples[0], s) for s in samples[1:])
    assert torch.equal(dm.val_dataset[0][0], dm.val_dataset[0][0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"val_fraction": 0.0},
        {"val_fraction": 1.0},
        {"val_fraction": -0.1},
        {"val_fraction": 1.5},
        {"subset_fraction": 0.0},
        {"subset_fraction": 1.2},
        {"test_fraction": 0.0},
        {"batch_size": 0},
        {"eval_batch_size": -1},
        {"num_workers": -1},
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(PruningConfigError, match="HINT"):
        DigitsDataModule(**kwargs)


# -- validation carved from the test split (val_from="test") -----------------------------------
def test_val_from_test_halves_the_test_split_and_trains_on_the_whole_pool() -> None:
    default = DigitsDataModule()
    default.setup()
    dm = DigitsDataModule(val_from="test")  # as a user writes it: val_fraction defaults to half there
    dm.setup()
    assert dm.val_fraction == 0.5 and default.val_fraction == 0.1
    assert _sizes(dm) == (1438, 180, 179)
    assert dm.train_indices.tolist() == list(range(1438))  # the training split whole, nothing carved from it
    val, test = set(dm.val_indices.tolist()), set(dm.test_indices.tolist())
    assert not val & test and val | test == set(range(359))
    # the two loaders serve exactly those images of the complete test set, and nothing else (pixels
    # compared before normalisation: its statistics come from a different training split)
    def pixels(data: DigitsDataModule, loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _all(loader)
        return x * data.std + data.mean, y  # type: ignore[operator]

    full_x, full_y = pixels(default, default.test_dataloader())
    val_x, val_y = pixels(dm, dm.val_dataloader())
    test_x, test_y = pixels(dm, dm.test_dataloader())
    assert torch.allclose(val_x, full_x[dm.val_indices], atol=1e-5) and torch.equal(val_y, full_y[dm.val_indices])
    assert torch.allclose(test_x, full_x[dm.test_indices], atol=1e-5)
    assert torch.equal(test_y, full_y[dm.test_indices])
    # the default keeps the old behaviour: validation from TRAIN, the complete test set reported
    assert default.test_indices.tolist() == list(range(359)) and len(default.val_dataset) == 144


def test_val_from_test_halves_do_not_depend_on_seed_and_subset_touches_training_only() -> None:
    a, b = DigitsDataModule(val_from="test", seed=0), DigitsDataModule(val_from="test", seed=5)
    part = DigitsDataModule(val_from="test", subset_fraction=0.25, val_fraction=0.3)
    for dm in (a, b, part):
        dm.setup()
    assert torch.equal(a.val_indices, b.val_indices) and torch.equal(a.test_indices, b.test_indices)
    assert _sizes(part) == (360, 108, 251)  # a quarter of the training pool; both test parts whole
    assert set(part.train_indices.tolist()) < set(range(1438))
    # the normalisation statistics come from the training split, which is now the whole pool
    assert a.mean == pytest.approx(float(a.train_dataset.dataset.images.mean()), rel=1e-5)
    assert a.mean != default_digits_mean()


def test_val_from_test_halves_are_stable_across_processes() -> None:
    import subprocess
    import sys

    code = ("from lightning_prune.data import DigitsDataModule as D; d = D(val_from='test'); d.setup(); "
            "print(d.val_indices.tolist()); print(d.test_indices.tolist())")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
            for _ in range(2)]
    here = DigitsDataModule(val_from="test")
    here.setup()
    expected = f"{here.val_indices.tolist()}\n{here.test_indices.tolist()}\n"
    assert [run.stdout for run in runs] == [expected, expected]


def test_val_from_test_on_cifar_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train, test = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in (12, 8))
    _write_npz_pair(tmp_path / "cifar10", train, test)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_from="test", augment=False, batch_size=4)
    dm.setup()
    assert _sizes(dm) == (12, 4, 4)
    val_x, _ = _all(dm.val_dataloader())
    test_x, _ = _all(dm.test_dataloader())
    served = torch.cat([val_x, test_x])
    whole = CIFAR10DataModule(data_dir=str(tmp_path), augment=False)
    whole.setup()
    full_x, _ = _all(whole.test_dataloader())
    assert torch.equal(served, torch.cat([full_x[dm.val_indices], full_x[dm.test_indices]]))
    assert sorted(dm.val_indices.tolist() + dm.test_indices.tolist()) == list(range(8))


def test_val_from_test_on_an_image_folder(tmp_path: Path) -> None:
    _write_image_folder(tmp_path, ("cat", "dog"), n_train=3, n_val=2)
    dm = ImageFolderDataModule(data_dir=str(tmp_path), image_size=8, val_from="test")
    dm.setup()
    assert _sizes(dm) == (6, 2, 2)  # train/ whole; val/ (the test set) halved
    assert not set(dm.val_indices.tolist()) & set(dm.test_indices.tolist())


def test_val_from_is_refused_with_a_hint_when_unknown() -> None:
    with pytest.raises(PruningConfigError, match=r"val_from='val' is not one of \['train', 'test'\]") as error:
        DigitsDataModule(val_from="val")
    assert "HINT" in str(error.value)
    with pytest.raises(PruningConfigError, match="val_fraction=1.0"):
        DigitsDataModule(val_from="test", val_fraction=1.0)


def default_digits_mean() -> float:
    dm = DigitsDataModule()
    dm.setup()
    return dm.mean  # type: ignore[return-value]


#: (sum of the validation indices, their first five, the first five reported) of CIFAR-10's test split.
PINNED_CIFAR_HALVES = (25089258, [2, 3, 4, 6, 7], [0, 1, 5, 8, 9])


@needs_data
def test_cifar_val_from_test_pins_the_reported_half() -> None:
    """The halves every benchmark decides and reports on: a change here changes every published figure."""
    dm = CIFAR10DataModule(val_from="test")
    dm.setup()
    assert _sizes(dm) == (50000, 5000, 5000)
    val, test = dm.val_indices, dm.test_indices
    assert not set(val.tolist()) & set(test.tolist())
    assert (int(val.sum()), val[:5].tolist(), test[:5].tolist()) == PINNED_CIFAR_HALVES


# -- sampler ---------------------------------------------------------------------------------
def test_sampler_order_depends_only_on_seed_and_epoch() -> None:
    a, b = EpochSeededSampler(100, seed=7), EpochSeededSampler(100, seed=7)
    a.set_epoch(2)
    first = list(a)
    assert first == list(a) and sorted(first) == list(range(100))
    a.set_epoch(3)
    assert list(a) != first
    b.set_epoch(2)
    assert list(b) == first
    state = torch.get_rng_state()
    list(b)
    assert torch.equal(state, torch.get_rng_state())
    assert list(EpochSeededSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_train_loader_order_is_reproducible_across_instances() -> None:
    def first_batch(epoch: int) -> torch.Tensor:
        dm = DigitsDataModule(batch_size=16, seed=5)
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, EpochSeededSampler)
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))[1]

    assert torch.equal(first_batch(1), first_batch(1))
    assert not torch.equal(first_batch(1), first_batch(2))


def test_lightning_calls_set_epoch() -> None:
    from lightning_prune.models.module import ImageClassifier

    seen: list[int] = []

    class Record(L.Callback):
        def on_train_batch_start(
            self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, batch_idx: int
        ) -> None:
            if batch_idx == 0:
                seen.append(trainer.train_dataloader.sampler.epoch)

    dm = DigitsDataModule(subset_fraction=0.1, batch_size=64)
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
        limit_val_batches=0,
    )
    trainer.fit(ImageClassifier("digits_resnet"), dm)
    assert seen == [0, 1, 2]


# -- tensor helpers ---------------------------------------------------------------------------
def test_random_crop_flip_is_a_shifted_window() -> None:
    image = torch.arange(2 * 6 * 6, dtype=torch.float32).view(2, 6, 6) + 1
    torch.manual_seed(0)
    for _ in range(20):
        out = RandomCropFlip(padding=2, flip=True)(image)
        assert out.shape == image.shape
        nonzero = out[out != 0]
        assert set(nonzero.tolist()) <= set(image.flatten().tolist())


def test_tensor_image_dataset_normalises() -> None:
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    labels = torch.tensor([0, 1])
    ds = TensorImageDataset(images, labels, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0), scale=1 / 255)
    x, y = ds[1]
    assert torch.allclose(x[:, 0, 0], torch.tensor([2.0, 1.0, 0.5])) and int(y) == 1


# -- data-dir resolution ------------------------------------------------------------------------
def test_missing_data_dir_names_argument_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIGHTNING_PRUNE_DATA", raising=False)
    for cls in (CIFAR10DataModule, MNISTDataModule, ImageFolderDataModule):
        with pytest.raises(PruningConfigError, match="data_dir.*LIGHTNING_PRUNE_DATA"):
            cls()
    DigitsDataModule()  # needs no files


def test_nonexistent_or_empty_data_dir_raises(tmp_path: Path) -> None:
    with pytest.raises(PruningConfigError, match="not an existing directory"):
        CIFAR10DataModule(data_dir=str(tmp_path / "missing"))
    with pytest.raises(PruningConfigError, match="no CIFAR-10 data"):
        CIFAR10DataModule(data_dir=str(tmp_path))
    with pytest.raises(PruningConfigError, match="no MNIST data"):
        MNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(PruningConfigError, match="train/ and a val/"):
        ImageFolderDataModule(data_dir=str(tmp_path))


def test_env_variable_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_fake_cifar_pickles(tmp_path / "cifar-10-batches-py")
    monkeypatch.setenv("LIGHTNING_PRUNE_DATA", str(tmp_path))
    assert CIFAR10DataModule().data_dir == tmp_path


def test_a_relative_data_dir_is_also_found_in_the_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe names `imagenet`; it runs from any folder once $LIGHTNING_PRUNE_DATA holds imagenet/."""
    _write_image_folder(tmp_path / "data" / "imagenet", ("cat", "dog"), n_train=2, n_val=1)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setenv("LIGHTNING_PRUNE_DATA", str(tmp_path / "data"))
    assert ImageFolderDataModule(data_dir="imagenet").data_dir == tmp_path / "data" / "imagenet"
    _write_image_folder(tmp_path / "elsewhere" / "imagenet", ("emu",), n_train=2, n_val=1)
    assert ImageFolderDataModule(data_dir="imagenet").classes == ["emu"]  # a folder here comes first
    with pytest.raises(PruningConfigError, match=r"'tiny' .*not an existing directory \(nor in \$LIGHTNING_PRUNE_DATA="):
        ImageFolderDataModule(data_dir="tiny")


def test_batches_come_from_pinned_memory_only_on_a_gpu(tmp_path: Path) -> None:
    _write_image_folder(tmp_path, ("cat", "dog"), n_train=4, n_val=2)
    dm = ImageFolderDataModule(data_dir=str(tmp_path), image_size=8, batch_size=2, val_fraction=0.5)
    assert dm.train_dataloader().pin_memory is False  # no Trainer: nothing to pin for

    class Strategy:
        root_device = torch.device("cuda", 0)

    dm.trainer = type("Trainer", (), {"strategy": Strategy()})()  # what Lightning attaches
    assert dm.train_dataloader().pin_memory is True and dm.test_dataloader().pin_memory is True


def test_bad_normalization_raises(tmp_path: Path) -> None:
    _write_fake_cifar_pickles(tmp_path / "cifar-10-batches-py")
    with pytest.raises(PruningConfigError, match="normalization"):
        CIFAR10DataModule(data_dir=str(tmp_path), normalization="zscore")


# -- CIFAR-10 ---------------------------------------------------------------------------------
def _write_fake_cifar_pickles(folder: Path, per_batch: int = 4) -> np.ndarray:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    chw = rng.integers(0, 256, size=(6 * per_batch, 3, 32, 32), dtype=np.uint8)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        block = chw[i * per_batch : (i + 1) * per_batch]
        entry = {"data": block.reshape(per_batch, -1), "labels": list(range(per_batch))}
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle)
    return chw


def test_cifar_torchvision_pickle_format(tmp_path: Path) -> None:
    chw = _write_fake_cifar_pickles(tmp_path / "cifar-10-batches-py")
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_fraction=0.25, augment=False)
    dm.setup()
    assert _sizes(dm) == (15, 5, 4)
    x, _ = dm.test_dataset[0]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = (torch.from_numpy(chw[20]).float() / 255 - mean) / std
    assert torch.allclose(x, expected, atol=1e-6)


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Pickles like Python 2's cPickle wrote torchvision's CIFAR-10 batches: protocol 2, every str and
    bytes a Python 2 byte string (``BINSTRING``), numpy's array reconstruction as ``numpy.core``."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_py2_string(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_string
    dispatch[bytes] = _save_py2_string


def _py2_pickle(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")  # numpy 1's name


def _write_genuine_cifar_batches(folder: Path, per_batch: int = 3) -> tuple[np.ndarray, list[int]]:
    """A cifar-10-batches-py folder laid out and pickled as the original (Python 2) files are."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    chw = rng.integers(0, 256, size=(6 * per_batch, 3, 32, 32), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=6 * per_batch)]
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        rows = slice(i * per_batch, (i + 1) * per_batch)
        entry = {"batch_label": f"batch {i + 1} of 6", "labels": labels[rows],
                 "data": chw[rows].reshape(per_batch, 3072), "filenames": [f"img_{j}.png" for j in range(per_batch)]}
        (folder / name).write_bytes(_py2_pickle(entry))
    return chw, labels


class _RunsCode:
    """Unpickling this runs ``function(*args)``: the classic pickle payload."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.function, self.args


def _payloads(marker: Path) -> dict[str, tuple[str, _RunsCode]]:
    """Payloads that create ``marker`` when unpickled, with the global each names (as protocol 4 writes it)."""
    return {
        "system": (f"{os.system.__module__}.system", _RunsCode(os.system, f"touch '{marker}'")),
        "exec": ("builtins.exec", _RunsCode(exec, f"open({str(marker)!r}, 'w').close()")),
    }


def test_cifar_genuine_python2_batches_load(tmp_path: Path) -> None:
    """The original files' format: protocol-2 pickles of Python 2 strings and numpy.core arrays."""
    chw, labels = _write_genuine_cifar_batches(tmp_path / "cifar-10-batches-py", per_batch=3)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_fraction=0.2, augment=False, normalization="cifar")
    dm.setup()
    assert _sizes(dm) == (12, 3, 3)
    pool = dm.train_dataset.dataset  # the 15 training images, unshuffled, in file order
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    for index in (0, 7, 14):
        x, y = pool[index]
        assert torch.allclose(x, (torch.from_numpy(chw[index]).float() / 255 - mean) / std, atol=1e-6)
        assert int(y) == labels[index]
    test_labels = [int(dm.test_dataset[i][1]) for i in range(3)]
    assert test_labels == labels[15:18]


def test_cifar_batches_repickled_with_protocol_5_load(tmp_path: Path) -> None:
    """numpy pickles arrays with ``_frombuffer`` under protocol 5 (Python 3.14's default)."""
    folder = tmp_path / "cifar-10-batches-py"
    chw, labels = _write_genuine_cifar_batches(folder)
    for batch in folder.iterdir():
        entry = pickle.loads(batch.read_bytes(), encoding="latin1")
        batch.write_bytes(pickle.dumps(entry, protocol=5))
    assert b"_frombuffer" in (folder / "test_batch").read_bytes()
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_fraction=0.2, augment=False)
    dm.setup()
    assert [int(dm.test_dataset[i][1]) for i in range(3)] == labels[15:18]


@pytest.mark.parametrize("kind", ["system", "exec"])
@pytest.mark.parametrize("nested", [False, True], ids=["whole-file", "inside-the-dict"])
def test_tampered_cifar_batch_is_refused_and_its_payload_never_runs(
    tmp_path: Path, kind: str, nested: bool
) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_genuine_cifar_batches(folder)
    marker = tmp_path / "payload_ran"
    refused, payload = _payloads(marker)[kind]
    genuine = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="latin1")
    tampered = pickle.dumps({**genuine, "labels": payload} if nested else payload, protocol=4)
    (folder / "data_batch_1").write_bytes(tampered)

    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    with pytest.raises(PruningConfigError) as error:
        dm.setup()
    message = str(error.value)
    assert str(folder / "data_batch_1") in message
    assert f"names the global {refused}" in message
    assert error.value.hint and "cifar-10-batches-py" in error.value.hint
    assert not marker.exists()  # the payload never ran
    assert dm.train_dataset is None

    pickle.loads(tampered)  # control: plain pickle WOULD have run it, so the check above can fail
    assert marker.exists()


@pytest.mark.parametrize(("content", "expected"), [
    (_py2_pickle([1, 2, 3]), "holds a list of 3 items, not a dict with 'data'"),
    (_py2_pickle({"data": np.zeros((2, 3072), np.uint8)}), "holds a dict with keys ['data'], not a dict"),
    (_py2_pickle({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}), "'data' is an array of shape (2, 100)"),
    (_py2_pickle({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}), "the labels are a list of 1 items, not 2"),
    (_py2_pickle({"data": np.zeros((2, 3072), np.uint8), "labels": ["a", "b"]}), "not 2 integers"),
    (b"\x80\x02}q\x00(U\x04data", "could not be read as a CIFAR-10 batch"),  # truncated
    (b"not a pickle at all", "could not be read as a CIFAR-10 batch"),
])
def test_malformed_cifar_batch_names_the_file(tmp_path: Path, content: bytes, expected: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_genuine_cifar_batches(folder)
    (folder / "test_batch").write_bytes(content)
    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    with pytest.raises(PruningConfigError, match="HINT") as error:
        dm.setup()
    assert str(folder / "test_batch") in str(error.value) and expected in str(error.value)


def _write_npz_pair(folder: Path, x_train: np.ndarray, x_test: np.ndarray, payload: Any = None) -> None:
    folder.mkdir(parents=True)
    y_train = np.arange(len(x_train)) % 10
    if payload is not None:  # an object array: numpy pickles its items into the archive
        y_train = np.array([payload] * len(x_train), dtype=object)
    np.savez(folder / "train.npz", x=x_train, y=y_train)
    np.savez(folder / "test.npz", x=x_test, y=np.arange(len(x_test)) % 10)


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_npz_with_a_pickled_payload_is_refused_and_never_runs(tmp_path: Path, dataset: str) -> None:
    marker = tmp_path / "payload_ran"
    shape = (32, 32, 3) if dataset == "cifar10" else (28, 28)
    images = np.zeros((4, *shape), np.uint8)
    _write_npz_pair(tmp_path / dataset, images, images, payload=_payloads(marker)["exec"][1])
    module = CIFAR10DataModule if dataset == "cifar10" else MNISTDataModule
    dm = module(data_dir=str(tmp_path))
    with pytest.raises(PruningConfigError) as error:
        dm.setup()
    assert str(tmp_path / dataset / "train.npz") in str(error.value) and "allow_pickle" in str(error.value)
    assert error.value.hint
    assert not marker.exists()
    np.load(tmp_path / dataset / "train.npz", allow_pickle=True)["y"]  # control: the payload is live
    assert marker.exists()


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_npz_layout_loads_and_bad_keys_are_refused(tmp_path: Path, dataset: str) -> None:
    shape = (32, 32, 3) if dataset == "cifar10" else (28, 28)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (10, *shape), dtype=np.uint8)
    _write_npz_pair(tmp_path / "good" / dataset, train, train[:4])
    module = CIFAR10DataModule if dataset == "cifar10" else MNISTDataModule
    dm = module(data_dir=str(tmp_path / "good"), val_fraction=0.2, augment=False)
    dm.setup()
    assert _sizes(dm) == (8, 2, 4)
    (tmp_path / "bad" / dataset).mkdir(parents=True)
    np.savez(tmp_path / "bad" / dataset / "train.npz", images=train, y=np.zeros(10, np.int64))
    np.savez(tmp_path / "bad" / dataset / "test.npz", x=train[:4], y=np.zeros(4, np.int64))
    with pytest.raises(PruningConfigError, match=r"lacks the key\(s\) \['x'\]") as error:
        module(data_dir=str(tmp_path / "bad")).setup()
    assert str(tmp_path / "bad" / dataset / "train.npz") in str(error.value)


@needs_data
def test_cifar_real_splits_and_batches() -> None:
    dm = CIFAR10DataModule(batch_size=128)
    dm.setup("fit")
    assert _sizes(dm) == (45000, 5000, 10000)
    assert not set(dm.train_indices.tolist()) & set(dm.val_indices.tolist())
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert dm.input_shape == (3, 32, 32) and dm.num_classes == 10


@needs_data
def test_cifar_normalisation_statistics_and_subset() -> None:
    dm = CIFAR10DataModule(normalization="cifar", subset_fraction=0.1, eval_batch_size=500)
    dm.setup()
    assert _sizes(dm) == (4500, 500, 10000)
    x, _ = _all(dm.val_dataloader())
    per_channel = x.transpose(0, 1).flatten(1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=0.05)
    assert torch.allclose(per_channel.std(1), torch.ones(3), atol=0.05)
    imagenet = CIFAR10DataModule(data_dir=str(Path(DATA_DIR or "") / "cifar10"))  # folder itself
    imagenet.setup()
    raw = np.load(Path(DATA_DIR or "") / "cifar10" / "test.npz")["x"][0]
    expected = (torch.from_numpy(raw).permute(2, 0, 1).float() / 255 - 0.456) / 0.224
    assert torch.allclose(imagenet.test_dataset[0][0][1], expected[1], atol=1e-5)


# -- MNIST ------------------------------------------------------------------------------------
def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_format(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (20, 28, 28))
    _write_idx(raw / "train-images-idx3-ubyte.gz", train_x)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    dm = MNISTDataModule(data_dir=str(tmp_path), val_fraction=0.2, batch_size=4)
    dm.setup()
    assert _sizes(dm) == (16, 4, 5)
    x, y = dm.train_dataset.dataset[3]
    assert torch.allclose(x[0], (torch.tensor(train_x[3]).float() / 255 - 0.1307) / 0.3081)
    assert int(y) == 3
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 1, 28, 28)


@needs_data
def test_mnist_real_splits_and_statistics() -> None:
    dm = MNISTDataModule(batch_size=256, subset_fraction=0.5)
    dm.setup()
    assert _sizes(dm) == (27000, 3000, 10000)
    x, y = _all(dm.val_dataloader())
    assert x.shape[1:] == (1, 28, 28) and y.dtype == torch.int64
    assert abs(x.mean().item()) < 0.05 and x.std().item() == pytest.approx(1.0, abs=0.05)


# -- ImageFolder ------------------------------------------------------------------------------
def _write_image_folder(root: Path, classes: tuple[str, ...], n_train: int, n_val: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("val", n_val)):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.full((20, 24, 3), 40 * label, dtype=np.uint8)
                pixels[0, 0] = rng.integers(0, 256, 3)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_image_folder_datamodule(tmp_path: Path) -> None:
    _write_image_folder(tmp_path, ("cat", "dog", "emu"), n_train=6, n_val=2)
    dm = ImageFolderDataModule(
        data_dir=str(tmp_path), image_size=16, batch_size=4, val_fraction=0.25
    )
    assert dm.num_classes == 3 and dm.input_shape == (3, 16, 16)
    dm.setup()
    assert _sizes(dm) == (14, 4, 6)
    assert not set(dm.train_indices.tolist()) & set(dm.val_indices.tolist())
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    test_x, test_y = _all(dm.test_dataloader())
    assert test_y.tolist() == [0, 0, 1, 1, 2, 2]
    # class 2 images are uniformly 80/255: check eval normalisation of the centre pixel
    expected = (80 / 255 - 0.485) / 0.229
    assert test_x[-1, 0, 8, 8].item() == pytest.approx(expected, abs=1e-2)


def test_image_folder_decodes_only_plain_image_formats(tmp_path: Path) -> None:
    """A PostScript file named .png would go to Pillow's EPS decoder (Ghostscript, an interpreter): refused."""
    from PIL import Image

    from lightning_prune.data.image_folder import load_image

    _write_image_folder(tmp_path, ("a", "b"), n_train=2, n_val=1)
    disguised = tmp_path / "val" / "b" / "0.png"
    disguised.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto showpage\n")
    with Image.open(disguised) as image:
        assert image.format == "EPS"  # control: unrestricted, Pillow takes it as PostScript
    dm = ImageFolderDataModule(data_dir=str(tmp_path), image_size=8, val_fraction=0.5)
    dm.setup()
    assert dm.test_dataset[0][0].shape == (3, 8, 8)  # class a: a real PNG
    with pytest.raises(PruningConfigError, match="not an image of a format read here") as error:
        dm.test_dataset[1]
    assert str(disguised) in str(error.value) and error.value.hint
    truncated = tmp_path / "train" / "a" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:50])  # the header and part of the pixel data
    with pytest.raises(PruningConfigError, match="could not be decoded") as error:
        load_image(str(truncated))
    assert str(truncated) in str(error.value)


def test_image_folder_tiny_imagenet_val_layout(tmp_path: Path) -> None:
    _write_image_folder(tmp_path, ("n01", "n02"), n_train=3, n_val=0)
    images = tmp_path / "val" / "images"
    images.mkdir()
    for source, name in ((tmp_path / "train" / "n02" / "0.png", "val_0.png"),):
        images.joinpath(name).write_bytes(source.read_bytes())
    (tmp_path / "val" / "val_annotations.txt").write_text("val_0.png\tn02\t0\t0\t10\t10\n")
    dm = ImageFolderDataModule(data_dir=str(tmp_path), image_size=8, val_fraction=0.5)
    dm.setup()
    assert len(dm.test_dataset) == 1 and dm.test_dataset[0][1] == 1
