"""Wrong, truncated, damaged and foreign files: a PruningConfigError naming the file, and the model untouched."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import LitTiny, TinyConvNet, TinyResNet, make_data, make_trainer
from torch import nn

from lightning_prune import load_pruned
from lightning_prune.artifacts import check_checkpoint, save_pruned
from lightning_prune.errors import PruningConfigError
from lightning_prune.sparse import load_sparse, save_sparse
from lightning_prune.structural import graph as structure

HISTORY = [[("layer1.0.conv1", [0, 3, 5])], [("layer2.0.conv1", [1, 2, 4, 8]), ("layer1.1.conv1", [7])]]
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------- helpers
class Marker:
    """A custom object in a checkpoint: unpickling it (weights_only=False) would call __setstate__."""

    unpickled = False

    def __init__(self) -> None:
        self.value = 1  # a state to restore, so that unpickling calls __setstate__

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).unpickled = True
        self.__dict__.update(state)


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """Everything 'untouched' means: names, shapes, flags, values, parameter objects, layer attributes."""
    return {
        "params": [(n, p.shape, p.requires_grad) for n, p in model.named_parameters()],
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "objects": [p for _, p in model.named_parameters()],
        "modules": [(n, type(m), *(getattr(m, a, None) for a in ("out_channels", "in_channels", "groups",
                                                                  "num_features", "in_features", "out_features")))
                    for n, m in model.named_modules()],
    }


def assert_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    after = fingerprint(model)
    assert after["params"] == before["params"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert after["state"][key].shape == value.shape, key
        assert torch.equal(after["state"][key], value), key
    assert all(a is b for a, b in zip(after["objects"], before["objects"], strict=True))
    assert after["modules"] == before["modules"]


def fresh(seed: int = 1, **kwargs: Any) -> TinyResNet:
    """An unpruned TinyResNet with weights unlike the artifact's and a frozen layer (flags must survive)."""
    torch.manual_seed(seed)
    net = TinyResNet(**kwargs)
    net.layer1[0].conv2.weight.requires_grad_(False)
    net.bn1.bias.requires_grad_(False)
    return net


def prune_by_hand(net: nn.Module, history: list) -> nn.Module:
    graph = structure.build_graph(net, X[:1])
    for step in history:
        for name, idxs in step:
            structure.prune_layer(net, graph, name, idxs)
    return net


def raises_naming(path: Path, call: Callable[[], Any], match: str | None = None) -> PruningConfigError:
    with pytest.raises(PruningConfigError) as info:
        call()
    message = str(info.value)
    assert str(path) in message and "HINT:" in message, message
    if match is not None:
        assert match in message, message
    return info.value


def refused_untouched(path: Path, load: Any) -> PruningConfigError:
    """``load(path, net)`` into a fresh net: refused naming the file, nothing unpickled, the net untouched."""
    net = fresh()
    before = fingerprint(net)
    Marker.unpickled = False
    err = raises_naming(path, lambda: load(path, net))
    assert not Marker.unpickled
    assert_untouched(net, before)
    return err


# ---------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A valid pruned artifact, sparse file and Lightning checkpoints (one tiny fit), and the pruned net."""
    root = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    pruned = prune_by_hand(TinyResNet().eval(), HISTORY)
    save_pruned(root / "pruned_model.pt", pruned, HISTORY, X[:1])
    torch.manual_seed(0)
    sparse_net = TinyResNet()
    with torch.no_grad():
        for p in sparse_net.parameters():
            p.masked_fill_(torch.rand(p.shape) < 0.8, 0.0)
    save_sparse(sparse_net, root / "sparse_model.pt")
    torch.manual_seed(0)
    train, val = make_data(n=32)
    trainer = make_trainer([], enable_checkpointing=True, default_root_dir=root / "fit", max_epochs=1)
    trainer.fit(LitTiny(), train, val)
    (ckpt,) = (root / "fit").rglob("*.ckpt")
    weights_ckpt = root / "weights_only.ckpt"
    trainer.save_checkpoint(weights_ckpt, weights_only=True)  # what ModelCheckpoint(save_weights_only=True) writes
    return {"pruned": root / "pruned_model.pt", "sparse": root / "sparse_model.pt", "ckpt": ckpt,
            "weights_ckpt": weights_ckpt}


