"""Two-process CPU DDP runs configured as users configure them (no ``output_dir``), one per callback.

Run as ``python ddp_scenarios.py SCENARIO OUT``; Lightning's DDP launcher starts the second rank by
running the same command again. Each rank saves its final weights and what the callbacks decided to
``OUT/rank{R}.pt``; every report write is appended to ``OUT/writes.txt`` with the writing rank.
Used by ``tests/test_ddp_defaults.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: helpers
from helpers import LitTiny, make_data, make_trainer  # noqa: E402

from lightning_prune import (  # noqa: E402
    AdaptiveThresholdRollback,
    GradualMagnitudePruning,
    LayerFreezer,
    PruningAwareLR,
    SelfDistillation,
    SimulatedPruning,
    StructuredPruning,
    ThresholdSkipFineTune,
)
from lightning_prune.state import GradualReport  # noqa: E402

CSVLogger_marker = object()  # "an explicit CSVLogger in the output folder"
from lightning_prune.state import PruningReport  # noqa: E402


def _count_writes(out: Path) -> None:
    """Record which rank writes a report (a report written by two ranks would show twice)."""
    for cls in (PruningReport, GradualReport):
        original = cls.write

        def write(self: Any, path: Any, _original: Callable[..., Path] = original) -> Path:
            with (out / "writes.txt").open("a") as f:
                f.write(f"{torch.distributed.get_rank()} {path}\n")
            return _original(self, path)

        cls.write = write  # type: ignore[method-assign]


class Frozen(Callback):
    """Records which parameters are trainable at the end of the fit."""

    def __init__(self) -> None:
        self.frozen: list[str] = []

    def on_fit_end(self, trainer, pl_module) -> None:
        self.frozen = [n for n, p in pl_module.named_parameters() if not p.requires_grad]


#: A Trainer as users build one: Lightning's default logger, checkpoints and sanity check (progress bar off).
AS_USERS_DO: dict[str, Any] = {"logger": True, "enable_checkpointing": True, "num_sanity_val_steps": 2}


def structured(logger: bool) -> tuple[list[Callback], dict[str, Any]]:
    return [StructuredPruning(pruning_ratio=0.5, pretrain_epochs=1)], {"logger": CSVLogger_marker if logger else False}


def ice() -> tuple[list[Callback], dict[str, Any]]:
    # ratio 0.25: the first two steps drop val_acc by less than 5 points (skipped), the third by more
    callbacks = [StructuredPruning(pruning_ratio=0.25, pretrain_epochs=2, calibration_batches=2),
                 ThresholdSkipFineTune(threshold=0.05), LayerFreezer(freeze_fraction=0.3), PruningAwareLR(),
                 Frozen()]
    return callbacks, dict(AS_USERS_DO)


def aap() -> tuple[list[Callback], dict[str, Any]]:
    # the default reference: a trial epoch retrains the unpruned model first; then round 1 (10 % of the
    # filters) loses too much: rolled back to round 0, retried at 5 %
    callbacks = [StructuredPruning(importance="l1", pretrain_epochs=2),
                 AdaptiveThresholdRollback(max_drop=0.1, lambda_init=0.1, max_rounds=4, max_rollbacks=1)]
    return callbacks, dict(AS_USERS_DO)


def aap_stopped() -> tuple[list[Callback], dict[str, Any]]:
    """AAP stopped by max_steps in round 3, after its rollback: the best round is restored at the stop."""
    callbacks, extra = aap()
    return callbacks, {**extra, "max_steps": 4 * (2 + 1 + 3) - 2}


def gradual() -> tuple[list[Callback], dict[str, Any]]:
    callbacks = [GradualMagnitudePruning(sparsity=0.6, pruning_epochs=2, pretrain_epochs=1, patience=0,
                                         finetune_patience=1, max_epochs=5),
                 SimulatedPruning(0.2), SelfDistillation()]
    return callbacks, {}


SCENARIOS: dict[str, Callable[[], tuple[list[Callback], dict[str, Any]]]] = {
    "structured_no_logger": lambda: structured(False),
    "structured_csv_logger": lambda: structured(True),
    "ice": ice,
    "aap": aap,
    "aap_stopped": aap_stopped,
    "gradual": gradual,
}


def main(name: str, out: Path) -> None:
    _count_writes(out)
    torch.manual_seed(0)
    module = LitTiny(lr=0.05)
    train, val = make_data(n=128, batch_size=16)
    callbacks, extra = SCENARIOS[name]()
    logger = extra.pop("logger", False)
    logger = CSVLogger(save_dir=out) if logger is CSVLogger_marker else logger
    trainer = make_trainer(callbacks, devices=2, strategy="ddp", deterministic=False, default_root_dir=str(out),
                           logger=logger, **extra)
    trainer.fit(module, train, val)
    controller = callbacks[0]
    seen: dict[str, Any] = {"state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                            "report": controller.report.to_dict(), "global_step": trainer.global_step}
    for callback in callbacks:
        if isinstance(callback, Frozen):
            seen["frozen"] = callback.frozen
        if isinstance(callback, LayerFreezer):
            seen["layer_freezer"] = list(callback.frozen or [])
        if isinstance(callback, SimulatedPruning):
            seen["simulated_steps"] = callback.steps
    torch.save(seen, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
