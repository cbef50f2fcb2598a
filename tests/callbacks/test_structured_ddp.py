"""Two-process CPU DDP (gloo): identical decisions and weights on every rank, training continues."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_run.py"


@pytest.mark.parametrize("importance", ["l1", "mean_activation"])
def test_ddp_ranks_agree_after_every_step(tmp_path, importance: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPT.parent), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), importance], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert len(ranks[0]["after_steps"]) == len(ranks[1]["after_steps"]) == 3
    for step0, step1 in zip(ranks[0]["after_steps"], ranks[1]["after_steps"]):
        assert step0.keys() == step1.keys()
        for key in step0:
            assert torch.equal(step0[key], step1[key]), key
    for key, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][key]), key
    assert ranks[0]["final"]["model.layer2.0.conv1.weight"].shape[0] == 8
    assert all(ranks[0]["ddp_params_current"]) and all(ranks[1]["ddp_params_current"])
    losses = ranks[0]["losses"]
    assert losses[-1] < losses[0]
    # 128 samples / 2 ranks / batch 16 = 4 batches an epoch; 2 pretrain + 3 steps x 2 epochs
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 4 * (2 + 3 * 2)
    assert (tmp_path / "writes.txt").read_text().split() == ["0"]
    assert (tmp_path / "report.json").is_file() and (tmp_path / "pruned_model.pt").is_file()
