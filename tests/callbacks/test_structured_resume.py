"""Crash mid-pruning, resume with fit(ckpt_path=...) on a fresh module: same structure, same weights."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
import torch
from helpers import Crash, LitTiny, TinyResNet, make_data, make_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_prune import StructuredPruning, load_pruned
from lightning_prune.structural import graph as structure


def controller(**kwargs: Any) -> StructuredPruning:
    return StructuredPruning(pruning_ratio=0.5, pretrain_epochs=1, final_finetune_epochs=1, **kwargs)


def run(tmp_path, callbacks: list[Callback], ckpt_path: str | None = None, **kwargs: Any) -> LitTiny:
    torch.manual_seed(0)
    module = LitTiny()
    train, val = make_data()
    saver = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = make_trainer([controller(**kwargs), *callbacks, saver], enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return module


def assert_same_model(a: LitTiny, b: LitTiny) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].shape == sb[key].shape, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> LitTiny:
    return run(tmp_path_factory.mktemp("full"), [])


@pytest.mark.parametrize("crash_epoch", [1, 2, 4], ids=["pretrain-end", "mid-finetune", "final-finetune"])
def test_crash_then_resume_equals_uninterrupted(tmp_path, uninterrupted: LitTiny, crash_epoch: int) -> None:
    with pytest.raises(RuntimeError, match="injected crash"):
        run(tmp_path, [Crash(crash_epoch)])
    resumed = run(tmp_path / "resumed", [], ckpt_path=str(tmp_path / "last.ckpt"))
    assert_same_model(resumed, uninterrupted)


def test_crash_inside_surgery_then_resume(tmp_path, uninterrupted: LitTiny, monkeypatch) -> None:
    calls = {"n": 0}
    real = structure.prune_layer

    def failing(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected crash")
        real(*args, **kwargs)

    monkeypatch.setattr(structure, "prune_layer", failing)
    with pytest.raises(RuntimeError, match="injected crash"):
        run(tmp_path, [])
    monkeypatch.setattr(structure, "prune_layer", real)
    resumed = run(tmp_path / "resumed", [], ckpt_path=str(tmp_path / "last.ckpt"))
    assert_same_model(resumed, uninterrupted)


def test_resumed_report_continues_the_plan(tmp_path, uninterrupted: LitTiny) -> None:
    with pytest.raises(RuntimeError):
        run(tmp_path, [Crash(3)])
    torch.manual_seed(0)
    module = LitTiny()
    train, val = make_data()
    pruning = controller()
    trainer = make_trainer([pruning, ModelCheckpoint(dirpath=tmp_path / "r", save_last=True)], enable_checkpointing=True)
    trainer.fit(module, train, val, ckpt_path=str(tmp_path / "last.ckpt"))
    assert [s.step for s in pruning.report.steps] == [0, 1, 2]
    assert len(pruning.history) == 3


def test_module_hook_runs_before_weights_are_loaded(tmp_path) -> None:
    """Pins the Lightning order the structural replay relies on (DESIGN.md section 6)."""
    seen: dict[str, Any] = {}

    class Probe(LitTiny):
        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            seen["equal"] = torch.equal(self.model.linear.weight, checkpoint["state_dict"]["model.linear.weight"])

    run(tmp_path, [])
    module = Probe()
    train, val = make_data()
    make_trainer([controller()]).fit(module, train, val, ckpt_path=str(tmp_path / "last.ckpt"))
    assert seen == {"equal": False}


def test_load_pruned_from_checkpoint_and_artifact(tmp_path, uninterrupted: LitTiny) -> None:
    pruned = run(tmp_path, [], output_dir=str(tmp_path / "out"))
    x = torch.randn(3, 3, 8, 8)
    pruned.eval()
    expected = pruned(x)
    for path in (tmp_path / "last.ckpt", tmp_path / "out" / "pruned_model.pt"):
        module = load_pruned(path, LitTiny()).eval()
        assert torch.equal(module(x), expected)
        net = load_pruned(path, TinyResNet()).eval()  # the bare network inside the module
        assert torch.equal(net(x), expected)
        assert net.layer2[0].conv1.out_channels == 8


def test_state_round_trip_and_pickle(tmp_path) -> None:
    run(tmp_path, [])
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]
    key = "StructuredPruning"  # identity: a changed argument is refused by name on resume, not silently dropped
    assert key in state
    fresh = controller()
    fresh.load_state_dict(state[key])
    assert fresh.state_dict()["history"] == state[key]["history"]
    assert fresh.report.to_dict()["steps"] == state[key]["report"]["steps"]
    clone = pickle.loads(pickle.dumps(fresh))
    assert clone.state_dict()["history"] == state[key]["history"]
