"""Every callback under 2-process CPU DDP (gloo), configured as users configure them.

No ``output_dir`` (the report goes to ``trainer.log_dir``, which is a collective call), with and
without a logger, and through the ``lightning-prune`` command. Each run must finish within its time
bound (a hang fails the test), end with identical weights on both ranks, and write one report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_ddp_command

pytestmark = pytest.mark.ddp

TESTS = Path(__file__).parents[1]
ROOT = TESTS.parent
SCRIPT = TESTS / "scripts" / "ddp_scenarios.py"
TIMEOUT = 300  # seconds; an idle 2-core machine needs about 15


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_ddp_command(args, cwd, TIMEOUT)


def _ranks(out: Path) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _decisions(value: object) -> object:
    """A report without its timings (each rank measures its own clock) and file sizes (rank zero writes)."""
    if isinstance(value, dict):
        return {k: _decisions(v) for k, v in value.items() if not str(k).startswith("seconds") and k != "size"}
    if isinstance(value, list):
        return [_decisions(v) for v in value]
    return value


def _scenario(name: str, tmp_path: Path) -> list[dict]:
    _run([sys.executable, str(SCRIPT), name, str(tmp_path)], cwd=tmp_path)
    ranks = _ranks(tmp_path)
    _same_weights(ranks[0]["state_dict"], ranks[1]["state_dict"])
    assert _decisions(ranks[0]["report"]) == _decisions(ranks[1]["report"])
    writes = (tmp_path / "writes.txt").read_text().splitlines()
    assert [w.split()[0] for w in writes] == ["0"], writes  # one report, by rank zero
    assert Path(writes[0].split()[1]).is_file()
    return ranks


def test_structured_without_output_dir_or_logger_finishes(tmp_path: Path) -> None:
    ranks = _scenario("structured_no_logger", tmp_path)
    # logger=False: trainer.log_dir is the default root dir
    assert (tmp_path / "report.json").is_file() and (tmp_path / "pruned_model.pt").is_file()
    assert ranks[0]["report"]["totals"]["completed"] is True
    assert ranks[0]["state_dict"]["model.layer2.0.conv1.weight"].shape[0] == 8


def test_structured_with_a_logger_writes_to_its_log_dir(tmp_path: Path) -> None:
    _scenario("structured_csv_logger", tmp_path)
    version = tmp_path / "lightning_logs" / "version_0"
    assert (version / "report.json").is_file() and (version / "pruned_model.pt").is_file()
    assert not (tmp_path / "report.json").exists()


def test_ice_satellites_probe_and_skip_identically(tmp_path: Path) -> None:
    ranks = _scenario("ice", tmp_path)
    report = ranks[0]["report"]
    assert [s["finetuned"] for s in report["steps"]] == [False, False, True]
    assert "probe" in report["extra"] and len(ranks[0]["layer_freezer"]) == 3
    assert ranks[0]["layer_freezer"] == ranks[1]["layer_freezer"] and ranks[0]["frozen"] == ranks[1]["frozen"]
    assert {f"{conv}.weight" for conv in ranks[0]["layer_freezer"]} <= set(ranks[0]["frozen"])
    assert len(report["extra"]["pruning_aware_lr"]) == 5  # probe surgery, its restore, 3 steps
    # 4 batches an epoch per rank: 2 pretraining epochs, the probe's epoch, one fine-tuned step
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 4 * (2 + 1 + 1)


def test_aap_rolls_back_identically(tmp_path: Path) -> None:
    ranks = _scenario("aap", tmp_path)
    rounds = ranks[0]["report"]["extra"]["rounds"]
    rolled = [r for r in rounds if r["rolled_back_to"] is not None]
    assert rolled and any(r["params"] < rounds[0]["params"] for r in rolled)  # a pruned round was undone
    aap = ranks[0]["report"]["extra"]["aap"]
    assert aap["reference"] == "retrained" and aap["metric_retrained_unpruned"] is not None  # one trial, both ranks


def test_aap_stopped_short_restores_its_best_round_identically(tmp_path: Path) -> None:
    ranks = _scenario("aap_stopped", tmp_path)
    report = ranks[0]["report"]
    assert report["totals"]["completed"] is False and "max_steps" in report["totals"]["stop_reason"]
    rounds = report["extra"]["rounds"]
    assert any(r["rolled_back_to"] is not None for r in rounds)
    assert report["totals"]["params_after"] == rounds[report["extra"]["aap"]["final_round"]]["params"]


def test_gradual_with_simulated_pruning_and_distillation(tmp_path: Path) -> None:
    ranks = _scenario("gradual", tmp_path)
    assert (tmp_path / "sparse_model.pt").is_file()
    report = ranks[0]["report"]
    assert report["completed"] is True and report["prunes_done"] == 2
    assert ranks[0]["simulated_steps"] == ranks[1]["simulated_steps"] > 0
    zeros = [int((v == 0).sum()) for k, v in ranks[0]["state_dict"].items() if k.endswith("conv1.weight")]
    assert sum(zeros) > 0


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize(("config", "artifact"), [("quickstart.yaml", "pruned_model.pt"),
                                                  ("dg2pf_quickstart.yaml", "sparse_model.pt")])
def test_cli_fit_under_ddp(tmp_path: Path, config: str, artifact: str) -> None:
    _run([str(Path(sys.executable).with_name("lightning-prune")), "fit", "--config", str(ROOT / "configs" / config),
          "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks+=helpers.RankWitness",
          f"--trainer.callbacks.out={tmp_path}"], cwd=tmp_path)
    _same_weights(*_ranks(tmp_path))
    reports = list(tmp_path.rglob("report.json"))
    assert len(reports) == 1
    assert json.loads(reports[0].read_text()).get("totals", json.loads(reports[0].read_text())).get("completed")
    assert (reports[0].parent / artifact).is_file()
