"""A fit that ends before the plan is complete says so: in the report, in words, and in the artifact's name."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch.utils.data import DataLoader, TensorDataset

from helpers import LitTiny, make_data, make_trainer
from lightning_prune import GradualMagnitudePruning, PruningConfigError, StructuredPruning, load_pruned
from lightning_prune.summary import summary_table
from helpers import TinyResNet


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
