"""SelfDistillation on an unmodified LightningModule: the loss, the frozen teacher, escape hatches, state."""

from __future__ import annotations

import copy
import logging
import math
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import LitTiny, TinyResNet, make_data, make_trainer
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

from lightning_prune import PruningConfigError, StructuredPruning
from lightning_prune.callbacks.self_distillation import SelfDistillation
from lightning_prune.losses import dg2pf_loss


class FirstLoss(Callback):
    """The loss ``training_step`` returned for the first batch."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.loss is None:
            self.loss = outputs["loss"].detach().clone()


def fit(module: Any, *callbacks: Callback, loaders: tuple[DataLoader, DataLoader] | None = None, **kwargs: Any):
    train, val = loaders or make_data()
    trainer = make_trainer(list(callbacks), **{"max_epochs": 1, **kwargs})
    trainer.fit(module, train, val)
    return trainer


def hand_dg2pf(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, alpha: float, tau: float) -> float:
    """Eq. 5-9 sample by sample (gamma 1, beta 0.1), in float64 Python arithmetic."""
    kl = pw = 0.0
    for s_row, t_row, c in zip(z_s.tolist(), z_t.tolist(), y.tolist()):
        def soft(row: list[float], t: float) -> list[float]:
            e = [math.exp(v / t) for v in row]
            return [v / sum(e) for v in e]
        p_s, p_t, q, p_t1 = soft(s_row, tau), soft(t_row, tau), soft(s_row, 1.0), soft(t_row, 1.0)
        kl += sum(b * (math.log(b) - math.log(a)) for a, b in zip(p_s, p_t))
        target = q if max(range(len(q)), key=q.__getitem__) == c else [float(k == c) for k in range(len(q))]
        pw += ((1 - p_t1[c]) + 0.1) * -sum(a * math.log(b) for a, b in zip(target, q))
    n = len(y)
    return (alpha * kl / n + (1 - alpha) * pw / n) * tau**2


@pytest.fixture
def teacher_file(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    path = tmp_path / "teacher.pt"
    torch.save(LitTiny().state_dict(), path)
    return path


@pytest.mark.parametrize("loss", ["dg2pf", "hinton"])
def test_loss_of_an_unmodified_module_equals_the_hand_computed_one(loss: str, teacher_file: Path) -> None:
    torch.manual_seed(0)
    module = LitTiny()
    student0 = copy.deepcopy(module.model)  # the weights the first batch is computed with
    teacher = LitTiny()
    teacher.load_state_dict(torch.load(teacher_file, weights_only=True))
    first = FirstLoss()
    fit(module, SelfDistillation(alpha=0.7, temperature=2.0, loss=loss, teacher=str(teacher_file)), first,
        limit_train_batches=1)
    x, y = next(iter(make_data()[0]))
    z_s = student0.train()(x).detach().double()
    z_t = teacher.model.eval()(x).detach().double()
    if loss == "dg2pf":
        expected = hand_dg2pf(z_s, z_t, y, alpha=0.7, tau=2.0)
    else:
        kl = F.kl_div(F.log_softmax(z_s / 2, 1), F.softmax(z_t / 2, 1), reduction="batchmean")
        expected = float(F.cross_entropy(z_s, y) + 0.7 * kl * 4)
    assert first.loss is not None and first.loss.item() == pytest.approx(expected, rel=1e-5)


def test_teacher_is_frozen_separate_and_not_saved() -> None:
    torch.manual_seed(0)
    module = LitTiny()
    keys, n_params = list(module.state_dict()), len(list(module.parameters()))
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    seen: dict[str, Any] = {}

    class Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            teacher = distiller.teacher
            in_optimizer = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
            seen["teacher_eval"] = not any(m.training for m in teacher.modules())
            seen["no_grad"] = not any(p.requires_grad or p.grad is not None for p in teacher.parameters())
            seen["not_in_optimizer"] = not in_optimizer & {id(p) for p in teacher.parameters()}
            seen["wrapped"] = "training_step" in pl_module.__dict__

    distiller = SelfDistillation()
    fit(module, distiller, Probe(), max_epochs=2)
    assert seen == {"teacher_eval": True, "no_grad": True, "not_in_optimizer": True, "wrapped": True}
    assert list(module.state_dict()) == keys and len(list(module.parameters())) == n_params
    teacher_state = distiller.teacher.state_dict()
    assert all(torch.equal(teacher_state[k], initial[k]) for k in initial)  # the model as fit started
    assert not torch.equal(module.model.linear.weight, initial["model.linear.weight"])  # the student trained
    assert "training_step" not in module.__dict__ and not module._forward_hooks  # restored after fit
    assert "distill/loss" in module.trainer.callback_metrics


class DictModule(LitTiny):
    """Dict batches; the network is called directly, not through ``forward``."""

    def __init__(self, key: str = "label") -> None:
        super().__init__()
        self.key = key

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(self.model(batch["image"]), batch[self.key]), "extra": torch.tensor(1.0)}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_acc", (self.model(batch["image"]).argmax(1) == batch[self.key]).float().mean())


def dict_loaders(key: str = "label") -> tuple[DataLoader, DataLoader]:
    ds = make_data()[0].dataset
    items = [{"image": x, key: y} for x, y in ds]
    return DataLoader(items, batch_size=16), DataLoader(items, batch_size=16)


@pytest.mark.parametrize("how", ["target_key", "targets_fn", "default_key"])
def test_escape_hatches_submodule_and_dict_batches(how: str, teacher_file: Path) -> None:
    torch.manual_seed(0)
    module = DictModule()
    student0 = copy.deepcopy(module.model)
    teacher = LitTiny()
    teacher.load_state_dict(torch.load(teacher_file, weights_only=True))
    kwargs = {"target_key": {"target_key": "label"}, "targets_fn": {"targets_fn": lambda b: b["label"]},
              "default_key": {}}[how]
    first = FirstLoss()
    fit(module, SelfDistillation(teacher=str(teacher_file), student_module="model", **kwargs), first,
        loaders=dict_loaders(), limit_train_batches=1)
    batch = next(iter(dict_loaders()[0]))
    expected = dg2pf_loss(student0.train()(batch["image"]), teacher.model.eval()(batch["image"]), batch["label"],
                          alpha=0.9, temperature=0.5)
    assert first.loss is not None and first.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_clear_errors_for_other_layouts() -> None:
    module = DictModule()
    with pytest.raises(PruningConfigError, match="never called the student"):
        fit(module, SelfDistillation(target_key="label"), loaders=dict_loaders(), limit_train_batches=1)
    assert "training_step" not in module.__dict__ and not module._forward_hooks  # unwrapped on the exception too
    with pytest.raises(PruningConfigError, match="cannot find the targets"):
        fit(DictModule("cls"), SelfDistillation(student_module="model"), loaders=dict_loaders("cls"),
            limit_train_batches=1)
    with pytest.raises(PruningConfigError, match="student_module='net' is not a submodule"):
        fit(LitTiny(), SelfDistillation(student_module="net"))

    class Manual(LitTiny):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(PruningConfigError, match="manual optimization"):
        fit(Manual(), SelfDistillation())


def test_with_structured_pruning_the_teacher_stays_unpruned() -> None:
    torch.manual_seed(0)
    module = LitTiny()
    before_prune: dict[str, torch.Tensor] = {}

    class Snapshot(Callback):  # listed first: sees the weights before the first prune of epoch 1
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                before_prune.update({k: v.clone() for k, v in pl_module.state_dict().items()})

    distiller = SelfDistillation(loss="hinton", temperature=2.0, scale_by_t2=False)
    fit(module, Snapshot(), StructuredPruning(pruning_ratio=0.5, pretrain_epochs=1), distiller, max_epochs=5)
    assert module.model.layer1[0].conv1.out_channels == 4
    teacher = distiller.teacher
    assert teacher.model.layer1[0].conv1.out_channels == 8
    assert all(torch.equal(teacher.state_dict()[k], before_prune[k]) for k in before_prune)  # after pretraining


def test_state_round_trip_pickle_and_detach() -> None:
    distiller = SelfDistillation()
    fit(LitTiny(), distiller)
    assert distiller.state_key == "SelfDistillation"
    state = distiller.state_dict()
    assert state["detached"] is False
    assert all(v.device.type == "cpu" and torch.equal(v, distiller.teacher.state_dict()[k])
               for k, v in state["teacher"].items())
    fresh = SelfDistillation()
    fresh.load_state_dict(state)
    clone = pickle.loads(pickle.dumps(fresh))
    assert clone.state_dict()["teacher"].keys() == state["teacher"].keys()
    distiller.detach_teacher()
    assert distiller.teacher is None and {k: v for k, v in distiller.state_dict().items() if k != "hparams"} == {"detached": True, "teacher": None}
    assert SelfDistillation(teacher="t.pt").state_dict()["teacher"] is None  # a file teacher is reloaded, not saved


class ValueBranch(nn.Module):
    """A network whose path depends on its input's values: ``torch.fx`` cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyResNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) if bool(x.mean() > -1e9) else -self.net(x)


