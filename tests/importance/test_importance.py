"""Tests of lightning_prune.importance: channel importance criteria, registry and calibration."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from torch import nn

from lightning_prune.errors import PruningConfigError
from lightning_prune.importance import (
    IMPORTANCES,
    AttentionImportance,
    ChannelImportance,
    EntropyImportance,
    L1Importance,
    L2Importance,
    MeanActivationImportance,
    RandomImportance,
    calibrate,
    filter_weights,
    get_importance,
    register_importance,
)

DATA_DRIVEN = [name for name, cls in IMPORTANCES.items() if cls.requires_data]


class SmallNet(nn.Module):
    """conv-bn-relu x2 -> pool -> linear; one ReLU module shared like torchvision does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _net(seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    net = SmallNet()
    with torch.no_grad():  # non-trivial eval-mode BatchNorm statistics
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return net


def _sources(net: SmallNet) -> dict[str, nn.Module]:
    return {"conv1": net.bn1, "conv2": net.bn2, "fc": net.fc}


def _layers(net: SmallNet) -> dict[str, nn.Module]:
    return {"conv1": net.conv1, "conv2": net.conv2, "fc": net.fc}


def _batches(sizes: tuple[int, ...] = (4, 3), seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 8, 8, generator=gen) for n in sizes]


def _identity_scores(crit: ChannelImportance, batches: list[torch.Tensor]) -> torch.Tensor:
    """Scores of a criterion that observed ``batches`` directly (identity source)."""
    ident = nn.Identity()
    calibrate(crit, {"layer": ident}, ident, batches)
    return crit.score("layer", nn.Conv2d(1, batches[0].shape[1], 1))


def _known_activations() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(n, 4, 3, 5, generator=gen, dtype=torch.float64) for n in (6, 3)]


# --------------------------------------------------------------------------- every criterion
@pytest.mark.parametrize("name", sorted(IMPORTANCES))
def test_every_criterion_scores_each_output_channel(name: str) -> None:
    net = _net()
    crit = get_importance(name)
    assert crit.name == name
    calibrate(crit, _sources(net), net, _batches())
    for layer_name, layer in _layers(net).items():
        scores = crit.score(layer_name, layer)
        assert scores.dtype == torch.float32
        assert scores.device.type == "cpu"
        assert scores.shape == (layer.weight.shape[0],)
        assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", sorted(IMPORTANCES))
def test_every_criterion_state_dict_round_trip(name: str) -> None:
    net = _net()
    crit = calibrate(get_importance(name), _sources(net), net, _batches())
    buffer = io.BytesIO()
    torch.save(crit.state_dict(), buffer)
    buffer.seek(0)
    clone = get_importance(name)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    for layer_name, layer in _layers(net).items():
        torch.testing.assert_close(clone.score(layer_name, layer), crit.score(layer_name, layer))


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_data_driven_statistics_accumulate_across_batches(name: str) -> None:
    net = _net()
    split = calibrate(get_importance(name), _sources(net), net, _batches((4, 3)))
    whole = calibrate(get_importance(name), _sources(net), net, [torch.cat(_batches((4, 3)))])
    for layer_name, layer in _layers(net).items():
        torch.testing.assert_close(split.score(layer_name, layer), whole.score(layer_name, layer))


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_always_zero_channel_scores_lowest(name: str) -> None:
    net = _net()
    with torch.no_grad():
        net.conv1.weight[2].zero_()
        net.conv1.bias[2] = 0.0
    crit = calibrate(get_importance(name), {"conv1": net.conv1}, net, _batches((8, 8)))
    scores = crit.score("conv1", net.conv1)
    others = torch.cat([scores[:2], scores[3:]])
    assert scores[2] < others.min()


