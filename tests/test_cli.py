"""The ``lightning-prune`` command: a fast top-level help, lazy package imports, short errors for bad
configuration, ``--ckpt_path last`` that resumes or refuses, and no spurious Lightning notices."""

from __future__ import annotations

import ast
import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

# Lightning is imported here, not first inside a capsys test: its log handler binds sys.stderr when
# Lightning is imported, and must not bind one test's captured stream.
import lightning.pytorch  # noqa: F401
import pytest
import yaml

import lightning_prune
from lightning_prune import PruningConfigError, cli, lightning_cli
from lightning_prune._lightning import TIP_PREFIX
from lightning_prune.cli import SUBCOMMANDS, main, make_cli

# make_cli(args=...) under pytest: sys.argv holds pytest's own arguments
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter is intended")

REPO = Path(__file__).parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SCRIPT = Path(sys.executable).with_name("lightning-prune")  # the console script of this environment
LAZY_PACKAGES = ["lightning_prune", "lightning_prune.callbacks", "lightning_prune.data", "lightning_prune.tuning"]
NOTICES = ("`tensorboardX` has been removed", "Tip: For seamless cloud logging", "`max_epochs` was not set",
           "Sanity Checking", "`Trainer.fit` stopped", "LeafSpec")


def run_script(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.is_file(), f"no console script at {SCRIPT}: pip install -e ."
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def quickstart(**pruning: Any) -> dict[str, Any]:
    """configs/quickstart.yaml, with StructuredPruning's init_args updated by ``pruning``."""
    config = yaml.safe_load(QUICKSTART.read_text())
    config["trainer"]["callbacks"][0]["init_args"].update(pruning)
    return config


def tiny_config(root: Path, **trainer: Any) -> dict[str, Any]:
    """A two-batch epoch of the digits network, no pruning: the cheapest real fit."""
    return {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "default_root_dir": str(root), "max_epochs": 1,
                    "limit_train_batches": 2, "limit_val_batches": 1, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False, **trainer},
        "model": {"class_path": "lightning_prune.ImageClassifier",
                  "init_args": {"model": "digits_resnet", "num_classes": 10}},
        "data": {"class_path": "lightning_prune.DigitsDataModule", "init_args": {"batch_size": 32}},
    }


def save_last_to(folder: Path) -> dict[str, Any]:
    return {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(folder), "save_last": True}}


def error_lines(err: str) -> list[str]:
    """stderr as lines, checked to be the short form: at most 5 lines, an ``error:`` and a ``HINT:`` line."""
    lines = err.strip().splitlines()
    assert len(lines) <= 5, err
    assert "Traceback" not in err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    assert any(line.startswith("HINT: ") for line in lines), err
    return lines


# ---------------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("argv", [["--help"], ["-h"], []], ids=["--help", "-h", "no-arguments"])
def test_help_lists_every_subcommand_with_a_one_line_description(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    if argv:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    else:
        main(argv)
    out = capsys.readouterr().out
    assert out.startswith("usage: lightning-prune")
    for name, description in SUBCOMMANDS.items():
        assert re.search(rf"^ +{name} +{re.escape(description)}$", out, re.MULTILINE), (name, out)


def test_help_lists_lightning_clis_subcommands_tune_and_report() -> None:
    """The hard-coded list (help must not import Lightning to ask) is LightningCLI's, plus tune and report."""
    assert list(SUBCOMMANDS) == [*cli.PruneCLI.subcommands(), "tune", "report"]


def test_help_and_package_import_load_neither_torch_nor_lightning(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import lightning_prune, lightning_prune.cli\n"
        "assert lightning_prune.PruningConfigError.__name__ == 'PruningConfigError'\n"
        "try:\n"
        "    lightning_prune.cli.main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0\n"
        "print(sorted(m for m in ('torch', 'lightning', 'torchvision', 'optuna') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "tune" in result.stdout and result.stdout.strip().endswith("[]")


def test_console_script_help_answers_in_under_three_seconds(tmp_path: Path) -> None:
    start = time.perf_counter()
    result = run_script("--help", cwd=tmp_path, timeout=60)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in SUBCOMMANDS)
    assert elapsed < 3.0


def test_subcommand_help_still_comes_from_lightning_cli(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--trainer.max_epochs" in out and "--ckpt_path" in out and "--tune" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--help"])
    assert exit_info.value.code == 0
    assert "--n_trials" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- lazy imports
