"""DG2PF on a pretrained CIFAR ResNet-20: against one-shot pruning and Lightning's ModelPruning, ablations, step cost.

Every run starts from the same pretrained weights and gets the same epoch budget (``--epochs``):

* **main** (at each ``--sparsities``): ``dg2pf`` (GradualMagnitudePruning + SimulatedPruning 0.1 +
  SelfDistillation eq. 9 alpha 0.9 tau 0.5; AdamW lr 1e-5 / wd 1e-2, then the SGD fine-tuning phase,
  capped at the budget), ``oneshot_ft`` (global magnitude pruning to the target at the first epoch, then
  fine-tuning with SGD) and ``lightning_modelpruning`` (``lightning.pytorch.callbacks.ModelPruning``,
  global L1 unstructured, the same gradual schedule as DG2PF applied at epoch ends, then fine-tuning
  with SGD, masks made permanent at the end);
* **ablation** at 90 %: simulated sparsity 0 / 0.1 / 0.2, alpha 0 / 0.9, temperature 0.5 / 4 (one
  change from the DG2PF defaults at a time; the defaults' run is shared with the main group);
* **timing**: median wall time of a training step (``on_train_batch_start`` to ``on_train_batch_end``,
  optimizer step included) during the pruning phase, plain vs + SimulatedPruning vs + SelfDistillation
  vs both, reported as ratios to the plain step.

Early stopping and the phase changes watch a seeded half of the CIFAR-10 test split (``val_from="test"``:
the weights were trained on all of the training split); each run is tested on the other half (or
``--test-batches`` batches of it). Writes
``results.jsonl`` (one line per run), ``results.md`` and ``results.png`` to ``--out``. A rerun with the same
``--out`` resumes: runs already in ``results.jsonl`` are kept and not repeated.

Example (a smoke test; the full benchmark uses ``--subset-fraction 1.0 --epochs 30`` on a GPU):
    LIGHTNING_PRUNE_DATA=/path/to/data python benchmarks/dg2pf.py --out /tmp/dg2pf-smoke \
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

    def model(self, optimizer: str, lr: float, weight_decay: float) -> ImageClassifier:
        return ImageClassifier("cifar_resnet20", num_classes=10, weights=self.args.weights, optimizer=optimizer, lr=lr,
                               momentum=0.9, weight_decay=weight_decay)

    def trainer(self, callbacks: list[Callback], name: str, **kwargs: Any) -> L.Trainer:
        a = self.args
        options: dict[str, Any] = dict(accelerator=a.accelerator, devices=1, max_epochs=a.epochs, logger=False,
                                       enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                       num_sanity_val_steps=0, default_root_dir=str(self.out / "runs" / name),
                                       limit_test_batches=a.test_batches if a.test_batches else 1.0)
        options.update(kwargs)
        return L.Trainer(callbacks=callbacks, **options)

    def gmp(self, sparsity: float, name: str, **kwargs: Any) -> GradualMagnitudePruning:
        a = self.args
        options: dict[str, Any] = dict(sparsity=sparsity, pruning_epochs=a.pruning_epochs, patience=a.patience,
                                       finetune_patience=a.patience, max_epochs=a.epochs,
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
            "seed": a.seed, "device": str(module.device), "cpu": platform.processor() or platform.machine(),
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
    def dg2pf(self, sparsity: float, group: str = "main", simulated: float = 0.1, alpha: float = 0.9,
              temperature: float = 0.5, name: str | None = None) -> dict[str, Any]:
        name = name or f"dg2pf_s{sparsity:g}"
        L.seed_everything(self.args.seed, verbose=False)
        module = self.model("adamw", 1e-5, 1e-2)
        pruning = self.gmp(sparsity, name)
        callbacks: list[Callback] = [pruning, SimulatedPruning(simulated), SelfDistillation(alpha=alpha,
                                                                                            temperature=temperature)]
        trainer = self.trainer(callbacks, name)
        started = time.perf_counter()
        trainer.fit(module, datamodule=self.datamodule())
        extra = {"simulated": simulated, "alpha": alpha, "temperature": temperature,
                 "metric_before": pruning.report.metric_before, "epochs_per_phase": pruning.report.epochs}
        return self.record(name, group, sparsity, module, trainer, time.perf_counter() - started, extra)

    def oneshot(self, sparsity: float) -> dict[str, Any]:
        name = f"oneshot_ft_s{sparsity:g}"
        L.seed_everything(self.args.seed, verbose=False)
        module = self.model("sgd", self.args.finetune_lr, 5e-4)
        pruning = self.gmp(sparsity, name, pruning_epochs=1, patience=self.args.epochs, finetune=False)
        trainer = self.trainer([pruning], name)
        started = time.perf_counter()
        trainer.fit(module, datamodule=self.datamodule())
        return self.record(name, "main", sparsity, module, trainer, time.perf_counter() - started)

    def modelpruning(self, sparsity: float) -> dict[str, Any]:
        name = f"lightning_modelpruning_s{sparsity:g}"
        L.seed_everything(self.args.seed, verbose=False)
        module = self.model("sgd", self.args.finetune_lr, 5e-4)
        targets = [(m, "weight") for m in module.modules() if isinstance(m, M.CONV_LINEAR_TYPES)]
        schedule = M.linear_sparsity_schedule(sparsity, self.args.pruning_epochs)
        pruner = ModelPruning("l1_unstructured", parameters_to_prune=targets, amount=modelpruning_amount(schedule),
                              use_global_unstructured=True, make_pruning_permanent=True, verbose=0)
        trainer = self.trainer([pruner], name)
        started = time.perf_counter()
        trainer.fit(module, datamodule=self.datamodule())
        return self.record(name, "main", sparsity, module, trainer, time.perf_counter() - started)

    def timing(self) -> list[dict[str, Any]]:
        """Median step time during the pruning phase; ratios to the plain step."""
        a = self.args
        variants = {"plain": (0.0, False), "simulated": (0.1, False), "distillation": (0.0, True), "both": (0.1, True)}
        medians: dict[str, float] = {}
        for variant, (simulated, distil) in variants.items():
            L.seed_everything(a.seed, verbose=False)
            module = self.model("adamw", 1e-5, 1e-2)
            timer = StepTimer()
            # max_epochs=1: every timed step is in epoch 0, inside the pruning phase (SimulatedPruning on)
            pruning = self.gmp(0.9, f"timing_{variant}", save_sparse_model=False, max_epochs=1)
            callbacks: list[Callback] = [timer, pruning, SimulatedPruning(simulated)]
            if distil:
                callbacks.append(SelfDistillation())
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
    def markdown(self) -> str:
        lines = ["# DG2PF benchmark: pretrained CIFAR ResNet-20", "",
                 f"Budget {self.args.epochs} epochs per run, subset_fraction {self.args.subset_fraction}, "
                 f"pruning_epochs {self.args.pruning_epochs}, seed {self.args.seed}.", ""]
        runs = [r for r in self.rows if r["group"] in ("main", "ablation")]
        if runs:
            lines += ["| run | group | target | achieved | test acc | val acc | epochs | seconds | size (sparse / dense) |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for r in runs:
                test = "-" if r["test_acc"] is None else f"{r['test_acc']:.4f}"
                lines.append(f"| {r['name']} | {r['group']} | {r['target_sparsity']:.2f} | {r['achieved_sparsity']:.4f} "
                             f"| {test} | {r['val_acc']:.4f} | {r['epochs']} | {r['seconds']:.1f} "
                             f"| {r['bytes_sparse']:,} / {r['bytes_dense']:,} |")
        timing = [r for r in self.rows if r["group"] == "timing"]
        if timing:
            lines += ["", "| step (pruning phase) | median ms | ratio to plain |", "|---|---|---|"]
            lines += [f"| {r['name'][7:]} | {r['median_step_ms']:.1f} | {r['ratio_to_plain']:.2f} |" for r in timing]
        return "\n".join(lines) + "\n"

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
        for method in ("dg2pf", "oneshot_ft", "lightning_modelpruning"):
            points = sorted((r["target_sparsity"], r["test_acc"]) for r in main if r["name"].startswith(method + "_s"))
            if points:
                axes[0].plot(*zip(*points), marker="o", label=method)
        axes[0].set(xlabel="sparsity", ylabel="test accuracy", title="same epoch budget")
        axes[0].legend()
        if ablation:
            labels = [r["name"].removeprefix("dg2pf_s0.9").lstrip("_") or "default" for r in ablation]
            axes[1].bar(labels, [r["test_acc"] for r in ablation])
            axes[1].tick_params(axis="x", rotation=30)
        axes[1].set(ylabel="test accuracy", title="ablations at 90 %")
        if timing:
            axes[2].bar([r["name"][7:] for r in timing], [r["ratio_to_plain"] for r in timing])
        axes[2].set(ylabel="step time / plain step", title="training-step cost")
        fig.tight_layout()
        path = self.out / "results.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/dg2pf", help="output folder")
    parser.add_argument("--subset-fraction", type=float, default=0.1, help="fraction of the training split used")
    parser.add_argument("--epochs", type=int, default=30, help="epoch budget of every run")
    parser.add_argument("--pruning-epochs", type=int, default=None,
                        help="DG2PF's s_e (and ModelPruning's schedule); default min(15, epochs // 2)")
    parser.add_argument("--patience", type=int, default=4, help="DG2PF patience of both phases")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--finetune-lr", type=float, default=1e-3, help="SGD lr of the one-shot and ModelPruning runs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--test-batches", type=int, default=None, help="limit the test split (smoke tests)")
    parser.add_argument("--timing-steps", type=int, default=20, help="timed steps per timing variant")
    parser.add_argument("--parts", nargs="+", default=["main", "ablation", "timing"],
                        choices=["main", "ablation", "timing"])
    parser.add_argument("--weights", default="weights/resnet20-12fca82f.th",
                        help="pretrained ResNet-20 (relative paths are looked up in $LIGHTNING_PRUNE_DATA)")
    parser.add_argument("--data-dir", default=None, help="default: $LIGHTNING_PRUNE_DATA")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.pruning_epochs is None:
        args.pruning_epochs = max(1, min(15, args.epochs // 2))
    bench = Bench(args)
    jsonl = bench.out / "results.jsonl"
    if jsonl.exists():  # resume: finished runs are kept and not repeated; delete --out to start over
        rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        # rows measured before validation moved to half of the test split are not comparable: rerun them
        bench.rows = [r for r in rows if r.get("val_from") == "test" or r["group"] == "timing"]
    done = {r["name"] for r in bench.rows}
    if "timing" in args.parts and "timing_plain" not in done:
        bench.timing()  # first: short, and its ratios need the machine to itself
    if "main" in args.parts:
        for sparsity in args.sparsities:
            for method, run in (("dg2pf", bench.dg2pf), ("oneshot_ft", bench.oneshot),
                                ("lightning_modelpruning", bench.modelpruning)):
                if f"{method}_s{sparsity:g}" not in done:
                    run(sparsity)
    if "ablation" in args.parts:
        if not any(r["name"] == "dg2pf_s0.9" for r in bench.rows):
            bench.dg2pf(0.9, group="ablation")
        for label, kwargs in (("sim0", {"simulated": 0.0}), ("sim0.2", {"simulated": 0.2}),
                              ("alpha0", {"alpha": 0.0}), ("tau4", {"temperature": 4.0})):
            if f"dg2pf_s0.9_{label}" not in done:
                bench.dg2pf(0.9, group="ablation", name=f"dg2pf_s0.9_{label}", **kwargs)
    (bench.out / "results.md").write_text(bench.markdown())
    plot = bench.plot()
    print(bench.markdown())
    print(f"[dg2pf bench] wrote {bench.out / 'results.jsonl'}, {bench.out / 'results.md'}"
          + (f", {plot}" if plot else ""))


if __name__ == "__main__":
    main()
