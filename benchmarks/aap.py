"""AAP on a pretrained CIFAR ResNet (56 by default, or 20 / 32) / CIFAR-10: the paper's Tables 3 and 4, and the targets.

Groups of runs, from configs/aap_resnet20_cifar10.yaml with the network swapped in (one retraining epoch a
round at lr 1e-3; thresholds as a fraction of the filters, lambda 0.05; rounds judged against the unpruned
model retrained alike):

* ``accuracy`` (the accuracy-target run): a 1-point budget, attention (AAP) and L1 thresholds, and
  attention with distillation from the unpruned model during every retraining epoch (``_kd``, beyond the
  paper: Hinton loss, T 2, as in the ICE benchmark);
* ``oneshot`` (Table 3): one-shot pruning of 57 % of every prunable conv's filters (about 58 % of the
  parameters, the paper's 57.73 %), no fine-tuning, ranked by attention mean p = 1, 2, 4, attention
  sum, attention max, L1 and random; repeated at 30 % of the filters;
* ``size``: parameter target 50 % and FLOPs target 50 % with attention; the parameter-target run is
  the adaptive row of Table 4;
* ``fixed`` (Table 4): fixed-rate iterative attention (IAP) and L1 (ILP) pruning, 5 % of the filters a
  round as in the paper, to the parameter reduction the adaptive run reached, with the same epoch
  budget (one epoch a round, the remainder as final fine-tuning). Needs the ``size`` group's run;
* ``final`` (Table 4, beyond the paper): the parameter-target run followed by ``FINAL_EPOCHS`` fine-tuning
  epochs of the round it returns, so that it, too, ends with fine-tuning within the same epoch budget.

Each retraining epoch sees a seeded ``--subset-fraction`` of the training split; measurements use a
seeded half of the test split (``val_from: test`` in the base config: the weights were trained on all of
the training split) and every final model is tested on the other half. Results:
``results.jsonl`` (with every run's ``rounds``) and ``results.md`` in ``--out``; a rerun resumes.

Example:
    LIGHTNING_PRUNE_DATA=/path/to/data python benchmarks/aap.py --network resnet56 --subset-fraction 0.1
    # smoke test on a tiny subset:
    LIGHTNING_PRUNE_DATA=/path/to/data python benchmarks/aap.py --subset-fraction 0.01 --max-rounds 2 --only accuracy \
        --out /tmp/aap_smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from lightning_prune.models import create_model
from lightning_prune.structural import graph as structure

sys.path.insert(0, str(Path(__file__).parent))
from run import dense_test_accuracy, run_plan  # noqa: E402

BASE = Path(__file__).parents[1] / "configs" / "aap_resnet20_cifar10.yaml"
#: Fractions of every prunable conv's filters removed in the one-shot runs; 0.57 is 58 % of ResNet-20's
#: parameters (the paper's 57.73 %), 0.30 a milder level.
ONESHOT_RATIOS = (0.57, 0.30)
#: Filters removed per round by the fixed-rate runs (the paper's IAP / ILP rate).
FIXED_RATE = 0.05
MODELS = {"resnet20": ("cifar_resnet20", "weights/resnet20-12fca82f.th"),
          "resnet32": ("cifar_resnet32", "weights/resnet32-d509ac18.th"),
          "resnet56": ("cifar_resnet56", "weights/resnet56-4bfd9763.th")}
#: The network of this invocation (``--network``).
NETWORK = ["resnet56"]
CRITERIA = {  # Table 3's rows: (importance, importance_kwargs)
    "attention_mean_p1": ("attention", {"reduction": "mean", "p": 1.0}),
    "attention_mean_p2": ("attention", {"reduction": "mean", "p": 2.0}),
    "attention_mean_p4": ("attention", {"reduction": "mean", "p": 4.0}),
    "attention_sum_p1": ("attention", {"reduction": "sum", "p": 1.0}),
    "attention_max_p1": ("attention", {"reduction": "max", "p": 1.0}),
    "l1": ("l1", {}),
    "random": ("random", {}),
}


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
    config["model"]["init_args"]["model"], config["model"]["init_args"]["weights"] = MODELS[NETWORK[0]]
    if max_rounds is not None:
        args["max_rounds"] = max_rounds
    return config


#: Final fine-tuning epochs of the ``final`` group's parameter-target run: the fixed-rate runs of Table 4 end
#: with fine-tuning epochs, the adaptive run without; 12 rounds (where the parameter target is reached) + 8 = the
#: fixed-rate runs' 20 epochs.
FINAL_EPOCHS = 8


def with_final_epochs(config: dict[str, Any], epochs: int) -> dict[str, Any]:
    """``config`` with ``epochs`` fine-tuning epochs after the adaptive rounds end (on the round they return)."""
    config = copy.deepcopy(config)
    config["trainer"]["callbacks"][0]["init_args"]["final_finetune_epochs"] = epochs
    return config


def distilled(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with distillation from the unpruned model in every retraining epoch (as the ICE benchmark)."""
    config = copy.deepcopy(config)
    kd = {"class_path": "lightning_prune.SelfDistillation",
          "init_args": {"loss": "hinton", "alpha": 1.0, "temperature": 2.0, "scale_by_t2": False}}
    config["trainer"]["callbacks"].insert(2, kd)
    return config


