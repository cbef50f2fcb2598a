import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs write report.json, checkpoints and logs to the working directory by default: keep them out of the repo."""
    monkeypatch.chdir(tmp_path)
