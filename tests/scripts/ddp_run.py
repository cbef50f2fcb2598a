"""Two-process CPU DDP pruning run; each rank saves what it saw (run by tests/test_ddp.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: helpers
from helpers import LitTiny, make_data, make_trainer  # noqa: E402

from lightning_prune import PruningSatellite, StructuredPruning  # noqa: E402
from lightning_prune.state import PruningReport  # noqa: E402


class Witness(PruningSatellite, Callback):
    def __init__(self) -> None:
        self.after_steps: list[dict[str, torch.Tensor]] = []
        self.losses: list[float] = []
        self.ddp_params_current: list[bool] = []

    def on_structure_changed(self, trainer, pl_module, controller) -> None:
        self.after_steps.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})
        wrapped = trainer.strategy.model
        self.ddp_params_current.append(
            all(a is b for a, b in zip(wrapped.module.parameters(), pl_module.parameters()))
            and type(wrapped).__name__ == "DistributedDataParallel"
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.losses.append(float(trainer.callback_metrics["train_loss"]))


def main(out: Path, importance: str) -> None:
    writes = out / "writes.txt"
    original_write = PruningReport.write

    def write(self: PruningReport, path):  # type: ignore[no-untyped-def]
        with writes.open("a") as f:
            f.write(f"{torch.distributed.get_rank()}\n")
        return original_write(self, path)

    PruningReport.write = write  # type: ignore[method-assign]
    torch.manual_seed(0)
    module = LitTiny(lr=0.05)
    train, val = make_data(n=128, batch_size=16)
    witness = Witness()
    pruning = StructuredPruning(pruning_ratio=0.5, importance=importance, pretrain_epochs=2, finetune_epochs=2,
                                output_dir=str(out), calibration_batches=2)
    trainer = make_trainer([pruning, witness], devices=2, strategy="ddp", deterministic=False)
    trainer.fit(module, train, val)
    torch.save({"after_steps": witness.after_steps, "final": module.state_dict(), "losses": witness.losses,
                "ddp_params_current": witness.ddp_params_current, "global_step": trainer.global_step},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
