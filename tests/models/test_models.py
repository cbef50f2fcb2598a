"""Tests of lightning_prune.models: CIFAR ResNets, digits ResNet, torchvision models, registry."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import DATA_DIR, needs_data
from torch import nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.models import (
    BasicBlock,
    CifarResNet,
    cifar_resnet,
    create_model,
    digits_resnet,
    list_models,
    torchvision_model,
)


def _weights(name: str) -> str:
    return str(Path(DATA_DIR or "") / "weights" / name)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnet_output_shape_and_structure(depth: int) -> None:
    net = cifar_resnet(depth, num_classes=7)
    n = (depth - 2) // 6
    assert isinstance(net, CifarResNet)
    assert all(len(getattr(net, f"layer{i}")) == n for i in (1, 2, 3))
    assert all(isinstance(b, BasicBlock) for b in net.layer1)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("depth", [8, 14])
def test_small_depths_are_accepted(depth: int) -> None:
    assert cifar_resnet(depth)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("depth", [21, 2, 0, -4])
def test_invalid_depth_raises(depth: int) -> None:
    with pytest.raises(PruningConfigError, match="HINT"):
        cifar_resnet(depth)


def test_parameter_counts_match_paper() -> None:
    assert round(_n_params(cifar_resnet(20)) / 1e6, 2) == 0.27
    assert round(_n_params(cifar_resnet(32)) / 1e6, 2) == 0.46


def test_module_names_and_parameter_free_shortcut() -> None:
    net = cifar_resnet(20)
    names = dict(net.named_modules())
    for name in ("conv1", "bn1", "layer1.0.conv1", "layer2.0.bn2", "layer3.2.conv2", "linear"):
        assert name in names
    shortcut = net.layer2[0].shortcut
    assert isinstance(shortcut, nn.Module)
    assert not shortcut.state_dict() and not list(shortcut.parameters())
    assert not any("shortcut" in key for key in net.state_dict())
    out = shortcut(torch.ones(1, 16, 32, 32))
    assert out.shape == (1, 32, 16, 16)
    assert out[:, :8].abs().sum() == 0 and out[:, -8:].abs().sum() == 0
    assert torch.equal(out[:, 8:24], torch.ones(1, 16, 16, 16))


def test_kaiming_normal_initialisation() -> None:
    torch.manual_seed(0)
    conv = cifar_resnet(56).layer3[0].conv2.weight  # fan_in = 64 * 9
    assert conv.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.05)
    assert abs(conv.mean().item()) < 0.01


def test_digits_resnet_is_depth_14_single_channel() -> None:
    net = digits_resnet(num_classes=10)
    assert net.conv1.in_channels == 1
    assert sum(len(getattr(net, f"layer{i}")) for i in (1, 2, 3)) == 6
    assert net(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_weights_missing_file_raises_with_hint(tmp_path: Path) -> None:
    with pytest.raises(PruningConfigError, match="does not exist.*HINT"):
        cifar_resnet(20, weights=str(tmp_path / "nope.th"))


def test_weights_garbage_file_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PruningConfigError, match="HINT"):
        cifar_resnet(20, weights=str(bad))


def test_local_state_dict_round_trip_with_prefixes(tmp_path: Path) -> None:
    source = cifar_resnet(8, num_classes=5)
    state = source.state_dict()
    for prefix in ("", "module.", "model."):
        path = tmp_path / f"ckpt_{prefix or 'plain'}.pt"
        torch.save({"state_dict": {prefix + k: v for k, v in state.items()}}, path)
        loaded = cifar_resnet(8, num_classes=5, weights=str(path))
        assert torch.equal(loaded.linear.weight, source.linear.weight)


def test_mismatched_local_weights_raise(tmp_path: Path) -> None:
    path = tmp_path / "r8.pt"
    torch.save(cifar_resnet(8).state_dict(), path)
    with pytest.raises(PruningConfigError, match="does not match.*HINT"):
        cifar_resnet(14, weights=str(path))
    with pytest.raises(PruningConfigError, match="shape"):
        cifar_resnet(8, num_classes=100, weights=str(path))


@needs_data
def test_load_published_resnet20_weights() -> None:
    path = _weights("resnet20-12fca82f.th")
    net = cifar_resnet(20, weights=path)
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(net.linear.weight, raw["module.linear.weight"])
    assert torch.equal(net.layer3[2].bn2.running_var, raw["module.layer3.2.bn2.running_var"])
    with pytest.raises(PruningConfigError, match="HINT"):
        cifar_resnet(32, weights=path)


@needs_data
def test_resnet20_reaches_published_cifar10_accuracy() -> None:
    from lightning_prune.data import CIFAR10DataModule

    dm = CIFAR10DataModule(eval_batch_size=100, normalization="imagenet")
    dm.setup("test")
    net = create_model("cifar_resnet20", weights=_weights("resnet20-12fca82f.th")).eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in dm.test_dataloader():
            correct += (net(x).argmax(1) == y).sum().item()
            total += len(y)
    assert total == 10_000
    assert abs(correct / total - 0.9173) < 0.0005


def test_torchvision_resnet18_builds_with_ten_classes() -> None:
    net = torchvision_model("resnet18", num_classes=10)
    assert net.fc.out_features == 10
    assert net.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_torchvision_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(PruningConfigError, match="resnet18"):
        torchvision_model("resnet_does_not_exist", num_classes=10)


def test_torchvision_local_weights(tmp_path: Path) -> None:
    source = torchvision_model("squeezenet1_1", num_classes=3)
    path = tmp_path / "sq.pt"
    torch.save(source.state_dict(), path)
    loaded = torchvision_model("squeezenet1_1", num_classes=3, weights=str(path))
    first = next(iter(source.state_dict()))
    assert torch.equal(loaded.state_dict()[first], source.state_dict()[first])
    with pytest.raises(PruningConfigError):
        torchvision_model("squeezenet1_1", num_classes=3, weights=str(tmp_path / "missing.pt"))


def test_registry_names_and_creation() -> None:
    names = list_models()
    expected = ["cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56"]
    assert names[:4] == expected
    assert {"cifar_resnet110", "digits_resnet", "resnet18", "mobilenet_v2"} <= set(names)
    assert len(names) == len(set(names))
    r32 = create_model("cifar_resnet32", num_classes=100)
    assert len(r32.layer1) == 5 and r32.linear.out_features == 100
    assert create_model("digits_resnet").conv1.in_channels == 1
    assert create_model("resnet18", num_classes=4).fc.out_features == 4


def test_registry_unknown_name_raises() -> None:
    with pytest.raises(PruningConfigError, match="unknown model name.*HINT"):
        create_model("cifar_resnet21")


def test_relative_weights_are_found_in_the_data_directory(monkeypatch, tmp_path) -> None:
    net = cifar_resnet(20)
    (tmp_path / "weights").mkdir()
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "weights" / "r20.th")
    monkeypatch.setenv("LIGHTNING_PRUNE_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path / "weights")  # a relative path that does not exist from here
    loaded = cifar_resnet(20, weights="weights/r20.th")
    assert torch.equal(loaded.conv1.weight, net.conv1.weight)
    monkeypatch.delenv("LIGHTNING_PRUNE_DATA")
    with pytest.raises(PruningConfigError, match="does not exist"):
        cifar_resnet(20, weights="weights/r20.th")