@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_lazy_package_exports_what_it_declares(name: str) -> None:
    package = importlib.import_module(name)
    assert set(package._EXPORTS) == set(package.__all__)
    for export, module in package._EXPORTS.items():
        assert getattr(package, export) is getattr(importlib.import_module(module), export)
    assert set(package.__all__) <= set(dir(package))
    # the TYPE_CHECKING imports (what type checkers see) are the same names from the same modules
    tree = ast.parse(Path(package.__file__).read_text())
    block = next(node for node in tree.body
                 if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING")
    typed = {alias.name: node.module for node in block.body for alias in node.names}
    assert typed == package._EXPORTS


def test_lazy_package_keeps_the_eager_packages_behaviour() -> None:
    from lightning_prune import StructuredPruning
    from lightning_prune.callbacks.structured import StructuredPruning as Defined

    assert StructuredPruning is Defined is lightning_prune.StructuredPruning is lightning_prune.callbacks.StructuredPruning
    assert lightning_prune.__version__ == "0.1.0"
    assert lightning_prune.callbacks.structured.StructuredPruning is Defined  # submodules as attributes
    assert lightning_prune.models.create_model("digits_resnet").__class__.__name__ == "CifarResNet"
    namespace: dict[str, Any] = {}
    exec("from lightning_prune import *", namespace)
    assert set(lightning_prune.__all__) <= set(namespace)
    assert not hasattr(lightning_prune, "NoSuchName")
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        lightning_prune.callbacks.NoSuchName  # noqa: B018


# ---------------------------------------------------------------------------------------------- short errors
def test_bad_value_in_the_config_is_a_short_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_yaml(tmp_path / "bad.yaml", quickstart(pruning_ratio=1.5))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    lines = error_lines(capsys.readouterr().err)
    assert lines[0].startswith("error: pruning_ratio=1.5")


def test_bad_value_on_the_command_line_is_a_short_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART), "--data.init_args.batch_size=0"])
    assert exit_info.value.code == 2
    assert error_lines(capsys.readouterr().err)[0].startswith("error: batch_size=0")


