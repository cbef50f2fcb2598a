"""Every YAML in configs/ parses and builds; the quick start meets its promise end to end."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from lightning_prune.cli import PruneCLI, main

# fit configs (those with a `trainer` section); search spaces are checked by tests/test_tuning.py
CONFIGS = sorted(c for c in (Path(__file__).parents[1] / "configs").glob("*.yaml")
                 if "trainer" in (yaml.safe_load(c.read_text()) or {}))


CONTROLLERS = {"StructuredPruning", "GradualMagnitudePruning"}


def needs_data(config: Path) -> bool:
    return "cifar" in config.stem or "mnist" in config.stem


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_builds(config: Path) -> None:
    if needs_data(config) and not os.environ.get("LIGHTNING_PRUNE_DATA"):
        pytest.skip("LIGHTNING_PRUNE_DATA is not set: the config loads weights from the data directory")
    from lightning.pytorch import LightningDataModule, LightningModule

    cli = PruneCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                   run=False, args=["--config", str(config), "--trainer.logger=false"])
    controllers = [cb for cb in cli.trainer.callbacks if type(cb).__name__ in CONTROLLERS]
    assert len(controllers) == 1
    assert yaml.safe_load(config.read_text())["seed_everything"] == 0


PRETRAINED = [c for c in CONFIGS if "weights" in (yaml.safe_load(c.read_text()).get("model") or {}).get("init_args", {})]


@pytest.mark.parametrize("config", PRETRAINED, ids=[c.stem for c in PRETRAINED])
def test_configs_on_pretrained_weights_decide_on_half_of_the_test_split(config: Path) -> None:
    """The published weights saw all of TRAIN: a validation split carved from it would hide every cost."""
    if not os.environ.get("LIGHTNING_PRUNE_DATA"):
        pytest.skip("LIGHTNING_PRUNE_DATA is not set: the config loads weights from the data directory")
    from lightning.pytorch import LightningDataModule, LightningModule

    cli = PruneCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                   run=False, args=["--config", str(config), "--trainer.logger=false"])
    assert cli.datamodule.val_from == "test" and cli.datamodule.val_fraction == 0.5


def test_the_pretrained_recipes_are_found() -> None:
    assert {c.stem for c in PRETRAINED} >= {"ice_resnet20_cifar10", "aap_resnet20_cifar10", "dg2pf_resnet20_cifar10",
                                            "baseline_resnet20_cifar10"}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_checkpoints_so_a_killed_run_resumes(config: Path) -> None:
    """``--ckpt_path last`` needs a ``last.ckpt``: checkpointing on, and a ModelCheckpoint saving it."""
    trainer = yaml.safe_load(config.read_text())["trainer"]
    assert trainer.get("enable_checkpointing", True) is True
    saving = [c for c in trainer.get("callbacks", []) if c["class_path"].endswith(".ModelCheckpoint")
              and c.get("init_args", {}).get("save_last") is True]
    assert len(saving) == 1
    # last in the list, so that it saves after the pruning callbacks have updated their state
    assert trainer["callbacks"][-1] is saving[0]


def _readme_quickstart_figures() -> tuple[list[int], tuple[float, float], float]:
    """(MACs before/after and parameters before/after, the after-accuracy range, the before accuracy) as stated."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    found = re.search(r"Measured here: MACs ([\d,]+) → ([\d,]+) .*?parameters ([\d,]+) → ([\d,]+),\s+validation "
                      r"accuracy ([\d.]+) before pruning and ([\d.]+)–([\d.]+) after", text, re.DOTALL)
    assert found, "the README's quick-start figures moved: update this test with them"
    sizes = [int(g.replace(",", "")) for g in found.groups()[:4]]
    return sizes, (float(found[6]), float(found[7])), float(found[5])


def test_quickstart_prunes_half_the_macs_within_three_points(tmp_path: Path) -> None:
    config = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    main(["fit", "--config", str(config), f"--trainer.default_root_dir={tmp_path}",
          "--trainer.enable_progress_bar=false"])
    report_path = next(tmp_path.rglob("report.json"))
    totals = json.loads(report_path.read_text())["totals"]
    assert totals["macs_after"] <= 0.5 * totals["macs_before"]
    assert totals["metric_before"] - totals["metric_after"] <= 0.03
    assert totals["metric_after"] > 0.9
    assert (report_path.parent / "pruned_model.pt").is_file()
    # the README's figures are the ones this run printed: sizes exactly, accuracy within the stated range
    sizes, (low, high), before = _readme_quickstart_figures()
    assert [totals["macs_before"], totals["macs_after"], totals["params_before"], totals["params_after"]] == sizes
    assert totals["metric_before"] == pytest.approx(before, abs=5e-5)
    assert low - 5e-5 <= totals["metric_after"] <= high + 5e-5
