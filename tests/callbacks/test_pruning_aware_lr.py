"""PruningAwareLR: eq. 1 applied to the optimizer and scheduler after every structural change (ICE-Pruning)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import LitTiny, fit
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_prune import (
    PruningAwareLR,
    PruningConfigError,
    PruningSatellite,
    StructuredPruning,
)
from lightning_prune.schedules import pruning_aware_lr


# ---------------------------------------------------------------- PruningAwareLR
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"delta": 2e-3}, r"delta=0.002 must be in \(0, lr_base"),
    ({"delta": 0.0}, r"delta=0.0"),
    ({"midpoint": 0.6}, r"midpoint=0.6 must be in \(0, 0.5\]"),
    ({"midpoint": 0.0}, r"midpoint=0.0"),
    ({"beta": 0.0}, r"beta=0.0 must be > 0"),
    ({"lr_base": -1.0}, r"lr_base=-1.0"),
])
def test_pruning_aware_lr_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(PruningConfigError, match=match) as info:
        PruningAwareLR(**kwargs)
    assert "HINT:" in str(info.value)


class LRWitness(PruningSatellite, Callback):
    def __init__(self) -> None:
        self.after_change: list[tuple[float, float, list[float]]] = []
        self.batch_lrs: list[tuple[int, float]] = []
        self.original: int | None = None

    def on_pruning_start(self, trainer, pl_module, controller) -> None:
        self.original = sum(m.weight.numel() for m in pl_module.modules() if isinstance(m, nn.Conv2d))

    def on_structure_changed(self, trainer, pl_module, controller) -> None:
        remaining = sum(m.weight.numel() for m in pl_module.modules() if isinstance(m, nn.Conv2d)) / self.original
        bases = [list(c.scheduler.base_lrs) for c in trainer.lr_scheduler_configs]
        self.after_change.append((remaining, trainer.optimizers[0].param_groups[0]["lr"], bases[0] if bases else []))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_lrs.append((len(self.after_change), trainer.optimizers[0].param_groups[0]["lr"]))


class Cosine(LitTiny):
    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=4), "interval": "step"}}


def test_optimizer_lr_follows_eq1_at_every_step() -> None:
    witness = LRWitness()
    schedule = PruningAwareLR(lr_base=1e-2, delta=8e-3, midpoint=0.3, beta=4.0)
    fit(LitTiny(), StructuredPruning(pruning_ratio=0.5), schedule, witness)
    assert len(witness.after_change) == 3
    for remaining, lr, _ in witness.after_change:
        assert remaining < 1
        assert lr == pytest.approx(pruning_aware_lr(remaining, 1e-2, 8e-3, 0.3, 4.0), rel=1e-9)
    lrs = [lr for _, lr, _ in witness.after_change]
    assert lrs == sorted(lrs, reverse=True) and len(set(lrs)) == 3
    # during fine-tuning the optimizer uses exactly that LR (constant schedule)
    for change, lr in witness.batch_lrs:
        assert lr == pytest.approx(witness.after_change[change - 1][1])


def test_scheduler_base_lrs_are_rescaled_to_lr_max() -> None:
    witness = LRWitness()
    schedule = PruningAwareLR(lr_base=1e-2, delta=8e-3, midpoint=0.3, beta=4.0)
    fit(Cosine(), StructuredPruning(pruning_ratio=0.5), schedule, witness)
    for remaining, lr, bases in witness.after_change:
        lr_max = pruning_aware_lr(remaining, 1e-2, 8e-3, 0.3, 4.0)
        assert bases == [pytest.approx(lr_max)] and lr == pytest.approx(lr_max)
    for change, lr in witness.batch_lrs:
        assert lr <= witness.after_change[change - 1][1] * (1 + 1e-9)


