"""AAP's adaptive threshold with rollback: thresholds, the adaptive rule, exact rollback, targets, resume."""

from __future__ import annotations

import copy
import json
import logging
import math
import pickle
from typing import Any

import helpers
import pytest
import lightning
import torch
from helpers import Crash, LitTiny, make_data, make_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_prune import (
    AdaptiveThresholdRollback,
    LayerFreezer,
    PruningConfigError,
    PruningSatellite,
    StructuredPruning,
)
from lightning_prune.schedules import layer_thresholds, lowest_weighted
from lightning_prune.structural import graph as structure

ROUND_KEYS = {"round", "threshold", "lambda", "params", "macs", "metric", "acceptable", "rolled_back_to"}


class Scripted(helpers.Scripted):
    """A scripted metric; lr 0 keeps the weights (and L1 scores) fixed: filter i of every block's conv1 scores i."""

    def __init__(self, script: list[float], lr: float = 0.0) -> None:
        super().__init__(script, lr=lr)
        with torch.no_grad():
            for block in (*self.model.layer1, *self.model.layer2):
                c = block.conv1
                c.weight.copy_(torch.arange(c.out_channels, dtype=torch.float)[:, None, None, None].expand_as(c.weight)
                               / c.weight[0].numel())


def script(before: float, rounds: list[float]) -> list[float]:
    """metric_before, then per round (after prune, after retraining), then the unpruned value again."""
    out = [before]
    for value in rounds:
        out += [0.0, value]
    return out + [before]


class Spy(PruningSatellite, Callback):
    """Copies the model and optimizer state at every round's end, after AAP's decision was carried out.

    A rollback AAP decides in ``on_step_end`` is a request the controller resolves after that event,
    notifying ``on_structure_changed``: after a rolled-back round the state is taken there.
    """

    def __init__(self, adaptive: AdaptiveThresholdRollback) -> None:
        self.adaptive = adaptive
        self.states: list[dict[str, Any]] = []
        self._restoring = False

    def _copy(self, trainer, pl_module) -> dict[str, Any]:
        return {"model": copy.deepcopy(pl_module.state_dict()), "optim": copy.deepcopy(trainer.optimizers[0].state_dict())}

    def on_step_end(self, trainer, pl_module, controller, record) -> None:
        self.states.append(self._copy(trainer, pl_module))
        self._restoring = self.adaptive.rounds[-1]["rolled_back_to"] is not None

    def on_structure_changed(self, trainer, pl_module, controller) -> None:
        if self._restoring:  # the rollback's restore, right after on_step_end
            self.states[-1] = self._copy(trainer, pl_module)
        self._restoring = False


def fit(module: LitTiny, aap: AdaptiveThresholdRollback, *extra: Callback, importance: str = "l1", **kwargs: Any):
    pruning = StructuredPruning(importance=importance, finetune_epochs=aap.epochs_per_round, **kwargs)
    train, val = make_data()
    trainer = make_trainer([pruning, aap, *extra])
    trainer.fit(module, train, val)
    return pruning, trainer


def aap(**kwargs: Any) -> AdaptiveThresholdRollback:
    # the scripted tests reason in score units against the metric before pruning (the paper's rule)
    defaults: dict[str, Any] = dict(max_drop=0.05, lambda_init=1.0, convergence_rounds=100, threshold_units="score",
                                    reference="unpruned")
    defaults.update(kwargs)
    return AdaptiveThresholdRollback(**defaults)


def conv1_channels(module: LitTiny) -> list[int]:
    return [b.conv1.out_channels for b in (*module.model.layer1, *module.model.layer2)]


