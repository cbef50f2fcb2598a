"""LayerFreezer: its probe (a trial step), the scores, freezing through surgery and resume (ICE-Pruning)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from helpers import LitTiny, fit, make_data, make_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_prune import (
    LayerFreezer,
    PruningConfigError,
    PruningSatellite,
    StructuredPruning,
)


# ---------------------------------------------------------------- LayerFreezer
class FreezeWitness(PruningSatellite, Callback):
    """Checks, around the freezer, what the issue promises."""

    def __init__(self, freezer: LayerFreezer) -> None:
        self.freezer = freezer
        self.unpruned: dict[str, torch.Tensor] = {}
        self.restored_equal: bool | None = None
        self.frozen_weights: dict[str, torch.Tensor] = {}
        self.unchanged: list[bool] = []
        self.grads_none: list[bool] = []
        self.l1: dict[str, dict[str, float]] = {}

    def _l1(self, pl_module) -> dict[str, float]:
        return {n: float(m.weight.detach().abs().sum()) for n, m in pl_module.named_modules() if isinstance(m, nn.Conv2d)}

    def on_pruning_start(self, trainer, pl_module, controller) -> None:  # the probe's trial step follows
        self.unpruned = {k: v.clone() for k, v in pl_module.state_dict().items()}

    def on_trial_start(self, trainer, pl_module, controller) -> None:
        self.l1["before"] = self._l1(pl_module)

    def on_trial_end(self, trainer, pl_module, controller) -> None:
        self.l1["after"] = self._l1(pl_module)

    def on_structure_changed(self, trainer, pl_module, controller) -> None:
        if self.restored_equal is None and self.freezer.frozen is not None:  # the restore after the probe
            state = pl_module.state_dict()
            self.restored_equal = all(torch.equal(state[k], v) for k, v in self.unpruned.items())
        self.frozen_weights = {n: dict(pl_module.named_modules())[n].weight.detach().clone()
                               for n in self.freezer.frozen or []}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        modules = dict(pl_module.named_modules())
        self.grads_none.append(all(modules[n].weight.grad is None for n in self.freezer.frozen or []))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        modules = dict(pl_module.named_modules())
        self.unchanged.append(all(torch.equal(modules[n].weight, w) for n, w in self.frozen_weights.items()))


def test_layer_freezer_probe_scores_freezes_and_restores() -> None:
    torch.manual_seed(0)
    module = LitTiny()
    freezer = LayerFreezer(freeze_fraction=0.5)
    witness = FreezeWitness(freezer)
    pruning = StructuredPruning(pruning_ratio=0.5, pretrain_epochs=1)
    trainer = fit(module, pruning, freezer, witness)
    convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8 and len(freezer.frozen) == math.ceil(0.5 * 8)
    # the scores are the formula, and the lowest ones are frozen
    assert set(freezer.scores) == set(convs)
    assert freezer.frozen == sorted(freezer.scores, key=lambda n: (freezer.scores[n], n))[:4]
    l2 = freezer.state_dict()["measurements"]["l2_original"]
    for name in convs:
        expected = abs(witness.l1["after"][name] - witness.l1["before"][name]) / l2[name]
        assert freezer.scores[name] == pytest.approx(expected, rel=1e-6)
    # the probe was undone exactly; the plan then ran in full, and is not counted as a step
    assert witness.restored_equal is True
    assert [s.step for s in pruning.report.steps] == [0, 1, 2]
    assert [b.conv1.out_channels for b in (*module.model.layer1, *module.model.layer2)] == [4, 4, 8]
    assert pruning.report.extra["probe"]["seconds"] > 0
    assert pruning.report.extra["probe"]["components"] == ["model.layer1.0"]
    # frozen: no gradient, no change during fine-tuning, flags kept after every surgery
    modules = dict(module.named_modules())
    for name in freezer.frozen:
        assert modules[name].weight.requires_grad is False
        if name in freezer.norms:
            assert modules[freezer.norms[name]].weight.requires_grad is False
    assert all(witness.grads_none) and len(witness.grads_none) == trainer.global_step
    assert all(witness.unchanged)
    # 1 pretrain + 1 probe + 3 steps
    assert trainer.current_epoch == 5


class StatsWitness(PruningSatellite, Callback):
    def __init__(self, freezer: LayerFreezer) -> None:
        self.freezer, self.saved, self.unchanged = freezer, {}, []

    def on_structure_changed(self, trainer, pl_module, controller) -> None:
        modules = dict(pl_module.named_modules())
        self.saved = {n: modules[n].running_mean.clone() for n in self.freezer.norms.values()} if self.freezer.frozen else {}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        modules = dict(pl_module.named_modules())
        if self.saved:
            self.unchanged.append(all(torch.equal(modules[n].running_mean, v) for n, v in self.saved.items()))


@pytest.mark.parametrize("freeze_stats", [True, False])
def test_freeze_bn_stats_option(freeze_stats: bool) -> None:
    module = LitTiny()
    freezer = LayerFreezer(freeze_fraction=1.0, freeze_bn_stats=freeze_stats)
    witness = StatsWitness(freezer)
    fit(module, StructuredPruning(pruning_ratio=0.5), freezer, witness)
    assert len(witness.unchanged) == 3
    assert all(witness.unchanged) is freeze_stats  # the authors' default keeps the statistics updating
    modules = dict(module.named_modules())
    assert all(modules[freezer.norms[n]].weight.requires_grad is False for n in freezer.frozen if n in freezer.norms)


def test_layer_freezer_survives_crash_and_resume(tmp_path) -> None:
    class Crash(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.current_epoch == 3 and batch_idx == 1:
                raise RuntimeError("injected crash")

    def run(extra: list[Callback], ckpt: str | None = None) -> tuple[LitTiny, LayerFreezer]:
        torch.manual_seed(0)
        module, freezer = LitTiny(), LayerFreezer(freeze_fraction=0.5)
        train, val = make_data()
        saver = ModelCheckpoint(dirpath=tmp_path / ("r" if ckpt else "c"), save_last=True)
        trainer = make_trainer([StructuredPruning(pruning_ratio=0.5, pretrain_epochs=1), freezer, *extra, saver],
                               enable_checkpointing=True, default_root_dir=tmp_path)
        trainer.fit(module, train, val, ckpt_path=ckpt)
        return module, freezer

    full, full_freezer = run([])
    with pytest.raises(RuntimeError, match="injected crash"):
        run([Crash()])
    resumed, resumed_freezer = run([], ckpt=str(tmp_path / "c" / "last.ckpt"))
    assert resumed_freezer.frozen == full_freezer.frozen
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    modules = dict(resumed.named_modules())
    assert all(modules[n].weight.requires_grad is False for n in resumed_freezer.frozen)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"freeze_fraction": 1.5}, "freeze_fraction=1.5"),
    ({"freeze_fraction": -0.1}, "freeze_fraction=-0.1"),
    ({"probe": "last_component"}, "probe='last_component'"),
])
def test_layer_freezer_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(PruningConfigError, match=match):
        LayerFreezer(**kwargs)


