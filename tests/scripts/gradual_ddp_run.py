"""Two-process CPU DDP run of DG2PF (GradualMagnitudePruning + SimulatedPruning + SelfDistillation); each rank
saves what it saw (run by tests/test_gradual_ddp.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: helpers
from helpers import LitTiny, make_data, make_trainer  # noqa: E402

from lightning_prune.callbacks.gradual import GradualMagnitudePruning  # noqa: E402
from lightning_prune.callbacks.self_distillation import SelfDistillation  # noqa: E402
from lightning_prune.callbacks.simulated_pruning import SimulatedPruning  # noqa: E402


class Witness(Callback):
    def __init__(self) -> None:
        self.epochs: list[dict[str, torch.Tensor]] = []
        self.lrs: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def main(out: Path) -> None:
    torch.manual_seed(0)
    module = LitTiny(lr=0.05)
    train, val = make_data(n=128, batch_size=16)
    witness = Witness()
    pruning = GradualMagnitudePruning(sparsity=0.6, pruning_epochs=2, pretrain_epochs=1, patience=0,
                                      finetune_patience=1, max_epochs=5, output_dir=str(out))
    trainer = make_trainer([pruning, SimulatedPruning(0.2), SelfDistillation(), witness], devices=2, strategy="ddp",
                           deterministic=False)
    trainer.fit(module, train, val)
    torch.save({"epochs": witness.epochs, "lrs": witness.lrs, "global_step": trainer.global_step,
                "masks": {k: v.cpu() for k, v in pruning.masks.items()}, "phase": pruning.phase.value},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