def assert_equal_state(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_equal_state(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_equal_state(x, y)
    else:
        assert a == b


# ---------------------------------------------------------------- thresholds
def test_round_thresholds_are_T_times_layer_share_of_parameters() -> None:
    module = Scripted(script(0.9, [0.9] * 3))
    adaptive = aap(threshold_init=5.0, lambda_init=1.0, max_rounds=1)
    pruning, _ = fit(module, adaptive)
    x = torch.zeros(1, 3, 8, 8)
    fresh = Scripted([0.0])
    layers = structure.discover_layers(fresh, structure.build_graph(fresh, x), [structure.default_head(fresh)], False)
    total = sum(layer.group_params for layer in layers)
    expected = {layer.name: 5.0 * layer.group_params / total for layer in layers}
    assert adaptive.last_layer_thresholds == pytest.approx(expected)
    # filter i scores exactly i: a layer loses every i <= its threshold
    removed = [math.floor(t) + 1 for t in expected.values()]
    assert conv1_channels(module) == [8 - removed[0], 8 - removed[1], 16 - removed[2]]
    assert pruning.report.steps[0].channels_removed == sum(removed)


def test_flops_weighting_uses_layer_macs() -> None:
    module = Scripted(script(0.9, [0.9]))
    adaptive = aap(threshold_init=2.0, max_rounds=1, layer_weighting="flops")
    fit(module, adaptive)
    # layer1 convs: 8x8x9 weights at 8x8 positions; layer2.0.conv1: 16x8x9 at 4x4 (stride 2)
    macs = {"model.layer1.0.conv1": 576 * 64, "model.layer1.1.conv1": 576 * 64, "model.layer2.0.conv1": 1152 * 16}
    assert adaptive.last_layer_thresholds == pytest.approx(layer_thresholds(2.0, macs))


def test_quantile_units_remove_that_fraction_of_the_original_filters() -> None:
    # 32 prunable filters; rounds at T = 0.25, 0.5 (too low: rolled back), then 0.25 + 0.25 / 2
    module = Scripted(script(0.90, [0.89, 0.70, 0.89]))
    adaptive = aap(threshold_units="quantile", threshold_init=None, lambda_init=0.25, max_rounds=3)
    pruning, _ = fit(module, adaptive)
    assert [r["threshold"] for r in adaptive.rounds[1:]] == [0.25, 0.5, 0.375]
    # floor(T * 32) gone in all: 8, 16 (rolled back, its record with it), then 12
    assert [s.channels_removed for s in pruning.report.steps] == [8, 4]
    assert [r["acceptable"] for r in adaptive.rounds] == [True, True, False, True]
    assert sum(conv1_channels(module)) == 32 - 12 and min(conv1_channels(module)) >= 1
    # the order is AAP's: filter i scores i, over the layer's share of the parameters
    fresh = Scripted([0.0])
    layers = structure.discover_layers(fresh, structure.build_graph(fresh, torch.zeros(1, 3, 8, 8)),
                                       [structure.default_head(fresh)], False)
    sizes = {layer.name: float(layer.group_params) for layer in layers}
    scores = {layer.name: torch.arange(layer.channels, dtype=torch.float) for layer in layers}
    expected, _ = lowest_weighted(scores, sizes, 8)
    assert {n: sorted(i) for n, i in pruning.history[0]} == {n: i for n, i in expected.items() if i}


@pytest.mark.parametrize(("retrained", "reference", "acceptable"), [
    (0.80, "retrained", True),  # retraining alone costs 10 points: round 1's 0.79 is 1 point under it
    (0.80, "unpruned", False),  # the paper's reference blames pruning for them
    (0.95, "retrained", True),  # retraining alone gains 5 points: not demanded of pruning (0.87 vs 0.90)
])
def test_rounds_are_judged_against_the_unpruned_model_retrained_alike(retrained: float, reference: str,
                                                                       acceptable: bool) -> None:
    after = 0.79 if retrained < 0.9 else 0.87
    # the trial epoch's own validation (0.5, not used), then the measurement after it
    values = [0.90] + ([0.5, retrained] if reference == "retrained" else []) + [0.0, after, 0.90]
    module = Scripted(values)
    adaptive = aap(reference=reference, max_rounds=1)
    pruning, trainer = fit(module, adaptive)
    assert adaptive.rounds[1]["acceptable"] is acceptable
    section = pruning.report.extra["aap"]
    assert section["metric_retrained_unpruned"] == (pytest.approx(retrained) if reference == "retrained" else None)
    assert section["reference_metric"] == pytest.approx(min(0.90, retrained) if reference == "retrained" else 0.90)
    # the reference retraining is one round's epoch more: trial epoch, then round 1's
    assert trainer.global_step == trainer.num_training_batches * (2 if reference == "retrained" else 1)
    assert pruning.report.extra["probe"]["components"] == [] if reference == "retrained" else "probe" not in pruning.report.extra


# ---------------------------------------------------------------- the adaptive rule
def test_acceptable_raises_T_and_unacceptable_rolls_back_exactly() -> None:
    # rounds: 1 ok, 2 ok, 3 too low -> back to 2 with lambda/2, 4 ok; max_rounds 4
    module = Scripted(script(0.90, [0.89, 0.88, 0.70, 0.87]))
    adaptive = aap(threshold_init=0.0, lambda_init=2.0, max_rounds=4)
    spy = Spy(adaptive)
    pruning, _ = fit(module, adaptive, spy)
    rounds = pruning.report.extra["rounds"]
    assert all(set(r) == ROUND_KEYS for r in rounds)
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4]
    assert [r["acceptable"] for r in rounds] == [True, True, True, False, True]
    assert [r["rolled_back_to"] for r in rounds] == [None, None, None, 2, None]
    assert [r["threshold"] for r in rounds[:4]] == [None, 0.0, 2.0, 4.0]  # T += 2
    # after the rollback T_2 + 2 / 2 = 3 would prune nothing new in round 2's model: raised to the smallest T
    # that prunes, still under the T that failed
    # (filters score whole numbers, so the smallest T that prunes removes what round 3 removed: a retry that
    # cannot prune less than the rejected round, paid for out of max_rollbacks)
    assert 3.0 < rounds[4]["threshold"] < 4.0 and rounds[4]["params"] == rounds[3]["params"] < rounds[2]["params"]
    assert [r["lambda"] for r in rounds] == [2.0, 2.0, 2.0, 2.0, 1.0]
    # the rollback put back round 2's structure, weights and optimizer state bit for bit
    assert_equal_state(spy.states[2]["model"], spy.states[1]["model"])
    assert_equal_state(spy.states[2]["optim"], spy.states[1]["optim"])
    assert any(s["momentum_buffer"].abs().sum() > 0 for s in spy.states[1]["optim"]["state"].values())
    assert rounds[3]["params"] < rounds[2]["params"]
    assert adaptive.stop_reason == "max_rounds"


def test_after_max_rollbacks_it_goes_further_back() -> None:
    # 1 ok; 2 bad -> back to 1 (lambda 1/2); 3 bad -> 1 used up, marked; back to 0 (lambda 1/2); 4 ok
    module = Scripted(script(0.90, [0.89, 0.5, 0.5, 0.88]))
    adaptive = aap(threshold_init=0.0, lambda_init=1.0, max_rollbacks=1, max_rounds=4)
    pruning, _ = fit(module, adaptive)
    rounds = pruning.report.extra["rounds"]
    assert [r["rolled_back_to"] for r in rounds] == [None, None, 1, 0, None]
    # a T that would prune nothing is raised to the smallest T that prunes a filter, so no round is an empty one:
    # round 2 asks 1.0 (nothing new scores under 1.0 * N_i / N), round 3 (back at round 1) 1.5, both raised to the
    # same T; round 4 (back at round 0) asks T_0 + 1/2 = -0.5 (T_0 = init - lambda = -1), raised to just above 0
    raised = rounds[2]["threshold"]
    assert rounds[1]["threshold"] == 0.0 and 1.5 < raised < 2.0 and rounds[3]["threshold"] == raised
    assert 0.0 < rounds[4]["threshold"] < 1e-9
    assert [r["lambda"] for r in rounds] == [1.0, 1.0, 1.0, 0.5, 0.5]
    assert pruning.report.extra["aap"]["marked_unacceptable"] == [1]
    assert rounds[4]["params"] == rounds[1]["params"] < rounds[0]["params"]
    # rounds 1 and 4 are the same size: round 1, marked by the rule but within the target, has the better metric
    assert adaptive.final_round == 1 and conv1_channels(module) == [7, 7, 15]
    # round 1 is not an ancestor of round 4: the report describes round 1's own path and metric
    assert [s.metric_after_finetune for s in pruning.report.steps] == pytest.approx([0.89])
    assert pruning.report.totals()["metric_after"] == pytest.approx(0.89)
    assert pruning.report.totals()["params_after"] == rounds[1]["params"] == structure.count_params(module)


def test_no_acceptable_round_left_ends_at_round_0_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    module = Scripted(script(0.90, [0.5, 0.6]))
    unpruned = copy.deepcopy(module.state_dict())
    adaptive = aap(threshold_init=0.0, lambda_init=1.0, max_rollbacks=1)
    with caplog.at_level(logging.WARNING, logger="lightning_prune"):
        pruning, _ = fit(module, adaptive)
    rounds = pruning.report.extra["rounds"]
    assert [r["rolled_back_to"] for r in rounds] == [None, 0, None]
    assert all(r["params"] < rounds[0]["params"] for r in rounds[1:])  # round 2 (T < 0) was raised: not empty
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "AAP pruned nothing: 2 pruned rounds were all unacceptable" in warning[0]
    assert "smallest val_acc drop was 0.3 (round 2" in warning[0] and "max_drop=0.05" in warning[0]
    assert "HINT: lower the learning rate if retraining alone lowers the metric (reference='retrained'" in warning[0]
    assert adaptive.stop_reason == "no acceptable round left"
    assert pruning.report.extra["aap"]["marked_unacceptable"] == [0]
    assert adaptive.final_round == 0
    assert_equal_state(module.state_dict(), unpruned)
    totals = pruning.report.totals()
    assert totals["params_after"] == totals["params_before"] and totals["metric_after"] == pytest.approx(0.90)
    assert pruning.history == [] and pruning.report.steps == []


def test_convergence_stops_and_the_final_model_is_the_best_acceptable_round() -> None:
    # No round is empty (a T that prunes nothing is raised), so every accepted round removes filters. With
    # convergence_tol 0.06, rounds that shrink the model by under 6 % count as converged: rounds 2-4 (4-5.5 %
    # each) end the loop after round 4, the smallest acceptable round, which is the final model.
    module = Scripted(script(0.90, [0.89, 0.86, 0.87, 0.88]))
    adaptive = aap(threshold_init=0.0, lambda_init=1e-3, convergence_rounds=3, convergence_tol=0.06, max_rounds=50)
    spy = Spy(adaptive)
    pruning, _ = fit(module, adaptive, spy)
    rounds = pruning.report.extra["rounds"]
    assert len(rounds) == 5 and adaptive.stop_reason == "converged"
    sizes = [r["params"] for r in rounds]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 5  # every round pruned something
    assert all((a - b) / a <= 0.06 for a, b in zip(sizes[1:], sizes[2:]))
    assert adaptive.final_round == 4
    assert_equal_state(module.state_dict(), spy.states[3]["model"])
    totals = pruning.report.totals()
    assert (totals["params_after"], totals["macs_after"], totals["metric_after"]) == (
        rounds[4]["params"], rounds[4]["macs"], pytest.approx(0.88))


def test_a_stop_during_a_retry_after_a_rollback_restores_the_best_round() -> None:
    """Round 3 (after the rollback to round 1) is pruned, then max_steps stops its retraining: the model
    is round 3's, no round's snapshot, so round 1 must be put back (not left as it is)."""
    module = Scripted(script(0.90, [0.89, 0.5, 0.88]), lr=0.05)
    adaptive = aap(threshold_init=0.0, lambda_init=1.0)
    spy = Spy(adaptive)
    pruning = StructuredPruning(importance="l1", finetune_epochs=1)
    train, val = make_data()
    trainer = make_trainer([pruning, adaptive, spy], max_steps=2 * 4 + 2)  # 4 batches an epoch: 2 rounds, then 2 steps
    trainer.fit(module, train, val)
    rounds = pruning.report.extra["rounds"]
    assert [r["rolled_back_to"] for r in rounds] == [None, None, 1]
    assert len(pruning.history) == 1 and adaptive.final_round == 1  # round 3's prune was undone
    assert_equal_state(module.state_dict(), spy.states[0]["model"])
    assert pruning.report.totals()["params_after"] == rounds[1]["params"] == structure.count_params(module)


def test_never_returns_a_rejected_round() -> None:
    # the last round is rejected when max_rounds ends the loop: its rollback target (round 1) is the result
    module = Scripted(script(0.90, [0.89, 0.10]))
    adaptive = aap(threshold_init=0.0, lambda_init=4.0, max_rounds=2)
    pruning, _ = fit(module, adaptive)
    rounds = pruning.report.extra["rounds"]
    assert [r["acceptable"] for r in rounds] == [True, True, False]
    assert adaptive.final_round == 1 and pruning.report.totals()["params_after"] == rounds[1]["params"]
    assert pruning.report.totals()["metric_after"] == pytest.approx(0.89)


def test_report_json_holds_the_rounds(tmp_path) -> None:
    module = Scripted(script(0.90, [0.89, 0.89]))  # equally small and good: the later round wins
    fit(module, aap(max_rounds=2), output_dir=str(tmp_path))
    data = json.loads((tmp_path / "report.json").read_text())
    assert [set(r) for r in data["extra"]["rounds"]] == [ROUND_KEYS] * 3
    assert data["extra"]["aap"]["final_round"] == 2


@pytest.mark.parametrize(("target", "key"), [("params", "params"), ("flops", "macs")])
def test_size_targets_approach_the_reduction_from_below(target: str, key: str) -> None:
    module = Scripted(script(0.90, [0.5] * 12))  # the metric does not matter for size targets
    kwargs = {"param_reduction": 0.3} if target == "params" else {"flops_reduction": 0.3}
    adaptive = aap(target=target, max_drop=None, threshold_init=0.0, lambda_init=8.0, max_rounds=8, **kwargs)
    pruning, _ = fit(module, adaptive)
    rounds = pruning.report.extra["rounds"]
    before = rounds[0][key]
    for r in rounds:
        assert r["acceptable"] == (1 - r[key] / before <= 0.3 + 1e-12)
    assert not all(r["acceptable"] for r in rounds)  # at least one overshoot was rolled back
    best = max((r for r in rounds if r["acceptable"]), key=lambda r: 1 - r[key] / before)
    final = pruning.report.totals()["params_after" if key == "params" else "macs_after"]
    assert final == best[key] and 1 - final / before <= 0.3


def test_a_size_target_met_to_within_convergence_tol_stops_the_rounds() -> None:
    module = Scripted(script(0.90, [0.5] * 5))
    adaptive = aap(target="params", max_drop=None, param_reduction=0.3, convergence_tol=0.25, max_rounds=5,
                   threshold_units="quantile", threshold_init=None, lambda_init=0.25)
    pruning, _ = fit(module, adaptive)
    rounds = adaptive.rounds
    reduction = 1 - rounds[1]["params"] / rounds[0]["params"]
    assert 0.05 <= reduction <= 0.3 and rounds[1]["acceptable"]  # within 0.25 of the asked 0.3
    assert (len(rounds), adaptive.stop_reason, adaptive.final_round) == (2, "target reached", 1)
    assert pruning.report.totals()["params_after"] == rounds[1]["params"]


@pytest.mark.parametrize("importance", ["l1", "attention"])
def test_works_with_importance_criteria(importance: str) -> None:
    torch.manual_seed(0)
    module = LitTiny()
    adaptive = AdaptiveThresholdRollback(max_drop=0.2, max_rounds=2)  # quantile units: no per-criterion lambda
    pruning, _ = fit(module, adaptive, importance=importance)
    rounds = pruning.report.extra["rounds"]
    assert len(rounds) == 3 and all(r["acceptable"] for r in rounds)
    assert rounds[2]["params"] < rounds[0]["params"]
    assert pruning.report.totals()["params_after"] == structure.count_params(module) == rounds[2]["params"]


def test_rewind_weights_resets_survivors_to_round_0() -> None:
    torch.manual_seed(0)
    module = LitTiny()
    original = copy.deepcopy(module)

    class Check(PruningSatellite, Callback):
        equal: list[bool] = []

        def finetune_decision(self, trainer, pl_module, controller, record):
            reference = copy.deepcopy(original)
            structure.replay(reference, torch.zeros(1, 3, 8, 8), controller.history)
            self.equal.append(all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(),
                                                                   pl_module.state_dict().values())))

    adaptive = AdaptiveThresholdRollback(max_drop=0.2, lambda_init=0.5, max_rounds=2, rewind="weights")
    fit(module, adaptive, Check())
    assert Check.equal == [True, True]


