"""Dependency-aware surgery on the architectures users bring (tiny inputs, no training)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from helpers import LitTiny, make_trainer
from torch import nn

from lightning_prune import PruningConfigError, StructuredPruning
from lightning_prune.schedules import BlockwisePlanner
from lightning_prune.structural import graph as structure

ARCHITECTURES = ["resnet18", "resnet50", "mobilenet_v2", "densenet121", "vgg16_bn", "wide_resnet50_2"]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_blockwise_surgery_on_torchvision_models(name: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    example = torch.randn(1, 3, 32, 32)
    graph = structure.build_graph(model, example)
    layers = structure.discover_layers(model, graph, ignored=[structure.default_head(model)])
    assert layers, name
    planner = BlockwisePlanner(ratio=0.5)
    planner.setup(layers)
    assert planner.num_steps() >= 3
    by_name = {layer.name: layer for layer in layers}
    macs, params = structure.count_macs(model, example), structure.count_params(model)
    for step in range(3):  # the first three components
        names = planner.layers_for_step(step)
        scores = {n: by_name[n].module.weight.detach().flatten(1).abs().sum(1) for n in names}
        for layer_name, idxs in planner.plan(step, by_name, scores).items():
            structure.prune_layer(model, graph, layer_name, idxs)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert structure.count_macs(model, example) < macs and structure.count_params(model) < params
    first = dict(model.named_modules())[layers[0].name]
    assert first.weight.shape[0] == layers[0].channels - (layers[0].channels + 1) // 2


def test_option_a_shortcut_groups_are_never_pruned() -> None:
    from lightning_prune.models import cifar_resnet

    model = cifar_resnet(20)
    graph = structure.build_graph(model, torch.randn(1, 3, 32, 32))
    layers = structure.discover_layers(model, graph, prune_coupled=True, ignored=["linear"])
    names = {layer.name for layer in layers}
    # the stem and every conv2 feed the padded residual path: torch-pruning cannot map those indices
    assert "conv1" not in names and not any(n.endswith("conv2") for n in names)
    assert sorted(names) == sorted(f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3))
    assert {layer.component for layer in layers} == {f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)}


def test_coupled_layers_only_on_request() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    example = torch.randn(1, 3, 32, 32)
    graph = structure.build_graph(model, example)
    internal = structure.discover_layers(model, graph, ignored=["fc"])
    both = structure.discover_layers(model, graph, ignored=["fc"], prune_coupled=True)
    assert all(not layer.coupled for layer in internal)
    assert any(layer.coupled for layer in both) and len(both) > len(internal)


def test_frozen_first_conv_is_still_in_the_graph() -> None:
    model = torchvision.models.resnet50(num_classes=10)  # its stem feeds a downsample conv, not a sum
    for p in model.conv1.parameters():
        p.requires_grad_(False)
    graph = structure.build_graph(model, torch.randn(1, 3, 32, 32))
    layers = structure.discover_layers(model, graph, ignored=["fc"])
    assert "conv1" in {layer.name for layer in layers}
    structure.prune_layer(model, graph, "conv1", [0, 1])
    assert model.conv1.weight.shape[0] == 62 and model.conv1.weight.requires_grad is False


def test_untraceable_model_names_the_failing_layer() -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.odd = nn.Linear(7, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.odd(self.conv(x).flatten(1))

    with pytest.raises(PruningConfigError, match="in layer 'odd'"):
        structure.build_graph(Broken(), torch.randn(1, 3, 8, 8))


def test_torchvision_resnet18_in_a_fit() -> None:
    torch.manual_seed(0)
    module = LitTiny(torchvision.models.resnet18(num_classes=4))
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 4, (16,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    pruning = StructuredPruning(pruning_ratio=0.5, ignored_layers=["model.layer3.*", "model.layer4.*"])
    make_trainer([pruning]).fit(module, loader, loader)
    # the stem feeds layer1's identity residual sums: not pruned by default
    assert [s.components for s in pruning.report.steps] == [["model.layer1.0"], ["model.layer1.1"],
                                                            ["model.layer2.0"], ["model.layer2.1"]]
    assert module.model.layer2[1].conv1.out_channels == 64
    assert module(x).shape == (16, 4)
