"""The compact sparse save: exact round trip, size, the completed flag."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.sparse import FORMAT, dense_size, load_sparse, save_sparse


def _sparse_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.Linear(64, 8))
    with torch.no_grad():
        net[0].weight.masked_fill_(torch.rand(64, 64) < 0.9, 0.0)
    return net


def test_round_trip_is_exact_and_smaller(tmp_path: Path) -> None:
    net = _sparse_net()
    info = save_sparse(net, tmp_path / "net.pt")
    assert "0.weight" in info["compressed_tensors"] and "2.weight" not in info["compressed_tensors"]
    assert info["bytes"] < info["dense_bytes"] == dense_size(net)
    fresh = _sparse_net(seed=1)
    state = load_sparse(tmp_path / "net.pt", fresh)
    assert list(state) == list(net.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))
    assert torch.load(tmp_path / "net.pt", weights_only=True)["format"] == FORMAT


def test_incomplete_weights_say_so_when_loaded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save_sparse(_sparse_net(), tmp_path / "done.pt")
    save_sparse(_sparse_net(), tmp_path / "partial.pt", completed=False)
    with caplog.at_level(logging.WARNING, logger="lightning_prune"):
        load_sparse(tmp_path / "done.pt")
        assert not caplog.records
        load_sparse(tmp_path / "partial.pt")
    assert "stopped before its pruning plan was complete" in caplog.records[0].getMessage()
    assert torch.load(tmp_path / "partial.pt", weights_only=True)["completed"] is False


def test_a_lightning_modules_file_loads_into_the_bare_network(tmp_path: Path) -> None:
    wrapper = nn.Module()
    wrapper.model = _sparse_net()  # a LightningModule's names: model.0.weight, ...
    save_sparse(wrapper, tmp_path / "wrapped.pt")
    bare = _sparse_net(seed=1)
    state = load_sparse(tmp_path / "wrapped.pt", bare)
    assert list(state) == list(bare.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(bare.state_dict().values(), wrapper.model.state_dict().values()))
    other = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.Linear(64, 4))  # another head: refused whole
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(PruningConfigError, match=r"2.weight is \[8, 64\] in the file but \[4, 64\]"):
        load_sparse(tmp_path / "wrapped.pt", other)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