def test_rewind_none_continues_the_lr_schedule() -> None:
    class WithScheduler(Scripted):
        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=1.0)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]

    lrs: dict[str, list[float]] = {}
    for rewind in ("none", "lr"):
        class Lr(PruningSatellite, Callback):
            def finetune_decision(self, trainer, pl_module, controller, record):
                lrs.setdefault(rewind, []).append(trainer.optimizers[0].param_groups[0]["lr"])

        fit(WithScheduler(script(0.9, [0.9] * 3)), aap(max_rounds=3, rewind=rewind), Lr())
    assert lrs == {"none": [1.0, 0.5, 0.25], "lr": [1.0, 1.0, 1.0]}


# ---------------------------------------------------------------- state and resume

def resumable_run(tmp_path, callbacks: list[Callback], ckpt_path: str | None = None):
    torch.manual_seed(0)
    module = LitTiny()
    train, val = make_data()
    pruning = StructuredPruning(importance="l1", finetune_epochs=1, pretrain_epochs=1)
    adaptive = AdaptiveThresholdRollback(target="params", param_reduction=0.4, lambda_init=0.3, max_rounds=6)
    saver = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = make_trainer([pruning, adaptive, *callbacks, saver], enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return module, pruning, adaptive


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return resumable_run(tmp_path_factory.mktemp("aap_full"), [])


def test_crash_then_resume_equals_uninterrupted(tmp_path, uninterrupted) -> None:
    module, pruning, adaptive = uninterrupted
    rollbacks = [r["round"] for r in adaptive.rounds if r["rolled_back_to"] is not None]
    assert rollbacks, adaptive.rounds  # the run exercises a rollback
    crash_epoch = 1 + rollbacks[0] + 1  # pretrain epoch, then one epoch a round: mid-round after the rollback
    with pytest.raises(RuntimeError, match="injected crash"):
        resumable_run(tmp_path, [Crash(crash_epoch)])
    resumed, resumed_pruning, resumed_adaptive = resumable_run(tmp_path / "r", [], ckpt_path=str(tmp_path / "last.ckpt"))
    assert_equal_state(resumed.state_dict(), module.state_dict())
    strip = lambda rounds: [{k: v for k, v in r.items()} for r in rounds]
    assert strip(resumed_adaptive.rounds) == strip(adaptive.rounds)
    assert resumed_pruning.report.totals()["params_after"] == pruning.report.totals()["params_after"]


def test_state_round_trip_and_pickle(tmp_path, uninterrupted) -> None:
    _, _, adaptive = uninterrupted
    resumable_run(tmp_path, [])
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]
    key = "AdaptiveThresholdRollback"  # identity, not arguments: a changed argument is named on resume
    assert key == adaptive.state_key and key in state
    with pytest.raises(PruningConfigError, match=r"lambda_init=0.05 \(the checkpoint has lambda_init=0.3\)"):
        AdaptiveThresholdRollback(target="params", param_reduction=0.4).load_state_dict(state[key])
    fresh = AdaptiveThresholdRollback(target="params", param_reduction=0.4, lambda_init=0.3, max_rounds=6)
    fresh.load_state_dict(state[key])
    # the last checkpoint is written at the last round's validation, before that round's decision
    assert fresh.rounds == adaptive.rounds[:-1] and len(fresh.rounds) == len(adaptive.rounds) - 1
    assert_equal_state(fresh.state_dict()["stack"], state[key]["stack"])
    clone = pickle.loads(pickle.dumps(fresh))
    assert clone.rounds == fresh.rounds
    assert_equal_state(clone.state_dict()["stack"], fresh.state_dict()["stack"])


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"monitor": ""}, "monitor"),
        ({"mode": "up"}, "mode"),
        ({"target": "latency"}, "target"),
        ({"max_drop": -0.1}, "max_drop"),
        ({"max_drop": float("nan")}, "max_drop"),
        ({"target": "params", "max_drop": None}, "param_reduction"),
        ({"target": "params", "max_drop": None, "param_reduction": 1.5}, "param_reduction"),
        ({"target": "flops", "max_drop": None, "flops_reduction": 0.0}, "flops_reduction"),
        ({"param_reduction": 0.5}, "param_reduction"),
        ({"threshold_init": float("inf")}, "threshold_init"),
        ({"lambda_init": 0.0}, "lambda_init"),
        ({"max_rollbacks": -1}, "max_rollbacks"),
        ({"max_rollbacks": 1.5}, "max_rollbacks"),
        ({"convergence_tol": -1.0}, "convergence_tol"),
        ({"convergence_rounds": 0}, "convergence_rounds"),
        ({"max_rounds": True}, "max_rounds"),
        ({"epochs_per_round": 0}, "epochs_per_round"),
        ({"rewind": "epoch"}, "rewind"),
        ({"layer_weighting": "latency"}, "layer_weighting"),
        ({"threshold_units": "percent"}, "threshold_units"),
        ({"reference": "best"}, "reference"),
        ({"lambda_init": 1.5}, r"lambda_init=1.5 must be None or a finite number > 0 and < 1"),
        ({"threshold_init": 1.0}, r"threshold_init=1.0 must be None or a finite number in \[0, 1\)"),
    ],
)
def test_bad_arguments_raise_with_a_hint(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(PruningConfigError, match=match) as info:
        AdaptiveThresholdRollback(**kwargs)
    assert "HINT:" in str(info.value)


@pytest.mark.parametrize(
    ("controller", "adaptive", "match"),
    [
        ({"finetune_epochs": 2}, {}, "finetune_epochs"),
        ({"monitor": "val_loss", "mode": "min"}, {"monitor": "val_acc"}, "watches monitor='val_acc' but "
         "StructuredPruning has monitor='val_loss'"),
    ],
)
def test_bad_setups_raise_with_a_hint(controller: dict[str, Any], adaptive: dict[str, Any], match: str) -> None:
    train, val = make_data()
    trainer = make_trainer([StructuredPruning(**controller), AdaptiveThresholdRollback(**adaptive)])
    with pytest.raises(PruningConfigError, match=match) as info:
        trainer.fit(LitTiny(), train, val)
    assert "HINT:" in str(info.value)


def test_the_reference_trial_and_layer_freezers_probe_cannot_share_a_run() -> None:
    torch.manual_seed(0)
    module = LitTiny()
    shapes = {n: p.shape for n, p in module.named_parameters()}
    with pytest.raises(PruningConfigError, match="two satellites asked for a trial epoch") as info:
        fit(module, AdaptiveThresholdRollback(max_drop=0.2, max_rounds=2), LayerFreezer(freeze_fraction=0.3))
    assert "use reference='unpruned' beside LayerFreezer" in str(info.value)
    assert {n: p.shape for n, p in module.named_parameters()} == shapes  # AAP's trial, asked first, prunes nothing
    # the paper's reference needs no trial: the two work together
    pruning, _ = fit(LitTiny(), AdaptiveThresholdRollback(max_drop=0.2, max_rounds=1, reference="unpruned"),
                     LayerFreezer(freeze_fraction=0.3))
    assert pruning.report.extra["aap"]["metric_retrained_unpruned"] is None and "layer_freezer" in pruning.report.extra


def test_monitor_and_mode_default_to_the_controllers() -> None:
    train, val = make_data()
    adaptive = AdaptiveThresholdRollback(target="params", max_drop=None, param_reduction=0.3, max_rounds=1)
    make_trainer([StructuredPruning(monitor="val_loss", mode="min"), adaptive]).fit(LitTiny(), train, val)
    assert (adaptive.monitor, adaptive.mode) == ("val_loss", "min")
    assert adaptive.rounds[0]["metric"] > 0.1  # round 0 measured the loss, not an accuracy


# ---------------------------------------------------------------- the quick start
def test_quickstart_config_meets_its_accuracy_target(tmp_path) -> None:
    from pathlib import Path

    from lightning_prune import load_pruned
    from lightning_prune.cli import main
    from lightning_prune.models import digits_resnet

    config = Path(__file__).parents[2] / "configs" / "aap_quickstart.yaml"
    main(["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"])
    report_path = next(tmp_path.rglob("report.json"))
    data = json.loads(report_path.read_text())
    totals, rounds, final = data["totals"], data["extra"]["rounds"], data["extra"]["aap"]["final_round"]
    aap_section = data["extra"]["aap"]
    # judged against the worse of the unpruned model before and after one epoch of retraining alone
    assert aap_section["reference_metric"] == min(totals["metric_before"], aap_section["metric_retrained_unpruned"])
    assert aap_section["reference_metric"] - totals["metric_after"] <= 0.03 + 1e-9
    assert totals["params_after"] <= 0.5 * totals["params_before"]
    chosen = next(r for r in rounds if r["round"] == final)
    assert chosen["acceptable"] and (chosen["params"], chosen["macs"]) == (totals["params_after"], totals["macs_after"])
    assert chosen["metric"] == pytest.approx(totals["metric_after"])
    net = load_pruned(report_path.parent / "pruned_model.pt", digits_resnet())
    assert sum(p.numel() for p in net.parameters()) == totals["params_after"]


def test_a_max_drop_the_metric_cannot_exceed_is_refused_before_any_surgery() -> None:
    torch.manual_seed(0)
    module = LitTiny()
    shapes = {n: p.shape for n, p in module.named_parameters()}
    with pytest.raises(PruningConfigError, match=r"max_drop=1\) accepts any model: val_acc measured") as info:
        fit(module, AdaptiveThresholdRollback(max_drop=1.0))
    assert "use max_drop=0.01 for one point" in str(info.value)
    assert {n: p.shape for n, p in module.named_parameters()} == shapes


# ---------------------------------------------------------------- defaults, as a user calls them
class UserResidualNet(torch.nn.Module):
    """A user's own small residual network for 8x8 digits (nothing from the library's registry)."""

    def __init__(self) -> None:
        super().__init__()
        conv = lambda i, o: torch.nn.Sequential(torch.nn.Conv2d(i, o, 3, padding=1, bias=False), torch.nn.BatchNorm2d(o))
        self.stem, self.a1, self.a2, self.b1, self.b2 = conv(1, 32), conv(32, 32), conv(32, 32), conv(32, 32), conv(32, 32)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.a2(torch.relu(self.a1(x))))
        x = torch.relu(x + self.b2(torch.relu(self.b1(x))))
        return self.head(x.mean((2, 3)))


