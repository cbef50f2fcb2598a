"""Conv-BatchNorm folding of frozen copies: the same function, fewer modules, and a reason when it cannot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_prune.models.registry import create_model
from lightning_prune.structural.folding import folded_copy


def _randomise_norms(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for norm in net.modules():
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):
            norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
            nn.init.uniform_(norm.weight, 0.5, 1.5), nn.init.uniform_(norm.bias, -0.5, 0.5)
    return net.eval()


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet18", "mobilenet_v2"])
def test_folded_networks_compute_the_same_logits_without_batchnorms(name: str) -> None:
    net = _randomise_norms(create_model(name, num_classes=10))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded, reason = folded_copy(net)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = net(x), folded(x)
    assert reason == "" and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(got, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the original is untouched
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) > 0


def test_a_conv_read_elsewhere_keeps_its_batchnorm() -> None:
    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.norm(y) + y  # the unnormalised output is read too: folding would change it

    net = _randomise_norms(Both())
    folded, reason = folded_copy(net)
    assert folded is None and reason == "it has no convolution followed by a BatchNorm"


def test_what_cannot_be_folded_says_why() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.conv(x)) if x.sum() > 0 else x

    assert folded_copy(nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3)))[1] == "it is in training mode"
    folded, reason = folded_copy(Branchy().eval())
    assert folded is None and reason.startswith("torch.fx cannot trace it (TraceError")
