"""A killed quick start resumes from the command line exactly as the README says, and checkpoints
written by the Python API and by the CLI resume in the other.

Every run ends bit-identical (structure and weights of ``pruned_model.pt``) to an uninterrupted
run of ``lightning-prune fit --config configs/quickstart.yaml``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HERE = Path(__file__).parent
SCRIPTS = HERE / "scripts"
CONFIG = HERE.parent / "configs" / "quickstart.yaml"
SCRIPT = Path(sys.executable).with_name("lightning-prune")
TIMEOUT = 300
KILL_EPOCH = 14  # the third pruning step's fine-tuning epoch (12 pretraining epochs)


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _run(args: list[str], cwd: Path, expect: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == expect, done.stderr[-3000:]
    return done


def _cli(cwd: Path, *extra: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """``lightning-prune fit --config configs/quickstart.yaml ...``, run from ``cwd``."""
    return _run([str(SCRIPT), "fit", "--config", str(CONFIG), "--trainer.enable_progress_bar=false", *extra], cwd,
                expect)


def _api(cwd: Path, *extra: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, str(SCRIPTS / "quickstart_api.py"), str(cwd / "outputs" / "quickstart"), *extra], cwd,
                expect)


def _version(cwd: Path, n: int) -> Path:
    return cwd / "outputs" / "quickstart" / "lightning_logs" / f"version_{n}"


def _model(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "pruned_model.pt", weights_only=True)["state_dict"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    _cli(cwd)
    return _model(_version(cwd, 0))


def test_killed_cli_run_resumes_with_ckpt_path_last(tmp_path: Path, uninterrupted: dict[str, torch.Tensor]) -> None:
    killed = _cli(tmp_path, "--trainer.callbacks+=helpers.KillAt", f"--trainer.callbacks.epoch={KILL_EPOCH}",
                  expect=-9)
    assert "step 2/6" in killed.stderr and "step 3/6" in killed.stderr and "step 4/6" not in killed.stderr
    assert not (_version(tmp_path, 0) / "report.json").exists()  # SIGKILL: nothing after the last checkpoint
    resumed = _cli(tmp_path, "--ckpt_path", "last")  # exactly as the README says
    # Lightning: "Restoring states from the checkpoint path at outputs/quickstart/.../version_0/checkpoints/last.ckpt"
    assert "Restoring states from the checkpoint path at" in resumed.stderr
    assert "version_0/checkpoints/last.ckpt" in resumed.stderr
    _same(_model(_version(tmp_path, 1)), uninterrupted)


def test_api_checkpoint_resumes_from_the_cli(tmp_path: Path, uninterrupted: dict[str, torch.Tensor]) -> None:
    _api(tmp_path, "--crash-at", str(KILL_EPOCH), expect=1)
    checkpoint = _version(tmp_path, 0) / "checkpoints" / "last.ckpt"
    _cli(tmp_path, "--ckpt_path", str(checkpoint))
    _same(_model(_version(tmp_path, 1)), uninterrupted)


def test_cli_checkpoint_resumes_from_the_api(tmp_path: Path, uninterrupted: dict[str, torch.Tensor]) -> None:
    _cli(tmp_path, "--trainer.callbacks+=helpers.KillAt", f"--trainer.callbacks.epoch={KILL_EPOCH}", expect=-9)
    checkpoint = _version(tmp_path, 0) / "checkpoints" / "last.ckpt"
    _api(tmp_path, "--ckpt-path", str(checkpoint))
    _same(_model(_version(tmp_path, 1)), uninterrupted)
