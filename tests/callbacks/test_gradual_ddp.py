"""Two-process CPU DDP (gloo): DG2PF ranks hold identical masks and weights after every epoch; one report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "scripts" / "gradual_ddp_run.py"


def test_ddp_ranks_agree_after_every_epoch(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPT.parent), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert len(ranks[0]["epochs"]) == len(ranks[1]["epochs"]) >= 4
    for epoch0, epoch1 in zip(ranks[0]["epochs"], ranks[1]["epochs"]):
        for key in epoch0:
            assert torch.equal(epoch0[key], epoch1[key]), key
    for key, mask in ranks[0]["masks"].items():
        assert torch.equal(mask, ranks[1]["masks"][key]), key
    kept = sum(int(m.sum()) for m in ranks[0]["masks"].values())
    total = sum(m.numel() for m in ranks[0]["masks"].values())
    assert 1 - kept / total == pytest.approx(0.6, abs=1e-3)
    assert ranks[0]["phase"] == ranks[1]["phase"] == "done"
    lrs = ranks[0]["lrs"]
    assert lrs == ranks[1]["lrs"] and lrs[0] == 0.05 and lrs[-1] == 1e-4  # phase 2 switched on both ranks
    assert ranks[0]["global_step"] == ranks[1]["global_step"]
    assert (tmp_path / "report.json").is_file() and (tmp_path / "sparse_model.pt").is_file()

