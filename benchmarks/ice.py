"""ICE-Pruning vs iterative pruning on pretrained CIFAR ResNets (ResNet-56 first): time and accuracy.

Groups of runs (``--only`` picks some; the goal's pair runs first):

* ``goal``: at every ``--ratios``, the paper's baseline (one fine-tuning epoch after every blockwise
  step, fixed LR) and ICE with the paper's default values (threshold 1 point vs the unpruned model,
  30 % of the layers frozen after a probe, the fine-tuning LR from eq. 1 with the authors' values);
* ``ablation`` (Table II) at the first ratio: ICE without the threshold / the freezing / the LR rule;
* ``beyond`` at the first ratio, not in the paper: ThresholdSkipFineTune(reference="last_finetuned"), the
  drops of skipped steps adding up until one fine-tune serves several blocks; with and without the LR rule;
  and "fast" runs: skip decisions measured on 4 validation batches (``eval_batches=4``; one run with 6), no
  freezing probe, a fixed LR (the model's 1e-3, then 3e-3 or 5e-3 for the fewer fine-tunes, at thresholds
  of 1 and 2 points);
* ``criteria`` (Fig. 3) at the first ratio: ICE with random, entropy and mean-activation filter ranking;
* ``tuned`` at the first ratio: ICE with the parameters stage 1 of ``lightning-prune tune`` chose
  (:data:`TUNE_SPACE`, grid, ``objective="budget"`` with ``max_drop`` = the baseline's validation drop
  + ``--tune-slack``, the median pruner, ``--tune-subset-fraction`` of the training split and
  ``--tune-val-batches`` batches a measurement); the tuning's wall time is reported separately
  (``tune/tuned.json``) and in the summary's ``tuning_seconds``. Needs the baseline row.

Every run starts from ``configs/ice_resnet20_cifar10.yaml`` with the network swapped (the baseline
drops the three ICE satellites and keeps the distillation, as both pipelines distil in the paper's CIFAR
runs): same data, epochs and optimiser. The weights were trained on all of CIFAR-10's training split, so
every decision is measured on a seeded half of the test split (``val_from: test``, at most
``--val-batches`` batches of it) and the reported accuracy is the other half's (5,000 images, always
whole). Each fine-tuning epoch trains on a seeded ``--subset-fraction`` of the training split. Pipeline
time is the controller's ``seconds_total`` (first step to the final model, probe included).

Writes to ``--out``: ``results.jsonl`` (every run), ``results.md`` (with ``analysis.md`` appended when
present: what the tables show, written by hand), ``ice.png`` (test accuracy vs time,
every pipeline) and ``summary.json`` (the issue's keys; ``ice_tuned`` is null until a tuned run exists).
A rerun with the same ``--out`` resumes.

Example (the CPU size; a smoke test adds ``--subset-fraction 0.002 --val-batches 1 --network resnet20``):
    LIGHTNING_PRUNE_DATA=/path/to/data python benchmarks/ice.py --network resnet56 --ratios 0.6 \
        --only goal --subset-fraction 0.02 --val-batches 10 --out benchmarks/results/ice/resnet56
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from run import dense_test_accuracy, run_plan

BASE = Path(__file__).parents[1] / "configs" / "ice_resnet20_cifar10.yaml"
SATELLITES = {"threshold": "ThresholdSkipFineTune", "freezing": "LayerFreezer", "lr": "PruningAwareLR"}
WEIGHTS = {"resnet20": "weights/resnet20-12fca82f.th", "resnet32": "weights/resnet32-d509ac18.th",
           "resnet56": "weights/resnet56-4bfd9763.th"}
CRITERIA = ("random", "entropy", "mean_activation")
#: Stage 1's search space for the ``tuned`` group: the skip rule's threshold and reference (including
#: ``last_finetuned``, beyond the paper) and eq. 1's base LR; 8 grid points.
TUNE_SPACE = {"ThresholdSkipFineTune.threshold": [0.01, 0.02],
              "ThresholdSkipFineTune.reference": ["original", "last_finetuned"],
              "PruningAwareLR.lr_base": [0.001, 0.005]}


def variant(base: dict[str, Any], network: str, ratio: float, importance: str = "l1",
            without: tuple[str, ...] = (), threshold: dict[str, Any] | None = None,
            lr: float | None = None) -> dict[str, Any]:
    """The base ICE config on ``network`` at ``ratio`` with ``importance``, minus the named satellites, with
    ``threshold`` overriding ThresholdSkipFineTune's arguments and ``lr`` the optimiser's learning rate."""
    config = copy.deepcopy(base)
    config["model"]["init_args"].update(model=f"cifar_{network}", weights=WEIGHTS[network])
    if lr is not None:
        config["model"]["init_args"]["lr"] = lr
    drop = {SATELLITES[w] for w in without}
    callbacks = [c for c in config["trainer"]["callbacks"] if c["class_path"].rsplit(".", 1)[-1] not in drop]
    callbacks[0]["init_args"].update(pruning_ratio=ratio, importance=importance)
    for callback in callbacks:
        if callback["class_path"].endswith(".ThresholdSkipFineTune"):
            callback["init_args"].update(threshold or {})
    config["trainer"]["callbacks"] = callbacks
    return config


def plan(network: str, ratios: list[float], only: set[str] | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(group, name, config) for every run."""
    base = yaml.safe_load(BASE.read_text())
    first = ratios[0]
    runs = []
    for ratio in ratios:
        runs.append(("goal", f"baseline_r{ratio}", variant(base, network, ratio, without=tuple(SATELLITES))))
        runs.append(("goal", f"ice_default_r{ratio}", variant(base, network, ratio)))
    for name in SATELLITES:
        runs.append(("ablation", f"ice_no_{name}_r{first}", variant(base, network, first, without=(name,))))
    # beyond the paper: drops add up over skipped steps, measured from the last fine-tuned step's accuracy
    last = {"reference": "last_finetuned"}
    runs.append(("beyond", f"ice_last_finetuned_r{first}", variant(base, network, first, threshold=last)))
    runs.append(("beyond", f"ice_last_finetuned_no_lr_r{first}",
                 variant(base, network, first, without=("lr",), threshold=last)))
    # beyond, for speed: decisions on 4 batches (512 images) instead of every validation batch, no probe
    # epoch (freezing saved little and cost accuracy), a fixed LR; then that LR raised for the fewer fine-tunes
    fast = {"reference": "last_finetuned", "eval_batches": 4}
    runs.append(("beyond", f"ice_fast_r{first}", variant(base, network, first, without=("lr", "freezing"),
                                                          threshold=fast)))
    for lr, threshold, batches in ((0.003, 0.01, 4), (0.003, 0.02, 4), (0.005, 0.01, 4), (0.003, 0.01, 6)):
        suffix = "" if batches == 4 else f"_eval{batches}"
        runs.append(("beyond", f"ice_fast_lr{lr:g}_t{threshold:g}{suffix}_r{first}",
                     variant(base, network, first, without=("lr", "freezing"),
                             threshold={**fast, "threshold": threshold, "eval_batches": batches}, lr=lr)))
    for criterion in CRITERIA:
        runs.append(("criteria", f"ice_{criterion}_r{first}", variant(base, network, first, importance=criterion)))
    return [r for r in runs if only is None or r[0] in only]


