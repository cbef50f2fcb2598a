"""Invalid configurations fail early with PruningConfigError and a HINT, leaving the model untouched."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from helpers import LitTiny, make_data, make_trainer
from lightning_prune import PruningConfigError, StructuredPruning

INIT_CASES: list[tuple[dict[str, Any], str]] = [
    ({"pruning_ratio": 0.0}, r"pruning_ratio=0.0 is outside \(0, 1\)"),
    ({"pruning_ratio": 1.0}, r"pruning_ratio=1.0 is outside"),
    ({"pruning_ratio": -0.2}, r"pruning_ratio=-0.2"),
    ({"importance": "l3"}, r"'l3'.*attention.*entropy.*l1"),
    ({"schedule": "cyclic"}, r"schedule='cyclic' is unknown; valid: blockwise, uniform"),
    ({"schedule": "uniform", "steps": 0}, r"steps=0 must be an integer >= 1"),
    ({"scope": "layer"}, r"scope='layer' is unknown"),
    ({"calibration_batches": 0}, r"calibration_batches=0"),
    ({"round_to": 0}, r"round_to=0"),
    ({"finetune_epochs": -1}, r"finetune_epochs=-1"),
    ({"final_finetune_epochs": -1}, r"final_finetune_epochs=-1"),
    ({"pretrain_epochs": -1}, r"pretrain_epochs=-1"),
    ({"mode": "maximize"}, r"mode='maximize' is unknown; valid: min, max"),
    ({"eval_batches": 0}, r"eval_batches=0"),
    ({"monitor": ""}, r"monitor=''"),
    ({"ignored_layers": [3]}, r"ignored_layers=\[3\]"),
    ({"example_input": "x"}, r"example_input of type str"),
    ({"importance": "attention", "importance_kwargs": {"reduction": "median"}}, r"median"),
]


@pytest.mark.parametrize(("kwargs", "match"), INIT_CASES, ids=[str(k) for k, _ in INIT_CASES])
def test_invalid_arguments_fail_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(PruningConfigError, match=match) as info:
        StructuredPruning(**kwargs)
    assert "HINT:" in str(info.value)


class OddBatches(LitTiny):
    """Batches are plain dicts with unusual keys: no input can be found without help."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step((batch["pixels"], batch["label"]), batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step((batch["pixels"], batch["label"]), batch_idx)


def odd_loaders() -> tuple[list, list]:
    train, _ = make_data()
    batches = [{"pixels": x, "label": y} for x, y in train]
    return batches, batches


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


FIT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("monitor-never-logged", {"monitor": "val_accuracy"}, r"'val_accuracy' was not logged.*logged keys: .*val_acc"),
    ("nothing-left-to-prune", {"ignored_layers": ["model.layer*"]}, r"nothing left to prune"),
    ("ignored-layer-typo", {"ignored_layers": ["model.layr1.*"]}, r"match no module"),
    ("untraceable-example", {"example_input": torch.randn(1, 5, 8, 8)}, r"could not be traced for structured pruning in layer 'model.conv1'"),
    ("missing-example-input", {"module": OddBatches}, r"cannot find the model input"),
    ("no-validation", {"val": False}, r"'val_acc' was not logged"),
]


@pytest.mark.parametrize(("case", "kwargs", "match"), FIT_CASES, ids=[c for c, _, _ in FIT_CASES])
def test_invalid_setups_fail_before_any_surgery(case: str, kwargs: dict[str, Any], match: str) -> None:
    kwargs = dict(kwargs)
    module_cls = kwargs.pop("module", LitTiny)
    with_val = kwargs.pop("val", True)
    module = module_cls()
    before = shapes(module)
    train, val = odd_loaders() if module_cls is OddBatches else make_data()
    callbacks = [StructuredPruning(pruning_ratio=0.5, **kwargs)]
    trainer = make_trainer(callbacks, limit_val_batches=None if with_val else 0)
    with pytest.raises(PruningConfigError, match=match) as info:
        trainer.fit(module, train, val if with_val else None)
    assert "HINT:" in str(info.value)
    assert shapes(module) == before
    assert module.training_steps == 0


def test_parameter_sharding_strategies_are_refused() -> None:
    trainer = SimpleNamespace(strategy=FSDPStrategy(), callbacks=[])
    pruning = StructuredPruning()
    trainer.callbacks.append(pruning)
    with pytest.raises(PruningConfigError, match="FSDPStrategy is not supported") as info:
        pruning.setup(trainer, LitTiny(), "fit")  # type: ignore[arg-type]
    assert "HINT:" in str(info.value)


def test_spawned_ddp_is_refused_before_training() -> None:
    pruning = StructuredPruning()
    trainer = make_trainer([pruning], devices=2, strategy="ddp_spawn")
    with pytest.raises(PruningConfigError, match="spawned DDP") as info:
        pruning.setup(trainer, LitTiny(), "fit")
    assert "strategy='ddp'" in str(info.value)
