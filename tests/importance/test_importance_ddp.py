"""DDP test of the data-driven criteria: 2 gloo ranks calibrate on different data, then sync."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lightning_prune.importance import ChannelImportance, calibrate, get_importance

WORLD_SIZE = 2
# name -> constructor kwargs; labels are what the ranks save their scores under
CRITERIA: dict[str, tuple[str, dict]] = {
    "mean_activation": ("mean_activation", {}),
    "attention_mean_p1": ("attention", {}),
    "attention_max_p2": ("attention", {"reduction": "max", "p": 2.0}),
    "entropy": ("entropy", {}),
    "entropy_bins8": ("entropy", {"bins": 8}),
}
# rank -> batch sizes: uneven counts and sizes so that sample weighting matters
RANK_BATCHES = {0: (4, 3), 1: (5,)}


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[4].running_mean.uniform_(-0.5, 0.5)
    return net


def _rank_batches(rank: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(n, 3, 6, 6, generator=gen) for n in RANK_BATCHES[rank]]


def _sources(net: nn.Sequential, with_fc: bool) -> dict[str, nn.Module]:
    sources: dict[str, nn.Module] = {"conv1": net[1], "conv2": net[4]}
    if with_fc:  # only rank 0 observes this layer: sync must still include it on every rank
        sources["fc"] = net[8]
    return sources


def _layers(net: nn.Sequential) -> dict[str, nn.Module]:
    return {"conv1": net[0], "conv2": net[3], "fc": net[8]}


def _scores(crit: ChannelImportance, net: nn.Sequential) -> dict[str, torch.Tensor]:
    return {name: crit.score(name, layer) for name, layer in _layers(net).items()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        net = _net()
        results = {}
        for label, (name, kwargs) in CRITERIA.items():
            crit = get_importance(name, **kwargs)
            calibrate(crit, _sources(net, with_fc=rank == 0), net, _rank_batches(rank))
            first = _scores(crit, net)
            crit.sync()  # idempotent: reducing again must not double-count
            results[label] = {"first": first, "again": _scores(crit, net)}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _reference(name: str, kwargs: dict) -> dict[str, torch.Tensor]:
    """Single-process scores on the union of both ranks' data (fc: rank 0's data only)."""
    net = _net()
    union = calibrate(
        get_importance(name, **kwargs),
        _sources(net, with_fc=False),
        net,
        _rank_batches(0) + _rank_batches(1),
    )
    fc_only = calibrate(get_importance(name, **kwargs), {"fc": net[8]}, net, _rank_batches(0))
    return {
        "conv1": union.score("conv1", net[0]),
        "conv2": union.score("conv2", net[3]),
        "fc": fc_only.score("fc", net[8]),
    }


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("importance_ddp")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("label", sorted(CRITERIA))
def test_synced_scores_equal_single_process_union(label: str, rank_results: list[dict]) -> None:
    expected = _reference(*CRITERIA[label])
    for rank, results in enumerate(rank_results):
        for key in ("first", "again"):
            for layer, scores in expected.items():
                got = results[label][key][layer]
                assert got.dtype == torch.float32, (rank, key, layer)
                torch.testing.assert_close(got, scores, msg=f"rank {rank} {key} {layer}")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ranks_differ_before_sync() -> None:
    """Guard: the two ranks' local data alone give different scores (so the test is meaningful)."""
    for name, kwargs in CRITERIA.values():
        net = _net()
        local = [
            calibrate(get_importance(name, **kwargs), _sources(net, False), net, _rank_batches(r))
            for r in range(WORLD_SIZE)
        ]
        assert not torch.allclose(local[0].score("conv2", net[3]), local[1].score("conv2", net[3]))
