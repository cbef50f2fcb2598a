"""Tests of lightning_prune.models.module.ImageClassifier."""

from __future__ import annotations

import pickle
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn

from lightning_prune.data import DigitsDataModule
from lightning_prune.errors import PruningConfigError
from lightning_prune.models import cifar_resnet
from lightning_prune.models.module import ImageClassifier


def _trainer(**kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
        enable_checkpointing=False, enable_model_summary=False, deterministic=True,
    )
    return L.Trainer(**{**defaults, **kwargs})


def _optimizer_param_ids(optimizer: torch.optim.Optimizer) -> list[int]:
    return [id(p) for group in optimizer.param_groups for p in group["params"]]


def test_short_fit_on_digits_learns() -> None:
    L.seed_everything(0, workers=True)
    dm = DigitsDataModule(batch_size=64, seed=0)
    module = ImageClassifier("digits_resnet", lr=0.05, scheduler="cosine")
    trainer = _trainer(max_epochs=4)
    trainer.fit(module, dm)
    metrics = trainer.callback_metrics
    assert metrics["val_acc"].item() > 0.85
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(metrics)
    assert 0.0 <= metrics["train_acc"].item() <= 1.0
    result = trainer.test(module, dm, verbose=False)[0]
    assert set(result) == {"test_loss", "test_acc"} and result["test_acc"] > 0.85


def test_forward_and_module_names() -> None:
    module = ImageClassifier("cifar_resnet20", num_classes=10)
    names = dict(module.named_modules())
    assert {"model.conv1", "model.layer1.0.conv1", "model.linear"} <= set(names)
    assert module(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert module.predict_step((torch.zeros(1, 3, 32, 32), torch.zeros(1)), 0).shape == (1, 10)


def test_configure_optimizers_uses_current_parameters() -> None:
    module = ImageClassifier(cifar_resnet(8), num_classes=10)
    first = module.configure_optimizers()
    module.model.linear.weight = nn.Parameter(torch.zeros(10, 64))
    second = module.configure_optimizers()
    assert second is not first
    assert _optimizer_param_ids(second) == [id(p) for p in module.parameters()]
    assert id(module.model.linear.weight) in _optimizer_param_ids(second)
    assert id(module.model.linear.weight) not in _optimizer_param_ids(first)


def test_optimizer_choices_and_hyperparameters() -> None:
    sgd = ImageClassifier(optimizer="sgd", lr=0.2, momentum=0.8, nesterov=True)
    opt = sgd.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.2, 0.8, True)
    assert isinstance(ImageClassifier(optimizer="adam").configure_optimizers(), torch.optim.Adam)
    assert isinstance(ImageClassifier(optimizer="adamw").configure_optimizers(), torch.optim.AdamW)


@pytest.mark.parametrize(
    ("name", "kwargs", "cls", "interval"),
    [
        ("cosine", {"T_max": 7}, torch.optim.lr_scheduler.CosineAnnealingLR, "epoch"),
        ("step", {"step_size": 3, "gamma": 0.5}, torch.optim.lr_scheduler.StepLR, "epoch"),
        ("multistep", {"milestones": [2, 4]}, torch.optim.lr_scheduler.MultiStepLR, "epoch"),
        ("onecycle", {"total_steps": 100}, torch.optim.lr_scheduler.OneCycleLR, "step"),
    ],
)
def test_schedulers(name: str, kwargs: dict[str, Any], cls: type, interval: str) -> None:
    config = ImageClassifier(scheduler=name, scheduler_kwargs=kwargs).configure_optimizers()
    assert isinstance(config["lr_scheduler"]["scheduler"], cls)
    assert config["lr_scheduler"]["interval"] == interval
    assert config["lr_scheduler"]["scheduler"].optimizer is config["optimizer"]


def test_scheduler_lengths_come_from_the_trainer() -> None:
    dm = DigitsDataModule(batch_size=64, subset_fraction=0.2)
    captured: dict[str, Any] = {}

    class Capture(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            captured["cosine"] = trainer.lr_scheduler_configs[0].scheduler

    module = ImageClassifier("digits_resnet", scheduler="cosine")
    _trainer(max_epochs=2, limit_val_batches=0, callbacks=[Capture()]).fit(module, dm)
    assert captured["cosine"].T_max == 2
    with pytest.raises(PruningConfigError, match="T_max"):
        ImageClassifier(scheduler="cosine").configure_optimizers()  # no trainer attached


def test_onecycle_total_steps_from_trainer() -> None:
    module = ImageClassifier("digits_resnet", scheduler="onecycle", lr=0.1)
    trainer = _trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(module, DigitsDataModule(batch_size=64, subset_fraction=0.2))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == 3 and scheduler.last_epoch == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"optimizer": "rmsprop"},
        {"scheduler": "linear"},
        {"lr": 0.0},
        {"weight_decay": -1.0},
        {"label_smoothing": 1.0},
        {"num_classes": 1},
        {"nesterov": True, "momentum": 0.0},
        {"model": "no_such_model"},
    ],
)
def test_bad_configuration_raises(kwargs: dict[str, Any]) -> None:
    with pytest.raises(PruningConfigError, match="HINT"):
        ImageClassifier(**kwargs)


def test_weights_with_module_instance_raises() -> None:
    with pytest.raises(PruningConfigError, match="weights"):
        ImageClassifier(cifar_resnet(8), weights="some/file.th")


def test_bad_scheduler_kwargs_raise() -> None:
    module = ImageClassifier(scheduler="step", scheduler_kwargs={"no_such_arg": 1})
    with pytest.raises(PruningConfigError, match="scheduler_kwargs"):
        module.configure_optimizers()


def test_pickle_round_trip_and_hparams() -> None:
    module = ImageClassifier("digits_resnet", lr=0.01, scheduler="step")
    assert module.hparams["model"] == "digits_resnet" and module.hparams["lr"] == 0.01
    clone = pickle.loads(pickle.dumps(module))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(clone.eval()(x), module.eval()(x))
    instance = ImageClassifier(cifar_resnet(8))
    assert "model" not in instance.hparams
    pickle.loads(pickle.dumps(instance))


def test_lightning_cli_instantiation(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr("sys.argv", ["lightning-prune"])
    cli = LightningCLI(
        ImageClassifier,
        DigitsDataModule,
        run=False,
        args=[
            "--seed_everything=0",
            "--model.model=cifar_resnet20",
            "--model.scheduler=cosine",
            "--model.scheduler_kwargs={T_max: 5}",
            "--data.batch_size=32",
            "--data.subset_fraction=0.5",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
        ],
    )
    assert isinstance(cli.model, ImageClassifier) and cli.model.model.linear.out_features == 10
    assert cli.model.scheduler_kwargs == {"T_max": 5}
    assert cli.datamodule.batch_size == 32 and cli.datamodule.subset_fraction == 0.5