def uniform(base: dict[str, Any], importance: str, importance_kwargs: dict[str, Any], ratio: float, steps: int,
            final_epochs: int, model: str | None = None) -> dict[str, Any]:
    """The base config with StructuredPruning alone: ``steps`` uniform local steps to ``ratio`` of the filters."""
    config = copy.deepcopy(base)
    controller = config["trainer"]["callbacks"][0]
    controller["init_args"].update(
        importance=importance, importance_kwargs=importance_kwargs or None, schedule="uniform", scope="local",
        pruning_ratio=ratio, steps=steps, finetune_epochs=1 if steps > 1 or final_epochs else 0,
        final_finetune_epochs=final_epochs)
    config["trainer"]["callbacks"] = [controller]
    config["model"]["init_args"]["model"], config["model"]["init_args"]["weights"] = MODELS[model or NETWORK[0]]
    return config


def matching_ratio(model: str, reduction: float) -> float:
    """The uniform filter ratio whose parameter reduction is closest to ``reduction``.

    The network is traced once; each candidate ratio's reduction is then summed from the layers'
    parameters per filter.
    """
    network = create_model(MODELS[model][0], num_classes=10)
    layers = structure.discover_layers(network, structure.build_graph(network, torch.randn(1, 3, 32, 32)))
    total = structure.count_params(network)

    def removed_fraction(ratio: float) -> float:
        return sum(layer.group_params / layer.channels * math.ceil(ratio * layer.channels - 1e-9)
                   for layer in layers) / total

    candidates = [i / 400 for i in range(1, 400)]
    return min(candidates, key=lambda r: abs(removed_fraction(r) - reduction))


def oneshot_name(ratio: float, model: str, criterion: str) -> str:
    """``oneshot57_resnet20_l1`` for 57 % of the filters of ResNet-20 ranked by L1."""
    return f"oneshot{round(100 * ratio)}_{model}_{criterion}"