def tuned(network: str, ratio: float, out: Path, args: argparse.Namespace, baseline: dict[str, Any]) -> dict[str, Any]:
    """Stage 1 of ``tune`` on ICE's config (once: ``out/tune/tuned.json`` keeps the choice and its wall time);
    the config with the chosen parameters."""
    from lightning_prune.tuning import tune
    from lightning_prune.tuning.config import apply_params

    config = variant(yaml.safe_load(BASE.read_text()), network, ratio)
    record = out / "tune" / "tuned.json"
    if not record.exists():
        stage1 = copy.deepcopy(config)
        stage1["trainer"].update(limit_val_batches=args.tune_val_batches, enable_progress_bar=False)
        max_drop = baseline["metric_before"] - baseline["metric_after"] + args.tune_slack
        started = time.perf_counter()
        result = tune(stage1, TUNE_SPACE, objective="budget", max_drop=max_drop, pruner="median", sampler="grid",
                      subset_fraction=args.tune_subset_fraction, stage2=False, output_dir=out / "tune")
        record.write_text(json.dumps({"best_params": result.best_params, "seconds": time.perf_counter() - started,
                                      "max_drop": max_drop, "feasible": result.feasible,
                                      "subset_fraction": args.tune_subset_fraction,
                                      "val_batches": args.tune_val_batches,
                                      "trials": result.trials}, indent=2, default=str) + "\n")
    return apply_params(config, json.loads(record.read_text())["best_params"])


