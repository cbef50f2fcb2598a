"""Tests of lightning_prune.export: ONNX export and latency measurement."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.export import export_onnx, measure_latency
from lightning_prune.models import cifar_resnet
from lightning_prune.models.module import ImageClassifier

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx onnxscript)")


def _onnx_logits(path: Path, x: torch.Tensor) -> torch.Tensor | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    with torch.no_grad():
        out = model.eval()(x)
    model.train(was_training)
    return out


def test_export_cifar_resnet20_matches_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = cifar_resnet(20)
    model.layer2.eval()  # a mixed train/eval state must survive the export
    path = export_onnx(model, tmp_path / "sub" / "r20.onnx", torch.randn(2, 3, 32, 32))
    assert path == tmp_path / "sub" / "r20.onnx" and path.is_file()
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["logits"]
    assert model.training and not model.layer2.training and model.layer3.training
    x = torch.randn(5, 3, 32, 32)  # another batch size: the batch axis is dynamic
    got = _onnx_logits(path, x)
    if got is not None:
        assert torch.allclose(got, _reference(model, x), atol=1e-4)


def test_export_lightning_module_with_legacy_exporter_and_opset(tmp_path: Path) -> None:
    module = ImageClassifier("digits_resnet")
    path = export_onnx(
        module, tmp_path / "digits.onnx", torch.randn(1, 1, 8, 8), opset=13, exporter="legacy"
    )
    opsets = {e.version for e in onnx.load(str(path)).opset_import if e.domain in ("", "ai.onnx")}
    assert opsets == {13}
    assert module.training
    x = torch.randn(3, 1, 8, 8)
    got = _onnx_logits(path, x)
    if got is not None:
        assert torch.allclose(got, _reference(module, x), atol=1e-4)


def test_export_of_a_pruned_network(tmp_path: Path) -> None:
    model = cifar_resnet(8)
    # shrink layer1.0's inner channels by hand, as structural pruning would
    block = model.layer1[0]
    keep = torch.arange(10)
    conv1, bn1, conv2 = block.conv1, block.bn1, block.conv2
    block.conv1 = nn.Conv2d(16, 10, 3, padding=1, bias=False)
    block.conv1.weight.data = conv1.weight.data[keep].clone()
    block.bn1 = nn.BatchNorm2d(10)
    block.conv2 = nn.Conv2d(10, 16, 3, padding=1, bias=False)
    block.conv2.weight.data = conv2.weight.data[:, keep].clone()
    del bn1
    example = torch.randn(1, 3, 32, 32)
    path = export_onnx(model, tmp_path / "pruned.onnx", example, dynamic_batch=False)
    x = torch.randn(1, 3, 32, 32)
    got = _onnx_logits(path, x)
    if got is not None:
        assert torch.allclose(got, _reference(model, x), atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"example_input": [1, 2]}, "example_input"),
        ({"opset": 3}, "opset"),
        ({"exporter": "tensorrt"}, "exporter"),
    ],
)
def test_export_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"example_input": torch.zeros(1, 3, 32, 32), **kwargs}
    with pytest.raises(PruningConfigError, match=match):
        export_onnx(cifar_resnet(8), tmp_path / "x.onnx", **args)


def test_export_failure_is_a_config_error(tmp_path: Path) -> None:
    class TwoInputs(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x + y

    with pytest.raises(PruningConfigError, match="export of TwoInputs failed.*HINT"):
        export_onnx(TwoInputs(), tmp_path / "x.onnx", torch.zeros(1, 2), exporter="legacy")


def test_missing_onnx_gives_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(PruningConfigError, match="pip install onnx"):
        export_onnx(cifar_resnet(8), tmp_path / "x.onnx", torch.zeros(1, 3, 32, 32))


def test_measure_latency_statistics_and_training_flag() -> None:
    model = cifar_resnet(8)
    model.layer1.eval()
    stats = measure_latency(model, torch.zeros(4, 3, 32, 32), warmup=2, repeats=5)
    assert {"median_ms", "mean_ms", "p90_ms", "device", "batch_size"} <= set(stats)
    assert stats["median_ms"] > 0 and stats["mean_ms"] > 0 and stats["p90_ms"] >= stats["min_ms"]
    assert stats["device"] == "cpu" and stats["batch_size"] == 4 and stats["repeats"] == 5
    assert model.training and not model.layer1.training
    assert all(p.grad is None for p in model.parameters())
    assert next(model.parameters()).device.type == "cpu"


def test_measure_latency_bad_arguments() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(PruningConfigError, match="repeats"):
        measure_latency(model, torch.zeros(1, 2), repeats=0)
    with pytest.raises(PruningConfigError, match="warmup"):
        measure_latency(model, torch.zeros(1, 2), warmup=-1)
    with pytest.raises(PruningConfigError, match="device"):
        measure_latency(model, torch.zeros(1, 2), device="not-a-device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_measure_latency_cuda_unavailable() -> None:
    with pytest.raises(PruningConfigError, match="CUDA is not available"):
        measure_latency(nn.Linear(2, 2), torch.zeros(1, 2), device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_measure_latency_on_cuda_restores_device() -> None:
    model = cifar_resnet(8)
    stats = measure_latency(model, torch.zeros(2, 3, 32, 32), device="cuda", warmup=2, repeats=5)
    assert stats["device"].startswith("cuda") and stats["median_ms"] > 0
    assert next(model.parameters()).device.type == "cpu"
