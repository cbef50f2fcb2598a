"""Resuming with changed arguments, or from a damaged or foreign checkpoint, is refused by name, model untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import Crash, LitTiny, TinyConvNet, make_data, make_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_prune import (
    GradualMagnitudePruning,
    PruningConfigError,
    SimulatedPruning,
    StructuredPruning,
    ThresholdSkipFineTune,
)


def _fit(out: Path, callbacks: list[Callback], module: LitTiny | None = None, ckpt_path: str | None = None) -> LitTiny:
    torch.manual_seed(0)
    module = module if module is not None else LitTiny()
    train, val = make_data()
    saver = ModelCheckpoint(dirpath=out, save_last=True)
    trainer = make_trainer([*callbacks, saver], enable_checkpointing=True, default_root_dir=str(out))
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return module


def _crashed(out: Path, callbacks: list[Callback], module: LitTiny | None = None) -> Path:
    with pytest.raises(RuntimeError, match="injected crash"):
        _fit(out, [*callbacks, Crash(2)], module)
    return out / "last.ckpt"


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_untouched(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].shape == before[k].shape and torch.equal(after[k], before[k]) for k in before)


def _refused_untouched(out: Path, callbacks: list[Callback], checkpoint: Path) -> str:
    """Resume a fresh module from ``checkpoint``: refused with a PruningConfigError, the module untouched."""
    fresh = LitTiny()
    before = _snapshot(fresh)
    with pytest.raises(PruningConfigError) as info:
        _fit(out, callbacks, fresh, ckpt_path=str(checkpoint))
    _assert_untouched(fresh, before)
    return str(info.value)


def _structured(**kwargs: Any) -> StructuredPruning:
    return StructuredPruning(**{"pruning_ratio": 0.5, "pretrain_epochs": 1, **kwargs})


CHANGES = [
    ("controller", lambda: [_structured()], lambda: [_structured(pruning_ratio=0.6)],
     ["StructuredPruning", "pruning_ratio=0.6", "pruning_ratio=0.5"]),
    ("schedule", lambda: [_structured()], lambda: [_structured(schedule="uniform", steps=2)],
     ["schedule='uniform'", "schedule='blockwise'", "steps=2", "steps=5"]),
    ("satellite", lambda: [_structured(), ThresholdSkipFineTune(threshold=0.02)],
     lambda: [_structured(), ThresholdSkipFineTune(threshold=0.05)],
     ["ThresholdSkipFineTune", "threshold=0.05", "threshold=0.02"]),
    ("gradual", lambda: [GradualMagnitudePruning(sparsity=0.5, pruning_epochs=3)],
     lambda: [GradualMagnitudePruning(sparsity=0.7, pruning_epochs=3)],
     ["GradualMagnitudePruning", "sparsity=0.7", "sparsity=0.5"]),
    ("simulated", lambda: [GradualMagnitudePruning(sparsity=0.5, pruning_epochs=3), SimulatedPruning(0.1)],
     lambda: [GradualMagnitudePruning(sparsity=0.5, pruning_epochs=3), SimulatedPruning(0.5)],
     ["SimulatedPruning", "sparsity=0.5", "sparsity=0.1"]),
    ("satellite-added", lambda: [_structured()], lambda: [_structured(), ThresholdSkipFineTune(threshold=0.02)],
     ["the callbacks differ", "ThresholdSkipFineTune was added"]),
    ("satellite-missing", lambda: [_structured(), ThresholdSkipFineTune(threshold=0.02)], lambda: [_structured()],
     ["the callbacks differ", "ThresholdSkipFineTune is missing"]),
]


@pytest.mark.parametrize(("case", "first", "second", "words"), CHANGES, ids=[c[0] for c in CHANGES])
def test_resume_with_a_changed_argument_names_it(tmp_path: Path, case: str, first: Any, second: Any,
                                                 words: list[str]) -> None:
    checkpoint = _crashed(tmp_path, first())
    message = _refused_untouched(tmp_path / "resumed", second(), checkpoint)
    assert all(word in message for word in words), message
    assert "HINT:" in message


def test_resume_with_the_same_arguments_still_works(tmp_path: Path) -> None:
    checkpoint = _crashed(tmp_path, [_structured(), ThresholdSkipFineTune(threshold=0.02)])
    resumed = _fit(tmp_path / "resumed", [_structured(), ThresholdSkipFineTune(threshold=0.02)],
                   ckpt_path=str(checkpoint))
    assert resumed.model.layer2[0].conv1.out_channels == 8


@pytest.mark.parametrize("damage", ["truncated", "missing", "not-a-checkpoint"])
def test_resume_from_a_damaged_checkpoint_names_the_file(tmp_path: Path, damage: str) -> None:
    checkpoint = _crashed(tmp_path, [_structured()])
    bad = tmp_path / "bad.ckpt"
    if damage == "truncated":
        data = checkpoint.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "not-a-checkpoint":
        bad.write_text("not a checkpoint")
    message = _refused_untouched(tmp_path / "resumed", [_structured()], bad)
    assert str(bad) in message and "HINT:" in message


@pytest.mark.parametrize("controller", ["structured", "gradual"])
def test_resume_from_a_foreign_checkpoint_names_the_file(tmp_path: Path, controller: str) -> None:
    make = (lambda: _structured()) if controller == "structured" else (
        lambda: GradualMagnitudePruning(sparsity=0.5, pruning_epochs=3))
    checkpoint = _crashed(tmp_path, [make()], LitTiny(TinyConvNet()))  # another architecture
    message = _refused_untouched(tmp_path / "resumed", [make()], checkpoint)
    assert str(checkpoint) in message and "does not fit DemoModule" in message
