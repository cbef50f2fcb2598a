"""DG2PF on a pretrained CIFAR ResNet-56 (or -20): against GMP, one-shot pruning and Lightning's ModelPruning.

Every run starts from the same pretrained weights and gets the same epoch budget (``--epochs``), the same
data and, unless the difference is the point, the same optimiser (SGD ``--lr``, momentum 0.9, Nesterov,
weight decay 5e-4, cosine decay over the budget):

* **main** (at each ``--sparsities``):
  ``dg2pf`` (the budget recipe of ``configs/dg2pf_resnet20_cifar10.yaml``: GradualMagnitudePruning with the
  cubic schedule over ``--pruning-epochs``, SimulatedPruning 0.1, SelfDistillation eq. 9 alpha 0.9 tau 4,
  no SGD phase: the cosine tail is the fine-tuning; the best validated epoch at full sparsity is handed back),
  ``dg2pf_paper`` (the paper's settings, ``configs/dg2pf_paper_resnet20_cifar10.yaml``: linear schedule,
  tau 0.5, AdamW lr 1e-5 / wd 1e-2, then the SGD lr 1e-4 phase, patience 4, capped at the budget),
  ``gmp_cubic`` (Zhu & Gupta: the same cubic schedule, no simulated pruning, no teacher),
  ``oneshot_ft`` (global magnitude pruning to the target before the first epoch, then fine-tuning) and
  ``lightning_modelpruning`` (``lightning.pytorch.callbacks.ModelPruning``, global L1 unstructured, the
  same cubic targets applied at epoch ends, masks made permanent at the end);
* **ablation** at 90 %: one change from ``dg2pf`` at a time: simulated sparsity 0 / 0.2, alpha 0 / 0.25,
  temperature 0.5, and the paper's SGD phase after the cosine run (``sgd_phase``);
* **timing**: median wall time of a training step (``on_train_batch_start`` to ``on_train_batch_end``,
  optimizer step included) during the pruning phase, plain vs + SimulatedPruning vs + SelfDistillation
  vs both, reported as ratios to the plain step.

Early stopping, the phase changes and the best epoch watch a seeded half of the CIFAR-10 test split
(``val_from="test"``: the weights were trained on all of the training split); each run is tested on the
other half (or ``--test-batches`` batches of it). Writes ``results.jsonl`` (one line per run),
``results.md``, ``results.png`` and ``summary.json`` to ``--out``. A rerun with the same ``--out`` resumes:
runs already in ``results.jsonl`` are kept and not repeated.

Example (a smoke test; the GPU size is ``--subset-fraction 1.0 --epochs 30``):
    LIGHTNING_PRUNE_DATA=/path/to/data python benchmarks/dg2pf.py --out /tmp/dg2pf-smoke --network resnet20 \
        --subset-fraction 0.01 --epochs 2 --pruning-epochs 1 --sparsities 0.9 --test-batches 2 --timing-steps 4
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelPruning

from lightning_prune import CIFAR10DataModule, ImageClassifier
from lightning_prune.callbacks.self_distillation import SelfDistillation
from lightning_prune.callbacks.gradual import GradualMagnitudePruning
from lightning_prune.callbacks.simulated_pruning import SimulatedPruning
from lightning_prune.sparse import save_sparse
from lightning_prune.structural import masks as M

WEIGHTS = {"resnet20": "weights/resnet20-12fca82f.th", "resnet32": "weights/resnet32-d509ac18.th",
           "resnet56": "weights/resnet56-4bfd9763.th"}


class StepTimer(Callback):
    """Wall time of each training step (listed first: starts before any other callback's batch work)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.seconds.append(time.perf_counter() - self._started)


def modelpruning_amount(schedule: list[float]) -> Callable[[int], float]:
    """ModelPruning prunes a fraction of the *remaining* weights each call: convert cumulative targets."""
    def amount(epoch: int) -> float:
        if epoch >= len(schedule):
            return 0.0
        before = schedule[epoch - 1] if epoch else 0.0
        return 1.0 - (1.0 - schedule[epoch]) / (1.0 - before)
    return amount


def prunable(module: L.LightningModule) -> dict[str, torch.nn.Parameter]:
    return M.prunable_parameters(module)


def achieved_sparsity(module: L.LightningModule) -> float:
    return float(M.sparsity_stats(prunable(module))["overall"])


class Bench:
    """Shared settings and the run loop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []

    def datamodule(self) -> CIFAR10DataModule:
        a = self.args
        return CIFAR10DataModule(data_dir=a.data_dir, batch_size=a.batch_size, val_from="test",
                                 subset_fraction=a.subset_fraction, seed=a.seed, normalization="imagenet", augment=True)

    def model(self, paper: bool = False) -> ImageClassifier:
        """The pretrained network with the shared SGD + cosine optimiser, or the paper's AdamW (no schedule)."""
        a = self.args
        if paper:
            return ImageClassifier(f"cifar_{a.network}", num_classes=10, weights=WEIGHTS[a.network], optimizer="adamw",
                                   lr=1e-5, weight_decay=1e-2)
        return ImageClassifier(f"cifar_{a.network}", num_classes=10, weights=WEIGHTS[a.network], optimizer="sgd",
                               lr=a.lr, momentum=0.9, nesterov=True, weight_decay=5e-4, scheduler="cosine",
                               scheduler_kwargs={"T_max": a.epochs})

    def trainer(self, callbacks: list[Callback], name: str, **kwargs: Any) -> L.Trainer:
        a = self.args
        options: dict[str, Any] = dict(accelerator=a.accelerator, devices=1, max_epochs=a.epochs, logger=False,
                                       enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                       num_sanity_val_steps=0, default_root_dir=str(self.out / "runs" / name),
                                       limit_test_batches=a.test_batches if a.test_batches else 1.0)
        options.update(kwargs)
        return L.Trainer(callbacks=callbacks, **options)

    def gmp(self, sparsity: float, name: str, **kwargs: Any) -> GradualMagnitudePruning:
        """The budget recipe's controller: cubic schedule, the whole budget (no early end), no SGD phase."""
        a = self.args
        options: dict[str, Any] = dict(sparsity=sparsity, pruning_epochs=a.pruning_epochs, schedule="cubic",
                                       patience=a.epochs, finetune=False, max_epochs=a.epochs,
                                       output_dir=str(self.out / "runs" / name), save_sparse_model=True)
        options.update(kwargs)
        return GradualMagnitudePruning(**options)

    def record(self, name: str, group: str, sparsity: float, module: ImageClassifier, trainer: L.Trainer,
               seconds: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        a = self.args
        val_acc = float(trainer.callback_metrics.get("val_acc", math.nan))  # before test replaces the metrics
        tested = trainer.test(module, datamodule=self.datamodule(), verbose=False)
        size = save_sparse(module, self.out / "runs" / name / "sparse_model.pt")
        row: dict[str, Any] = {
            "name": name, "group": group, "target_sparsity": sparsity, "achieved_sparsity": achieved_sparsity(module),
            "test_acc": tested[0].get("test_acc") if tested else None,
            "val_acc": val_acc,
            "epochs": trainer.current_epoch, "seconds": seconds, "bytes_sparse": size["bytes"],
            "bytes_dense": size["dense_bytes"], "subset_fraction": a.subset_fraction, "budget_epochs": a.epochs,
            "val_from": "test",
            "seed": a.seed, "network": a.network, "lr": a.lr, "device": str(module.device), "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "lightning": L.__version__,
        }
        row.update(extra or {})
        self.rows.append(row)
        with (self.out / "results.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[dg2pf bench] {name}: sparsity {row['achieved_sparsity']:.3f}, test_acc {row['test_acc']}, "
              f"{seconds:.1f} s", flush=True)
        return row

    # ------------------------------------------------------------------ the runs
    def fit(self, name: str, group: str, sparsity: float, module: ImageClassifier, callbacks: list[Callback],
            pruning: GradualMagnitudePruning | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        trainer = self.trainer(callbacks, name)
        started = time.perf_counter()
        trainer.fit(module, datamodule=self.datamodule())
        seconds = time.perf_counter() - started
        extra = dict(extra or {})
        if pruning is not None:
            report = pruning.report
            extra.update(metric_before=report.metric_before, epochs_per_phase=report.epochs, best_epoch=report.best_epoch,
                         schedule=report.schedule)
        return self.record(name, group, sparsity, module, trainer, seconds, extra)

    def dg2pf(self, sparsity: float, group: str = "main", simulated: float = 0.1, alpha: float = 0.9,
              temperature: float = 4.0, sgd_phase: bool = False, name: str | None = None) -> dict[str, Any]:
        """The budget recipe (see the module docstring); keyword arguments are the ablations."""
        name = name or f"dg2pf_s{sparsity:g}"
        L.seed_everything(self.args.seed, verbose=False)
        module = self.model()
        options = dict(patience=1, finetune=True, finetune_patience=self.args.epochs) if sgd_phase else {}
        pruning = self.gmp(sparsity, name, **options)
        callbacks: list[Callback] = [pruning, SimulatedPruning(simulated),
                                     SelfDistillation(alpha=alpha, temperature=temperature)]
        extra = {"simulated": simulated, "alpha": alpha, "temperature": temperature, "sgd_phase": sgd_phase}
        return self.fit(name, group, sparsity, module, callbacks, pruning, extra)

    def dg2pf_paper(self, sparsity: float) -> dict[str, Any]:
        """The paper's settings (configs/dg2pf_paper_resnet20_cifar10.yaml), capped at the same budget."""
        name = f"dg2pf_paper_s{sparsity:g}"
        L.seed_everything(self.args.seed, verbose=False)
        module = self.model(paper=True)
        pruning = self.gmp(sparsity, name, schedule="linear", patience=4, finetune=True, finetune_patience=4)
        callbacks: list[Callback] = [pruning, SimulatedPruning(0.1), SelfDistillation(alpha=0.9, temperature=0.5)]
        return self.fit(name, "main", sparsity, module, callbacks, pruning)

    def gmp_cubic(self, sparsity: float) -> dict[str, Any]:
        name = f"gmp_cubic_s{sparsity:g}"
        L.seed_everything(self.args.seed, verbose=False)
        pruning = self.gmp(sparsity, name)
        return self.fit(name, "main", sparsity, self.model(), [pruning], pruning)

    def oneshot(self, sparsity: float) -> dict[str, Any]:
        name = f"oneshot_ft_s{sparsity:g}"
        L.seed_everything(self.args.seed, verbose=False)
        pruning = self.gmp(sparsity, name, pruning_epochs=1)
        return self.fit(name, "main", sparsity, self.model(), [pruning], pruning)

    def modelpruning(self, sparsity: float) -> dict[str, Any]:
        name = f"lightning_modelpruning_s{sparsity:g}"
        L.seed_everything(self.args.seed, verbose=False)
        module = self.model()
        targets = [(m, "weight") for m in module.modules() if isinstance(m, M.CONV_LINEAR_TYPES)]
        schedule = M.cubic_sparsity_schedule(sparsity, self.args.pruning_epochs)
        pruner = ModelPruning("l1_unstructured", parameters_to_prune=targets, amount=modelpruning_amount(schedule),
                              use_global_unstructured=True, make_pruning_permanent=True, verbose=0)
        return self.fit(name, "main", sparsity, module, [pruner], None)

    def dense(self) -> dict[str, Any]:
        """The unpruned network on the reported half (the reference of every drop)."""
        L.seed_everything(self.args.seed, verbose=False)
        module = self.model()
        tested = self.trainer([], "dense").test(module, datamodule=self.datamodule(), verbose=False)
        row = {"name": "dense", "group": "dense", "test_acc": tested[0]["test_acc"], "network": self.args.network,
               "val_from": "test"}
        self.rows.append(row)
        with (self.out / "results.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    def timing(self) -> list[dict[str, Any]]:
        """Median step time during the pruning phase; ratios to the plain step."""
        a = self.args
        # (simulated sparsity, SelfDistillation arguments or None); the unfolded row is the teacher as it was
        variants: dict[str, tuple[float, dict[str, Any] | None]] = {
            "plain": (0.0, None), "simulated": (0.1, None), "distillation": (0.0, {}),
            "distillation_unfolded": (0.0, {"fold_batchnorm": False}), "both": (0.1, {})}
        medians: dict[str, float] = {}
        for variant, (simulated, distil) in variants.items():
            L.seed_everything(a.seed, verbose=False)
            module = self.model()
            timer = StepTimer()
            # max_epochs=1: every timed step is in epoch 0, inside the pruning phase (SimulatedPruning on)
            pruning = self.gmp(0.9, f"timing_{variant}", save_sparse_model=False, max_epochs=1)
            callbacks: list[Callback] = [timer, pruning, SimulatedPruning(simulated)]
            if distil is not None:
                callbacks.append(SelfDistillation(**distil))
            trainer = self.trainer(callbacks, f"timing_{variant}", max_epochs=1, limit_train_batches=a.timing_steps + 2,
                                   limit_val_batches=1)
            trainer.fit(module, datamodule=self.datamodule())
            medians[variant] = statistics.median(timer.seconds[2:] or timer.seconds)  # 2 warm-up steps dropped
        rows = []
        for variant, median in medians.items():
            row = {"name": f"timing_{variant}", "group": "timing", "median_step_ms": 1000 * median,
                   "ratio_to_plain": median / medians["plain"], "steps": a.timing_steps,
                   "batch_size": a.batch_size, "accelerator": a.accelerator, "threads": torch.get_num_threads()}
            rows.append(row)
            self.rows.append(row)
            with (self.out / "results.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
        return rows

    # ------------------------------------------------------------------ outputs
    def write(self) -> None:
        """results.md, summary.json and the plot, from every row so far (after each run: nothing lost)."""
        (self.out / "results.md").write_text(self.markdown())
        (self.out / "summary.json").write_text(json.dumps(self.summary(), indent=2) + "\n")
        self.plot()

    def dense_acc(self) -> float | None:
        return next((r["test_acc"] for r in self.rows if r["group"] == "dense"), None)

    def markdown(self) -> str:
        a, dense = self.args, self.dense_acc()
        command = (f"LIGHTNING_PRUNE_DATA=../shared/data python benchmarks/dg2pf.py --network {a.network} --out {a.out} "
                   f"--subset-fraction {a.subset_fraction} --epochs {a.epochs} --sparsities "
                   f"{' '.join(f'{x:g}' for x in sorted({r['target_sparsity'] for r in self.rows if 'target_sparsity' in r}))}")
        lines = [f"# DG2PF benchmark: pretrained CIFAR {a.network}", "",
                 "Rows come from one or more invocations of (`--methods`, `--parts` and `--sparsities` select; a rerun "
                 "with the same `--out` keeps finished rows):", "", "```bash", command, "```", "",
                 f"Budget {a.epochs} epochs per run, subset_fraction {a.subset_fraction}, pruning_epochs "
                 f"{a.pruning_epochs}, SGD lr {a.lr} (cosine), seed {a.seed}; test accuracy on the reported half."
                 + ("" if dense is None else f" Unpruned: {100 * dense:.2f} %."), ""]
        runs = [r for r in self.rows if r["group"] in ("main", "ablation")]
        if runs:
            lines += ["| run | group | target | achieved | test acc % | drop (points) | best epoch | epochs | seconds "
                      "| size (sparse / dense bytes) |", "|---|---|---|---|---|---|---|---|---|---|"]
            for r in sorted(runs, key=lambda r: (r["group"] != "main", r["target_sparsity"], r["name"])):
                test = "-" if r["test_acc"] is None else f"{100 * r['test_acc']:.2f}"
                drop = "-" if r["test_acc"] is None or dense is None else f"{100 * (dense - r['test_acc']):.2f}"
                best = r.get("best_epoch")
                lines.append(f"| {r['name']} | {r['group']} | {r['target_sparsity']:.2f} | {r['achieved_sparsity']:.4f} "
                             f"| {test} | {drop} | {'-' if best is None else best} | {r['epochs']} "
                             f"| {r['seconds']:.0f} | {r['bytes_sparse']:,} / {r['bytes_dense']:,} |")
        timing = [r for r in self.rows if r["group"] == "timing"]
        if timing:
            lines += ["", "| step (pruning phase) | median ms | ratio to plain |", "|---|---|---|"]
            lines += [f"| {r['name'][7:]} | {r['median_step_ms']:.1f} | {r['ratio_to_plain']:.2f} |" for r in timing]
        analysis = self.out / "analysis.md"  # what the tables show, written by hand after a run
        if analysis.exists():
            lines += ["", analysis.read_text().rstrip()]
        return "\n".join(lines) + "\n"

    def summary(self) -> dict[str, Any]:
        """The issue's ``summary.json`` (accuracy in percent)."""
        runs = [r for r in self.rows if r["group"] in ("main", "ablation") and r["test_acc"] is not None]
        timing = {r["name"][7:]: r["ratio_to_plain"] for r in self.rows if r["group"] == "timing"}
        dense = self.dense_acc()
        devices = sorted({r["device"] for r in runs})
        return {"network": self.args.network, "device": devices[0] if len(devices) == 1 else devices,
                "dense_test_acc": None if dense is None else 100 * dense,
                "rows": [{"method": r["name"].rsplit("_s", 1)[0] if r["group"] == "main" else r["name"],
                          "sparsity": r["target_sparsity"], "test_acc": 100 * r["test_acc"], "epochs": r["epochs"],
                          "seconds": r["seconds"]} for r in runs],
                "step_cost": {k: timing.get(k) for k in ("simulated", "distillation", "both")}}

    def plot(self) -> Path | None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        main = [r for r in self.rows if r["group"] == "main" and r["test_acc"] is not None]
        ablation = [r for r in self.rows if (r["group"] == "ablation" or r["name"] == "dg2pf_s0.9")
                    and r["test_acc"] is not None]
        timing = [r for r in self.rows if r["group"] == "timing"]
        if not (main or ablation or timing):
            return None
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for method in ("dg2pf", "dg2pf_paper", "gmp_cubic", "oneshot_ft", "lightning_modelpruning"):
            points = sorted((r["target_sparsity"], 100 * r["test_acc"]) for r in main
                            if r["name"].rsplit("_s", 1)[0] == method)
            if points:
                axes[0].plot(*zip(*points), marker="o", label=method)
        if self.dense_acc() is not None:
            axes[0].axhline(100 * self.dense_acc(), color="gray", linestyle="--", label="unpruned")
        axes[0].set(xlabel="sparsity", ylabel="test accuracy % (reported half)", title="same epoch budget")
        axes[0].legend()
        if ablation:
            labels = [r["name"].removeprefix("dg2pf_s0.9").lstrip("_") or "dg2pf" for r in ablation]
            axes[1].bar(labels, [100 * r["test_acc"] for r in ablation])
            axes[1].tick_params(axis="x", rotation=30)
        axes[1].set(ylabel="test accuracy %", title="ablations at 90 %")
        if timing:
            axes[2].bar([r["name"][7:] for r in timing], [r["ratio_to_plain"] for r in timing])
        axes[2].set(ylabel="step time / plain step", title="training-step cost")
        fig.tight_layout()
        path = self.out / "results.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


METHODS = ("dg2pf", "dg2pf_paper", "gmp_cubic", "oneshot_ft", "lightning_modelpruning")
ABLATIONS = {"sim0": {"simulated": 0.0}, "sim0.2": {"simulated": 0.2}, "alpha0": {"alpha": 0.0},
             "alpha0.25": {"alpha": 0.25}, "tau0.5": {"temperature": 0.5}, "sgd_phase": {"sgd_phase": True}}


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/dg2pf/resnet56", help="output folder")
    parser.add_argument("--network", default="resnet56", choices=sorted(WEIGHTS))
    parser.add_argument("--subset-fraction", type=float, default=0.1, help="fraction of the training split used")
    parser.add_argument("--epochs", type=int, default=10, help="epoch budget of every run")
    parser.add_argument("--pruning-epochs", type=int, default=None, help="pruning epochs; default epochs // 2")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD lr (cosine over the budget) of every run but the paper's")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--ablations", nargs="*", default=list(ABLATIONS), choices=list(ABLATIONS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--test-batches", type=int, default=None, help="limit the test split (smoke tests only: its images are ordered by class)")
    parser.add_argument("--timing-steps", type=int, default=20, help="timed steps per timing variant")
    parser.add_argument("--parts", nargs="+", default=["main", "ablation", "timing"],
                        choices=["main", "ablation", "timing"])
    parser.add_argument("--data-dir", default=None, help="default: $LIGHTNING_PRUNE_DATA")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.pruning_epochs is None:
        args.pruning_epochs = max(1, args.epochs // 2)
    bench = Bench(args)
    jsonl = bench.out / "results.jsonl"
    if jsonl.exists():  # resume: finished runs are kept and not repeated; delete --out to start over
        bench.rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    done = {r["name"] for r in bench.rows}
    if "timing" in args.parts and "timing_plain" not in done:
        bench.timing()  # first: short, and its ratios need the machine to itself
    if "dense" not in done:
        bench.dense()
    runs = {"dg2pf": bench.dg2pf, "dg2pf_paper": bench.dg2pf_paper, "gmp_cubic": bench.gmp_cubic,
            "oneshot_ft": bench.oneshot, "lightning_modelpruning": bench.modelpruning}
    if "main" in args.parts:
        for sparsity in args.sparsities:
            for method in args.methods:
                if f"{method}_s{sparsity:g}" not in done:
                    runs[method](sparsity)
                    bench.write()
    if "ablation" in args.parts:
        for label in args.ablations:
            if f"dg2pf_s0.9_{label}" not in done:
                bench.dg2pf(0.9, group="ablation", name=f"dg2pf_s0.9_{label}", **ABLATIONS[label])
                bench.write()
    bench.write()
    print(bench.markdown())


if __name__ == "__main__":
    main()
