"""SimulatedPruning: straight-through gradients of the masked forward, bit-identical restore, pruning epochs only."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from helpers import LitTiny, make_data, make_trainer
from lightning.pytorch.callbacks import Callback

from lightning_prune.callbacks.gradual import GradualMagnitudePruning
from lightning_prune.callbacks.simulated_pruning import SimulatedPruning
from lightning_prune.structural import masks as M


class Before(Callback):
    """Listed before SimulatedPruning: the weights as they are when the batch starts."""

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.weights = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


class After(Callback):
    """Listed after SimulatedPruning: the reference gradient of the masked forward, then the checks."""

    def __init__(self, before: Before, simulated: SimulatedPruning) -> None:
        self.before, self.simulated = before, simulated
        self.reference: dict[str, torch.Tensor] = {}
        self.zeroed: dict[str, torch.Tensor] = {}
        self.checked = 0
        self.zeroed_counts: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.zeroed = {n: (self.before.weights[n] != 0) & (p.detach() == 0) for n, p in pl_module.named_parameters()}
        net = copy.deepcopy(pl_module.model)  # holds the simulated zeros
        x, y = batch
        F.cross_entropy(net(x), y).backward()
        self.reference = {f"model.{n}": p.grad.clone() for n, p in net.named_parameters()}
        self.zeroed_counts.append(sum(int(z.sum()) for z in self.zeroed.values()))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        controller = next(cb for cb in trainer.callbacks if isinstance(cb, GradualMagnitudePruning))
        for name, param in pl_module.named_parameters():
            assert torch.equal(param.detach(), self.before.weights[name]), name  # restored bit for bit
            grad, reference = param.grad, self.reference[name]
            mask = controller.masks.get(name)
            if mask is None:
                assert torch.allclose(grad, reference, atol=1e-6), name
                continue
            assert torch.allclose(grad[mask], reference[mask], atol=1e-6), name  # masked-forward gradient
            assert not grad[~mask].any(), name  # permanently pruned: no update
        if controller.pruning and self.simulated.sparsity > 0:
            zeroed_grads = torch.cat([pl_module.get_parameter(n).grad[z] for n, z in self.zeroed.items() if z.any()])
            assert zeroed_grads.abs().sum() > 0  # straight-through: the zeroed weights get gradients too
        self.checked += 1


def run(simulated: SimulatedPruning, scope: str = "global") -> tuple[After, GradualMagnitudePruning]:
    torch.manual_seed(0)
    module = LitTiny()
    train, val = make_data()
    before = Before()
    after = After(before, simulated)
    pruning = GradualMagnitudePruning(sparsity=0.5, pruning_epochs=2, scope=scope, patience=1, finetune=False,
                                      max_epochs=3, save_sparse_model=False)
    make_trainer([pruning, before, simulated, after], max_epochs=3).fit(module, train, val)
    return after, pruning


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_gradients_are_those_of_the_masked_forward_and_weights_are_restored(scope: str) -> None:
    simulated = SimulatedPruning(sparsity=0.2)
    after, pruning = run(simulated, scope)
    assert after.checked == 3 * 4
    assert simulated.steps == 2 * 4  # pruning epochs only
    assert after.zeroed_counts[8:] == [0] * 4  # off after the pruning phase
    if scope == "global":
        total = sum(p.numel() for p in pruning.parameters.values())
        for epoch, target in enumerate((0.25, 0.5)):
            kept = total - round(target * total)
            assert after.zeroed_counts[4 * epoch:4 * epoch + 4] == [round(0.2 * kept)] * 4
    assert not simulated.simulating


def test_simulated_selection_is_the_smallest_unpruned_fraction() -> None:
    torch.manual_seed(0)
    params = {"a": torch.randn(50), "b": torch.randn(30)}
    masks = M.magnitude_masks(params, 0.5)
    chosen = M.simulated_masks(params, masks, 0.25)
    assert all(not (chosen[n] & ~masks[n]).any() for n in params)  # only unpruned weights
    assert sum(int(c.sum()) for c in chosen.values()) == 10  # 25 % of the 40 kept
    picked = torch.cat([params[n][chosen[n]].abs() for n in params])
    rest = torch.cat([params[n][masks[n] & ~chosen[n]].abs() for n in params])
    assert picked.max() <= rest.min()


def test_zero_sparsity_is_off_and_state_round_trips() -> None:
    simulated = SimulatedPruning(sparsity=0.0)
    after, _ = run(simulated)
    assert simulated.steps == 0 and after.zeroed_counts == [0] * 12
    assert SimulatedPruning(0.1).state_key == "SimulatedPruning"
    clone = pickle.loads(pickle.dumps(simulated))
    assert clone.sparsity == 0.0 and clone._controller is None


def test_the_per_step_selection_is_the_stable_sorts_set_found_without_sorting(monkeypatch: pytest.MonkeyPatch) -> None:
    """``simulated_masks`` runs every training step: it selects with a bracketed ``kthvalue`` instead of
    sorting (a full sort of ResNet-50's 25M weights took 3.7 s a step on 2 CPU threads), and must pick
    exactly the weights a stable sort of the concatenated scores picks, ties broken by position, whether
    the sampled bracket holds the threshold or not."""
    from lightning_prune.structural import masks

    generator = torch.Generator().manual_seed(0)
    for sample in (1 << 18, 16, 2):  # no sampling / a bracket from a small sample / one that often misses
        monkeypatch.setattr(masks, "_SAMPLE", sample)
        for size in (1, 7, 100, 1000):
            for trial in range(10):
                scores = torch.randint(0, 5 if trial % 3 else 1000, (size,), generator=generator).float()
                if trial % 2:
                    scores[torch.rand(size, generator=generator) < 0.3] = float("inf")  # pruned weights rank last
                cut = sorted(torch.randint(0, size + 1, (2,), generator=generator).tolist())
                parts = [scores[: cut[0]], scores[cut[0]: cut[1]], scores[cut[1]:]]  # three tensors, in order
                for count in {0, 1, size // 3, size - 1, size}:
                    expected = torch.zeros(size, dtype=torch.bool)
                    expected[masks._ranked(scores, count)] = True
                    assert torch.equal(torch.cat(masks._smallest(parts, count)), expected), (sample, size, count)
