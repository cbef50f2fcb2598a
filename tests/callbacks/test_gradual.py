"""GradualMagnitudePruning: masks, schedule, exact zeros through optimizer steps, patience, phase 2, report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import LitTiny, TinyResNet, make_data, make_trainer
from lightning.pytorch.callbacks import Callback

from lightning_prune import PruningConfigError, StructuredPruning
from lightning_prune.callbacks.gradual import GradualMagnitudePruning
from lightning_prune.callbacks.self_distillation import SelfDistillation
from lightning_prune.callbacks.simulated_pruning import SimulatedPruning
from lightning_prune.sparse import load_sparse
from lightning_prune.structural import masks as M

CONFIGS = Path(__file__).parents[2] / "configs"


class Scripted(LitTiny):
    """Logs ``val_acc`` from a script (one value per epoch); optionally its own optimizer and scheduler."""

    def __init__(self, script: list[float] | None = None, optimizer: str = "sgd", scheduler: bool = False) -> None:
        super().__init__()
        self.script, self.optimizer_name, self.scheduler = script, optimizer, scheduler

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.script is None:
            return super().validation_step(batch, batch_idx)
        self.log("val_acc", float(self.script[min(self.current_epoch, len(self.script) - 1)]))

    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "adamw":
            opt: torch.optim.Optimizer = torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=1e-2)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        if not self.scheduler:
            return opt
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)}


class Recorder(Callback):
    """Per epoch: sparsity at the first batch and at the end, optimizer, schedulers, controller phase."""

    def __init__(self) -> None:
        self.start: list[float] = []
        self.end: list[float] = []
        self.optimizers: list[tuple[str, dict[str, Any]]] = []
        self.schedulers: list[int] = []
        self.phases: list[str] = []
        self.distilling: list[bool] = []

    @staticmethod
    def sparsity(trainer) -> float:
        controller = next(cb for cb in trainer.callbacks if isinstance(cb, GradualMagnitudePruning))
        return M.sparsity_stats(controller.parameters)["overall"]  # type: ignore[return-value]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.start.append(self.sparsity(trainer))
            opt = trainer.optimizers[0]
            group = opt.param_groups[0]
            self.optimizers.append((type(opt).__name__, {k: group.get(k) for k in ("lr", "momentum", "weight_decay")}))
            self.schedulers.append(len(trainer.lr_scheduler_configs))
            controller = next(cb for cb in trainer.callbacks if isinstance(cb, GradualMagnitudePruning))
            self.phases.append(controller.phase)
            self.distilling.extend(cb.active(trainer) for cb in trainer.callbacks if isinstance(cb, SelfDistillation))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.end.append(self.sparsity(trainer))


def fit(module: LitTiny, *callbacks: Callback, **trainer_kwargs: Any):
    torch.manual_seed(0)
    train, val = make_data()
    trainer = make_trainer(list(callbacks), **{"max_epochs": 2, **trainer_kwargs})
    trainer.fit(module, train, val)
    return trainer


# ---------------------------------------------------------------------- arguments
BAD = [
    (GradualMagnitudePruning, {"sparsity": 1.0}, "sparsity=1.0"),
    (GradualMagnitudePruning, {"sparsity": 0}, "sparsity=0"),
    (GradualMagnitudePruning, {"pruning_epochs": 0}, "pruning_epochs=0"),
    (GradualMagnitudePruning, {"scope": "local"}, "scope='local'"),
    (GradualMagnitudePruning, {"mode": "up"}, "mode='up'"),
    (GradualMagnitudePruning, {"monitor": ""}, "monitor=''"),
    (GradualMagnitudePruning, {"patience": -1}, "patience=-1"),
    (GradualMagnitudePruning, {"min_delta": -0.1}, "min_delta=-0.1"),
    (GradualMagnitudePruning, {"pretrain_epochs": 1.5}, "pretrain_epochs=1.5"),
    (GradualMagnitudePruning, {"finetune_patience": 0}, "finetune_patience=0"),
    (GradualMagnitudePruning, {"max_epochs": 0}, "max_epochs=0"),
    (GradualMagnitudePruning, {"eval_batches": 0}, "eval_batches=0"),
    (GradualMagnitudePruning, {"schedule": "exponential"}, "schedule='exponential'"),
    (GradualMagnitudePruning, {"restore_best": "yes"}, "restore_best='yes'"),
    (GradualMagnitudePruning, {"ignored_layers": [""]}, "ignored_layers"),
    (GradualMagnitudePruning, {"finetune_optimizer": {"name": "lbfgs2"}}, "cannot be built"),
    (GradualMagnitudePruning, {"finetune_optimizer": {"lr": -1.0}}, "cannot be built"),
    (GradualMagnitudePruning, {"finetune_optimizer": {"name": "sgd", "betas": (0.9, 0.99)}}, "cannot be built"),
    (GradualMagnitudePruning, {"finetune_optimizer": {"name": "module", "lr": 1.0}}, "takes no arguments"),
    (GradualMagnitudePruning, {"finetune_optimizer": "sgd"}, "not a mapping"),
    (SimulatedPruning, {"sparsity": 1.0}, "sparsity=1.0"),
    (SimulatedPruning, {"sparsity": -0.1}, "sparsity=-0.1"),
    (SelfDistillation, {"alpha": 1.5}, "alpha=1.5"),
    (SelfDistillation, {"temperature": 0}, "temperature=0"),
    (SelfDistillation, {"loss": "mse"}, "loss='mse'"),
    (SelfDistillation, {"gamma": 0}, "gamma=0"),
    (SelfDistillation, {"beta": -1}, "beta=-1"),
    (SelfDistillation, {"teacher": ""}, "teacher=''"),
    (SelfDistillation, {"student_module": ""}, "student_module=''"),
    (SelfDistillation, {"target_key": -1}, "target_key=-1"),
    (SelfDistillation, {"targets_fn": 3}, "targets_fn=3"),
    (SelfDistillation, {"start_epoch": -1}, "start_epoch=-1"),
]


@pytest.mark.parametrize(("cls", "kwargs", "names"), BAD, ids=[f"{c.__name__}-{n}" for c, _, n in BAD])
def test_bad_arguments_raise_with_hint(cls: type, kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(PruningConfigError, match="HINT:") as info:
        cls(**kwargs)
    assert names in str(info.value)


def test_model_dependent_errors_at_setup() -> None:
    with pytest.raises(PruningConfigError, match="match no module"):
        fit(LitTiny(), GradualMagnitudePruning(ignored_layers=["model.nope"]))
    with pytest.raises(PruningConfigError, match=r"found 2 pruning controllers \(GradualMagnitudePruning, StructuredPruning\).*separate fits"):
        fit(LitTiny(), GradualMagnitudePruning(), StructuredPruning())
    with pytest.raises(PruningConfigError, match="needs exactly one GradualMagnitudePruning"):
        fit(LitTiny(), SimulatedPruning())
    with pytest.raises(PruningConfigError, match="monitor='val_top1' was not logged"):
        fit(LitTiny(), GradualMagnitudePruning(monitor="val_top1", pruning_epochs=1))


def test_finetune_optimizer_spec_defaults_and_merging() -> None:
    default = GradualMagnitudePruning().finetune_spec
    assert default == ("sgd", {"lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4})
    assert GradualMagnitudePruning(finetune_optimizer={"lr": 1e-3}).finetune_spec == (
        "sgd", {"lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4})
    assert GradualMagnitudePruning(finetune_optimizer={"name": "torch.optim.RMSprop", "lr": 1e-3}).finetune_spec == (
        "torch.optim.RMSprop", {"lr": 1e-3})


# ---------------------------------------------------------------------- masks (pure)
def test_prunable_parameters_exclude_biases_and_norms_by_default() -> None:
    module = LitTiny(TinyResNet())
    names = list(M.prunable_parameters(module))
    assert names[0] == "model.conv1.weight" and "model.linear.weight" in names
    assert all(n.endswith(".weight") and ".bn" not in n and "shortcut.1" not in n for n in names)
    with_extra = M.prunable_parameters(module, include_bias=True, include_norm=True)
    assert {"model.linear.bias", "model.bn1.weight", "model.bn1.bias"} <= set(with_extra)
    assert "model.linear.weight" not in M.prunable_parameters(module, ignored=["model.linear"])
    assert not any(n.startswith("model.layer1") for n in M.prunable_parameters(module, ignored=["model.layer1.*"]))


def test_global_and_layerwise_masks_reach_the_target() -> None:
    torch.manual_seed(0)
    params = {n: p.detach() for n, p in M.prunable_parameters(TinyResNet()).items()}
    total = sum(p.numel() for p in params.values())
    glob = M.magnitude_masks(params, 0.7, "global")
    assert sum(int((~m).sum()) for m in glob.values()) == round(0.7 * total)
    pruned = torch.cat([params[n][~m].abs() for n, m in glob.items()])
    kept = torch.cat([params[n][m].abs() for n, m in glob.items()])
    assert pruned.max() <= kept.min()
    per_layer = {n: float((~m).float().mean()) for n, m in glob.items()}
    assert max(per_layer.values()) - min(per_layer.values()) > 0.05  # global: layers differ
    local = M.magnitude_masks(params, 0.7, "layerwise")
    for name, mask in local.items():
        assert int((~mask).sum()) == round(0.7 * mask.numel()), name
    more = M.magnitude_masks(params, 0.9, "global", glob)
    assert all(bool((more[n] <= glob[n]).all()) for n in glob)  # masks only shrink
    assert M.linear_sparsity_schedule(0.9, 3) == [0.3, 0.6, 0.9]


def test_cubic_schedule_takes_big_steps_first_and_ends_at_the_target() -> None:
    cubic = M.cubic_sparsity_schedule(0.9, 5)
    assert cubic == pytest.approx([0.9 * (1 - (1 - i / 5) ** 3) for i in range(1, 6)])
    assert cubic[-1] == 0.9 and cubic[0] == pytest.approx(0.4392)
    steps = [b - a for a, b in zip([0.0, *cubic], cubic)]
    assert steps == sorted(steps, reverse=True)  # every prune smaller than the one before
    assert all(c >= lin for c, lin in zip(cubic, M.linear_sparsity_schedule(0.9, 5)))
    assert GradualMagnitudePruning(sparsity=0.9, pruning_epochs=5, schedule="cubic").schedule == cubic
    assert GradualMagnitudePruning(sparsity=0.9, pruning_epochs=5).schedule == M.linear_sparsity_schedule(0.9, 5)


# ---------------------------------------------------------------------- training
@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_schedule_one_prune_at_each_pruning_epoch_start(tmp_path: Path, scope: str) -> None:
    recorder = Recorder()
    pruning = GradualMagnitudePruning(sparsity=0.75, pruning_epochs=3, scope=scope, pretrain_epochs=1, patience=1,
                                      finetune=False, max_epochs=6, output_dir=str(tmp_path))
    fit(Scripted([0.5, 0.5, 0.5, 0.5, 0.6, 0.6]), pruning, recorder)
    assert recorder.start[:4] == pytest.approx([0.0, 0.25, 0.5, 0.75], abs=2e-4)
    assert recorder.end == pytest.approx(recorder.start, abs=1e-12)  # constant within an epoch
    assert recorder.start[4:] == pytest.approx([0.75, 0.75], abs=2e-4)
    assert recorder.phases == ["pretrain", "prune", "prune", "prune", "converge", "converge"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["epochs"] == {"pretrain": 1, "prune": 3, "converge": 2, "finetune": 0}
    layers = report["sparsity"]["layers"]
    assert set(layers) == set(pruning.parameters)
    if scope == "layerwise":
        assert all(v["sparsity"] == pytest.approx(0.75, abs=0.01) for v in layers.values())
    assert report["sparsity"]["overall"] == pytest.approx(0.75, abs=2e-4)
    assert [h["target_sparsity"] for h in report["history"]] == [0.0, 0.25, 0.5, 0.75, 0.75, 0.75]
    assert report["metric_before"] == 0.5 and report["metric_after"] == pytest.approx(0.6)
    assert set(report["seconds"]) == {"pretrain", "prune", "converge", "finetune"} and report["seconds_total"] > 0


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_pruned_weights_and_their_optimizer_state_stay_exactly_zero(optimizer: str) -> None:
    """Checked after every optimizer step, before the controller's own re-zeroing (the checker runs first)."""
    seen = {"steps": 0}

    class Checker(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            controller = next(cb for cb in trainer.callbacks if isinstance(cb, GradualMagnitudePruning))
            if not controller.masks:
                return
            opt = trainer.optimizers[0]
            for name, mask in controller.masks.items():
                param = controller.parameters[name]
                assert torch.equal(param[~mask], torch.zeros_like(param[~mask])), name
                for key, value in opt.state[param].items():
                    if isinstance(value, torch.Tensor) and value.shape == param.shape:
                        assert not value[~mask].any(), (name, key)
            seen["steps"] += 1

    module = Scripted(optimizer=optimizer)
    keys = list(module.state_dict())
    pruning = GradualMagnitudePruning(sparsity=0.8, pruning_epochs=3, pretrain_epochs=1, patience=2,
                                      finetune=False, max_epochs=6, save_sparse_model=False)
    fit(module, Checker(), pruning)
    assert seen["steps"] == 5 * 4  # 5 epochs of 4 batches after the first prune
    assert list(module.state_dict()) == keys  # names unchanged, no weight_orig / weight_mask
    weights = torch.cat([p.detach().flatten() for p in pruning.parameters.values()])
    assert float((weights == 0).float().mean()) == pytest.approx(0.8, abs=2e-4)


def test_patience_ends_each_phase_and_phase_two_switches_optimizer_and_detaches_teacher() -> None:
    # epochs:  0 prune, 1 prune (last: baseline 0.6), 2 +, 3 -, 4 - (patience 2: switch), 5 + (over 0.66), 6 - (stop)
    script = [0.5, 0.6, 0.7, 0.65, 0.66, 0.8, 0.7, 0.9, 0.9]
    recorder = Recorder()
    distiller = SelfDistillation(loss="hinton")
    pruning = GradualMagnitudePruning(sparsity=0.5, pruning_epochs=2, patience=2, finetune_patience=1,
                                      save_sparse_model=False)
    trainer = fit(Scripted(script, scheduler=True), pruning, distiller, recorder, max_epochs=1)
    assert trainer.current_epoch == 7 and pruning.phase == "done"  # the Trainer's max_epochs=1 did not matter
    assert recorder.phases == ["prune", "prune", "converge", "converge", "converge", "finetune", "finetune"]
    assert recorder.optimizers[:5] == [("SGD", {"lr": pytest.approx(0.05 * 0.9**e), "momentum": 0.9,
                                                "weight_decay": 5e-4}) for e in range(5)]
    assert recorder.optimizers[5:] == [("SGD", {"lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4})] * 2
    assert recorder.schedulers == [1] * 5 + [0] * 2
    assert recorder.distilling == [True] * 5 + [False] * 2
    assert distiller.detached and distiller.teacher is None
    assert pruning.report.epochs == {"pretrain": 0, "prune": 2, "converge": 3, "finetune": 2}
    assert pruning.report.best_metric == pytest.approx({"converge": 0.7, "finetune": 0.8})
    opt = trainer.optimizers[0]
    assert all(p is q for p, q in zip(opt.param_groups[0]["params"], trainer.lightning_module.parameters()))


def test_finetune_with_another_optimizer_and_max_epochs_cap() -> None:
    recorder = Recorder()
    pruning = GradualMagnitudePruning(sparsity=0.5, pruning_epochs=1, patience=0, finetune_patience=5,
                                      finetune_optimizer={"name": "adamw", "lr": 1e-3}, max_epochs=3,
                                      save_sparse_model=False)
    trainer = fit(Scripted([0.5, 0.6, 0.7, 0.8, 0.9]), pruning, recorder)
    assert trainer.current_epoch == 3 and pruning.phase == "done"
    assert [o[0] for o in recorder.optimizers] == ["SGD", "AdamW", "AdamW"]
    assert recorder.optimizers[1][1]["lr"] == 1e-3


def test_cubic_schedule_is_followed_epoch_by_epoch() -> None:
    recorder = Recorder()
    pruning = GradualMagnitudePruning(sparsity=0.75, pruning_epochs=3, schedule="cubic", patience=0,
                                      finetune=False, save_sparse_model=False)
    fit(Scripted([0.5] * 4), pruning, recorder)
    assert recorder.start == pytest.approx(M.cubic_sparsity_schedule(0.75, 3), abs=2e-4)
    assert pruning.report.schedule == M.cubic_sparsity_schedule(0.75, 3)


class Weights(Callback):
    """The module's state after each validation, by epoch."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, dict[str, torch.Tensor]] = {}

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.by_epoch[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.state_dict().items()}


@pytest.mark.parametrize("restore_best", [True, False])
def test_the_best_validated_weights_at_full_sparsity_are_handed_back(tmp_path: Path, restore_best: bool) -> None:
    # epochs: 0 prune, 1 prune (full sparsity, 0.6), 2 converge 0.9 (best), 3 - (switch at 0.7), 4 finetune 0.8,
    # 5 -, 6 - (stop). Epoch 0 scores higher (0.95) but is not at full sparsity, so it never counts.
    script = [0.95, 0.6, 0.9, 0.7, 0.8, 0.75, 0.75]
    weights = Weights()
    module = Scripted(script)
    pruning = GradualMagnitudePruning(sparsity=0.6, pruning_epochs=2, patience=1, finetune_patience=2,
                                      restore_best=restore_best, output_dir=str(tmp_path))
    fit(module, pruning, weights)
    assert pruning.phase == "done" and sorted(weights.by_epoch) == [0, 1, 2, 3, 4, 5, 6]
    final = module.state_dict()
    expected = weights.by_epoch[2 if restore_best else 6]
    assert all(torch.equal(final[k], expected[k]) for k in final)
    assert not all(torch.equal(final[k], weights.by_epoch[6][k]) for k in final) is restore_best
    for name, mask in pruning.masks.items():  # the masks still hold
        assert not pruning.parameters[name][~mask].any(), name
    assert M.sparsity_stats(pruning.parameters)["overall"] == pytest.approx(0.6, abs=2e-4)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["restored_best"] is restore_best
    assert report["best_epoch"] == (2 if restore_best else None)
    assert report["metric_after"] == pytest.approx(0.9 if restore_best else 0.75)
    reloaded = load_sparse(tmp_path / "sparse_model.pt")  # the file holds the weights handed back
    assert all(torch.equal(reloaded[k], final[k]) for k in reloaded)


def test_epochs_without_validation_still_follow_the_schedule() -> None:
    recorder = Recorder()
    pruning = GradualMagnitudePruning(sparsity=0.6, pruning_epochs=3, patience=1, finetune=False, max_epochs=9,
                                      save_sparse_model=False)
    trainer = fit(Scripted([0.5] * 9), pruning, recorder, check_val_every_n_epoch=2)
    assert recorder.start[:3] == pytest.approx([0.2, 0.4, 0.6], abs=2e-4)
    # epoch 2 (the last prune) does not validate: counting starts at epoch 3's validation, epoch 5's ends it
    assert recorder.phases == ["prune"] * 3 + ["converge"] * 3
    assert trainer.current_epoch == 6 and pruning.phase == "done"


def test_compact_save_is_smaller_and_reloads_the_same_dense_weights(tmp_path: Path) -> None:
    module = Scripted()
    pruning = GradualMagnitudePruning(sparsity=0.9, pruning_epochs=1, patience=0, finetune=False,
                                      output_dir=str(tmp_path))
    fit(module, pruning)
    report = json.loads((tmp_path / "report.json").read_text())
    size = report["size"]
    assert size["bytes"] == (tmp_path / "sparse_model.pt").stat().st_size
    assert size["bytes"] < 0.6 * size["dense_bytes"]
    fresh = LitTiny()
    state = load_sparse(tmp_path / "sparse_model.pt", fresh)
    for key, value in module.state_dict().items():
        assert torch.equal(state[key], value.cpu()), key
        assert torch.equal(fresh.state_dict()[key], value), key


# ---------------------------------------------------------------------- YAML
@pytest.mark.parametrize("name", ["dg2pf_quickstart", "dg2pf_resnet20_cifar10", "dg2pf_paper_resnet20_cifar10"])
def test_dg2pf_configs_build(name: str) -> None:
    if "cifar" in name and not os.environ.get("LIGHTNING_PRUNE_DATA"):
        pytest.skip("LIGHTNING_PRUNE_DATA is not set: the config loads weights from the data directory")
    from lightning.pytorch import LightningDataModule, LightningModule

    from lightning_prune.cli import PruneCLI

    cli = PruneCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                   args=["--config", str(CONFIGS / f"{name}.yaml"), "--trainer.logger=false"])
    kinds = {type(cb) for cb in cli.trainer.callbacks}
    assert {GradualMagnitudePruning, SimulatedPruning, SelfDistillation} <= kinds


def _recipe(name: str) -> dict[str, Any]:
    """The YAML recipe as {class name: init_args} plus "model" and "trainer"."""
    import yaml

    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    found = {c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in config["trainer"]["callbacks"]}
    return {**found, "model": config["model"]["init_args"], "trainer": config["trainer"]}


def test_the_paper_preset_holds_the_papers_settings_and_the_recipe_differs_where_documented() -> None:
    paper, recipe = _recipe("dg2pf_paper_resnet20_cifar10"), _recipe("dg2pf_resnet20_cifar10")
    gmp = paper["GradualMagnitudePruning"]
    assert (gmp["pruning_epochs"], gmp["schedule"], gmp["patience"], gmp["finetune"], gmp["max_epochs"]) == (
        15, "linear", 4, True, 100)
    assert gmp["finetune_optimizer"] == {"name": "sgd", "lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4}
    assert paper["SimulatedPruning"] == {"sparsity": 0.1}
    assert {k: paper["SelfDistillation"][k] for k in ("alpha", "temperature", "gamma", "beta", "loss")} == {
        "alpha": 0.9, "temperature": 0.5, "gamma": 1.0, "beta": 0.1, "loss": "dg2pf"}
    assert {k: paper["model"][k] for k in ("optimizer", "lr", "weight_decay")} == {
        "optimizer": "adamw", "lr": 1e-5, "weight_decay": 0.01}
    # the budget recipe: same method and target, its own optimiser, schedule, temperature and length
    ours = recipe["GradualMagnitudePruning"]
    assert ours["sparsity"] == gmp["sparsity"] == 0.9 and recipe["SimulatedPruning"] == paper["SimulatedPruning"]
    assert (ours["schedule"], ours["pruning_epochs"], ours["finetune"], ours["max_epochs"]) == ("cubic", 5, False, 10)
    assert recipe["SelfDistillation"]["temperature"] == 4.0 and recipe["SelfDistillation"]["alpha"] == 0.9
    assert {k: recipe["model"][k] for k in ("optimizer", "lr", "scheduler")} == {
        "optimizer": "sgd", "lr": 0.01, "scheduler": "cosine"}
    assert recipe["model"]["scheduler_kwargs"]["T_max"] == recipe["trainer"]["max_epochs"] == ours["max_epochs"]


def test_a_min_delta_the_metric_cannot_reach_is_refused_when_pruning_starts() -> None:
    module = LitTiny()
    shapes = {n: p.shape for n, p in module.named_parameters()}
    with pytest.raises(PruningConfigError, match=r"min_delta=1 can never be reached: val_acc measured") as info:
        fit(module, GradualMagnitudePruning(sparsity=0.5, pruning_epochs=2, min_delta=1.0))
    assert "HINT:" in str(info.value)
    assert {n: p.shape for n, p in module.named_parameters()} == shapes
