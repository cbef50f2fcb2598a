"""Two-process CPU DDP fit and test on ``DigitsDataModule(val_from="test")``, recording what each rank sees.

Run as ``python ddp_val_from.py OUT``; Lightning's DDP launcher starts the second rank by running the same
command again. Each rank saves to ``OUT/rank{R}.pt`` the images (as bytes) its validation and test steps
received and the images of its own DataModule's validation and test sets. Used by
``tests/data/test_data_ddp.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from lightning_prune import DigitsDataModule


def _keys(images: torch.Tensor) -> list[bytes]:
    return [image.numpy().tobytes() for image in images]


class Recorder(L.LightningModule):
    """A linear classifier that records the images of every validation and test batch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(64, 10)
        self.seen: dict[str, list[bytes]] = {"val": [], "test": []}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x.flatten(1)), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if not self.trainer.sanity_checking:
            self.seen["val"] += _keys(batch[0])

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.seen["test"] += _keys(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main(out: Path) -> None:
    data = DigitsDataModule(batch_size=32, val_from="test", seed=0)
    module = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_train_batches=2,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, verbose=False)
    own = {"val": [k for x, _ in data.val_dataset for k in _keys(x[None])],
           "test": [k for x, _ in data.test_dataset for k in _keys(x[None])]}
    torch.save({"seen": module.seen, "own": own, "test_indices": data.test_indices.tolist()},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
