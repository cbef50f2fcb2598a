"""Run pruning configs side by side and write JSON lines plus a markdown table.

Each config is run in this process, one after another, through the same LightningCLI as
``lightning-prune fit``; after fitting, the pruned model is tested on the datamodule's test split.
Extra arguments after ``--`` are passed to every run (e.g. ``--data.init_args.subset_fraction=0.1``).

Example:
    python benchmarks/run.py configs/quickstart.yaml configs/baseline_resnet20_cifar10.yaml \
        --out benchmarks/results/foundation -- --trainer.enable_progress_bar=false
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import lightning
import torch
import yaml

from lightning_prune import StructuredPruning
from lightning_prune.cli import make_cli


def run_config(config: str, extra: list[str], out: Path) -> dict[str, Any]:
    """Fit one config, test the result, and return one JSON-ready row."""
    name = Path(config).stem
    started = time.perf_counter()
    cli = make_cli(["fit", "--config", config, f"--trainer.default_root_dir={out / name}", *extra])
    wall = time.perf_counter() - started
    trainer = cli.trainer
    controller = next((cb for cb in trainer.callbacks if isinstance(cb, StructuredPruning)), None)
    tested = trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    row: dict[str, Any] = {
        "config": config, "args": extra, "seed": cli.config.fit.get("seed_everything"),
        "device": str(cli.model.device), "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "lightning": lightning.__version__,
        "wall_seconds": wall, "test": tested[0] if tested else {},
        "val_from": getattr(cli.datamodule, "val_from", "train"),  # a DataModule without it: its own split
    }
    if controller is not None:
        row.update(controller.report.totals())
        row["steps"] = len(controller.report.steps)
        row["probe_seconds"] = controller.report.extra.get("probe", {}).get("seconds", 0.0)
    return row


def dense_test_accuracy(config: dict[str, Any]) -> float:
    """Test accuracy (fraction) of ``config``'s unpruned model on its datamodule's test split."""
    import lightning as L

    from lightning_prune import CIFAR10DataModule, ImageClassifier

    module = ImageClassifier(**config["model"]["init_args"])
    data = CIFAR10DataModule(**config["data"]["init_args"])
    trainer = L.Trainer(accelerator="auto", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    return float(trainer.test(module, datamodule=data, verbose=False)[0]["test_acc"])


def run_plan(
    runs: list[tuple[str, str, dict[str, Any]]],
    out: Path,
    extra: list[str],
    report: Callable[[dict[str, dict[str, Any]], Path], None],
    enrich: Callable[[dict[str, Any], str], None] | None = None,
    rerun: frozenset[str] = frozenset(),
) -> dict[str, dict[str, Any]]:
    """Run ``(group, name, config)`` runs, resuming from ``out/results.jsonl``; ``report`` after each run.

    The names in ``rerun`` run again even when finished (their new line wins; the old one stays in the file):
    a ratio is taken within one invocation, so a candidate run later is compared with a baseline run again.
    """
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "results.jsonl"
    rows: dict[str, dict[str, Any]] = {}
    if jsonl.exists():  # resume: keep finished runs (the last line of a name wins)
        rows = {r["name"]: r for r in map(json.loads, jsonl.read_text().splitlines())}
    for group, name, config in runs:
        # a row measured on another validation split (before val_from existed: none) is not comparable
        val_from = config.get("data", {}).get("init_args", {}).get("val_from", "train")
        if name in rows and rows[name].get("val_from", "train") == val_from and name not in rerun:
            continue
        path = out / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        row = run_config(str(path), extra, out / "runs")
        if enrich is not None:
            enrich(row, name)
        row.update(name=name, group=group)
        rows[name] = row
        with jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        report(rows, out)
    report(rows, out)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """A table of the rows; time ratios are relative to the first row."""
    head = ("| config | params | MACs | metric before | metric after | test acc | prune s | eval s | fine-tune s "
            "| total s | time ratio |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    base = rows[0].get("seconds_total") or rows[0]["wall_seconds"]
    for r in rows:
        total = r.get("seconds_total") or r["wall_seconds"]
        test_acc = r["test"].get("test_acc")
        lines.append(
            f"| {Path(r['config']).stem} | {r.get('params_before', 0):,} → {r.get('params_after', 0):,} "
            f"| {r.get('macs_before', 0):,} → {r.get('macs_after', 0):,} | {r.get('metric_before') or 0:.4f} "
            f"| {r.get('metric_after') or 0:.4f} | {'-' if test_acc is None else f'{test_acc:.4f}'} "
            f"| {r.get('seconds_prune', 0):.1f} | {r.get('seconds_eval', 0):.1f} | {r.get('seconds_finetune', 0):.1f} "
            f"| {total:.1f} | {total / base:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="LightningCLI YAML configs to run side by side")
    parser.add_argument("--out", default="benchmarks/runs", help="output folder (runs, results.jsonl, results.md)")
    argv, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    out = Path(argv.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with (out / "results.jsonl").open("a") as jsonl:
        for config in argv.configs:
            row = run_config(config, extra, out)
            rows.append(row)
            jsonl.write(json.dumps(row) + "\n")
            jsonl.flush()
    (out / "results.md").write_text(markdown(rows))


if __name__ == "__main__":
    main()
