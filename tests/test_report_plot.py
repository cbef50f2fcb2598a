"""report.png beside every report.json, and ``lightning-prune report PATH`` (the table printed, the plot drawn again)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from matplotlib.image import imread

from lightning_prune import (
    AdaptiveThresholdRollback,
    GradualMagnitudePruning,
    StructuredPruning,
    plots,
)
from lightning_prune.cli import SUBCOMMANDS, main
from lightning_prune.demos import DemoModule, demo_loaders, demo_trainer


def _png_size(path: Path) -> tuple[int, int]:
    height, width = imread(path).shape[:2]
    return width, height


def _fit(tmp_path: Path, *callbacks) -> Path:
    demo_trainer(list(callbacks), default_root_dir=str(tmp_path)).fit(DemoModule(), *demo_loaders())
    return tmp_path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One run of each kind, each with its defaults (as a user calls them), in its own folder."""
    folder = tmp_path_factory.mktemp("runs")
    return {
        "steps": _fit(folder / "steps", StructuredPruning()),
        "rounds": _fit(folder / "rounds", StructuredPruning(),
                       AdaptiveThresholdRollback(target="params", param_reduction=0.3, max_rounds=3)),
        "gradual": _fit(folder / "gradual", GradualMagnitudePruning(sparsity=0.5, pruning_epochs=2, patience=0,
                                                                    finetune_patience=1)),
    }


@pytest.mark.parametrize("kind", ["steps", "rounds", "gradual"])
def test_every_run_writes_a_plot_beside_its_report(runs: dict[str, Path], kind: str) -> None:
    report = json.loads((runs[kind] / "report.json").read_text())
    assert plots.report_kind(report) == kind
    assert report["monitor"] == "val_acc"
    width, height = _png_size(runs[kind] / "report.png")
    assert (width, height) == (1350, 378)  # 15 x 4.2 inches at 90 dpi: three panels side by side


def test_report_command_prints_the_table_and_draws_the_plot_again(runs: dict[str, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert "report" in SUBCOMMANDS
    report = json.loads((runs["steps"] / "report.json").read_text())
    main(["report", str(runs["steps"]), "--out", str(tmp_path / "again.png")])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(runs["steps"] / "report.json")
    assert "val_acc pruned" in out and f"completed: {len(report['steps'])} of {len(report['steps'])} steps" in out
    assert out.rstrip().endswith(f"wrote {tmp_path / 'again.png'}")
    assert _png_size(tmp_path / "again.png") == (1350, 378)


def test_report_command_reads_rounds_and_epochs_and_finds_the_newest_report_below_a_folder(
        runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["report", str(runs["rounds"] / "report.json"), "--no_plot"])
    out = capsys.readouterr().out
    assert "AAP: 3 rounds" in out and "wrote" not in out
    older, newer = tmp_path / "version_0", tmp_path / "version_1"
    for folder in (older, newer):
        folder.mkdir()
        (folder / "report.json").write_text((runs["gradual"] / "report.json").read_text())
    (newer / "report.json").touch()
    main(["report", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(newer / "report.json")
    assert "lightning_prune gradual pruning" in out and "sparsity 0.5000" in out
    assert (newer / "report.png").is_file() and not (older / "report.png").exists()


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"), ("{}", "is not a lightning_prune report"), ("not json", "is not a lightning_prune report")])
def test_report_command_refuses_what_is_not_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      content: str | None, message: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "HINT: " in err


def test_a_plot_that_fails_costs_the_run_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    def broken(report, path):
        raise RuntimeError("no canvas")

    monkeypatch.setattr(plots, "plot_report", broken)
    with caplog.at_level(logging.WARNING, logger="lightning_prune"):
        _fit(tmp_path, StructuredPruning())
    assert (tmp_path / "report.json").is_file() and (tmp_path / "pruned_model.pt").is_file()
    assert not (tmp_path / "report.png").exists()
    assert f"could not draw {tmp_path / 'report.png'}: RuntimeError: no canvas" in caplog.text
