"""StructuredPruning inside Trainer.fit: schedules, the protocol after surgery, skipping, report."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from helpers import LitTiny, TinyConvNet, TinyResNet, fit
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import nn

from lightning_prune import PruningSatellite, StructuredPruning
from lightning_prune.importance import IMPORTANCES
from lightning_prune.schedules import PruningPlanner

STEP_KEYS = {"step", "components", "params", "macs", "metric_after_prune", "metric_after_finetune", "finetuned",
             "finetune_epochs", "seconds_prune", "seconds_eval", "seconds_finetune"}
TOTAL_KEYS = {"params_before", "params_after", "macs_before", "macs_after", "metric_before", "metric_after",
              "seconds_total", "seconds_prune", "seconds_eval", "seconds_finetune", "steps_finetuned", "steps_skipped",
              "completed", "stop_reason", "steps_planned", "steps_done"}


class Recorder(PruningSatellite, Callback):
    """Records, after every structural change, what the protocol must guarantee."""

    def __init__(self, decision: bool | None = None) -> None:
        self.decision = decision
        self.events: list[dict[str, Any]] = []
        self.global_steps: list[int] = []

    def on_structure_changed(self, trainer, pl_module, controller) -> None:
        opt_params = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
        self.events.append({
            "optimizer_is_current": len(opt_params) == len(list(pl_module.parameters()))
            and all(a is b for a, b in zip(opt_params, pl_module.parameters())),
            "frozen": {n: p.requires_grad for n, p in pl_module.named_parameters()},
            "global_step": trainer.global_step,
        })

    def finetune_decision(self, trainer, pl_module, controller, record) -> bool | None:
        self.global_steps.append(trainer.global_step)
        return self.decision


def conv1_channels(module: LitTiny) -> list[int]:
    return [b.conv1.out_channels for b in (*module.model.layer1, *module.model.layer2)]


def test_blockwise_prunes_one_block_per_step_and_reports(tmp_path) -> None:
    module = LitTiny()
    pruning = StructuredPruning(pruning_ratio=0.5, output_dir=str(tmp_path), pretrain_epochs=1)
    trainer = fit(module, pruning)
    # ceil(0.5 * C) of every block's internal conv; residual outputs (conv2, stem) untouched
    assert conv1_channels(module) == [4, 4, 8]
    assert [b.conv2.out_channels for b in (*module.model.layer1, *module.model.layer2)] == [8, 8, 16]
    assert module.model.conv1.out_channels == 8
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["components"] for s in report["steps"]] == [["model.layer1.0"], ["model.layer1.1"], ["model.layer2.0"]]
    assert all(set(s) >= STEP_KEYS for s in report["steps"])
    assert set(report["totals"]) == TOTAL_KEYS
    totals = report["totals"]
    assert totals["params_after"] == sum(p.numel() for p in module.parameters()) < totals["params_before"]
    assert totals["macs_after"] < totals["macs_before"]
    assert totals["steps_finetuned"] == 3 and totals["steps_skipped"] == 0
    assert totals["completed"] is True and totals["stop_reason"] is None
    assert totals["steps_planned"] == totals["steps_done"] == 3
    assert [s["params"] for s in report["steps"]] == sorted((s["params"] for s in report["steps"]), reverse=True)
    assert (tmp_path / "pruned_model.pt").is_file()
    # pretrain epoch + one fine-tuning epoch per step; no further epoch starts, and the plan (not a
    # max_epochs limit) ended the fit: the bound is past the last epoch, so should_stop ends it silently
    assert trainer.current_epoch == 1 + 3
    assert trainer.should_stop and trainer.max_epochs > trainer.current_epoch
    assert module.training_steps == (1 + 3) * 4
    assert pruning.report.to_dict() == report


def test_optimizer_rebuilt_and_frozen_flags_kept_after_every_change() -> None:
    module = LitTiny()
    module.model.layer1[0].conv2.weight.requires_grad_(False)
    recorder = Recorder()
    fit(module, StructuredPruning(pruning_ratio=0.5), recorder)
    assert len(recorder.events) == 3
    assert all(e["optimizer_is_current"] for e in recorder.events)
    assert all(e["frozen"]["model.layer1.0.conv2.weight"] is False for e in recorder.events)
    assert all(e["frozen"]["model.layer1.0.conv1.weight"] is True for e in recorder.events)
    assert module.model.layer1[0].conv2.weight.requires_grad is False


def test_fine_tuning_trains_the_new_parameters() -> None:
    module = LitTiny()

    class Snapshot(PruningSatellite, Callback):
        def __init__(self) -> None:
            self.after_prune: torch.Tensor | None = None

        def on_structure_changed(self, trainer, pl_module, controller) -> None:
            if self.after_prune is None:
                self.after_prune = pl_module.model.layer1[0].conv1.weight.detach().clone()

    snap = Snapshot()
    fit(module, StructuredPruning(pruning_ratio=0.5), snap)
    assert snap.after_prune is not None and snap.after_prune.shape == module.model.layer1[0].conv1.weight.shape
    assert not torch.equal(snap.after_prune, module.model.layer1[0].conv1.weight.detach())


def test_skipped_steps_cost_no_batch_and_no_optimizer_step() -> None:
    module = LitTiny()
    recorder = Recorder(decision=False)
    trainer = fit(module, StructuredPruning(pruning_ratio=0.5, pretrain_epochs=2), recorder)
    assert conv1_channels(module) == [4, 4, 8]
    assert recorder.global_steps == [8, 8, 8]  # only the 2 pretraining epochs of 4 batches stepped
    assert trainer.global_step == 8 and module.training_steps == 8
    pruning = next(cb for cb in trainer.callbacks if isinstance(cb, StructuredPruning))
    totals = pruning.report.totals()
    assert totals["steps_skipped"] == 3 and totals["steps_finetuned"] == 0
    assert all(s.metric_after_finetune == s.metric_after_prune for s in pruning.report.steps)


def test_finetune_epochs_and_final_finetune() -> None:
    module = LitTiny()
    trainer = fit(module, StructuredPruning(pruning_ratio=0.5, finetune_epochs=2, final_finetune_epochs=3))
    pruning = next(cb for cb in trainer.callbacks if isinstance(cb, StructuredPruning))
    assert [s.finetune_epochs for s in pruning.report.steps] == [2, 2, 2]
    assert module.training_steps == (3 * 2 + 3) * 4
    assert pruning.report.metric_after is not None


class CountingStopper(EarlyStopping):
    checks = 0

    def _run_early_stopping_check(self, trainer) -> None:
        CountingStopper.checks += 1
        super()._run_early_stopping_check(trainer)


def test_measurements_are_not_epochs_for_early_stopping_or_checkpointing(tmp_path) -> None:
    module = LitTiny()
    stopper = CountingStopper("val_acc", mode="max", patience=100)
    saver = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc", save_top_k=-1, filename="{epoch}")
    CountingStopper.checks = 0
    fit(module, StructuredPruning(pruning_ratio=0.5, eval_batches=1), stopper, saver, enable_checkpointing=True)
    # 4 measurements (before + 3 steps) of 1 batch each, plus 3 regular validations of 4 batches
    assert module.validation_steps == 4 * 1 + 3 * 4
    assert CountingStopper.checks == 3
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0.ckpt", "epoch=1.ckpt", "epoch=2.ckpt"]


def test_measurement_refreshes_the_monitored_metric() -> None:
    module = LitTiny()
    trainer = fit(module, StructuredPruning(pruning_ratio=0.5, finetune_epochs=0))
    pruning = next(cb for cb in trainer.callbacks if isinstance(cb, StructuredPruning))
    # no regular validation ran: every value came from a measurement of the module's own validation
    assert module.validation_steps == 4 * 4 and module.training_steps == 0
    assert float(trainer.callback_metrics["val_acc"]) == pruning.report.steps[-1].metric_after_prune


def test_uniform_local_schedule_reaches_ratio_in_steps() -> None:
    module = LitTiny()
    trainer = fit(module, StructuredPruning(pruning_ratio=0.5, schedule="uniform", steps=2))
    pruning = next(cb for cb in trainer.callbacks if isinstance(cb, StructuredPruning))
    assert len(pruning.report.steps) == 2
    assert conv1_channels(module) == [4, 4, 8]
    assert pruning.report.steps[0].channels_removed == 2 + 2 + 4


def test_uniform_global_schedule_removes_the_global_fraction() -> None:
    module = LitTiny()
    fit(module, StructuredPruning(pruning_ratio=0.5, schedule="uniform", steps=1, scope="global"))
    assert sum(conv1_channels(module)) == 16  # half of 8 + 8 + 16
    assert min(conv1_channels(module)) >= 1


def test_round_to_keeps_multiples() -> None:
    module = LitTiny()
    fit(module, StructuredPruning(pruning_ratio=0.6, round_to=4))
    assert all(c % 4 == 0 for c in conv1_channels(module))


def test_ignored_layers_by_glob_are_not_pruned() -> None:
    module = LitTiny()
    fit(module, StructuredPruning(pruning_ratio=0.5, ignored_layers=["model.layer1.*"]))
    assert conv1_channels(module) == [8, 8, 8]


def test_plain_convnet_prunes_each_conv_as_a_component_and_never_the_head() -> None:
    module = LitTiny(TinyConvNet())
    trainer = fit(module, StructuredPruning(pruning_ratio=0.5))
    pruning = next(cb for cb in trainer.callbacks if isinstance(cb, StructuredPruning))
    assert [s.components for s in pruning.report.steps] == [["model.features.0"], ["model.features.3"]]
    assert module.model.features[0].out_channels == 4 and module.model.features[3].out_channels == 6
    assert module.model.classifier.out_features == 4 and module.model.classifier.in_features == 6


@pytest.mark.parametrize("name", sorted(IMPORTANCES))
def test_every_registered_criterion_drives_a_pruning_run(name: str) -> None:
    module = LitTiny()
    fit(module, StructuredPruning(pruning_ratio=0.5, importance=name, calibration_batches=2))
    assert conv1_channels(module) == [4, 4, 8]
    assert module(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_l1_removes_the_smallest_filters() -> None:
    module = LitTiny()
    with torch.no_grad():
        module.model.layer1[0].conv1.weight[:4].mul_(1e-3)  # filters 0..3 are the weakest
        kept = module.model.layer1[0].conv1.weight[4:].clone()
    fit(module, StructuredPruning(pruning_ratio=0.5, finetune_epochs=0))
    assert torch.equal(module.model.layer1[0].conv1.weight.detach(), kept)


def test_random_criterion_is_seeded_by_the_controller() -> None:
    kept = {}
    for seed in (3, 3, 4):
        torch.manual_seed(1)
        module = LitTiny()
        original = module.model.layer2[0].conv1.weight.detach().clone()
        fit(module, StructuredPruning(pruning_ratio=0.5, importance="random", seed=seed, finetune_epochs=0))
        pruned = module.model.layer2[0].conv1.weight.detach()
        kept.setdefault(seed, []).append([i for i in range(16) if any(torch.equal(original[i], w) for w in pruned)])
    assert kept[3][0] == kept[3][1] and len(kept[3][0]) == 8
    assert kept[4][0] != kept[3][0]


def test_logs_prune_metrics_to_the_loggers(tmp_path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    module = LitTiny()
    fit(module, StructuredPruning(pruning_ratio=0.5), logger=CSVLogger(tmp_path))
    text = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "prune/params" in text and "prune/metric_after_prune" in text


def test_report_totals_add_up() -> None:
    module = LitTiny()
    trainer = fit(module, StructuredPruning(pruning_ratio=0.5))
    report = next(cb for cb in trainer.callbacks if isinstance(cb, StructuredPruning)).report
    totals = report.totals()
    assert math.isclose(totals["seconds_finetune"], sum(s.seconds_finetune for s in report.steps))
    assert totals["seconds_total"] >= totals["seconds_prune"] + totals["seconds_eval"]
    assert all(s.seconds_finetune > 0 for s in report.steps)
    assert report.params_after == report.steps[-1].params


def test_pruned_model_runs_faster_shapes(tmp_path) -> None:
    module = LitTiny(TinyResNet())
    fit(module, StructuredPruning(pruning_ratio=0.75, output_dir=str(tmp_path)))
    assert conv1_channels(module) == [2, 2, 4]
    assert isinstance(module.model.layer1[0].bn1, nn.BatchNorm2d) and module.model.layer1[0].bn1.num_features == 2


class ThresholdPlanner(PruningPlanner):
    """An open-ended planner of the kind AAP supplies: remove every channel scoring <= a threshold."""

    def __init__(self, thresholds: list[float]) -> None:
        super().__init__()
        self.thresholds = thresholds

    def num_steps(self) -> None:
        return None

    def is_done(self, step: int) -> bool:
        return step >= len(self.thresholds)

    def layers_for_step(self, step: int) -> list[str]:
        return list(self.original)

    def plan(self, step, layers, scores):
        return {n: [i for i, v in enumerate(scores[n].tolist()) if v <= self.thresholds[step]][: layers[n].channels - 1]
                for n in layers}


class UsesPlanner(PruningSatellite, Callback):
    def __init__(self, planner: PruningPlanner) -> None:
        self.planner = planner

    def provide_planner(self, controller) -> PruningPlanner:
        return self.planner


def test_another_callback_can_supply_the_plan() -> None:
    module = LitTiny()
    with torch.no_grad():
        for block in (*module.model.layer1, *module.model.layer2):
            # every conv1 has 8 inputs x 9 taps: the L1 score of filter i is exactly i
            block.conv1.weight.copy_(torch.arange(block.conv1.out_channels, dtype=torch.float)[:, None, None, None]
                                     .expand_as(block.conv1.weight) / 72)
    pruning = StructuredPruning(importance="l1", finetune_epochs=0)
    fit(module, pruning, UsesPlanner(ThresholdPlanner([0.5, 2.5])))
    assert len(pruning.report.steps) == 2
    assert [s.channels_removed for s in pruning.report.steps] == [3, 6]
    assert conv1_channels(module) == [5, 5, 13]