def reseeded(runs: list[tuple[str, str, dict[str, Any]]], seed: int,
             names: list[str] | None) -> list[tuple[str, str, dict[str, Any]]]:
    """``runs`` restricted to ``names`` (all when ``None``); for a ``seed`` other than 0, with that seed
    (``seed_everything`` and the data's) and named ``seed<seed>_<name>``."""
    chosen = [r for r in runs if names is None or r[1] in names]
    if seed == 0:
        return chosen
    out = []
    for group, name, config in chosen:
        config = copy.deepcopy(config)
        config["seed_everything"] = seed
        config["data"]["init_args"]["seed"] = seed
        out.append((group, f"seed{seed}_{name}", config))
    return out


def _baseline_of(name: str, ratio: float, rows: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The baseline run a run's time ratio is taken against: the one of its seed."""
    prefix = name.split("_", 1)[0] + "_" if name.startswith("seed") else ""
    return rows.get(f"{prefix}baseline_r{ratio}")


def _acc(row: dict[str, Any]) -> float | None:
    value = row.get("test", {}).get("test_acc")
    return None if value is None else 100 * value


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _time_split(row: dict[str, Any]) -> str:
    probe = row.get("probe_seconds", 0.0)
    other = row["seconds_total"] - row["seconds_prune"] - row["seconds_eval"] - row["seconds_finetune"] - probe
    return (f"{row['seconds_prune']:.0f} / {row['seconds_eval']:.0f} / {probe:.0f} / {row['seconds_finetune']:.0f}"
            f" / {max(other, 0.0):.0f}")


def summary(rows: dict[str, dict[str, Any]], network: str, ratio: float, dense: float | None,
            tuning: dict[str, Any] | None = None) -> dict[str, Any]:
    """The issue's ``summary.json`` for ``ratio`` (accuracy in percent)."""
    base, ice = rows.get(f"baseline_r{ratio}", {}), rows.get(f"ice_default_r{ratio}", {})
    tuned_row = rows.get(f"ice_tuned_r{ratio}", {})

    def entry(row: dict[str, Any]) -> dict[str, Any] | None:
        return {"test_acc": _acc(row), "seconds": row["seconds_total"]} if row else None

    macs = (1 - base["macs_after"] / base["macs_before"]) if base else None
    return {"network": network, "ratio": ratio, "unpruned_test_acc": None if dense is None else 100 * dense,
            "macs_reduction": macs, "device": base.get("device") or ice.get("device"),
            "baseline": entry(base), "ice_default": entry(ice),
            "ice_tuned": ({**entry(tuned_row), "tuning_seconds": tuning["seconds"]}  # type: ignore[dict-item]
                          if tuned_row and tuning else None)}


def make_report(network: str, ratios: list[float], args: argparse.Namespace, dense: dict[str, float]):
    """The ``report`` callback of :func:`run_plan`: results.md, ice.png and summary.json."""
    def report(rows: dict[str, dict[str, Any]], out: Path) -> None:
        unpruned = dense.get("acc")
        command = (f"LIGHTNING_PRUNE_DATA=../shared/data python benchmarks/ice.py --network {network} --ratios "
                   f"{' '.join(map(str, ratios))} --subset-fraction {args.subset_fraction} --val-batches "
                   f"{args.val_batches} --out {args.out}" + (f" --only {' '.join(args.only)}" if args.only else ""))
        lines = [f"# ICE-Pruning vs iterative pruning on pretrained {network} / CIFAR-10", "", "```bash", command,
                 "```", "",
                 (f"Unpruned test accuracy on the reported half: {_fmt(None if unpruned is None else 100 * unpruned)} %. "
                 f"Fine-tuning epochs on {args.subset_fraction:g} of the training split; decisions on at most "
                 f"{args.val_batches} batches of the deciding half."), "",
                 ("| run | test acc (%) | MACs after | seconds | time ratio (baseline / run) | prune / eval / probe / "
                 "fine-tune / other s | steps fine-tuned |"), "|---|---|---|---|---|---|---|"]
        points = []
        for name, row in rows.items():
            ratio = float(name.rsplit("_r", 1)[1])
            base = _baseline_of(name, ratio, rows)
            speed = f"{base['seconds_total'] / row['seconds_total']:.2f}" if base else "-"
            lines.append(f"| {name} | {_fmt(_acc(row))} | {row['macs_after']:,} of {row['macs_before']:,} | "
                         f"{row['seconds_total']:.0f} | {speed} | {_time_split(row)} | "
                         f"{row['steps_finetuned']}/{row['steps']} |")
            if _acc(row) is not None:
                points.append((name, row["seconds_total"], _acc(row)))
        analysis = out / "analysis.md"  # what the tables show, written by hand after a run
        if analysis.exists():
            lines += ["", analysis.read_text().rstrip()]
        (out / "results.md").write_text("\n".join(lines) + "\n")
        record = out / "tune" / "tuned.json"
        tuning = json.loads(record.read_text()) if record.exists() else None
        (out / "summary.json").write_text(json.dumps(summary(rows, network, ratios[0], unpruned, tuning), indent=2) + "\n")
        if points:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(6, 4.5))
            for name, seconds, accuracy in points:
                ax.scatter(seconds, accuracy)
                ax.annotate(name, (seconds, accuracy), fontsize=7)
            if unpruned is not None:
                ax.axhline(100 * unpruned, linestyle=":", color="grey", label="unpruned")
                ax.legend()
            ax.set_xlabel("pipeline time (s)")
            ax.set_ylabel("test accuracy on the reported half (%)")
            ax.set_title(f"{network} / CIFAR-10")
            fig.tight_layout()
            fig.savefig(out / "ice.png", dpi=120)
            plt.close(fig)
    return report


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", choices=sorted(WEIGHTS), default="resnet56")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.6, 0.7])
    parser.add_argument("--subset-fraction", type=float, default=0.02, help="fraction of the training split an epoch")
    parser.add_argument("--val-batches", type=int, default=10, help="batches of the deciding half a measurement uses")
    parser.add_argument("--out", default="benchmarks/results/ice/resnet56")
    parser.add_argument("--only", nargs="*", choices=["goal", "ablation", "beyond", "criteria", "tuned"],
                        help="run only these groups")
    parser.add_argument("--rerun", nargs="*", default=[], help="run these finished runs again (e.g. the baseline "
                        "beside a new candidate: ratios are taken within one invocation)")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything and the data seed (subset, order); "
                        "runs of another seed than 0 are named seed<N>_<name> and compared with that seed's baseline")
    parser.add_argument("--names", nargs="*", help="run only these runs of the chosen groups (names without the seed)")
    parser.add_argument("--tune-subset-fraction", type=float, default=0.002, help="stage 1: training fraction a trial")
    parser.add_argument("--tune-val-batches", type=int, default=3, help="stage 1: batches a measurement uses")
    parser.add_argument("--tune-slack", type=float, default=0.005,
                        help="stage 1's max_drop: the baseline's validation drop plus this")
    args = parser.parse_args()
    runs = reseeded(plan(args.network, args.ratios, set(args.only) if args.only else None), args.seed, args.names)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dense_path = out / "unpruned.json"
    dense = json.loads(dense_path.read_text()) if dense_path.exists() else {}
    if "acc" not in dense:
        dense = {"acc": dense_test_accuracy(runs[0][2])}
        dense_path.write_text(json.dumps(dense) + "\n")
    extra = [f"--data.init_args.subset_fraction={args.subset_fraction}", "--trainer.enable_progress_bar=false",
             f"--trainer.limit_val_batches={args.val_batches}"]
    report = make_report(args.network, args.ratios, args, dense)

    def enrich(row: dict[str, Any], _: str) -> None:
        row.update(subset_fraction=args.subset_fraction, val_batches=args.val_batches)

    rows = run_plan(runs, out, extra, report, enrich=enrich, rerun=frozenset(args.rerun))
    if args.only is None or "tuned" in args.only:
        first = args.ratios[0]
        baseline = rows.get(f"baseline_r{first}")
        if baseline is None:
            raise SystemExit(f"the tuned group needs baseline_r{first} (its drop sets stage 1's max_drop): run --only goal")
        run_plan([("tuned", f"ice_tuned_r{first}", tuned(args.network, first, out, args, baseline))], out, extra,
                 report, enrich=enrich)


if __name__ == "__main__":
    main()
