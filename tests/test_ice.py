"""ICE-Pruning satellites: threshold skip, layer freezing (probe), pruning-aware LR."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from helpers import LitTiny, make_data, make_trainer
from lightning_prune import (
    LayerFreezer,
    PruningAwareLR,
    PruningConfigError,
    PruningSatellite,
    StructuredPruning,
    ThresholdSkipFineTune,
)
from lightning_prune.schedules import pruning_aware_lr


class Scripted(LitTiny):
    """Every validation run (measurement or epoch) logs the next value of a script."""

    def __init__(self, script: list[float]) -> None:
        super().__init__()
        self.script = script
        self.runs = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_acc", torch.tensor(self.script[self.runs]))

    def on_validation_epoch_end(self) -> None:
        self.runs += 1


def fit(module: LitTiny, *callbacks: Callback, **kwargs: Any):
    train, val = make_data()
    trainer = make_trainer(list(callbacks), **kwargs)
    trainer.fit(module, train, val)
    return trainer


# ---------------------------------------------------------------- ThresholdSkipFineTune
@pytest.mark.parametrize(
    ("reference", "script", "decisions", "finetuned_epochs"),
    [
        # before, step0, step1, [epoch val], step2 ...
        ("original", [0.90, 0.86, 0.83, 0.88, 0.84, 0.89], [False, True, True], 2),
        ("previous", [0.90, 0.86, 0.83, 0.76, 0.89, 0.89], [False, False, True], 1),
    ],
)
def test_threshold_decides_from_the_measured_drop(reference: str, script: list[float], decisions: list[bool],
                                                  finetuned_epochs: int) -> None:
    module = Scripted(script)
    skip = ThresholdSkipFineTune(threshold=0.05, reference=reference)
    pruning = StructuredPruning(pruning_ratio=0.5)
    trainer = fit(module, pruning, skip)
    assert [d["finetune"] for d in skip.decisions] == decisions
    assert [s.finetuned for s in pruning.report.steps] == decisions
    # skipped steps cost no batch and no optimizer step
    assert trainer.global_step == 4 * finetuned_epochs and module.training_steps == 4 * finetuned_epochs
    assert pruning.report.totals()["steps_skipped"] == decisions.count(False)
    assert pruning.report.extra["threshold_skip"]["decisions"] == skip.decisions


def test_original_reference_drops_are_versus_the_unpruned_metric() -> None:
    module = Scripted([0.90, 0.86, 0.83, 0.88, 0.84, 0.89])
    skip = ThresholdSkipFineTune(threshold=0.05)
    fit(module, StructuredPruning(pruning_ratio=0.5), skip)
    assert [d["drop"] for d in skip.decisions] == pytest.approx([0.04, 0.07, 0.06], abs=1e-6)


def test_recover_stops_fine_tuning_once_the_drop_is_back_under_threshold() -> None:
    # one component only; measured drop 0.1 -> fine-tune; epoch validations 0.82 (still 0.08) then 0.87 (0.03)
    module = Scripted([0.90, 0.80, 0.82, 0.87, 0.99, 0.99])
    skip = ThresholdSkipFineTune(threshold=0.05, recover=True, max_finetune_epochs=4)
    pruning = StructuredPruning(pruning_ratio=0.5, ignored_layers=["model.layer1.*"])
    trainer = fit(module, pruning, skip)
    assert [s.finetune_epochs for s in pruning.report.steps] == [2]
    assert trainer.global_step == 2 * 4


def test_recover_is_bounded_by_max_finetune_epochs() -> None:
    module = Scripted([0.90, 0.80] + [0.81] * 10)
    skip = ThresholdSkipFineTune(threshold=0.05, recover=True, max_finetune_epochs=3)
    pruning = StructuredPruning(pruning_ratio=0.5, ignored_layers=["model.layer1.*"])
    fit(module, pruning, skip)
    assert [s.finetune_epochs for s in pruning.report.steps] == [3]


def test_threshold_needs_the_controllers_monitor() -> None:
    with pytest.raises(PruningConfigError, match="watches monitor='val_loss' but StructuredPruning has "
                                                 "monitor='val_acc'") as info:
        fit(LitTiny(), StructuredPruning(), ThresholdSkipFineTune(monitor="val_loss"))
    assert "HINT:" in str(info.value)


def test_threshold_takes_the_controllers_monitor_and_mode_by_default() -> None:
    skip = ThresholdSkipFineTune(threshold=0.0)
    pruning = StructuredPruning(monitor="val_loss", mode="min")
    fit(LitTiny(), pruning, skip)
    assert (skip.monitor, skip.mode) == ("val_loss", "min")
    # "min" mode, on the loss: a drop is how much the loss rose from the unpruned model's
    before = pruning.report.metric_before
    assert [d["drop"] for d in skip.decisions] == pytest.approx(
        [s.metric_after_prune - before for s in pruning.report.steps])


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


# ---------------------------------------------------------------- PruningAwareLR
def reference_lr(a: float, base: float = 1e-3, delta: float = 7.5e-4, p: float = 0.12, beta: float = 50.0) -> float:
    return base - delta / (1 + (a / (2 * (1 - p) - a)) ** beta)


@pytest.mark.parametrize("a", [1.0, 0.95, 0.9, 0.88, 0.85, 0.7, 0.4, 0.1])
def test_eq1_matches_the_paper(a: float) -> None:
    assert pruning_aware_lr(a, 1e-3, 7.5e-4, 0.12, 50.0) == pytest.approx(reference_lr(a), rel=1e-12)


def test_eq1_shape_and_corner() -> None:
    assert pruning_aware_lr(1.0, 1e-3, 5e-4, 0.5, 10.0) == 1e-3  # a = 1, p = 0.5: division by zero guarded
    assert pruning_aware_lr(0.88, 1e-3, 7.5e-4, 0.12, 50.0) == pytest.approx(1e-3 - 7.5e-4 / 2)  # the midpoint
    values = [pruning_aware_lr(a / 20, 1e-3, 7.5e-4, 0.12, 50.0) for a in range(1, 21)]
    assert values == sorted(values)  # more pruned, smaller LR


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"delta": 2e-3}, r"delta=0.002 must be in \(0, lr_base"),
    ({"delta": 0.0}, r"delta=0.0"),
    ({"midpoint": 0.6}, r"midpoint=0.6 must be in \(0, 0.5\]"),
    ({"midpoint": 0.0}, r"midpoint=0.0"),
    ({"beta": 0.0}, r"beta=0.0 must be > 0"),
    ({"lr_base": -1.0}, r"lr_base=-1.0"),
])
def test_pruning_aware_lr_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(PruningConfigError, match=match) as info:
        PruningAwareLR(**kwargs)
    assert "HINT:" in str(info.value)


class LRWitness(PruningSatellite, Callback):
    def __init__(self) -> None:
        self.after_change: list[tuple[float, float, list[float]]] = []
        self.batch_lrs: list[tuple[int, float]] = []
        self.original: int | None = None

    def on_pruning_start(self, trainer, pl_module, controller) -> None:
        self.original = sum(m.weight.numel() for m in pl_module.modules() if isinstance(m, nn.Conv2d))

    def on_structure_changed(self, trainer, pl_module, controller) -> None:
        remaining = sum(m.weight.numel() for m in pl_module.modules() if isinstance(m, nn.Conv2d)) / self.original
        bases = [list(c.scheduler.base_lrs) for c in trainer.lr_scheduler_configs]
        self.after_change.append((remaining, trainer.optimizers[0].param_groups[0]["lr"], bases[0] if bases else []))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_lrs.append((len(self.after_change), trainer.optimizers[0].param_groups[0]["lr"]))


class Cosine(LitTiny):
    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=4), "interval": "step"}}


def test_optimizer_lr_follows_eq1_at_every_step() -> None:
    witness = LRWitness()
    schedule = PruningAwareLR(lr_base=1e-2, delta=8e-3, midpoint=0.3, beta=4.0)
    fit(LitTiny(), StructuredPruning(pruning_ratio=0.5), schedule, witness)
    assert len(witness.after_change) == 3
    for remaining, lr, _ in witness.after_change:
        assert remaining < 1
        assert lr == pytest.approx(reference_lr(remaining, 1e-2, 8e-3, 0.3, 4.0), rel=1e-9)
    lrs = [lr for _, lr, _ in witness.after_change]
    assert lrs == sorted(lrs, reverse=True) and len(set(lrs)) == 3
    # during fine-tuning the optimizer uses exactly that LR (constant schedule)
    for change, lr in witness.batch_lrs:
        assert lr == pytest.approx(witness.after_change[change - 1][1])


def test_scheduler_base_lrs_are_rescaled_to_lr_max() -> None:
    witness = LRWitness()
    schedule = PruningAwareLR(lr_base=1e-2, delta=8e-3, midpoint=0.3, beta=4.0)
    fit(Cosine(), StructuredPruning(pruning_ratio=0.5), schedule, witness)
    for remaining, lr, bases in witness.after_change:
        lr_max = reference_lr(remaining, 1e-2, 8e-3, 0.3, 4.0)
        assert bases == [pytest.approx(lr_max)] and lr == pytest.approx(lr_max)
    for change, lr in witness.batch_lrs:
        assert lr <= witness.after_change[change - 1][1] * (1 + 1e-9)


# ---------------------------------------------------------------- defaults, exactly as a user calls them
def test_default_threshold_fine_tunes_an_accuracy_logged_as_a_fraction() -> None:
    torch.manual_seed(0)
    module = LitTiny()  # logs val_acc as a fraction, as ImageClassifier and most users do
    pruning = StructuredPruning()
    skip = ThresholdSkipFineTune()
    fit(module, pruning, skip)
    assert skip.threshold == 0.01  # one point
    decisions = skip.decisions
    assert [d["finetune"] for d in decisions] == [d["drop"] >= 0.01 for d in decisions]
    assert pruning.report.totals()["steps_finetuned"] >= 1  # the old default (1.0) never fine-tuned


def test_a_threshold_the_metric_cannot_reach_is_refused_before_any_surgery() -> None:
    torch.manual_seed(0)
    module = LitTiny()
    shapes = {n: p.shape for n, p in module.named_parameters()}
    with pytest.raises(PruningConfigError, match=r"threshold=1\) can never be reached: val_acc measured") as info:
        fit(module, StructuredPruning(), ThresholdSkipFineTune(threshold=1.0))
    assert "use threshold=0.01 for one point" in str(info.value)
    assert {n: p.shape for n, p in module.named_parameters()} == shapes
