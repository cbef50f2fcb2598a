"""Invalid configurations fail early with PruningConfigError and a HINT, leaving the model untouched."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import LitTiny, make_data, make_trainer
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from lightning_prune import (
    GradualMagnitudePruning,
    PruningConfigError,
    StructuredPruning,
)
from lightning_prune.importance import ActivationImportance, ChannelImportance

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


def test_deepspeed_is_refused_by_what_it_is() -> None:
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # no deepspeed install needed: never initialised
    assert isinstance(strategy, DDPStrategy)  # why an isinstance check on the parent let it through
    for controller in (StructuredPruning(), GradualMagnitudePruning()):
        trainer = SimpleNamespace(strategy=strategy, callbacks=[controller])
        with pytest.raises(PruningConfigError, match="DeepSpeedStrategy is not supported") as info:
            controller.setup(trainer, LitTiny(), "fit")  # type: ignore[arg-type]
        assert "HINT:" in str(info.value)


def test_two_controllers_are_refused_when_the_trainer_is_built() -> None:
    # state is keyed by class, so Lightning itself refuses two stateful callbacks of one type
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `StructuredPruning`"):
        make_trainer([StructuredPruning(), StructuredPruning(pruning_ratio=0.3)])


def _refused_before_training(pruning: StructuredPruning, match: str, module: LitTiny | None = None) -> str:
    module = module if module is not None else LitTiny()
    before = shapes(module)
    train, val = make_data()
    with pytest.raises(PruningConfigError, match=match) as info:
        make_trainer([pruning]).fit(module, train, val)
    assert "HINT:" in str(info.value)
    assert shapes(module) == before and module.training_steps == 0
    return str(info.value)


def test_round_to_above_every_layer_is_refused() -> None:
    # TinyResNet's prunable convs have 8, 8 and 16 channels
    _refused_before_training(StructuredPruning(pruning_ratio=0.5, round_to=32), r"nothing would be pruned.*round_to=32")


class WrongCount(ChannelImportance):
    name = "wrong_count"

    def score(self, name: str, layer: nn.Module) -> torch.Tensor:
        return torch.ones(3)


class NotFinite(ChannelImportance):
    name = "not_finite"

    def score(self, name: str, layer: nn.Module) -> torch.Tensor:
        return torch.full((layer.weight.shape[0],), float("nan"))


@pytest.mark.parametrize(("criterion", "match"), [
    (WrongCount(), r"importance 'wrong_count' returned a tensor of shape \(3,\) for layer 'model.layer1.0.conv1', "
                   r"which has 8 output channels"),
    (NotFinite(), r"importance 'not_finite' returned NaN or infinite scores"),
])
def test_a_custom_criterion_with_wrong_scores_is_refused_before_training(criterion: ChannelImportance,
                                                                         match: str) -> None:
    _refused_before_training(StructuredPruning(importance=criterion, pretrain_epochs=1), match)


class WithUnusedHead(LitTiny):
    """A module with a layer whose output never reaches the loss: not in the traced graph."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Conv2d(3, 4, 1)


def test_a_layer_missing_from_the_traced_graph_is_reported_by_name(tmp_path) -> None:
    pruning = StructuredPruning(pruning_ratio=0.5, output_dir=str(tmp_path))
    train, val = make_data()
    make_trainer([pruning]).fit(WithUnusedHead(), train, val)
    assert pruning.report.extra["plan"]["untraced"] == ["aux"]
    assert "aux" not in pruning.report.extra["plan"]["layers"]


class WrongCountFromData(ActivationImportance):
    """A data-driven criterion that drops a channel when it turns statistics into scores."""

    name = "wrong_count_from_data"

    def batch_statistics(self, activation: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sum": activation.sum(dim=(0, 2))}

    def compute_scores(self, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        return stats["sum"][1:]


def test_a_data_driven_criterion_with_wrong_scores_is_refused_before_any_training() -> None:
    _refused_before_training(StructuredPruning(importance=WrongCountFromData(), pretrain_epochs=2),
                             r"'wrong_count_from_data'.*'model.layer1.0.conv1'.*\(7,\).*8 output channels")
