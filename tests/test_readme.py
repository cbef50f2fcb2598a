"""The README's Python example runs as written, prints its totals and no warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def _block(heading: str) -> str:
    """The first ```python block after ``heading``."""
    text = README.read_text()
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.e2e
def test_use_it_in_your_own_trainer_runs_cleanly(tmp_path: Path) -> None:
    code = _block("## Use it in your own Trainer")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "'completed': True" in done.stdout and "'steps_done': 6" in done.stdout
    assert not re.search(r"\.py:\d+: ", output), output  # no warning of any kind (file:line: message)
    assert "Tip:" not in output and "tensorboardX" not in output
    assert (tmp_path / "outputs" / "lightning_logs" / "version_0" / "pruned_model.pt").is_file()