class StepLosses(Callback):
    """Every training step's loss; at the start of epoch 1 the distiller's teacher becomes the student."""

    def __init__(self, distiller: SelfDistillation) -> None:
        self.distiller, self.losses = distiller, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            self.distiller.snapshot_teacher()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach().clone())


@pytest.mark.parametrize("network, folds", [(TinyResNet, True), (ValueBranch, False)])
def test_the_teacher_runs_folded_where_it_can_and_the_losses_do_not_change(
        network: type[nn.Module], folds: bool, caplog: pytest.LogCaptureFixture) -> None:
    losses, teachers = {}, {}
    for fold in (True, False):
        torch.manual_seed(0)
        module = LitTiny(network())
        for norm in module.modules():  # BatchNorms that are not the identity, so that folding them shows
            if isinstance(norm, nn.BatchNorm2d):
                norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
                nn.init.uniform_(norm.weight, 0.5, 1.5), nn.init.uniform_(norm.bias, -0.5, 0.5)
        distiller = SelfDistillation() if fold else SelfDistillation(fold_batchnorm=False)  # the default folds
        record = StepLosses(distiller)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lightning_prune"):
            fit(module, distiller, record, max_epochs=2)
        messages = " | ".join(r.getMessage() for r in caplog.records)
        losses[fold], teachers[fold] = torch.stack(record.losses), distiller.teacher
        if fold:
            assert ("the teacher runs with its BatchNorms folded" in messages) == folds, messages
            assert ("the teacher runs unfolded: torch.fx cannot trace it" in messages) == (not folds), messages
            assert messages.count("the teacher runs") == 2  # decided again after the epoch-1 snapshot
        else:
            assert "the teacher runs" not in messages
    assert len(losses[True]) == 8 and torch.allclose(losses[True], losses[False], rtol=0, atol=1e-5)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in network().modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in teachers[True].modules()) == norms == 8  # the teacher is whole
