"""Snapshots restore structure and weights exactly, in place."""

from __future__ import annotations

import pickle

import torch
import torchvision
from helpers import TinyResNet

from lightning_prune.structural import graph as structure
from lightning_prune.structural import snapshot


def test_restore_undoes_surgery_bit_for_bit() -> None:
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    saved = snapshot.capture(model)
    model.layer1[0].conv2.weight.requires_grad_(False)
    graph = structure.build_graph(model, x[:1])
    structure.prune_layer(model, graph, "layer1.0.conv1", [0, 3, 5])
    structure.prune_layer(model, graph, "layer2.0.conv1", list(range(10)))
    assert model.layer1[0].conv1.out_channels == 5
    conv_object = model.layer1[0].conv1
    snapshot.restore(model, saved)
    assert model.layer1[0].conv1 is conv_object  # same module objects: hooks survive
    assert model.layer1[0].conv1.out_channels == 8 and model.layer1[0].conv2.in_channels == 8
    assert model.layer1[0].bn1.num_features == 8 and model.layer2[0].conv1.out_channels == 16
    assert torch.equal(model(x), expected)
    assert model.layer1[0].conv2.weight.requires_grad is False
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    # and it can be pruned again afterwards
    graph = structure.build_graph(model, x[:1])
    structure.prune_layer(model, graph, "layer1.0.conv1", [1])
    assert model(x).shape == (2, 4)


def test_depthwise_and_linear_shapes_are_restored() -> None:
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    saved = snapshot.capture(model)
    expected = model(x)
    graph = structure.build_graph(model, x)
    structure.prune_layer(model, graph, "features.2.conv.0.0", list(range(40)))
    structure.prune_layer(model, graph, "features.18.0", list(range(100)))
    assert model.features[2].conv[1][0].groups == 56 and model.classifier[1].in_features == 1180
    snapshot.restore(model, saved)
    assert model.features[2].conv[1][0].groups == 96 and model.classifier[1].in_features == 1280
    assert torch.equal(model(x), expected)


def test_snapshot_is_plain_tensors() -> None:
    saved = snapshot.capture(TinyResNet())
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in saved.values())
    assert pickle.loads(pickle.dumps(saved)).keys() == saved.keys()
    assert snapshot.nbytes(saved) == sum(v.numel() * v.element_size() for v in saved.values())