@pytest.mark.parametrize("crit", [L1Importance(), L2Importance()], ids=["l1", "l2"])
def test_weight_criteria_zero_filter_scores_lowest(crit: ChannelImportance) -> None:
    net = _net()
    with torch.no_grad():
        net.conv2.weight[5].zero_()
    scores = crit.score("conv2", net.conv2)
    assert scores[5] == 0.0
    assert scores.argmin() == 5


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_reset_clears_statistics(name: str) -> None:
    net = _net()
    crit = calibrate(get_importance(name), _sources(net), net, _batches())
    crit.score("conv1", net.conv1)
    crit.reset()
    with pytest.raises(PruningConfigError, match="no calibration data reached layer 'conv1'"):
        crit.score("conv1", net.conv1)


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_unseen_layer_raises_with_hint(name: str) -> None:
    net = _net()
    crit = calibrate(get_importance(name), {"conv1": net.bn1}, net, _batches())
    with pytest.raises(PruningConfigError, match="HINT: .*'conv2' was never attached") as err:
        crit.score("conv2", net.conv2)
    assert "'conv2'" in str(err.value)


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_layer_attached_but_never_run_raises_with_hint(name: str) -> None:
    net = _net()
    unused = nn.BatchNorm2d(6)
    crit = calibrate(get_importance(name), {"ghost": unused}, net, _batches())
    with pytest.raises(PruningConfigError, match="HINT: no calibration data reached layer 'ghost'"):
        crit.score("ghost", net.conv1)


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_channel_count_mismatch_raises(name: str) -> None:
    net = _net()
    crit = calibrate(get_importance(name), _sources(net), net, _batches())
    with pytest.raises(PruningConfigError, match="has 3 output channels.*HINT: call reset"):
        crit.score("conv1", nn.Conv2d(3, 3, 3))


# --------------------------------------------------------------------------- weight criteria
def test_l1_l2_hand_computed_conv() -> None:
    conv = nn.Conv2d(1, 3, 2, bias=False)
    weight = torch.tensor(
        [[[[1.0, -2.0], [0.0, 2.0]]], [[[3.0, 4.0], [0.0, 0.0]]], [[[-1.0, -1.0], [-1.0, -1.0]]]]
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
    assert torch.equal(get_importance("l1").score("c", conv), torch.tensor([5.0, 7.0, 4.0]))
    assert torch.equal(get_importance("l2").score("c", conv), torch.tensor([3.0, 5.0, 2.0]))


def test_l1_l2_hand_computed_linear_rows() -> None:
    fc = nn.Linear(2, 2)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[6.0, -8.0], [0.5, 0.0]]))
        fc.bias.fill_(100.0)  # biases are not part of the score
    assert torch.equal(L1Importance().score("fc", fc), torch.tensor([14.0, 0.5]))
    assert torch.equal(L2Importance().score("fc", fc), torch.tensor([10.0, 0.5]))


def test_weight_criteria_group_transposed_conv_by_output_channel() -> None:
    deconv = nn.ConvTranspose2d(4, 6, 2, groups=2)  # weight [in=4, out/groups=3, 2, 2]
    w = deconv.weight.detach()
    expected = torch.stack(
        [w[g * 2 : (g + 1) * 2, j].abs().sum() for g in range(2) for j in range(3)]
    )
    torch.testing.assert_close(L1Importance().score("d", deconv), expected)
    assert filter_weights(deconv).shape == (6, 8)


def test_weight_criterion_without_weight_raises() -> None:
    with pytest.raises(PruningConfigError, match="ReLU has no weight"):
        L1Importance().score("relu", nn.ReLU())


# --------------------------------------------------------------------------- random
def test_random_same_seed_same_scores_and_global_rng_untouched() -> None:
    conv = nn.Conv2d(3, 16, 1)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = RandomImportance(seed=5), RandomImportance(seed=5), RandomImportance(seed=6)
    sa, sb, sc = (crit.score("c", conv) for crit in (a, b, c))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(sa, sb)
    assert not torch.equal(sa, sc)
    assert sa.dtype == torch.float32 and sa.shape == (16,)
    assert not torch.equal(a.score("c", conv), sa)  # the sequence advances


def test_random_state_dict_continues_sequence() -> None:
    conv = nn.Conv2d(3, 10, 1)
    run = RandomImportance(seed=2)
    run.score("c", conv)
    state = run.state_dict()
    expected = [run.score("c", conv), run.score("c", conv)]
    resumed = RandomImportance(seed=2)
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed.score("c", conv), e) for e in expected)


def test_random_rejects_state_of_other_seed_or_criterion() -> None:
    with pytest.raises(PruningConfigError, match="config"):
        RandomImportance(seed=1).load_state_dict(RandomImportance(seed=2).state_dict())
    with pytest.raises(PruningConfigError, match="'l1' cannot be loaded into the 'random'"):
        RandomImportance().load_state_dict(L1Importance().state_dict())