def test_config_error_raised_during_fit_is_a_short_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """StructuredPruning.setup refuses a Trainer that never trains: raised inside trainer.fit."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(QUICKSTART), f"--trainer.default_root_dir={tmp_path}",
              "--trainer.limit_train_batches=0"])
    assert exit_info.value.code == 2
    assert error_lines(capsys.readouterr().err)[0].startswith("error: limit_train_batches=0")


def test_config_error_of_tune_is_a_short_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--config", str(QUICKSTART), "--subset_fraction", "0", "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert error_lines(capsys.readouterr().err)[0].startswith("error: subset_fraction=0.0")


def test_other_exceptions_keep_their_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(args: Any = None, run: bool = True) -> None:
        raise RuntimeError("not a configuration problem")

    monkeypatch.setattr(lightning_cli, "make_cli", broken)
    with pytest.raises(RuntimeError, match="not a configuration problem"):
        main(["fit", "--config", "whatever.yaml"])
    assert capsys.readouterr().err == ""


def test_only_a_config_error_and_what_is_raised_from_it_count() -> None:
    original = PruningConfigError("x=1 is too small", hint="use x=2")
    try:
        raise ValueError("Does not validate against any of the Union subtypes") from original
    except ValueError as wrapped:  # how jsonargparse reports a constructor's error
        assert cli._config_error(wrapped) is original
    try:
        try:
            raise original
        except PruningConfigError:
            raise RuntimeError("cleanup failed")  # noqa: B904 - a new failure, merely during handling
    except RuntimeError as during:
        assert cli._config_error(during) is None
    assert cli._error_text(original) == "error: x=1 is too small.\nHINT: use x=2\n"


def test_console_script_prints_a_short_error_and_exits_2(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "bad.yaml", quickstart(pruning_ratio=1.5))
    result = run_script("fit", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert any(line.startswith("error: pruning_ratio=1.5 is outside (0, 1)") for line in lines)


# ---------------------------------------------------------------------------------------------- ckpt_path last
@pytest.mark.parametrize("setup", ["dirpath", "no-dirpath", "no-checkpointing"])
def test_ckpt_path_last_with_nothing_to_resume_from_is_refused(
        setup: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, ckpts = tmp_path / "runs", tmp_path / "ckpts"
    trainer: dict[str, Any] = {"dirpath": {"callbacks": [save_last_to(ckpts)]}, "no-dirpath": {},
                               "no-checkpointing": {"enable_checkpointing": False}}[setup]
    config = write_yaml(tmp_path / "config.yaml", tiny_config(root, **trainer))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--ckpt_path", "last"])
    assert exit_info.value.code == 2
    lines = error_lines(capsys.readouterr().err)
    assert lines[0].startswith("error: `fit --ckpt_path last` found no last*.ckpt checkpoint to resume from")
    searched = {"dirpath": str(ckpts), "no-dirpath": str(root / "lightning_logs" / "version_0" / "checkpoints"),
                "no-checkpointing": "the Trainer has no ModelCheckpoint"}[setup]
    assert searched in lines[0]
    assert ("earlier runs'" in lines[0]) is (setup == "no-dirpath")
    assert "save_last: true" in lines[1] and "--ckpt_path <file.ckpt>" in lines[1]
    assert not list(tmp_path.rglob("*.ckpt"))  # refused before training


def test_ckpt_path_last_is_refused_for_validate_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Lightning's validate(ckpt_path="last") without a checkpoint would evaluate the untrained weights."""
    config = write_yaml(tmp_path / "config.yaml", tiny_config(tmp_path, callbacks=[save_last_to(tmp_path / "ckpts")]))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(config), "--ckpt_path", "last"])
    assert exit_info.value.code == 2
    assert error_lines(capsys.readouterr().err)[0].startswith("error: `validate --ckpt_path last` found no")


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_ckpt_path_last_resumes_from_the_newest_last_checkpoint(tmp_path: Path) -> None:
    ckpts = tmp_path / "ckpts"
    config = write_yaml(tmp_path / "config.yaml", tiny_config(tmp_path / "runs", callbacks=[save_last_to(ckpts)]))
    first = make_cli(["fit", "--config", str(config)])
    steps = first.trainer.global_step
    assert steps == 2 and (ckpts / "last.ckpt").is_file()
    # two candidates; the newest by modification time is the one that is not called last.ckpt
    shutil.copy(ckpts / "last.ckpt", ckpts / "last-v1.ckpt")
    now = time.time()
    os.utime(ckpts / "last.ckpt", (now - 100, now - 100))
    os.utime(ckpts / "last-v1.ckpt", (now, now))

    resumed = make_cli(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_epochs=2"])
    assert resumed.trainer.ckpt_path == str(ckpts / "last-v1.ckpt")
    assert resumed.trainer.current_epoch == 2
    assert resumed.trainer.global_step == 2 * steps  # continued from epoch 1: one more epoch, not two


# ---------------------------------------------------------------------------------------------- notices
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_pruning_config_gets_the_default_logger_and_open_ended_epochs_without_notices(tmp_path: Path) -> None:
    records = _Records()
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = make_cli(["--config", str(QUICKSTART), f"--trainer.default_root_dir={tmp_path}"],
                               run=False).trainer
    finally:
        rank_zero.removeHandler(records)
    assert trainer.fit_loop.max_epochs == -1  # the controller sets it from its plan at train start
    expected = lightning_cli._default_logger(tmp_path)
    assert type(trainer.logger) is type(expected) and trainer.logger.log_dir == expected.log_dir
    assert not [w for w in caught if "tensorboardX" in str(w.message)]
    assert not [m for m in records.messages if m.startswith(TIP_PREFIX)]
    assert any(m.startswith("GPU available") for m in records.messages)  # other notices are kept


def test_an_explicit_choice_is_kept(tmp_path: Path) -> None:
    trainer = make_cli(["--config", str(QUICKSTART), f"--trainer.default_root_dir={tmp_path}",
                        "--trainer.max_epochs=7", "--trainer.logger=false"], run=False).trainer
    assert trainer.fit_loop.max_epochs == 7 and trainer.loggers == []
    no_controller = tiny_config(tmp_path)
    del no_controller["trainer"]["max_epochs"]
    config = write_yaml(tmp_path / "plain.yaml", no_controller)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert make_cli(["--config", str(config)], run=False).trainer.fit_loop.max_epochs is None  # Lightning's call


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("config", ["quickstart", "ice_quickstart", "aap_quickstart", "dg2pf_quickstart"])
def test_quick_starts_through_the_console_script_have_no_spurious_notices(tmp_path: Path, config: str) -> None:
    out = tmp_path / "out"
    result = run_script("fit", "--config", str(QUICKSTART.with_name(f"{config}.yaml")), "--trainer.default_root_dir",
                        str(out), cwd=tmp_path, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for notice in NOTICES:
        assert notice not in output
    assert not re.search(r"\.py:\d+: ", output), output  # no warning of any kind (file:line: message)
    # it ran to the end, writing where Lightning's default logger would have
    assert (out / "lightning_logs" / "version_0" / "report.json").is_file()
    if config == "quickstart":  # the step numbers of the log lines are the summary table's
        logged = re.findall(r"\[lightning_prune\] step (\d+)/6 ", output)
        tabled = re.findall(r"^│ +(\d+) │", output, re.MULTILINE)
        assert logged == tabled == ["1", "2", "3", "4", "5", "6"]