def plan(only: set[str] | None, max_rounds: int | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(group, name, config) for every run that needs no other run's result."""
    base = yaml.safe_load(BASE.read_text())
    model = NETWORK[0]
    runs = [
        ("accuracy", "attention_acc1", variant(base, "attention", "accuracy", 0.01, max_rounds)),
        ("accuracy", "attention_acc1_kd", distilled(variant(base, "attention", "accuracy", 0.01, max_rounds))),
        ("size", "attention_params50", variant(base, "attention", "params", 0.5, max_rounds)),
        ("size", "attention_flops50", variant(base, "attention", "flops", 0.5, max_rounds)),
        ("accuracy", "l1_acc1", variant(base, "l1", "accuracy", 0.01, max_rounds)),
        ("final", f"attention_params50_final{FINAL_EPOCHS}",
         with_final_epochs(variant(base, "attention", "params", 0.5, max_rounds), FINAL_EPOCHS)),
    ]
    runs += [
        ("oneshot", oneshot_name(ratio, model, name), uniform(base, importance, kwargs, ratio, 1, 0, model))
        for ratio in ONESHOT_RATIOS for name, (importance, kwargs) in CRITERIA.items()
    ]
    return [r for r in runs if only is None or r[0] in only]


def fixed_rate_plan(adaptive: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Table 4's IAP and ILP runs, matched to the adaptive run's parameter reduction and epoch budget."""
    base = yaml.safe_load(BASE.read_text())
    reduction = 1 - adaptive["params_after"] / adaptive["params_before"]
    epochs = len(adaptive["rounds"]) - 1  # every round, rolled back or not, trained one epoch
    ratio = matching_ratio(NETWORK[0], reduction)
    steps = max(1, min(epochs, round(ratio / FIXED_RATE)))
    return [("fixed", f"{name}_fixed", uniform(base, importance, kwargs, ratio, steps, epochs - steps))
            for name, (importance, kwargs) in (("iap", CRITERIA["attention_mean_p1"]), ("ilp", CRITERIA["l1"]))]


def _pct(before: int, after: int) -> str:
    return f"{100 * (1 - after / before):.1f} %"


def _test(row: dict[str, Any]) -> str:
    test = row.get("test", {}).get("test_acc")
    return "-" if test is None else f"{100 * test:.2f}"


def report(rows: dict[str, dict[str, Any]], out: Path) -> None:
    """``results.md``: one table per group."""
    lines = ["# AAP benchmark: pretrained CIFAR ResNets on CIFAR-10", ""]
    first = next(iter(rows.values()), {})
    unpruned = first.get("unpruned_test")
    lines += [f"{NETWORK[0]}, subset_fraction {first.get('subset_fraction')}, {first.get('threads')} CPU threads, "
              f"torch {first.get('torch')}; validation on a seeded half of the CIFAR-10 test split, test accuracy on "
              f"the other half (unpruned: {'-' if unpruned is None else f'{100 * unpruned:.2f}'} %).", ""]
    oneshot = {n: r for n, r in rows.items() if r["group"] == "oneshot"}
    if oneshot:
        lines += ["## Table 3 analogue: one-shot, no fine-tuning", "",
                  "| filters removed | model | criterion | test acc before | test acc after | drop (points) "
                  "| params removed | MACs removed |", "|---|---|---|---|---|---|---|---|"]
        for name, r in oneshot.items():
            level, model, criterion = name.removeprefix("oneshot").split("_", 2)
            before = r.get("test_before")
            after = r.get("test", {}).get("test_acc")
            drop = "-" if before is None or after is None else f"{100 * (before - after):.2f}"
            lines.append(f"| {level} % | {model} | {criterion} | {'-' if before is None else f'{100 * before:.2f}'} | {_test(r)} "
                         f"| {drop} | {_pct(r['params_before'], r['params_after'])} "
                         f"| {_pct(r['macs_before'], r['macs_after'])} |")
        lines.append("")
    adaptive = {n: r for n, r in rows.items() if r["group"] in ("accuracy", "size", "final")}
    if adaptive:
        lines += ["## Adaptive runs (accuracy, parameter and FLOPs targets)", "",
                  "| run | test acc | val drop (points) | params removed | MACs removed | rounds | rolled back "
                  "| final round | stop | s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in adaptive.items():
            drop = None if r.get("metric_after") is None else 100 * (r["metric_before"] - r["metric_after"])
            aap, rounds = r.get("aap", {}), r.get("rounds", [])
            rollbacks = sum(1 for x in rounds if x.get("rolled_back_to") is not None)
            lines.append(
                f"| {name} | {_test(r)} | {'-' if drop is None else f'{drop:.2f}'} "
                f"| {_pct(r['params_before'], r['params_after'])} | {_pct(r['macs_before'], r['macs_after'])} "
                f"| {len(rounds) - 1} | {rollbacks} | {aap.get('final_round')} | {aap.get('stop_reason')} "
                f"| {r['seconds_total']:.0f} |")
        lines.append("")
    table4 = [("adaptive (AAP)", rows.get("attention_params50")),
              (f"adaptive (AAP), then {FINAL_EPOCHS} fine-tuning epochs", rows.get(f"attention_params50_final{FINAL_EPOCHS}"))]
    table4 += [(label, rows.get(f"{key}_fixed")) for key, label in (("iap", "IAP (fixed rate)"), ("ilp", "ILP (fixed rate)"))]
    table4 = [(label, r) for label, r in table4 if r is not None]
    if len(table4) > 1:
        lines += ["## Table 4 analogue: adaptive vs fixed-rate iterative pruning, same epoch budget", "",
                  "| method | test acc | params removed | MACs removed | pruning rounds | epochs | s |",
                  "|---|---|---|---|---|---|---|"]
        for label, r in table4:
            if r["group"] == "fixed":
                rounds, epochs = r["steps"], r["steps"] + r.get("final_epochs", 0)
            else:
                rounds = len(r.get("rounds", [])) - 1
                epochs = rounds + r.get("final_epochs", 0)
            lines.append(f"| {label} | {_test(r)} | {_pct(r['params_before'], r['params_after'])} "
                         f"| {_pct(r['macs_before'], r['macs_after'])} | {rounds} | {epochs} "
                         f"| {r['seconds_total']:.0f} |")
        lines.append("")
    analysis = out / "analysis.md"  # the hand-written reading of the tables, kept across reruns
    if analysis.exists():
        lines += ["", analysis.read_text()]
    (out / "results.md").write_text("\n".join(lines))
    plot(rows, out)


def plot(rows: dict[str, dict[str, Any]], out: Path) -> None:
    """``results.png``: Table 3's accuracies, the accuracy-target run's rounds, Table 4's accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    series = [(ratio, NETWORK[0]) for ratio in ONESHOT_RATIOS]
    for offset, (ratio, model) in enumerate(series):
        names = [oneshot_name(ratio, model, c) for c in CRITERIA]
        if all(n in rows for n in names):
            width = 0.8 / len(series)
            axes[0].bar([i + width * offset for i in range(len(names))],
                        [100 * rows[n]["test"].get("test_acc", 0.0) for n in names], width=width,
                        label=f"{model}, {100 * ratio:.0f} % of filters")
            axes[0].set_xticks(range(len(names)), list(CRITERIA), rotation=35, ha="right")
    axes[0].set(ylabel="test accuracy (%)", title="one-shot, no fine-tuning")
    if axes[0].patches:
        axes[0].legend(fontsize=7)
    for name in ("attention_acc1", "attention_acc1_kd", "l1_acc1"):
        rounds = rows.get(name, {}).get("rounds", [])
        if len(rounds) > 1:
            params0 = rounds[0]["params"]
            axes[1].plot([r["round"] for r in rounds], [100 * (1 - r["params"] / params0) for r in rounds],
                         marker="o", label=f"{name}: params removed (%)")
            axes[1].plot([r["round"] for r in rounds], [100 * r["metric"] for r in rounds], marker="x",
                         linestyle="--", label=f"{name}: val acc (%)")
            rejected = [r for r in rounds if not r["acceptable"]]
            axes[1].scatter([r["round"] for r in rejected], [100 * r["metric"] for r in rejected], color="red",
                            zorder=3)
    axes[1].set(xlabel="round (red: rejected, rolled back)", title="accuracy target, 1 point")
    if axes[1].lines:
        axes[1].legend(fontsize=7)
    table4 = [(label, rows[name]) for label, name in (("AAP", "attention_params50"), ("IAP", "iap_fixed"),
                                                      ("ILP", "ilp_fixed")) if name in rows]
    if table4:
        axes[2].bar([label for label, _ in table4], [100 * r["test"].get("test_acc", 0.0) for _, r in table4])
    axes[2].set(ylabel="test accuracy (%)", title="same parameter reduction and epoch budget")
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    plt.close(fig)


def epochs_of(row: dict[str, Any]) -> int:
    """Training epochs a run spent: one a round (rolled back or not), the reference retraining, fixed runs' own."""
    if row["group"] == "fixed":
        return row["steps"] + row.get("final_epochs", 0)
    reference = 1 if row.get("aap", {}).get("metric_retrained_unpruned") is not None else 0
    return len(row.get("rounds", [])) - 1 + row.get("final_epochs", 0) + reference


def summary(rows: dict[str, dict[str, Any]], out: Path, unpruned: float | None) -> None:
    """``summary.json`` with the issue's keys (accuracy in percent, reductions as fractions)."""
    def pct(row: dict[str, Any] | None) -> float | None:
        test = (row or {}).get("test", {}).get("test_acc")
        return None if test is None else round(100 * test, 2)

    def target(name: str) -> dict[str, Any] | None:
        row = rows.get(name)
        if row is None:
            return None
        return {"max_drop_pt": None if unpruned is None or pct(row) is None else round(100 * unpruned - pct(row), 2),
                "params_reduction": round(1 - row["params_after"] / row["params_before"], 4),
                "macs_reduction": round(1 - row["macs_after"] / row["macs_before"], 4),
                "test_acc": pct(row), "epochs": epochs_of(row), "seconds": round(row["seconds_total"], 1)}

    adaptive = rows.get("attention_params50")
    table4 = None if adaptive is None else {
        "adaptive": pct(adaptive), "iap": pct(rows.get("iap_fixed")), "ilp": pct(rows.get("ilp_fixed")),
        "params_reduction": round(1 - adaptive["params_after"] / adaptive["params_before"], 4),
        "epochs": epochs_of(adaptive)}
    final = rows.get(f"attention_params50_final{FINAL_EPOCHS}")
    if table4 is not None and final is not None:
        table4.update(adaptive_final=pct(final), adaptive_final_epochs=epochs_of(final),
                      adaptive_final_params_reduction=round(1 - final["params_after"] / final["params_before"], 4))
    first = next(iter(rows.values()), {})
    data = {"network": NETWORK[0], "device": first.get("device"), "threads": first.get("threads"),
            "unpruned_test_acc": None if unpruned is None else round(100 * unpruned, 2),
            "accuracy_target": target("attention_acc1"), "accuracy_target_distilled": target("attention_acc1_kd"),
            "params_target": target("attention_params50"),
            "flops_target": target("attention_flops50"), "table4": table4}
    (out / "summary.json").write_text(json.dumps(data, indent=2) + "\n")


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset-fraction", type=float, default=0.1)
    parser.add_argument("--max-rounds", type=int, default=None, help="override max_rounds (smoke tests)")
    parser.add_argument("--network", default="resnet56", choices=sorted(MODELS))
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/results/aap/NETWORK)")
    parser.add_argument("--only", nargs="*", choices=["oneshot", "accuracy", "size", "fixed", "final"],
                        help="run only these groups")
    args = parser.parse_args()
    NETWORK[0] = args.network
    out = Path(args.out or f"benchmarks/results/aap/{args.network}")
    only = set(args.only) if args.only else None
    extra = [f"--data.init_args.subset_fraction={args.subset_fraction}", "--trainer.enable_progress_bar=false"]

    dense: dict[str, float] = {}

    def enrich(row: dict[str, Any], name: str) -> None:
        # the newest: a run stopped by hand and started again leaves its crash report in an older version_N
        report_path = max((out / "runs" / name).rglob("report.json"), key=lambda p: p.stat().st_mtime, default=None)
        if report_path is not None:
            found = json.loads(report_path.read_text())
            row.update(rounds=found.get("extra", {}).get("rounds", []), aap=found.get("extra", {}).get("aap", {}))
        config = yaml.safe_load((out / "configs" / f"{name}.yaml").read_text())
        if name.startswith("oneshot"):
            model = config["model"]["init_args"]["model"]
            if model not in dense:
                dense[model] = dense_test_accuracy(config)
            row["test_before"] = dense[model]
        row.update(subset_fraction=args.subset_fraction,
                   final_epochs=config["trainer"]["callbacks"][0]["init_args"].get("final_finetune_epochs", 0))
        if "unpruned" not in dense:
            dense["unpruned"] = dense_test_accuracy(config)
        row["unpruned_test"] = dense["unpruned"]

    def write(rows: dict[str, dict[str, Any]], out: Path) -> None:
        report(rows, out)
        summary(rows, out, dense.get("unpruned"))

    runs = plan(only, args.max_rounds)
    split = next((i + 1 for i, run in enumerate(runs) if run[1] == "attention_params50"), len(runs))
    rows = run_plan(runs[:split], out, extra, write, enrich)  # up to Table 4's adaptive run
    if (only is None or "fixed" in only) and "attention_params50" in rows:
        rows = run_plan(fixed_rate_plan(rows["attention_params50"]), out, extra, write, enrich)
    run_plan(runs[split:], out, extra, write, enrich)


if __name__ == "__main__":
    main()
