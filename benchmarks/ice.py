"""ICE-Pruning on pretrained ResNet-20 / CIFAR-10: the paper's Table III, Table II and Fig. 3, side by side.

1. baseline (fine-tune after every step, fixed LR) vs full ICE at ratios 0.6 / 0.7 / 0.8;
2. ablations at 0.6: ICE without the threshold, without freezing, without the LR scheduler;
3. criteria under ICE at 0.6: l1, random, entropy, mean_activation (time vs accuracy plot).

Every run starts from configs/ice_resnet20_cifar10.yaml (the baseline drops the three ICE satellites
and keeps the distillation, as both pipelines distil in the paper's CIFAR runs),
trains each fine-tuning epoch on a seeded ``--subset-fraction`` of the training split, measures on a
seeded half of the test split (``val_from: test``) and is tested on the other half. Results:
``results.jsonl``, ``results.md`` and ``ice.png`` in ``--out``.

Example:
    LIGHTNING_PRUNE_DATA=/path/to/data python benchmarks/ice.py --subset-fraction 0.2 --out benchmarks/results/ice
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from run import run_plan  # noqa: E402

BASE = Path(__file__).parents[1] / "configs" / "ice_resnet20_cifar10.yaml"
SATELLITES = {"threshold": "ThresholdSkipFineTune", "freezing": "LayerFreezer", "scheduler": "PruningAwareLR"}


def variant(base: dict[str, Any], ratio: float, importance: str = "l1", without: tuple[str, ...] = ()) -> dict[str, Any]:
    """The base ICE config at ``ratio`` with ``importance``, minus the named satellites."""
    config = copy.deepcopy(base)
    drop = {SATELLITES[w] for w in without}
    callbacks = [c for c in config["trainer"]["callbacks"] if c["class_path"].rsplit(".", 1)[-1] not in drop]
    callbacks[0]["init_args"].update(pruning_ratio=ratio, importance=importance)
    config["trainer"]["callbacks"] = callbacks
    return config


def plan(only: set[str] | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(group, name, config) for every run."""
    base = yaml.safe_load(BASE.read_text())
    runs = []

    def pair(ratio: float) -> None:
        runs.append(("table3", f"baseline_r{ratio}", variant(base, ratio, without=tuple(SATELLITES))))
        runs.append(("table3", f"ice_r{ratio}", variant(base, ratio)))

    pair(0.6)  # the goal's comparison first, then the ratio-0.6 studies, then the other ratios
    for name in SATELLITES:
        runs.append(("table2", f"ice_no_{name}_r0.6", variant(base, 0.6, without=(name,))))
    for criterion in ("random", "entropy", "mean_activation"):
        runs.append(("fig3", f"ice_{criterion}_r0.6", variant(base, 0.6, importance=criterion)))
    pair(0.7)
    pair(0.8)
    return [r for r in runs if only is None or r[0] in only]


def _row(rows: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return rows.get(name, {})


def report(rows: dict[str, dict[str, Any]], out: Path) -> None:
    """Markdown tables and the time-vs-accuracy plot."""
    def acc(r: dict[str, Any]) -> str:
        value = r.get("test", {}).get("test_acc")
        return "-" if value is None else f"{100 * value:.2f}"

    lines = ["## Table III analogue: baseline vs ICE", "",
             "| ratio | baseline test acc | ICE test acc | MACs after (both) | baseline s | ICE s | time ratio (baseline / ICE) | steps fine-tuned (ICE) |",
             "|---|---|---|---|---|---|---|---|"]
    for ratio in (0.6, 0.7, 0.8):
        b, i = _row(rows, f"baseline_r{ratio}"), _row(rows, f"ice_r{ratio}")
        if not b or not i:
            continue
        ice_time = i["seconds_total"]  # includes the freezing probe
        lines.append(f"| {ratio} | {acc(b)} | {acc(i)} | {b['macs_after']:,} / {i['macs_after']:,} | "
                     f"{b['seconds_total']:.0f} | {ice_time:.0f} | {b['seconds_total'] / ice_time:.2f} | "
                     f"{i['steps_finetuned']}/{i['steps']} |")
    lines += ["", "## Table II analogue: ablations at ratio 0.6", "",
              "| pipeline | test acc | pruning s | steps fine-tuned |", "|---|---|---|---|"]
    for name in ("ice_r0.6", *(f"ice_no_{n}_r0.6" for n in SATELLITES), "baseline_r0.6"):
        r = _row(rows, name)
        if r:
            lines.append(f"| {name} | {acc(r)} | {r['seconds_total']:.0f} | "
                         f"{r['steps_finetuned']}/{r['steps']} |")
    lines += ["", "## Fig. 3 analogue: criteria under ICE at ratio 0.6", "",
              "| criterion | test acc | pruning s |", "|---|---|---|"]
    points = []
    for criterion in ("l1", "random", "entropy", "mean_activation"):
        r = _row(rows, "ice_r0.6" if criterion == "l1" else f"ice_{criterion}_r0.6")
        if r:
            seconds = r["seconds_total"]
            lines.append(f"| {criterion} | {acc(r)} | {seconds:.0f} |")
            points.append((criterion, seconds, 100 * r["test"].get("test_acc", 0.0)))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    if points:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        for criterion, seconds, accuracy in points:
            ax.scatter(seconds, accuracy)
            ax.annotate(criterion, (seconds, accuracy))
        ax.set_xlabel("pruning time (s)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("ICE on ResNet-20 / CIFAR-10, ratio 0.6")
        fig.tight_layout()
        fig.savefig(out / "ice.png", dpi=120)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset-fraction", type=float, default=0.2)
    parser.add_argument("--out", default="benchmarks/results/ice")
    parser.add_argument("--only", nargs="*", choices=["table3", "table2", "fig3"], help="run only these groups")
    args = parser.parse_args()
    extra = [f"--data.init_args.subset_fraction={args.subset_fraction}", "--trainer.enable_progress_bar=false"]
    run_plan(plan(set(args.only) if args.only else None), Path(args.out), extra, report,
                    enrich=lambda row, _: row.update(subset_fraction=args.subset_fraction))

if __name__ == "__main__":
    main()
