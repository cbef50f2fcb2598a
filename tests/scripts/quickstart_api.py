"""configs/quickstart.yaml built with the Python API (run by tests/test_cli_resume.py).

``python quickstart_api.py ROOT [--crash-at EPOCH] [--ckpt-path PATH]`` fits the quick start in
``ROOT`` (crashing at ``EPOCH`` if given, resuming from ``PATH`` if given), as a user's script would.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: helpers
from helpers import Crash  # noqa: E402

from lightning_prune import DigitsDataModule, ImageClassifier, StructuredPruning  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--crash-at", type=int)
    parser.add_argument("--ckpt-path")
    args = parser.parse_args()
    L.seed_everything(0)
    model = ImageClassifier("digits_resnet", num_classes=10, optimizer="sgd", lr=0.05, momentum=0.9,
                            weight_decay=0.0005)
    data = DigitsDataModule(batch_size=64, val_fraction=0.15, seed=0)
    callbacks = [StructuredPruning(pruning_ratio=0.6, schedule="blockwise", importance="l1", pretrain_epochs=12,
                                   finetune_epochs=1, final_finetune_epochs=2, monitor="val_acc", mode="max"),
                 ModelCheckpoint(save_last=True)]
    if args.crash_at is not None:
        callbacks.append(Crash(args.crash_at))
    trainer = L.Trainer(accelerator="cpu", devices=1, default_root_dir=args.root, enable_model_summary=False,
                        log_every_n_steps=10, max_epochs=-1, callbacks=callbacks, enable_progress_bar=False)
    trainer.fit(model, datamodule=data, ckpt_path=args.ckpt_path)


if __name__ == "__main__":
    main()
