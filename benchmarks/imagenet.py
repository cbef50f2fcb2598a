"""What the callbacks cost on torchvision ResNet-50: step times, a structural step, a calibration, latency.

The costs the ImageNet recipes (configs/imagenet/) add to a job, measured on synthetic images (a fixed pool
of random tensors, so no data loading is timed and nothing is downloaded), one process:

* **step**: median wall time of a training step of the first epoch (``on_train_batch_start`` to
  ``on_train_batch_end``, optimizer step included, the device synchronised at both ends; the fit stops
  after that epoch, so the idle controller never starts pruning and simulated pruning is on in every
  timed step), after one discarded warm-up fit, for the plain module and with each
  callback combination: an idle ``StructuredPruning`` (its pretraining epoch: nothing to do yet),
  ``GradualMagnitudePruning`` alone (masks re-applied after every step), plus ``SimulatedPruning(0.1)``,
  plus ``SelfDistillation()`` (the default folded teacher), both. Ratios are to the plain step and, for the
  satellites, to the step with ``GradualMagnitudePruning`` alone (the satellite's own cost, as
  benchmarks/dg2pf.py reports it); the issue's goals: idle controller <= 1.02x, SimulatedPruning <= 1.10x,
  SelfDistillation <= 1.40x.
* **structural step**: ``StructuredPruning(pruning_ratio=0.6, schedule="blockwise")`` runs its 16 steps
  (one bottleneck block each, one training batch of fine-tuning between them); each step's
  ``seconds_prune`` (trace, score, surgery, optimizer rebuild, parameter and MAC count) is reported.
* **calibration**: one scoring pass of every prunable layer of the dense network with the data-driven
  criteria ``attention`` (AAP) and ``entropy`` (ICE's Table II) over 8 batches (StructuredPruning's
  default ``calibration_batches``).
* **latency**: ``measure_latency`` of the dense and the pruned network (from the structural run) at
  batch 1 and 64, eval mode, in the step's precision (``torch.autocast`` for bf16).

Writes ``results.jsonl`` (one line per measurement), ``results.md`` (with ``analysis.md`` appended when
present: what the tables show, written by hand) and ``summary.json`` to ``--out``.

Sizes: the CPU size (the default: 64-pixel images, batch 16, fp32, 20 timed steps) measures ratios only;
the GPU size (``benchmarks/gpu.sh``: 224 pixels, batch 64, bf16-mixed) is the issue's measurement.
Example (a smoke test):
    python benchmarks/imagenet.py --out /tmp/imagenet-smoke --image-size 32 --batch-size 4 --timing-steps 3 \
        --latency-repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from lightning_prune import (
    GradualMagnitudePruning,
    ImageClassifier,
    SelfDistillation,
    SimulatedPruning,
    StructuredPruning,
    measure_latency,
)
from lightning_prune.callbacks._steps import prunable_layers, score_layers
from lightning_prune.importance import get_importance

CLASSES = 1000


class Synthetic(Dataset):
    """``length`` items cycling through a fixed pool of 64 random images (seeded) and labels."""

    def __init__(self, length: int, image_size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(64, 3, image_size, image_size, generator=generator)
        self.labels = torch.randint(0, CLASSES, (64,), generator=generator)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index % 64], self.labels[index % 64]


class StepTimer(Callback):
    """Wall time of each training step of the first epoch, the device synchronised at both ends (listed
    first); the fit stops after that epoch (a controller would otherwise extend it to its whole plan)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    @staticmethod
    def _sync(module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._sync(pl_module)
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._sync(pl_module)
        self.seconds.append(time.perf_counter() - self._started)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.should_stop = True


class Bench:
    """Shared settings, the measurements and the outputs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.jsonl").unlink(missing_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.pruned: torch.nn.Module | None = None
        self.runs = Path(tempfile.mkdtemp(prefix="imagenet-bench-"))  # reports and models of the runs: not results

    def loader(self, batches: int) -> DataLoader:
        a = self.args
        return DataLoader(Synthetic(batches * a.batch_size, a.image_size), batch_size=a.batch_size,
                          pin_memory=a.accelerator == "gpu")

    def module(self) -> ImageClassifier:
        L.seed_everything(0, verbose=False)
        return ImageClassifier("resnet50", num_classes=CLASSES, optimizer="sgd", lr=1e-3, momentum=0.9,
                               weight_decay=1e-4)

    def trainer(self, callbacks: list[Callback], **kwargs: Any) -> L.Trainer:
        a = self.args
        options: dict[str, Any] = {"accelerator": a.accelerator, "devices": 1, "precision": a.precision,
                                   "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                                   "enable_model_summary": False, "num_sanity_val_steps": 0,
                                   "default_root_dir": str(self.runs)}
        options.update(kwargs)
        return L.Trainer(callbacks=callbacks, **options)

    def add(self, row: dict[str, Any]) -> None:
        a = self.args
        row.update(image_size=a.image_size, batch_size=a.batch_size, precision=a.precision, device=self.device())
        self.rows.append(row)
        with (self.out / "results.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")

    def device(self) -> str:
        if self.args.accelerator == "gpu":
            return torch.cuda.get_device_name(0)
        return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"

    # ------------------------------------------------------------------ measurements
    def steps(self) -> None:
        """Median training-step time of each callback combination; ratios to the plain step."""
        a = self.args
        gradual = {"sparsity": 0.9, "pruning_epochs": 1, "schedule": "cubic", "finetune": False, "max_epochs": 1,
                   "save_sparse_model": False, "output_dir": str(self.runs)}
        variants: dict[str, Any] = {
            "plain": list,
            "idle_controller": lambda: [StructuredPruning(pretrain_epochs=1, output_dir=str(self.runs))],
            "gradual": lambda: [GradualMagnitudePruning(**gradual)],
            "simulated": lambda: [GradualMagnitudePruning(**gradual), SimulatedPruning(0.1)],
            "distillation": lambda: [GradualMagnitudePruning(**gradual), SelfDistillation()],
            "both": lambda: [GradualMagnitudePruning(**gradual), SimulatedPruning(0.1), SelfDistillation()],
        }
        medians: dict[str, float] = {}
        warm_up = self.trainer([], max_epochs=1, limit_val_batches=1)  # allocator and kernels warm before any row
        warm_up.fit(self.module(), self.loader(4), self.loader(1))
        for name, callbacks in variants.items():
            timer = StepTimer()
            trainer = self.trainer([timer, *callbacks()], max_epochs=1, limit_val_batches=1)
            trainer.fit(self.module(), self.loader(a.timing_steps + 2), self.loader(1))
            medians[name] = statistics.median(timer.seconds[2:])  # two warm-up steps dropped
        for name, median in medians.items():
            on_gradual = name in ("simulated", "distillation", "both")
            self.add({"part": "step", "name": name, "median_step_ms": 1000 * median,
                      "ratio_to_plain": median / medians["plain"],
                      "ratio_to_gradual": median / medians["gradual"] if on_gradual else None,
                      "steps": a.timing_steps})

    def structural(self) -> None:
        """The 16 blockwise steps of ratio 0.6, one training batch between them; each step's seconds_prune."""
        controller = StructuredPruning(pruning_ratio=0.6, schedule="blockwise", finetune_epochs=1,
                                       output_dir=str(self.runs))
        module = self.module()
        trainer = self.trainer([controller], max_epochs=40, limit_train_batches=1, limit_val_batches=1)
        trainer.fit(module, self.loader(1), self.loader(1))
        seconds = [s.seconds_prune for s in controller.report.steps]
        totals = controller.report.totals()
        self.add({"part": "structural", "name": "blockwise_0.6_step", "steps": len(seconds),
                  "median_seconds": statistics.median(seconds), "max_seconds": max(seconds),
                  "params_reduction": 1 - totals["params_after"] / totals["params_before"],
                  "macs_reduction": 1 - totals["macs_after"] / totals["macs_before"]})
        self.pruned = module.model

    def calibration(self) -> None:
        """One scoring pass of every prunable layer with each data-driven criterion, 8 batches."""
        a = self.args
        module = self.module().to("cuda" if a.accelerator == "gpu" else "cpu")
        batches = [x.to(module.device) for x, _ in self.loader(8)]
        _, layers = prunable_layers(module, batches[0][:1], [], False, False)
        for criterion in ("attention", "entropy"):
            importance = get_importance(criterion)
            with self.autocast(module.device):
                score_layers(importance, module, layers, list(layers), batches[:1])  # warm-up
                started = time.perf_counter()
                score_layers(importance, module, layers, list(layers), batches)
                if module.device.type == "cuda":
                    torch.cuda.synchronize()
            self.add({"part": "calibration", "name": criterion, "seconds": time.perf_counter() - started,
                      "batches": len(batches), "layers": len(layers)})

    def latency(self) -> None:
        """Dense vs pruned forward latency at batch 1 and 64."""
        a = self.args
        assert self.pruned is not None, "the structural part runs first"
        device = "cuda" if a.accelerator == "gpu" else "cpu"
        for name, network in (("dense", self.module().model), ("pruned", self.pruned)):
            for batch in (1, 64):
                example = torch.randn(batch, 3, a.image_size, a.image_size)
                with self.autocast(torch.device(device)):
                    stats = measure_latency(network, example, device=device, warmup=a.latency_warmup,
                                            repeats=a.latency_repeats)
                self.add({"part": "latency", "name": name, "latency_batch": batch, "median_ms": stats["median_ms"],
                          "p90_ms": stats["p90_ms"], "params": sum(p.numel() for p in network.parameters())})

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.args.precision.startswith("bf16"):
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ outputs
    def markdown(self) -> str:
        a = self.args
        rows = {part: [r for r in self.rows if r["part"] == part] for part in ("step", "structural", "calibration",
                                                                              "latency")}
        lines = [f"# Callback costs on torchvision ResNet-50 ({self.device()})", "",
                 f"Command: `python benchmarks/imagenet.py {' '.join(a.argv)}`", "",
                 (f"{a.image_size}-pixel synthetic images, batch {a.batch_size}, precision {a.precision}, "
                  f"{a.timing_steps} timed steps per row (2 warm-up steps dropped)."), "",
                 "| training step | median ms | ratio to plain | ratio to gradual alone |", "|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['median_step_ms']:.1f} | {r['ratio_to_plain']:.2f} | "
                  f"{'' if r['ratio_to_gradual'] is None else format(r['ratio_to_gradual'], '.2f')} |"
                  for r in rows["step"]]
        for r in rows["structural"]:
            lines += ["", (f"Structural step (blockwise ratio 0.6, {r['steps']} steps): median "
                           f"{r['median_seconds']:.2f} s, longest {r['max_seconds']:.2f} s; the pruned network has "
                           f"{100 * r['params_reduction']:.1f} % fewer parameters, "
                           f"{100 * r['macs_reduction']:.1f} % fewer MACs.")]
        lines += ["", "| calibration (every prunable layer) | batches | seconds |", "|---|---|---|"]
        lines += [f"| {r['name']} | {r['batches']} | {r['seconds']:.2f} |" for r in rows["calibration"]]
        lines += ["", "| network | batch | median latency ms | p90 ms |", "|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['latency_batch']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} |"
                  for r in rows["latency"]]
        dense = {r["latency_batch"]: r["median_ms"] for r in rows["latency"] if r["name"] == "dense"}
        pruned = {r["latency_batch"]: r["median_ms"] for r in rows["latency"] if r["name"] == "pruned"}
        if dense and pruned:
            lines += ["", "Speed-up of the pruned network: " + ", ".join(
                f"{dense[b] / pruned[b]:.2f}x at batch {b}" for b in sorted(dense)) + "."]
        return "\n".join(lines) + "\n"

    def summary(self) -> dict[str, Any]:
        step = {r["name"]: r["ratio_to_plain"] for r in self.rows if r["part"] == "step"}
        step |= {f"{r['name']}_to_gradual": r["ratio_to_gradual"] for r in self.rows
                 if r["part"] == "step" and r["ratio_to_gradual"] is not None}
        latency = {f"{r['name']}_batch{r['latency_batch']}_ms": r["median_ms"] for r in self.rows
                   if r["part"] == "latency"}
        structural = next((r for r in self.rows if r["part"] == "structural"), {})
        return {"network": "resnet50", "device": self.device(), "image_size": self.args.image_size,
                "precision": self.args.precision, "step_cost": step,
                "structural_step_seconds": structural.get("median_seconds"),
                "calibration_seconds": {r["name"]: r["seconds"] for r in self.rows if r["part"] == "calibration"},
                "latency": latency}

    def write(self) -> None:
        analysis = self.out / "analysis.md"  # what the tables show, written by hand after a run
        extra = "\n" + analysis.read_text() if analysis.exists() else ""
        (self.out / "results.md").write_text(self.markdown() + extra)
        (self.out / "summary.json").write_text(json.dumps(self.summary(), indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--timing-steps", type=int, default=20)
    parser.add_argument("--latency-warmup", type=int, default=3)
    parser.add_argument("--latency-repeats", type=int, default=10)
    parser.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu", choices=["cpu", "gpu"])
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on a GPU, 32-true on a CPU")
    parser.add_argument("--parts", nargs="+", default=["step", "structural", "calibration", "latency"],
                        choices=["step", "structural", "calibration", "latency"])
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.precision = args.precision or ("bf16-mixed" if args.accelerator == "gpu" else "32-true")
    bench = Bench(args)
    for part in ("step", "structural", "calibration", "latency"):
        if part in args.parts and (part != "latency" or "structural" in args.parts):
            {"step": bench.steps, "structural": bench.structural, "calibration": bench.calibration,
             "latency": bench.latency}[part]()
            bench.write()


if __name__ == "__main__":
    main()
