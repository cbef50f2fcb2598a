"""``val_from="test"`` under 2-process CPU DDP: every rank carves the same halves, and the ranks together
validate on exactly the validation half and test on exactly the other half."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.ddp

TESTS = Path(__file__).parents[1]
SCRIPT = TESTS / "scripts" / "ddp_val_from.py"
TIMEOUT = 300  # seconds; an idle 2-core machine needs about 15


def test_ranks_share_one_carve_and_together_see_each_half_exactly(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path)], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the DDP run did not finish in {TIMEOUT} s (a rank hangs?)")
    assert process.returncode == 0, err[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["own"] == ranks[1]["own"] and ranks[0]["test_indices"] == ranks[1]["test_indices"]
    own = ranks[0]["own"]
    assert len(own["val"]) > 0 and len(own["test"]) > 0
    for split in ("val", "test"):
        seen = set(ranks[0]["seen"][split]) | set(ranks[1]["seen"][split])
        assert seen == set(own[split]), split  # together, exactly that half (DistributedSampler pads with repeats)
        assert ranks[0]["seen"][split] != ranks[1]["seen"][split]  # split between the ranks, not duplicated
    assert not set(own["val"]) & set(own["test"])