# --------------------------------------------------------------------------- data-driven values
@pytest.mark.parametrize("p", [1.0, 2.0])
@pytest.mark.parametrize("reduction", ["mean", "max", "sum"])
def test_attention_matches_direct_computation(reduction: str, p: float) -> None:
    acts = _known_activations()
    scores = _identity_scores(AttentionImportance(reduction=reduction, p=p), acts)
    per_sample = torch.relu(torch.cat(acts)).flatten(2).abs() ** p  # [N, C, H*W]
    reduce = {"mean": lambda t: t.mean(2), "max": lambda t: t.amax(2), "sum": lambda t: t.sum(2)}
    expected = reduce[reduction](per_sample).mean(0)
    torch.testing.assert_close(scores, expected.float())


def test_attention_powers_each_sample_before_averaging() -> None:
    acts = [torch.tensor([[[1.0]], [[3.0]]]).reshape(2, 1, 1, 1)]  # one channel, values 1 and 3
    scores = _identity_scores(AttentionImportance(p=2.0), acts)
    assert scores.tolist() == [5.0]  # mean(1^2, 3^2), not mean(1, 3)^2 = 4


def test_mean_activation_matches_direct_computation() -> None:
    acts = _known_activations()
    scores = _identity_scores(MeanActivationImportance(), acts)
    expected = torch.relu(torch.cat(acts)).mean(dim=(0, 2, 3))
    torch.testing.assert_close(scores, expected.float())


def _numpy_entropy(pooled: np.ndarray, bins: int) -> np.ndarray:
    out = []
    for column in pooled.T:
        hist, _ = np.histogram(column, bins=bins, range=(0.0, column.max()))
        prob = hist[hist > 0] / column.size
        out.append(-(prob * np.log(prob)).sum())
    return np.array(out)


@pytest.mark.parametrize("bins", [5, 100])
def test_entropy_matches_numpy(bins: int) -> None:
    acts = _known_activations()
    acts[0][:, 1] = 0.0  # an always-zero channel ...
    acts[1][:, 1] = -1.0  # ... also negative before the ReLU
    scores = _identity_scores(EntropyImportance(bins=bins), acts)
    pooled = torch.relu(torch.cat(acts)).mean(dim=(2, 3)).numpy()
    expected = _numpy_entropy(pooled, bins)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6)
    assert scores[1] == 0.0


def test_entropy_on_hand_picked_pooled_values() -> None:
    # Linear-style [N, C] activations are the pooled values themselves. bins=4 over [0, 4]:
    # channel 0 -> bins {0, 1, 2, 3, 3} -> p = (.2, .2, .2, .4); channel 1 -> constant -> H = 0.
    values = torch.tensor([[0.5, 2.0], [1.5, 2.0], [2.5, 2.0], [3.5, 2.0], [4.0, 2.0]])
    scores = _identity_scores(EntropyImportance(bins=4), [values])
    expected = -(3 * 0.2 * np.log(0.2) + 0.4 * np.log(0.4))
    np.testing.assert_allclose(scores.numpy(), [expected, 0.0], rtol=1e-6)


# --------------------------------------------------------------------------- calibrate
def _hook_count(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in net.modules())