class UserModule(lightning.LightningModule):
    """AdamW at the user's own lr 3e-3, logging val_acc as a fraction."""

    def __init__(self) -> None:
        super().__init__()
        self.net = UserResidualNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


@pytest.mark.slow
def test_defaults_prune_a_users_module_on_digits(caplog: pytest.LogCaptureFixture) -> None:
    """The issue's case: the paper's score units and reference pruned nothing here, and said nothing."""
    from lightning_prune import DigitsDataModule

    lightning.seed_everything(0)
    pruning = StructuredPruning(pretrain_epochs=8, finetune_epochs=1)
    adaptive = AdaptiveThresholdRollback(max_drop=0.02, max_rounds=8)
    trainer = lightning.Trainer(max_epochs=-1, callbacks=[pruning, adaptive], logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)
    with caplog.at_level(logging.INFO):
        trainer.fit(UserModule(), datamodule=DigitsDataModule(batch_size=64))
    totals, section = pruning.report.totals(), pruning.report.extra["aap"]
    assert totals["params_after"] < 0.9 * totals["params_before"], adaptive.rounds  # 17 % in 8 rounds
    assert section["reference_metric"] - totals["metric_after"] <= 0.02 + 1e-9
    assert adaptive.final_round is not None and adaptive.final_round > 0
    assert "pruned nothing" not in caplog.text
