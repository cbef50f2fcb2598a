"""AAP on pretrained ResNet-20 / CIFAR-10: the three targets, attention vs L1 (the paper's ILP comparison).

Runs, from configs/aap_resnet20_cifar10.yaml (one retraining epoch a round at lr 1e-3, lambda 0.2):

1. accuracy target, 1 point: attention (AAP) vs L1 (weight-magnitude thresholds, as the paper's ILP
   comparison: lambda scaled to L1's score range);
2. parameter target 50 % and FLOPs target 50 % with attention.

Each retraining epoch sees a seeded ``--subset-fraction`` of the training split; measurements use the
same fraction of the validation split; the final model is tested on the full test split. Results:
``results.jsonl`` (with every run's ``rounds``) and ``results.md`` in ``--out``.

Example:
    LIGHTNING_PRUNE_DATA=/path/to/data python benchmarks/aap.py --subset-fraction 0.2 --out benchmarks/results/aap
    # smoke test on a tiny subset:
    LIGHTNING_PRUNE_DATA=/path/to/data python benchmarks/aap.py --subset-fraction 0.01 --max-rounds 2 --only accuracy
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from run import run_plan  # noqa: E402

BASE = Path(__file__).parents[1] / "configs" / "aap_resnet20_cifar10.yaml"
#: L1 norms of ResNet-20's 3x3 filters are O(1-10) where attention scores are O(0.1-1).
L1_LAMBDA_SCALE = 10.0


def variant(base: dict[str, Any], importance: str = "attention", target: str = "accuracy", level: float = 0.01,
            max_rounds: int | None = None) -> dict[str, Any]:
    """The base config with another criterion and target."""
    config = copy.deepcopy(base)
    controller, aap = config["trainer"]["callbacks"][:2]
    controller["init_args"]["importance"] = importance
    args = aap["init_args"]
    args["target"] = target
    args.pop("max_drop", None)
    args.pop("param_reduction", None)
    args.pop("flops_reduction", None)
    if target == "accuracy":
        args["max_drop"] = level
    else:
        args["max_drop"] = None
        args[f"{'param' if target == 'params' else 'flops'}_reduction"] = level
    if importance == "l1":
        args["lambda_init"] = args["lambda_init"] * L1_LAMBDA_SCALE
    if max_rounds is not None:
        args["max_rounds"] = max_rounds
    return config


def plan(only: set[str] | None, max_rounds: int | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(group, name, config) for every run."""
    base = yaml.safe_load(BASE.read_text())
    runs = [
        ("accuracy", "attention_acc1", variant(base, "attention", "accuracy", 0.01, max_rounds)),
        ("accuracy", "l1_acc1", variant(base, "l1", "accuracy", 0.01, max_rounds)),
        ("size", "attention_params50", variant(base, "attention", "params", 0.5, max_rounds)),
        ("size", "attention_flops50", variant(base, "attention", "flops", 0.5, max_rounds)),
    ]
    return [r for r in runs if only is None or r[0] in only]


def report(rows: dict[str, dict[str, Any]], out: Path) -> None:
    """A markdown table of the runs."""
    lines = ["| run | test acc | val drop (points) | params removed | MACs removed | rounds | final round | stop | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        test = r.get("test", {}).get("test_acc")
        drop = None if r.get("metric_after") is None else 100 * (r["metric_before"] - r["metric_after"])
        aap = r.get("aap", {})
        lines.append(
            f"| {name} | {'-' if test is None else f'{100 * test:.2f}'} | {'-' if drop is None else f'{drop:.2f}'} | "
            f"{100 * (1 - r['params_after'] / r['params_before']):.1f} % | "
            f"{100 * (1 - r['macs_after'] / r['macs_before']):.1f} % | {len(r.get('rounds', [])) - 1} | "
            f"{aap.get('final_round')} | {aap.get('stop_reason')} | {r['seconds_total']:.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset-fraction", type=float, default=0.2)
    parser.add_argument("--max-rounds", type=int, default=None, help="override max_rounds (smoke tests)")
    parser.add_argument("--out", default="benchmarks/results/aap")
    parser.add_argument("--only", nargs="*", choices=["accuracy", "size"], help="run only these groups")
    args = parser.parse_args()
    out = Path(args.out)
    extra = [f"--data.init_args.subset_fraction={args.subset_fraction}", "--trainer.enable_progress_bar=false"]

    def enrich(row: dict[str, Any], name: str) -> None:
        report_path = next((out / "runs" / name).rglob("report.json"), None)
        if report_path is not None:
            found = json.loads(report_path.read_text()).get("extra", {})
            row.update(rounds=found.get("rounds", []), aap=found.get("aap", {}))
        row.update(subset_fraction=args.subset_fraction)

    run_plan(plan(set(args.only) if args.only else None, args.max_rounds), out, extra, report, enrich)

if __name__ == "__main__":
    main()