def truncated(src: Path, dst: Path, keep: float | int = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    return dst


def corrupted(src: Path, dst: Path) -> Path:
    """The same length, with bytes flipped inside the largest tensor's data (torch.load does not notice)."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    middle = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    for i in range(middle, middle + 8):
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def wrong_file(kind: str, files: dict[str, Path], tmp: Path) -> Path:
    """A file of ``kind`` that no loader may accept (built in ``tmp``)."""
    path = tmp / f"{kind}.pt"
    if kind == "missing":
        return tmp / "does_not_exist.pt"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(3),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "json":
        path.write_text(json.dumps({"format": "lightning_prune.pruned_model/1", "history": []}))
    elif kind == "plain_state_dict":
        torch.save(TinyResNet().state_dict(), path)
    elif kind == "a_tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "zip_not_torch":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hello")
    elif kind == "custom_object":
        torch.save({"format": "lightning_prune.pruned_model/1", "history": [], "state_dict": {}, "cfg": Marker()}, path)
    else:
        raise AssertionError(kind)
    return path


COMMON = ["missing", "directory", "empty", "random_bytes", "json", "plain_state_dict", "a_tensor", "zip_not_torch",
          "custom_object"]


# ---------------------------------------------------------------------- load_pruned
def test_load_pruned_positive_control_then_already_pruned_model_is_refused(files: dict[str, Path]) -> None:
    """The artifact loads into a fresh net; loading it again into the now-pruned net is refused up front."""
    torch.manual_seed(0)
    reference = prune_by_hand(TinyResNet().eval(), HISTORY)
    reference.load_state_dict(torch.load(files["pruned"], weights_only=True)["state_dict"])
    net = load_pruned(files["pruned"], fresh())
    assert net.layer1[0].conv1.out_channels == 5 and net.layer2[0].conv1.out_channels == 12
    assert net.layer1[0].conv2.weight.requires_grad is False
    assert torch.equal(net.eval()(X), reference(X))
    before = fingerprint(net)
    raises_naming(files["pruned"], lambda: load_pruned(files["pruned"], net), match="already has the pruned structure")
    assert_untouched(net, before)


def test_load_pruned_into_partly_pruned_model_is_refused(files: dict[str, Path]) -> None:
    """A model pruned by only the first step: the replay would cut further; refused, nothing changes."""
    net = prune_by_hand(fresh(), HISTORY[:1])
    before = fingerprint(net)
    raises_naming(files["pruned"], lambda: load_pruned(files["pruned"], net))
    assert_untouched(net, before)
    assert net.layer1[0].conv1.out_channels == 5 and net.layer2[0].conv1.out_channels == 16


@pytest.mark.parametrize("kind", [*COMMON, "truncated_half", "truncated_tail", "corrupted", "sparse_file",
                                  "checkpoint_without_pruning", "damaged_history"])
def test_load_pruned_wrong_file(files: dict[str, Path], tmp_path: Path, kind: str) -> None:
    """Every kind of wrong file: a PruningConfigError naming it (no torch traceback), the model untouched."""
    if kind == "truncated_half":
        path = truncated(files["pruned"], tmp_path / "half.pt")
    elif kind == "truncated_tail":
        path = truncated(files["pruned"], tmp_path / "tail.pt", keep=files["pruned"].stat().st_size - 20)
    elif kind == "corrupted":
        path = corrupted(files["pruned"], tmp_path / "corrupted.pt")
        torch.load(path, weights_only=True)  # torch itself reads the damaged data without complaint
    elif kind == "sparse_file":
        path = files["sparse"]
    elif kind == "checkpoint_without_pruning":
        path = files["ckpt"]
    elif kind == "damaged_history":
        data = torch.load(files["pruned"], weights_only=True)
        data["history"] = [[["layer1.0.conv1", "not-indices"]]]
        torch.save(data, path := tmp_path / "damaged.pt")
    else:
        path = wrong_file(kind, files, tmp_path)
    err = refused_untouched(path, load_pruned)
    expected = {"missing": "no file at", "empty": "empty", "truncated_half": "truncated", "truncated_tail": "truncated",
                "corrupted": "CRC", "sparse_file": "load_sparse", "checkpoint_without_pruning": "0 StructuredPruning",
                "custom_object": "refuses to unpickle", "plain_state_dict": "plain state_dict",
                "damaged_history": "damaged structural history", "zip_not_torch": "not a file written by torch.save"}
    if kind in expected:
        assert expected[kind] in str(err), str(err)


@pytest.mark.parametrize("case", ["other_architecture", "more_input_channels", "index_out_of_range",
                                  "shapes_differ_after_replay", "other_num_classes"])
def test_load_pruned_foreign_artifact(files: dict[str, Path], tmp_path: Path, case: str) -> None:
    """Artifacts that do not belong to the model: refused (before surgery, or rolled back after it)."""
    data = torch.load(files["pruned"], weights_only=True)
    path = tmp_path / f"{case}.pt"
    net: nn.Module = fresh()
    match = None
    if case == "other_architecture":
        torch.manual_seed(1)
        net = TinyConvNet()
        match = "are not in the given TinyConvNet"
    elif case == "more_input_channels":
        net = fresh(in_channels=1)
        match = "pruning only removes channels"
    elif case == "index_out_of_range":
        data["history"][0][0][1] = [0, 3, 8]  # layer1.0.conv1 has channels 0..7
        match = "removes channel 8 of layer 'layer1.0.conv1'"
    elif case == "shapes_differ_after_replay":
        data["history"][1] = [["layer2.0.conv1", [1, 2, 4]], ["layer1.1.conv1", [7]]]  # one channel fewer removed
        match = "after replaying the structure"
    elif case == "other_num_classes":
        net = fresh(num_classes=10)
        match = "after replaying the structure"
    torch.save(data, path)
    before = fingerprint(net)
    raises_naming(path, lambda: load_pruned(path, net), match=match)
    assert_untouched(net, before)
    assert net(X[:, :1] if case == "more_input_channels" else X).shape[0] == 2  # still a consistent, working model


def test_load_pruned_failure_inside_surgery_is_rolled_back(files: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch-pruning error half-way through the replay: no partial surgery is left behind."""
    real, calls = structure.prune_layer, []

    def failing(*args: Any, **kwargs: Any) -> None:
        calls.append(args[2])
        if len(calls) == 2:
            raise IndexError("index 9 is out of bounds (deep inside torch-pruning)")
        real(*args, **kwargs)

    monkeypatch.setattr(structure, "prune_layer", failing)
    net = fresh()
    before = fingerprint(net)
    err = raises_naming(files["pruned"], lambda: load_pruned(files["pruned"], net), match="IndexError")
    assert calls == ["layer1.0.conv1", "layer2.0.conv1"]  # the first layer had really been cut
    assert isinstance(err.__cause__, IndexError)
    assert_untouched(net, before)
    assert net.layer1[0].conv1.out_channels == 8 and net.layer1[0].bn1.num_features == 8
    assert net(X).shape == (2, 4)


def test_load_pruned_failure_inside_load_state_dict_is_rolled_back(files: dict[str, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights are half copied in place when loading fails: values and structure come back."""
    net = fresh()
    before = fingerprint(net)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a custom module refuses its weights")

    monkeypatch.setattr(net.linear, "_load_from_state_dict", broken)  # the last module: all others already copied
    raises_naming(files["pruned"], lambda: load_pruned(files["pruned"], net), match="refuses its weights")
    assert_untouched(net, before)


def test_load_pruned_into_lightning_module_names_the_file(files: dict[str, Path]) -> None:
    """Names recorded on the bare net cannot be found in a LightningModule that has them under 'model.'."""
    torch.manual_seed(1)
    module = LitTiny()
    before = fingerprint(module)
    raises_naming(files["pruned"], lambda: load_pruned(files["pruned"], module), match="are not in the given DemoModule")
    assert_untouched(module, before)


# ---------------------------------------------------------------------- load_sparse
def test_load_sparse_positive_control(files: dict[str, Path]) -> None:
    net = fresh()
    state = load_sparse(files["sparse"], net)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    assert net.layer1[0].conv2.weight.requires_grad is False


@pytest.mark.parametrize("kind", [*COMMON, "truncated_half", "truncated_tail", "corrupted", "pruned_artifact",
                                  "other_architecture", "other_num_classes", "damaged_bits", "listed_not_stored"])
def test_load_sparse_wrong_file(files: dict[str, Path], tmp_path: Path, kind: str) -> None:
    """Wrong files and sparse files of other models: a PruningConfigError naming the file, values unchanged."""
    path = tmp_path / f"{kind}.pt"
    if kind == "truncated_half":
        truncated(files["sparse"], path)
    elif kind == "truncated_tail":
        truncated(files["sparse"], path, keep=files["sparse"].stat().st_size - 20)
    elif kind == "corrupted":
        corrupted(files["sparse"], path)
    elif kind == "pruned_artifact":
        path = files["pruned"]
    elif kind == "other_architecture":
        save_sparse(TinyConvNet(), path)
    elif kind == "other_num_classes":
        save_sparse(TinyResNet(num_classes=10), path)
    elif kind in ("damaged_bits", "listed_not_stored"):
        payload = torch.load(files["sparse"], weights_only=True)
        name = next(iter(payload["sparse"]))
        if kind == "damaged_bits":
            payload["sparse"][name]["bits"] = payload["sparse"][name]["bits"][:-1]
        else:
            del payload["sparse"][name]
        torch.save(payload, path)
    else:
        path = wrong_file(kind, files, tmp_path)
    err = refused_untouched(path, load_sparse)
    expected = {"missing": "no file at", "truncated_half": "truncated", "corrupted": "CRC",
                "pruned_artifact": "not a lightning_prune.sparse/1 file", "other_architecture": "does not fit",
                "other_num_classes": "linear.weight is [10, 16] in the file but [4, 16]", "damaged_bits": "damaged",
                "listed_not_stored": "stored nowhere", "plain_state_dict": "plain state_dict"}
    if kind in expected:
        assert expected[kind] in str(err), str(err)


def test_load_sparse_shape_mismatch_is_refused_even_when_not_strict(files: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "wide_head.pt"
    save_sparse(TinyResNet(num_classes=10), path)
    net = fresh()
    before = fingerprint(net)
    raises_naming(path, lambda: load_sparse(path, net, strict=False), match="linear.weight")
    assert_untouched(net, before)


def test_load_sparse_failure_inside_load_state_dict_is_rolled_back(files: dict[str, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    net = fresh()
    before = fingerprint(net)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a custom module refuses its weights")

    monkeypatch.setattr(net.linear, "_load_from_state_dict", broken)  # all other modules are copied before it
    raises_naming(files["sparse"], lambda: load_sparse(files["sparse"], net), match="refuses its weights")
    assert_untouched(net, before)


# ---------------------------------------------------------------------- check_checkpoint
def test_check_checkpoint_accepts_a_lightning_checkpoint(files: dict[str, Path]) -> None:
    assert check_checkpoint(files["ckpt"]) is None
    assert check_checkpoint(str(files["ckpt"])) is None


@pytest.mark.parametrize("kind", [*COMMON, "truncated_half", "truncated_tail", "truncated_100_bytes", "corrupted",
                                  "pruned_artifact", "weights_only_checkpoint", "epoch_not_int"])
def test_check_checkpoint_refuses(files: dict[str, Path], tmp_path: Path, kind: str) -> None:
    """Each broken or foreign file is refused with the file's name and the checkpoint hint; nothing is unpickled."""
    ckpt = files["ckpt"]
    if kind == "truncated_half":
        path = truncated(ckpt, tmp_path / "half.ckpt")
    elif kind == "truncated_tail":
        path = truncated(ckpt, tmp_path / "tail.ckpt", keep=ckpt.stat().st_size - 20)
    elif kind == "truncated_100_bytes":
        path = truncated(ckpt, tmp_path / "head.ckpt", keep=100)
    elif kind == "corrupted":
        path = corrupted(ckpt, tmp_path / "corrupted.ckpt")
    elif kind == "pruned_artifact":
        path = files["pruned"]
    elif kind == "weights_only_checkpoint":
        path = files["weights_ckpt"]
    elif kind == "epoch_not_int":
        data = torch.load(ckpt, weights_only=True)
        data["epoch"] = "zero"
        torch.save(data, path := tmp_path / "epoch.ckpt")
    else:
        path = wrong_file(kind, files, tmp_path)
    Marker.unpickled = False
    err = raises_naming(path, lambda: check_checkpoint(path))
    assert not Marker.unpickled
    assert err.hint == "pass the path of a .ckpt written by ModelCheckpoint, or the newest intact one"
    expected = {"missing": "no file at", "truncated_half": "truncated", "truncated_tail": "truncated",
                "truncated_100_bytes": "truncated", "corrupted": "CRC", "weights_only_checkpoint": "'callbacks'",
                "pruned_artifact": "not a Lightning checkpoint", "epoch_not_int": "'epoch' is a str",
                "custom_object": "not a Lightning checkpoint"}
    if kind in expected:
        assert expected[kind] in str(err), str(err)


def test_check_checkpoint_with_custom_hyperparameters_never_unpickles_them(files: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    """weights_only refuses a custom class in hyper_parameters: the intact file is accepted without unpickling it."""
    data = torch.load(files["ckpt"], weights_only=True)
    data["hyper_parameters"] = {"cfg": Marker()}
    path = tmp_path / "custom.ckpt"
    torch.save(data, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    Marker.unpickled = False
    assert check_checkpoint(path) is None
    assert not Marker.unpickled
    half, bad = truncated(path, tmp_path / "custom_half.ckpt"), corrupted(path, tmp_path / "custom_bad.ckpt")
    raises_naming(half, lambda: check_checkpoint(half), match="truncated")
    raises_naming(bad, lambda: check_checkpoint(bad), match="CRC")
    for key in ("epoch", "callbacks"):
        partial = {k: v for k, v in data.items() if k != key}
        torch.save(partial, lacking := tmp_path / f"no_{key}.ckpt")
        raises_naming(lacking, lambda lacking=lacking: check_checkpoint(lacking), match=f"no ['{key}'] entries")
    assert not Marker.unpickled
    torch.load(path, weights_only=False)  # the sentinel works: a real unpickle does flip it
    assert Marker.unpickled
