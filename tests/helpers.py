"""Test helpers: the public demos under their test names, callbacks that crash or kill a run, a rank witness."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lightning_prune.demos import (
    Block,
    DemoModule,
    TinyConvNet,
    TinyResNet,
    demo_loaders,
    demo_trainer,
)

__all__ = ["DATA_DIR", "Block", "Crash", "KillAt", "KillJobAt", "LitTiny", "RankWitness", "Scripted", "TinyConvNet", "TinyResNet",
           "fit", "make_data", "make_trainer", "needs_data", "run_ddp_command"]

#: The real-data folder (``$LIGHTNING_PRUNE_DATA``), if set.
DATA_DIR = os.environ.get("LIGHTNING_PRUNE_DATA")
#: Marks a test that needs the real data; it is skipped, with the reason, without it.
needs_data = pytest.mark.skipif(not DATA_DIR, reason="LIGHTNING_PRUNE_DATA is not set (folder with cifar10/, "
                                                     "mnist/ and weights/)")

#: The tests' names for the public demos (lightning_prune.demos).
LitTiny = DemoModule
make_data = demo_loaders
make_trainer = demo_trainer


class Scripted(DemoModule):
    """Every validation run (measurement or epoch) logs the next value of a script as ``val_acc``
    (the last value again once the script is used up)."""

    def __init__(self, script: list[float], lr: float = 0.05) -> None:
        super().__init__(lr=lr)
        self.script = script
        self.runs = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_acc", torch.tensor(self.script[min(self.runs, len(self.script) - 1)]))

    def on_validation_epoch_end(self) -> None:
        self.runs += 1


def fit(module: L.LightningModule, *callbacks: L.Callback, **trainer_kwargs: Any) -> L.Trainer:
    """Fit ``module`` on the demo data with the quiet demo Trainer; returns the Trainer."""
    train, val = demo_loaders()
    trainer = demo_trainer(list(callbacks), **trainer_kwargs)
    trainer.fit(module, train, val)
    return trainer


class Crash(L.Callback):
    """Raise at the second training batch of ``epoch`` (after the controllers' epoch-start work)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            raise RuntimeError("injected crash")


class RankWitness(L.Callback):
    """Saves each rank's final weights to ``out/rank{R}.pt`` (appended to CLI runs in the DDP tests)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
        torch.save(state, f"{self.out}/rank{trainer.global_rank}.pt")


class KillAt(L.Callback):
    """SIGKILL this process at the second training batch of ``epoch``: a killed run, no cleanup at all."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 1:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


class KillJobAt(L.Callback):
    """SIGKILL every process of the job (all ranks: the process group the DDP launcher shares) at batch
    ``batch`` of ``epoch``: a killed multi-process job, as a scheduler or a lost node kills it.

    Whichever rank gets there first kills them all; the last epoch's checkpoint is complete by then
    (Lightning's ``save_checkpoint`` ends with a barrier every rank passes before the next epoch).
    """

    def __init__(self, epoch: int, batch: int = 0) -> None:
        self.epoch = epoch
        self.batch = batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.killpg(os.getpgid(0), signal.SIGKILL)


def run_ddp_command(args: list[str], cwd: Path, timeout: float, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """Run a (DDP-launching) command with ``tests/`` importable and one thread per process, in a session
    of its own so that a hang kills every rank (not only rank zero); a hang, or an exit status other than
    ``expect``, fails the test."""
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"the DDP run did not finish in {timeout} s (a rank hangs?): {err[-3000:]}")
    assert process.returncode == expect, err[-5000:]
    return subprocess.CompletedProcess(args, process.returncode, out, err)