def test_calibrate_removes_hooks_and_restores_modes() -> None:
    net = _net()
    net.train()
    net.bn2.eval()  # a frozen BatchNorm keeps its own mode
    seen_modes: list[bool] = []

    def forward(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        seen_modes.extend(m.training for m in model.modules())
        assert _hook_count(model) == 3
        assert not torch.is_grad_enabled()
        return model(batch)

    calibrate(MeanActivationImportance(), _sources(net), net, _batches(), forward=forward)
    assert seen_modes and not any(seen_modes)
    assert _hook_count(net) == 0
    assert net.training and net.bn1.training and not net.bn2.training


def test_calibrate_cleans_up_after_exception_in_forward() -> None:
    net = _net()
    net.train()
    calls = []

    def forward(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return model(batch)

    crit = EntropyImportance()
    with pytest.raises(RuntimeError, match="boom"):
        calibrate(crit, _sources(net), net, _batches((2, 2, 2)), forward=forward)
    assert _hook_count(net) == 0
    assert all(m.training for m in net.modules())
    net(torch.randn(1, 3, 8, 8))  # no hook observes further passes
    assert crit.state_dict()["local"]["conv1"]["values"].shape == (2, 6)


def test_calibrate_rejects_bad_source_output_and_cleans_up() -> None:
    class TupleOut(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    net = nn.Sequential(TupleOut())
    with pytest.raises(PruningConfigError, match="produced tuple.*HINT"):
        calibrate(MeanActivationImportance(), {"layer": net[0]}, net, _batches())
    assert _hook_count(net) == 0


def test_calibrate_default_forward_unpacks_tuples_and_max_batches() -> None:
    net = _net()
    batches = _batches((2, 3, 4))
    with_targets = [(x, torch.zeros(len(x))) for x in batches]
    crit = calibrate(MeanActivationImportance(), _sources(net), net, with_targets, max_batches=2)
    reference = calibrate(MeanActivationImportance(), _sources(net), net, batches[:2])
    torch.testing.assert_close(crit.score("conv2", net.conv2), reference.score("conv2", net.conv2))


def test_calibrate_statistics_accumulate_across_calls() -> None:
    net = _net()
    b1, b2 = _batches((3, 5))
    crit = MeanActivationImportance()
    calibrate(crit, _sources(net), net, [b1])
    calibrate(crit, _sources(net), net, [b2])
    reference = calibrate(MeanActivationImportance(), _sources(net), net, [b1, b2])
    torch.testing.assert_close(crit.score("conv1", net.conv1), reference.score("conv1", net.conv1))


def test_calibrate_skips_model_for_weight_criteria() -> None:
    def forward(model: nn.Module, batch: torch.Tensor) -> None:
        raise AssertionError("weight criteria need no forward pass")

    crit = L1Importance()
    assert calibrate(crit, {}, _net(), _batches(), forward=forward) is crit


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"importance": "entropy"}, "needs a ChannelImportance, got str"),
        ({"model": "net"}, "needs an nn.Module model, got str"),
        ({"max_batches": 0}, "max_batches=0"),
        ({"sources": [nn.ReLU()]}, "sources must be a mapping"),
        ({"sources": {"a": "b"}}, "'a' -> str is not str -> nn.Module"),
    ],
)
def test_calibrate_validates_arguments(kwargs: dict, match: str) -> None:
    net = _net()
    args = {"importance": MeanActivationImportance(), "sources": _sources(net), "model": net}
    args.update(kwargs)
    with pytest.raises(PruningConfigError, match=match):
        calibrate(batches=_batches(), **args)


def test_attach_detach_idempotent_and_context_manager() -> None:
    net = _net()
    crit = AttentionImportance()
    crit.attach(_sources(net))
    crit.attach({"conv1": net.bn1})  # re-attaching a name replaces its hook
    assert _hook_count(net) == 3
    crit.detach()
    crit.detach()
    assert _hook_count(net) == 0
    with crit.attached({"conv1": net.bn1}):
        net(torch.randn(2, 3, 8, 8))
        assert _hook_count(net) == 1
    assert _hook_count(net) == 0
    assert crit.score("conv1", net.conv1).shape == (6,)


def test_sync_without_process_group_is_noop() -> None:
    net = _net()
    crit = calibrate(EntropyImportance(), _sources(net), net, _batches())
    before = crit.score("conv2", net.conv2)
    crit.sync()
    torch.testing.assert_close(crit.score("conv2", net.conv2), before)


def test_sync_union_of_layers_rejects_mismatched_ranks() -> None:
    from lightning_prune.importance.base import _union_shapes

    union = _union_shapes([{"b": {"values": (3, 4)}, "a": {"sum": (4,)}}, {"b": {"values": (5, 4)}}])
    assert list(union) == ["a", "b"]  # sorted: every rank reduces layers in the same order
    with pytest.raises(PruningConfigError, match="layer 'a' shaped.*HINT: prune identically"):
        _union_shapes([{"a": {"sum": (4,)}}, {"a": {"sum": (3,)}}])


def test_recalibrating_with_other_channel_count_requires_reset() -> None:
    ident = nn.Identity()
    crit = calibrate(MeanActivationImportance(), {"x": ident}, ident, [torch.rand(2, 4)])
    with pytest.raises(PruningConfigError, match="now has 3 channels.*HINT: call reset"):
        calibrate(crit, {"x": ident}, ident, [torch.rand(2, 3)])
    crit.reset()
    calibrate(crit, {"x": ident}, ident, [torch.rand(2, 3)])
    assert crit.score("x", nn.Linear(1, 3)).shape == (3,)


