"""A fit that ends before the plan is complete says so: in the report, in words, and in the artifact's name."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import LitTiny, TinyResNet, make_data, make_trainer
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import (
    GradualMagnitudePruning,
    PruningConfigError,
    StructuredPruning,
    load_pruned,
)
from lightning_prune.summary import summary_table


def _fit(tmp_path: Path, pruning: Any, *callbacks: Callback, **trainer_kwargs: Any) -> dict[str, Any]:
    train, val = make_data()
    module = LitTiny()
    trainer = make_trainer([pruning, *callbacks], default_root_dir=str(tmp_path), **trainer_kwargs)
    trainer.fit(module, train, val)
    return json.loads((tmp_path / "report.json").read_text())


class SlowBatches(Callback):
    """Makes every training batch take 0.2 s, so that ``max_time`` (1 s) ends the fit mid-plan."""

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(0.2)


class WorseEveryEpoch(Callback):
    """Logs a monitored metric that never improves, so that EarlyStopping stops after its patience."""

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        pl_module.log("val_score", float(trainer.current_epoch))


# 4 batches an epoch; the default plan: 3 blockwise steps of one fine-tuning epoch, no pretraining
STOPS = [
    ("max_steps", {"max_steps": 6}, {}, "max_steps=6 reached"),
    ("max_time", {"max_time": {"seconds": 1}}, {"slow": True}, "max_time reached"),
    ("early_stopping", {}, {"early_stopping": True}, "EarlyStopping stopped the fit"),
]


@pytest.mark.parametrize(("case", "trainer_kwargs", "extra", "reason"), STOPS, ids=[s[0] for s in STOPS])
def test_structured_run_stopped_short_says_so(tmp_path: Path, case: str, trainer_kwargs: dict, extra: dict,
                                              reason: str) -> None:
    callbacks: list[Callback] = []
    if extra.get("slow"):
        callbacks.append(SlowBatches())
    if extra.get("early_stopping"):
        callbacks += [WorseEveryEpoch(), EarlyStopping(monitor="val_score", mode="min", patience=1)]
    pruning = StructuredPruning(pruning_ratio=0.5, pretrain_epochs=1 if case == "early_stopping" else 0)
    report = _fit(tmp_path, pruning, *callbacks, **trainer_kwargs)
    totals = report["totals"]
    assert totals["completed"] is False
    assert reason in totals["stop_reason"]
    assert totals["steps_planned"] == 3 and totals["steps_done"] < 3
    assert totals["steps_done"] == len(report["steps"])
    # the artifact cannot pass for a finished result: another name, and it says so inside
    assert not (tmp_path / "pruned_model.pt").exists()
    incomplete = tmp_path / "pruned_model.incomplete.pt"
    assert torch.load(incomplete, weights_only=True)["completed"] is False
    load_pruned(incomplete, TinyResNet())  # still loadable, as what it is
    text = " ".join(summary_table(pruning.report, "val_acc").split())
    assert "INCOMPLETE" in text and reason in text and f"after {totals['steps_done']} of 3 steps" in text


def test_completed_run_says_completed(tmp_path: Path) -> None:
    pruning = StructuredPruning(pruning_ratio=0.5)
    report = _fit(tmp_path, pruning)
    assert report["totals"]["completed"] is True and report["totals"]["stop_reason"] is None
    assert (tmp_path / "pruned_model.pt").is_file() and not (tmp_path / "pruned_model.incomplete.pt").exists()
    assert torch.load(tmp_path / "pruned_model.pt", weights_only=True)["completed"] is True
    assert "completed: 3 of 3 steps" in " ".join(summary_table(pruning.report, "val_acc").split())


def test_stopped_during_pretraining_reports_the_unpruned_model(tmp_path: Path) -> None:
    pruning = StructuredPruning(pruning_ratio=0.5, pretrain_epochs=3)
    report = _fit(tmp_path, pruning, max_steps=5)
    totals = report["totals"]
    assert totals["completed"] is False and totals["steps_done"] == 0 and "max_steps=5" in totals["stop_reason"]
    assert totals["params_after"] == totals["params_before"] > 0
    assert (tmp_path / "pruned_model.incomplete.pt").is_file()


def _empty_loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long)), batch_size=4)


@pytest.mark.parametrize("controller", ["structured", "gradual"])
def test_a_plan_that_cannot_train_is_refused(tmp_path: Path, controller: str) -> None:
    make = (lambda: StructuredPruning()) if controller == "structured" else (lambda: GradualMagnitudePruning())
    module = LitTiny()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    _, val = make_data()
    with pytest.raises(PruningConfigError, match="limit_train_batches=0") as info:
        make_trainer([make()], default_root_dir=str(tmp_path), limit_train_batches=0).fit(module, make_data()[0], val)
    assert "HINT:" in str(info.value)
    with pytest.raises(PruningConfigError, match="training dataloader has no batches"):
        make_trainer([make()], default_root_dir=str(tmp_path)).fit(module, _empty_loader(), val)
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert list(tmp_path.iterdir()) == []  # the output folder is untouched


def test_gradual_run_stopped_short_says_so(tmp_path: Path) -> None:
    pruning = GradualMagnitudePruning(sparsity=0.5, pruning_epochs=3, patience=1)
    report = _fit(tmp_path, pruning, max_steps=6)
    assert report["completed"] is False and "max_steps=6 reached" in report["stop_reason"]
    assert report["prunes_planned"] == 3 and report["prunes_done"] == 2
    assert (tmp_path / "sparse_model.incomplete.pt").is_file() and not (tmp_path / "sparse_model.pt").exists()


def test_gradual_run_completed(tmp_path: Path) -> None:
    pruning = GradualMagnitudePruning(sparsity=0.5, pruning_epochs=2, patience=0, finetune_patience=1)
    report = _fit(tmp_path, pruning)
    assert report["completed"] is True and report["stop_reason"] is None and report["prunes_done"] == 2
    assert (tmp_path / "sparse_model.pt").is_file()


def test_crash_writes_an_incomplete_report(tmp_path: Path) -> None:
    from helpers import Crash

    pruning = StructuredPruning(pruning_ratio=0.5)
    with pytest.raises(RuntimeError, match="injected crash"):
        _fit(tmp_path, pruning, Crash(1))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"]["completed"] is False
    assert "RuntimeError: injected crash" in report["totals"]["stop_reason"]
    assert not (tmp_path / "pruned_model.pt").exists()


def test_a_stop_during_the_probe_undoes_its_trial_step(tmp_path: Path) -> None:
    from lightning_prune import LayerFreezer

    pruning = StructuredPruning(pruning_ratio=0.5)
    report = _fit(tmp_path, pruning, LayerFreezer(), max_steps=2)  # inside the probe's fine-tuning epoch
    totals = report["totals"]
    assert totals["completed"] is False and totals["steps_done"] == 0
    assert totals["params_after"] == totals["params_before"]  # the trial cut is not what gets saved
    saved = torch.load(tmp_path / "pruned_model.incomplete.pt", weights_only=True)
    assert saved["history"] == [] and saved["state_dict"]["model.layer1.0.conv1.weight"].shape[0] == 8


def test_an_incomplete_report_measures_the_model_it_saves(tmp_path: Path) -> None:
    pruning = StructuredPruning(pruning_ratio=0.75)
    report = _fit(tmp_path, pruning, max_steps=6)  # step 2 cut at epoch 1's start, stopped inside that epoch
    last = report["steps"][-1]
    assert report["totals"]["steps_done"] == 2 and report["totals"]["params_after"] == last["params"]
    assert report["totals"]["metric_after"] == last["metric_after_prune"]  # not the validation before that cut


def test_resume_with_a_max_epochs_below_the_checkpoints_epoch_completes_the_plan(tmp_path: Path) -> None:
    from helpers import Crash
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(ckpt_path: str | None, *extra: Callback) -> dict[str, Any]:
        torch.manual_seed(0)
        pruning = StructuredPruning(pruning_ratio=0.5, pretrain_epochs=1)
        saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        trainer = make_trainer([pruning, saver, *extra], max_epochs=2, enable_checkpointing=True,
                               default_root_dir=str(tmp_path))
        train, val = make_data()
        trainer.fit(LitTiny(), train, val, ckpt_path=ckpt_path)
        return pruning.report.totals()

    with pytest.raises(RuntimeError, match="injected crash"):
        run(None, Crash(3))
    totals = run(str(tmp_path / "ckpt" / "last.ckpt"))
    assert totals["completed"] is True and totals["steps_done"] == 3
