"""Crash mid-schedule, resume with fit(ckpt_path=...) on a fresh module: same masks, weights, optimizer, report."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import Crash, LitTiny, make_data, make_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_prune import PruningConfigError
from lightning_prune.callbacks.gradual import GradualMagnitudePruning
from lightning_prune.callbacks.self_distillation import SelfDistillation
from lightning_prune.callbacks.simulated_pruning import SimulatedPruning

# epoch: 0 pretrain | 1, 2 prune (2: baseline 0.6) | 3 +, 4 - (switch) | 5 + over 0.65, 6 - (stop)
SCRIPT = [0.4, 0.5, 0.6, 0.7, 0.65, 0.8, 0.7, 0.9, 0.9]
PHASES = ["pretrain", "prune", "prune", "converge", "converge", "finetune", "finetune"]


class Scripted(LitTiny):
    """Trains as LitTiny does; validation logs a scripted val_acc so that the phases fall on known epochs."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_acc", SCRIPT[self.current_epoch])


class Run:
    def __init__(self, module: Scripted, pruning: GradualMagnitudePruning, trainer: Any) -> None:
        self.module, self.pruning, self.trainer = module, pruning, trainer


def run(root: Path, callbacks: list[Callback], ckpt_path: str | None = None) -> Run:
    torch.manual_seed(0)
    module = Scripted()
    train, val = make_data()
    pruning = GradualMagnitudePruning(sparsity=0.5, pruning_epochs=2, pretrain_epochs=1, patience=1,
                                      finetune_patience=1, output_dir=str(root / "out"))
    saver = ModelCheckpoint(dirpath=root, save_last=True)
    trainer = make_trainer([pruning, SimulatedPruning(0.2), SelfDistillation(), *callbacks, saver], max_epochs=1,
                           enable_checkpointing=True, default_root_dir=root)
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return Run(module, pruning, trainer)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Run:
    return run(tmp_path_factory.mktemp("full"), [])


def assert_same(a: Run, b: Run) -> None:
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert a.pruning.masks.keys() == b.pruning.masks.keys()
    assert all(torch.equal(a.pruning.masks[k], b.pruning.masks[k]) for k in a.pruning.masks)
    oa, ob = a.trainer.optimizers[0], b.trainer.optimizers[0]
    assert type(oa) is type(ob) and oa.param_groups[0]["lr"] == ob.param_groups[0]["lr"]
    for pa, pb in zip(a.module.parameters(), b.module.parameters()):
        for key, value in oa.state[pa].items():
            assert torch.equal(value, ob.state[pb][key]), key
    ra, rb = a.pruning.report.to_dict(), b.pruning.report.to_dict()
    for key in ("epochs", "history", "best_metric", "metric_before", "metric_after", "sparsity"):
        assert ra[key] == rb[key], key


def test_uninterrupted_run_follows_the_script(uninterrupted: Run) -> None:
    assert [h["phase"] for h in uninterrupted.pruning.report.history] == PHASES
    assert uninterrupted.trainer.current_epoch == 7
    assert type(uninterrupted.trainer.optimizers[0]).__name__ == "SGD"
    assert uninterrupted.trainer.optimizers[0].param_groups[0]["lr"] == 1e-4
    # epoch 5 (0.8) is the best at full sparsity, epoch 6 (0.7) the last: epoch 5's weights are handed back, so a
    # resume from a crash in epoch 6 must bring them back from the checkpoint
    report = uninterrupted.pruning.report
    assert (report.best_epoch, report.restored_best, report.metric_after) == (5, True, pytest.approx(0.8))


@pytest.mark.parametrize("crash_epoch", [2, 3, 5, 6], ids=["prune", "converge", "finetune-first", "finetune-later"])
def test_crash_then_resume_equals_uninterrupted(tmp_path: Path, uninterrupted: Run, crash_epoch: int) -> None:
    with pytest.raises(RuntimeError, match="injected crash"):
        run(tmp_path, [Crash(crash_epoch)])
    resumed = run(tmp_path / "resumed", [], ckpt_path=str(tmp_path / "last.ckpt"))
    assert_same(resumed, uninterrupted)
    distiller = next(cb for cb in resumed.trainer.callbacks if isinstance(cb, SelfDistillation))
    assert distiller.detached


def test_state_key_round_trip_and_pickle(tmp_path: Path, uninterrupted: Run) -> None:
    with pytest.raises(RuntimeError):
        run(tmp_path, [Crash(2)])
    states = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]
    key = "GradualMagnitudePruning"
    assert key in states and "SelfDistillation" in states
    state = states[key]
    assert state["phase"] == "prune" and state["prunes_done"] == 1
    assert all(m.dtype == torch.bool and m.device.type == "cpu" for m in state["masks"].values())
    assert "model.conv1.weight" in state["masks"]
    assert state["best_weights"] == {"epoch": None, "value": None, "state": None}  # full sparsity comes at epoch 2
    with pytest.raises(PruningConfigError, match=r"patience=4 \(the checkpoint has patience=1\)"):
        GradualMagnitudePruning(sparsity=0.5, pruning_epochs=2).load_state_dict(state)
    fresh = GradualMagnitudePruning(sparsity=0.5, pruning_epochs=2, pretrain_epochs=1, patience=1,
                                    finetune_patience=1)
    fresh.load_state_dict(state)
    again = fresh.state_dict()
    assert again["masks"].keys() == state["masks"].keys()
    assert all(torch.equal(again["masks"][k], state["masks"][k]) for k in state["masks"])
    assert again["report"] == state["report"]
    clone = pickle.loads(pickle.dumps(uninterrupted.pruning))
    assert clone.phase == "done" and clone.state_dict()["masks"].keys() == state["masks"].keys()