# --------------------------------------------------------------------------- registry
def test_registry_has_builtin_names() -> None:
    assert {"l1", "l2", "random", "entropy", "mean_activation", "attention"} <= set(IMPORTANCES)
    assert all(IMPORTANCES[name].name == name for name in IMPORTANCES)


def test_get_importance_unknown_name_lists_valid_names() -> None:
    with pytest.raises(PruningConfigError, match="unknown importance 'taylor'") as err:
        get_importance("taylor")
    for name in IMPORTANCES:
        assert repr(name) in str(err.value)
    assert "HINT" in str(err.value)


def test_get_importance_instances_classes_and_kwargs() -> None:
    instance = EntropyImportance(bins=7)
    assert get_importance(instance) is instance
    assert isinstance(get_importance(" L2 "), L2Importance)
    crit = get_importance("attention", reduction="sum", p=3)
    assert isinstance(crit, AttentionImportance) and (crit.reduction, crit.p) == ("sum", 3.0)
    assert get_importance(RandomImportance, seed=4).seed == 4
    with pytest.raises(PruningConfigError, match="cannot be applied to the instance"):
        get_importance(instance, bins=3)
    with pytest.raises(PruningConfigError, match="invalid arguments.*HINT: EntropyImportance"):
        get_importance("entropy", bin=3)
    with pytest.raises(PruningConfigError, match="got int"):
        get_importance(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "kwargs", "match"),
    [
        ("attention", {"reduction": "median"}, "reduction='median' is not one of"),
        ("attention", {"p": 0}, "p=0 must be a finite number > 0"),
        ("attention", {"p": float("inf")}, "p=inf"),
        ("attention", {"p": True}, "p=True"),
        ("entropy", {"bins": 1}, "bins=1 must be an int >= 2"),
        ("entropy", {"bins": 2.5}, "bins=2.5"),
        ("random", {"seed": "0"}, "seed='0' is not an int"),
    ],
)
def test_invalid_criterion_arguments(spec: str, kwargs: dict, match: str) -> None:
    with pytest.raises(PruningConfigError, match=match):
        get_importance(spec, **kwargs)


def test_register_importance_adds_user_criterion() -> None:
    @register_importance("test_bias_abs")
    class BiasAbs(ChannelImportance):
        def score(self, name: str, layer: nn.Module) -> torch.Tensor:
            return layer.bias.detach().abs().float().cpu()

    try:
        crit = get_importance("test_bias_abs")
        assert isinstance(crit, BiasAbs) and crit.name == "test_bias_abs"
        with pytest.raises(PruningConfigError, match="already registered"):

            @register_importance("test_bias_abs")
            class Other(ChannelImportance):
                def score(self, name: str, layer: nn.Module) -> torch.Tensor:
                    return torch.zeros(1)

    finally:
        IMPORTANCES.pop("test_bias_abs")


@pytest.mark.parametrize("bad", ["", "Bad", "1x", "a-b", 3])
def test_register_importance_rejects_bad_names(bad: object) -> None:
    with pytest.raises(PruningConfigError, match="not a lower-case identifier"):
        register_importance(bad)  # type: ignore[arg-type]


def test_register_importance_rejects_non_criteria() -> None:
    with pytest.raises(PruningConfigError, match="not a ChannelImportance subclass"):
        register_importance("test_not_a_criterion")(dict)  # type: ignore[type-var]


def test_repr_shows_config() -> None:
    assert repr(AttentionImportance("max", 2)) == "AttentionImportance(reduction='max', p=2.0)"
    assert repr(L1Importance()) == "L1Importance()"


def test_state_dict_is_plain_data() -> None:
    net = _net()
    crit = calibrate(AttentionImportance(), _sources(net), net, _batches())
    state = crit.state_dict()
    assert state["name"] == "attention" and state["config"] == {"reduction": "mean", "p": 1.0}

    def tensors_on_cpu(obj: object) -> bool:
        if isinstance(obj, Mapping):
            return all(tensors_on_cpu(v) for v in obj.values())
        return not isinstance(obj, torch.Tensor) or obj.device.type == "cpu"

    assert tensors_on_cpu(state)
    with pytest.raises(PruningConfigError, match="config"):
        AttentionImportance(p=2.0).load_state_dict(state)
