"""``GradualMagnitudePruning``: the controller of DG2PF's unstructured pruning and pruned fine-tuning."""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from lightning_prune import _lightning, evaluation
from lightning_prune._logging import info
from lightning_prune.callbacks.base import check_resume_hparams, check_resumed_arguments
from lightning_prune.errors import PruningConfigError
from lightning_prune.errors import check as _check
from lightning_prune.sparse import save_sparse
from lightning_prune.structural import masks as M

if TYPE_CHECKING:
    from lightning_prune.callbacks.distillation import SelfDistillation

__all__ = ["DEFAULT_FINETUNE_OPTIMIZER", "GradualMagnitudePruning", "GradualReport"]

#: File names of the compact sparse model: a finished run, and one stopped before its plan's end.
SPARSE_MODEL, SPARSE_MODEL_INCOMPLETE = "sparse_model.pt", "sparse_model.incomplete.pt"

PHASES = ("pretrain", "prune", "converge", "finetune", "done")
#: Phase 2 of DG2PF (pruned fine-tuning): SGD, lr 1e-4, momentum 0.9, weight decay 5e-4.
DEFAULT_FINETUNE_OPTIMIZER: dict[str, Any] = {"name": "sgd", "lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4}
_OPTIMIZER_NAMES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _optimizer_spec(spec: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """``(name, kwargs)`` of the phase-2 optimizer; checked by building it on a dummy parameter."""
    _check(spec is None or isinstance(spec, dict), f"finetune_optimizer={spec!r} is not a mapping",
           "pass e.g. {'name': 'sgd', 'lr': 1e-4, 'momentum': 0.9, 'weight_decay': 5e-4}")
    spec = dict(spec or {})
    name = spec.pop("name", "sgd")
    if name == "sgd":
        spec = {**{k: v for k, v in DEFAULT_FINETUNE_OPTIMIZER.items() if k != "name"}, **spec}
    if name == "module":
        _check(not spec, f"finetune_optimizer name 'module' takes no arguments, got {sorted(spec)}",
               "configure the optimizer in your module's configure_optimizers")
        return name, spec
    try:
        _optimizer_class(name)([torch.nn.Parameter(torch.zeros(1))], **spec)
    except (TypeError, ValueError, ImportError, AttributeError) as exc:
        raise PruningConfigError(
            f"finetune_optimizer={{'name': {name!r}, **{spec!r}}} cannot be built: {exc}",
            hint="use name 'sgd', 'adam', 'adamw', 'module' (your configure_optimizers) or a class path such as "
            "'torch.optim.RMSprop', with that optimizer's keyword arguments",
        ) from exc
    return name, spec


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    if name in _OPTIMIZER_NAMES:
        return _OPTIMIZER_NAMES[name]
    module, _, attr = name.rpartition(".")
    if not module:
        raise ValueError(f"unknown optimizer {name!r}")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise TypeError(f"{name} is not a torch.optim.Optimizer")
    return cls


@dataclass
class GradualReport:
    """What a :class:`GradualMagnitudePruning` run did, written to ``report.json``.

    ``sparsity`` holds ``overall``, ``numel``, ``zeros`` and per-parameter ``layers`` entries
    (``numel``, ``zeros``, ``sparsity``) measured on the final weights; ``history`` one entry per
    validated epoch (``epoch``, ``phase``, ``target_sparsity``, ``sparsity``, ``metric``); ``epochs``
    and ``seconds`` are split by phase (``pretrain``, ``prune``, ``converge``, ``finetune``);
    ``size`` compares the compact save (:func:`lightning_prune.sparse.save_sparse`) with the dense one.

    Example:
        >>> report = GradualReport(target_sparsity=0.9, scope="global", schedule=[0.45, 0.9], monitor="val_acc")
        >>> sorted(report.to_dict())[:4]
        ['best_metric', 'epochs', 'history', 'metric_after']
    """

    target_sparsity: float
    scope: str
    schedule: list[float]
    monitor: str
    metric_before: float | None = None
    metric_after: float | None = None
    best_metric: dict[str, float] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=lambda: {p: 0 for p in PHASES[:-1]})
    seconds: dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in PHASES[:-1]})
    seconds_total: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    sparsity: dict[str, Any] = field(default_factory=dict)
    size: dict[str, Any] = field(default_factory=dict)
    #: Whether the run reached its planned end (target sparsity, then its phases or its own epoch cap).
    completed: bool = False
    #: Why the fit ended before the plan did (``None`` when completed).
    stop_reason: str | None = None
    #: Prunes done and planned (one at the start of each pruning epoch).
    prunes_done: int = 0
    prunes_planned: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GradualReport:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)

    def write(self, path: str | Path) -> Path:
        """Write the report as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


class GradualMagnitudePruning(Callback):
    """Gradual unstructured magnitude pruning, then training to convergence, then pruned fine-tuning.

    The run, in epochs (DG2PF, Alg. 1 and 2):

    1. ``pretrain_epochs`` plain epochs (0 for a pretrained model);
    2. **prune**: ``pruning_epochs`` epochs; at the start of each the weights are pruned to the next
       sparsity of :func:`~lightning_prune.structural.masks.linear_sparsity_schedule` (``s/E, 2s/E,
       ..., s``) by magnitude, over all prunable weights (``scope="global"``) or per tensor
       (``"layerwise"``). ``SimulatedPruning`` works during these epochs only;
    3. **converge**: training goes on until ``monitor`` has not improved for ``patience``
       validations, counted from the last pruning epoch (the first at full sparsity);
    4. **finetune** (``finetune=True``): ``SelfDistillation`` teachers are detached, the optimizer is
       replaced by ``finetune_optimizer`` (default SGD lr 1e-4, momentum 0.9, weight decay 5e-4;
       LR schedulers are dropped) and training goes on until ``monitor`` has not improved on the
       score at the switch for ``finetune_patience`` validations; then the controller stops the Trainer.

    The Trainer's ``max_epochs`` is extended as needed; ``max_epochs`` here caps the whole run.

    Masks are ``bool`` tensors keyed by parameter name, kept by this callback (and in its checkpoint
    state); parameters keep their names, shapes and ``state_dict`` keys. Pruned weights are exact
    zeros through every optimizer step: their gradients are zeroed before each step, their optimizer
    state (momentum, Adam moments) is zeroed when they are pruned, and the weights are re-zeroed after
    every training batch. ``report.json`` (:class:`GradualReport`) and, with ``save_sparse_model``,
    ``sparse_model.pt`` (:func:`lightning_prune.sparse.save_sparse`) are written on rank zero.

    Args:
        sparsity: Final fraction of prunable weights set to zero, in (0, 1).
        pruning_epochs: Epochs over which sparsity rises linearly (one prune at the start of each).
        scope: ``"global"`` (one magnitude ranking over all prunable weights) or ``"layerwise"``.
        monitor: The metric the module logs in validation, e.g. ``"val_acc"``.
        mode: ``"max"`` if higher ``monitor`` is better, else ``"min"``.
        patience: Validations without improvement that end the converge phase (0: end at once).
        min_delta: Smallest change of ``monitor`` that counts as an improvement.
        pretrain_epochs: Plain training epochs before the first prune.
        include_bias: Also prune conv/linear biases.
        include_norm: Also prune norm layers' affine parameters.
        ignored_layers: Module or parameter names, or glob patterns (``"model.linear"``,
            ``"model.layer3.*"``), never pruned.
        finetune: Run the pruned fine-tuning phase after the converge phase.
        finetune_optimizer: ``{"name": ..., **kwargs}``; name ``"sgd"`` (missing keys from the paper's
            defaults), ``"adam"``, ``"adamw"``, a class path such as ``"torch.optim.RMSprop"``, or
            ``"module"`` (call ``configure_optimizers`` again). ``None``: the paper's SGD.
        finetune_patience: Patience of the fine-tuning phase, >= 1 (``None``: ``max(patience, 1)``).
        max_epochs: Cap on the epochs of the whole run (``None``: none); the run ends where it is.
        eval_batches: Measure the metric before pruning on this many validation batches (``None``: all).
        output_dir: Where ``report.json`` and ``sparse_model.pt`` go (default: ``trainer.log_dir``).
        save_sparse_model: Write ``sparse_model.pt`` (bitmask + values) and its size to the report.

    Example:
        >>> from lightning_prune.callbacks.gradual import GradualMagnitudePruning
        >>> pruning = GradualMagnitudePruning(sparsity=0.9, pruning_epochs=15, patience=4)
        >>> pruning.schedule[:3]
        [0.06, 0.12, 0.18]
        >>> # Trainer(callbacks=[pruning, SimulatedPruning(0.1), SelfDistillation()]).fit(model, dm)
    """

    def __init__(
        self,
        sparsity: float = 0.9,
        pruning_epochs: int = 15,
        scope: str = "global",
        monitor: str = "val_acc",
        mode: str = "max",
        patience: int = 4,
        min_delta: float = 0.0,
        pretrain_epochs: int = 0,
        include_bias: bool = False,
        include_norm: bool = False,
        ignored_layers: list[str] | None = None,
        finetune: bool = True,
        finetune_optimizer: dict[str, Any] | None = None,
        finetune_patience: int | None = None,
        max_epochs: int | None = None,
        eval_batches: int | None = None,
        output_dir: str | None = None,
        save_sparse_model: bool = True,
    ) -> None:
        super().__init__()
        _check(isinstance(sparsity, float | int) and not isinstance(sparsity, bool) and 0 < sparsity < 1,
               f"sparsity={sparsity!r} is outside (0, 1)", "use e.g. sparsity=0.9 to zero 90 % of the weights")
        _check(_is_int(pruning_epochs, 1), f"pruning_epochs={pruning_epochs!r} must be an integer >= 1",
               "use e.g. pruning_epochs=15 (the paper), or 1 for one-shot pruning")
        _check(scope in M.SCOPES, f"scope={scope!r} is unknown; valid: {', '.join(M.SCOPES)}",
               "use scope='global' (the paper) or 'layerwise'")
        _check(isinstance(monitor, str) and bool(monitor), f"monitor={monitor!r} must be a metric name",
               "use the name your validation_step logs, e.g. 'val_acc'")
        _check(mode in ("min", "max"), f"mode={mode!r} is unknown; valid: min, max", "use mode='max' for accuracy")
        _check(_is_int(patience, 0), f"patience={patience!r} must be an integer >= 0", "use e.g. patience=4")
        _check(isinstance(min_delta, float | int) and min_delta >= 0, f"min_delta={min_delta!r} must be >= 0",
               "use e.g. min_delta=0.0")
        _check(_is_int(pretrain_epochs, 0), f"pretrain_epochs={pretrain_epochs!r} must be an integer >= 0",
               "use 0 for a pretrained model")
        _check(finetune_patience is None or _is_int(finetune_patience, 1),
               f"finetune_patience={finetune_patience!r} must be None or an integer >= 1",
               "use e.g. finetune_patience=4")
        _check(max_epochs is None or _is_int(max_epochs, 1),
               f"max_epochs={max_epochs!r} must be None or an integer >= 1",
               "use e.g. max_epochs=100 (the paper's cap), or None")
        _check(eval_batches is None or _is_int(eval_batches, 1),
               f"eval_batches={eval_batches!r} must be None or an integer >= 1", "use None to validate on all batches")
        ignored = [ignored_layers] if isinstance(ignored_layers, str) else list(ignored_layers or [])
        _check(all(isinstance(p, str) and p for p in ignored), f"ignored_layers={ignored_layers!r} must be names",
               "pass a list of module/parameter names or glob patterns, e.g. ['model.linear']")
        self.finetune_spec = _optimizer_spec(finetune_optimizer) if finetune else ("sgd", {})
        self.sparsity, self.pruning_epochs, self.scope = float(sparsity), pruning_epochs, scope
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, float(min_delta)
        self.pretrain_epochs, self.include_bias, self.include_norm = pretrain_epochs, include_bias, include_norm
        self.ignored_layers, self.finetune = ignored, finetune
        self.finetune_patience = finetune_patience if finetune_patience is not None else max(patience, 1)
        self.max_epochs, self.eval_batches = max_epochs, eval_batches
        self.output_dir, self.save_sparse_model = output_dir, save_sparse_model
        self.schedule = M.linear_sparsity_schedule(self.sparsity, pruning_epochs)
        self.report = GradualReport(target_sparsity=self.sparsity, scope=scope, schedule=list(self.schedule),
                                    monitor=monitor, prunes_planned=pruning_epochs)
        self._phase = "pretrain"
        self._prunes_done = 0
        self._best: float | None = None
        self._wait = 0
        self._switched = False
        self._started_epoch: int | None = None
        self._last_val: tuple[int, float] | None = None
        self._masks: dict[str, Tensor] = {}
        self._params: dict[str, torch.nn.Parameter] = {}
        self._distillers: list[SelfDistillation] = []
        self._epoch_phase: str | None = None
        self._epoch_started: float | None = None
        self._clock_start: float | None = None
        self._elapsed_before = 0.0
        self._measuring = False
        self._out: Path | None = None  # resolved on every rank in setup (trainer.log_dir is a collective)

    # ------------------------------------------------------------------ public state
    @property
    def phase(self) -> str:
        """``"pretrain"``, ``"prune"``, ``"converge"``, ``"finetune"`` or ``"done"``."""
        return self._phase

    @property
    def pruning(self) -> bool:
        """True during the pruning epochs (where ``SimulatedPruning`` is active)."""
        return self._phase == "prune"

    @property
    def masks(self) -> dict[str, Tensor]:
        """Parameter name -> ``bool`` keep-mask (empty before the first prune)."""
        return self._masks

    @property
    def parameters(self) -> dict[str, torch.nn.Parameter]:
        """Parameter name -> the prunable parameters of the module being trained."""
        return self._params

    def _hparams(self) -> dict[str, Any]:
        """The arguments a resumed run must share with the run that wrote the checkpoint."""
        return {
            "sparsity": self.sparsity, "pruning_epochs": self.pruning_epochs, "scope": self.scope,
            "monitor": self.monitor, "mode": self.mode, "patience": self.patience, "min_delta": self.min_delta,
            "pretrain_epochs": self.pretrain_epochs, "include_bias": self.include_bias,
            "include_norm": self.include_norm, "ignored_layers": self.ignored_layers, "finetune": self.finetune,
            "finetune_optimizer": [self.finetune_spec[0], self.finetune_spec[1]],
            "finetune_patience": self.finetune_patience, "max_epochs": self.max_epochs,
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "hparams": self._hparams(),
            "phase": self._phase,
            "prunes_done": self._prunes_done,
            "best": self._best,
            "wait": self._wait,
            "last_val": list(self._last_val) if self._last_val is not None else None,
            "switched": self._switched,
            "started_epoch": self._started_epoch,
            "masks": {name: mask.detach().cpu().clone() for name, mask in self._masks.items()},
            "report": self.report.to_dict(),
            "seconds_elapsed": self._elapsed(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_resume_hparams(self, state_dict.get("hparams"), self._hparams())
        self._phase = state_dict["phase"]
        self._prunes_done = state_dict["prunes_done"]
        self._best = state_dict["best"]
        self._wait = state_dict["wait"]
        last = state_dict["last_val"]
        self._last_val = (int(last[0]), float(last[1])) if last is not None else None
        self._switched = bool(state_dict["switched"])
        self._started_epoch = state_dict["started_epoch"]
        self._masks = {name: mask.bool() for name, mask in state_dict["masks"].items()}
        self.report = GradualReport.from_dict(state_dict["report"])
        self._elapsed_before = float(state_dict["seconds_elapsed"])
        self._clock_start = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_params"], state["_distillers"] = {}, []
        state["_masks"] = {name: mask.detach().cpu() for name, mask in self._masks.items()}
        return state

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        from lightning_prune.callbacks.distillation import SelfDistillation
        from lightning_prune.callbacks.structured import StructuredPruning

        _lightning.check_strategy(trainer, "GradualMagnitudePruning")
        _lightning.check_trains(trainer, "GradualMagnitudePruning")
        controllers = [cb for cb in trainer.callbacks if isinstance(cb, GradualMagnitudePruning)]
        _check(len(controllers) == 1, f"found {len(controllers)} GradualMagnitudePruning callbacks",
               "use one GradualMagnitudePruning callback per Trainer")
        _check(not any(isinstance(cb, StructuredPruning) for cb in trainer.callbacks),
               "GradualMagnitudePruning and StructuredPruning cannot share a Trainer (masks are keyed by "
               "parameter shapes that surgery changes)", "run structured and unstructured pruning in separate fits")
        names = [n for n, _ in pl_module.named_modules() if n] + [n for n, _ in pl_module.named_parameters()]
        unmatched = [p for p in self.ignored_layers if not any(M.name_matches(n, [p]) for n in names)]
        _check(not unmatched, f"ignored_layers {unmatched} match no module or parameter of {type(pl_module).__name__}",
               f"names look like {', '.join(names[:4])}, ...; glob patterns such as 'model.layer3.*' work")
        self._params = self._prunable(pl_module)
        _check(bool(self._params), f"nothing to prune in {type(pl_module).__name__}: no conv or linear weights "
               "outside ignored_layers", "narrow ignored_layers, or set include_norm/include_bias")
        self._distillers = [cb for cb in trainer.callbacks if isinstance(cb, SelfDistillation)]
        self._out = _lightning.output_dir(trainer, self.output_dir)
        _lightning.guard_checkpoint_loading(trainer, lambda path, ckpt: self._check_resumed(trainer, path, ckpt, pl_module))

    def _check_resumed(self, trainer: pl.Trainer, path: Path, checkpoint: dict[str, Any],
                       pl_module: pl.LightningModule) -> None:
        """Before anything is restored: the same arguments for every callback, and a checkpoint of this model."""
        check_resumed_arguments(trainer, checkpoint)
        _lightning.check_checkpoint_fits(path, checkpoint.get("state_dict", {}), pl_module, replays=False)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _lightning.unguard_checkpoint_loading(trainer)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._params = self._prunable(pl_module)
        self._clock_start = time.perf_counter()
        done = sum(self.report.epochs.values())  # resumed: Lightning refuses a max_epochs below the checkpoint's epoch
        if 0 <= trainer.fit_loop.max_epochs <= done:
            trainer.fit_loop.max_epochs = done + 1
        if self._masks:  # resumed: masks back on the device, before Lightning restores optimizer state
            self._masks = {n: m.to(self._params[n].device) for n, m in self._masks.items() if n in self._params}
            M.apply_masks(self._params, self._masks)
            if self._switched:
                self._install_finetune_optimizer(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = time.perf_counter()
        if self._started_epoch == trainer.current_epoch and self._phase != "done":
            self._epoch_phase = self._phase  # resumed from a mid-epoch checkpoint: this epoch's start already ran
            return
        self._started_epoch = trainer.current_epoch
        if self._phase == "done" or self._over_budget(trainer.current_epoch):
            self._finish(trainer)
            self._epoch_phase = None
            return
        if self._phase == "pretrain" and self.report.epochs["pretrain"] >= self.pretrain_epochs:
            self._start_pruning(trainer)
        if self._phase == "prune" and self._prunes_done == self.pruning_epochs:
            self._enter("converge", None)  # the last pruning epoch did not validate: count from the next one
        if self._phase == "prune":
            self._prune(trainer, self.schedule[self._prunes_done])
            self._prunes_done += 1
        self._epoch_phase = self._phase
        self.report.epochs[self._phase] += 1

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._masks:
            M.mask_gradients(self._params, self._masks)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._masks:
            M.apply_masks(self._params, self._masks)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._measuring or self._epoch_phase is None or self._phase == "done":
            return
        value = self._monitored(trainer)
        epoch = trainer.current_epoch
        self._last_val = (epoch, value)
        target = self.schedule[self._prunes_done - 1] if self._prunes_done else 0.0
        self.report.history.append({"epoch": epoch, "phase": self._epoch_phase, "target_sparsity": target,
                                    "sparsity": self._overall_sparsity(), "metric": value})
        if self._phase == "prune" and self._prunes_done == self.pruning_epochs:
            self._enter("converge", value)  # counting starts at the first epoch at full sparsity
            if self.patience == 0:
                self._end_converge(trainer, pl_module, value)
        elif self._phase == "converge":
            if self._update(value) >= self.patience:
                self._end_converge(trainer, pl_module, value)
        elif self._phase == "finetune" and self._update(value) >= self.finetune_patience:
            self._finish(trainer)
        if self._phase != "done" and self._over_budget(epoch + 1):
            self._finish(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_phase is not None and self._epoch_started is not None:
            self.report.seconds[self._epoch_phase] += time.perf_counter() - self._epoch_started
        self._epoch_started = None
        if self._phase != "done" and self._over_budget(trainer.current_epoch + 1):
            self._finish(trainer)
        if self._phase != "done" and 0 <= trainer.fit_loop.max_epochs <= trainer.current_epoch + 1:
            trainer.fit_loop.max_epochs = trainer.current_epoch + 2  # the plan is not finished yet

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._phase != "done":
            _check(not (self.report.epochs["pretrain"] == 0 and not self._masks
                        and _lightning.no_training_batches(trainer)),
                   "the training dataloader has no batches: GradualMagnitudePruning cannot run its plan",
                   "check the DataModule's train split and batch_size")
            self.report.completed, self.report.stop_reason = False, _lightning.stop_reason(trainer)
            info(f"[lightning_prune] the fit stopped before the pruning plan was complete "
                 f"({self.report.stop_reason}): {self._prunes_done} of {self.pruning_epochs} prunes done, "
                 f"phase {self._phase}")
        self._summarise()
        if not trainer.is_global_zero:
            return
        out = self._out if self._out is not None else Path(self.output_dir or trainer.default_root_dir)
        name = SPARSE_MODEL if self.report.completed else SPARSE_MODEL_INCOMPLETE
        if self.save_sparse_model:
            self.report.size = save_sparse(pl_module, out / name)
        self.report.write(out / "report.json")
        layers = self.report.sparsity["layers"]
        status = "" if self.report.completed else f"INCOMPLETE ({self.report.stop_reason}): "
        info(f"[lightning_prune] {status}sparsity {self.report.sparsity['overall']:.4f} over {len(layers)} tensors; "
             f"{self.monitor} {_fmt(self.report.metric_before)} -> {_fmt(self.report.metric_after)}; "
             f"epochs {self.report.epochs}")
        if self.report.size:
            info(f"[lightning_prune] {name} {self.report.size['bytes']:,} bytes vs dense "
                 f"{self.report.size['dense_bytes']:,} ({self.report.size['ratio']:.2f}x smaller)")
        info(f"[lightning_prune] wrote {out / 'report.json'}")

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A crashed or interrupted fit leaves a report that says so (the checkpoint is what resumes)."""
        _lightning.unguard_checkpoint_loading(trainer)  # Lightning skips teardown hooks when fit raises
        if (not trainer.is_global_zero or self._out is None or self._phase == "done" or not self._masks
                or isinstance(exception, PruningConfigError)):
            return  # a refusal leaves the output folder untouched; before the first prune there is nothing to report
        self.report.completed = False
        self.report.stop_reason = f"the fit raised {type(exception).__name__}: {exception}"
        self.report.prunes_done = self._prunes_done
        self.report.seconds_total = self._elapsed()
        try:
            self.report.write(self._out / "report.json")
        except OSError as err:  # never hide the original exception
            info(f"[lightning_prune] could not write {self._out / 'report.json'}: {err}")

    # ------------------------------------------------------------------ the plan
    def _prunable(self, pl_module: pl.LightningModule) -> dict[str, torch.nn.Parameter]:
        return M.prunable_parameters(pl_module, self.include_bias, self.include_norm, self.ignored_layers)

    def _elapsed(self) -> float:
        running = 0.0 if self._clock_start is None else time.perf_counter() - self._clock_start
        return self._elapsed_before + running

    def _over_budget(self, epochs_done: int) -> bool:
        return self.max_epochs is not None and epochs_done >= self.max_epochs

    def _improved(self, value: float) -> bool:
        if self._best is None:
            return True
        if self.mode == "max":
            return value > self._best + self.min_delta
        return value < self._best - self.min_delta

    def _update(self, value: float) -> int:
        """Patience bookkeeping; returns the number of validations without improvement."""
        if self._improved(value):
            self._best, self._wait = value, 0
        else:
            self._wait += 1
        self.report.best_metric[self._phase] = self._best  # type: ignore[assignment]
        return self._wait

    def _enter(self, phase: str, baseline: float | None) -> None:
        self._phase, self._best, self._wait = phase, baseline, 0
        if baseline is not None:
            self.report.best_metric[phase] = baseline

    def _monitored(self, trainer: pl.Trainer) -> float:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            logged = sorted(trainer.callback_metrics) or ["(nothing)"]
            raise PruningConfigError(
                f"monitor={self.monitor!r} was not logged during validation; logged keys: {', '.join(logged)}",
                hint="log it in `validation_step` with `self.log(monitor, value)`, or set monitor= to a logged key",
            )
        value = float(value.item() if isinstance(value, Tensor) else value)
        return float(trainer.strategy.broadcast(value, src=0))

    def _start_pruning(self, trainer: pl.Trainer) -> None:
        previous = trainer.current_epoch - 1
        if self._last_val is not None and self._last_val[0] == previous:
            self.report.metric_before = self._last_val[1]
        else:
            self._measuring = True
            try:
                value = evaluation.measure(trainer, self.monitor, self.eval_batches)
            finally:
                self._measuring = False
            self.report.metric_before = float(trainer.strategy.broadcast(value, src=0))
        info(f"[lightning_prune] {self.monitor} before pruning: {self.report.metric_before:.4f}; "
             f"{len(self._params)} tensors, {sum(p.numel() for p in self._params.values()):,} prunable weights")
        self._enter("prune", None)

    def _prune(self, trainer: pl.Trainer, target: float) -> None:
        masks = M.magnitude_masks(self._params, target, self.scope, self._masks)
        if trainer.world_size > 1:  # every rank holds the same weights; rank zero's decision is the one
            cpu = trainer.strategy.broadcast({n: m.cpu() for n, m in masks.items()}, src=0)
            masks = {n: m.to(self._params[n].device) for n, m in cpu.items()}
        self._masks = masks
        M.apply_masks(self._params, masks)
        M.mask_optimizer_state(trainer.optimizers, self._params, masks)
        achieved = self._overall_sparsity()
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"prune/target_sparsity": target, "prune/sparsity": achieved},
                                   step=trainer.global_step)
        info(f"[lightning_prune] epoch {trainer.current_epoch}: pruned to sparsity {achieved:.4f} "
             f"(step {self._prunes_done + 1}/{self.pruning_epochs}, target {target:.4f}, {self.scope})")

    def _overall_sparsity(self) -> float:
        kept = sum(int(m.sum()) for m in self._masks.values())
        total = sum(p.numel() for p in self._params.values())
        return 1.0 - kept / total if total and self._masks else 0.0

    def _end_converge(self, trainer: pl.Trainer, pl_module: pl.LightningModule, value: float) -> None:
        if not self.finetune:
            self._finish(trainer)
            return
        for distiller in self._distillers:
            distiller.detach_teacher()
        self._install_finetune_optimizer(trainer, pl_module)
        self._switched = True
        self._enter("finetune", value)
        name, kwargs = self.finetune_spec
        info(f"[lightning_prune] epoch {trainer.current_epoch}: {self.monitor} stopped improving; pruned "
             f"fine-tuning with {name} {kwargs}, no teacher, masks kept")

    def _install_finetune_optimizer(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Replace the optimizers (and drop LR schedulers) for phase 2; masks stay applied."""
        name, kwargs = self.finetune_spec
        strategy = trainer.strategy
        if name == "module":
            strategy.setup_optimizers(trainer)
        else:
            params = [p for p in pl_module.parameters() if p.requires_grad]
            strategy.optimizers = [_optimizer_class(name)(params, **kwargs)]
            strategy.lr_scheduler_configs = []
        _optimizers_to_device(strategy.optimizers, strategy.root_device)

    def _finish(self, trainer: pl.Trainer) -> None:
        if self._phase != "done":
            if self._prunes_done < self.pruning_epochs:  # the epoch cap came before the target sparsity
                self.report.stop_reason = f"max_epochs={self.max_epochs} (GradualMagnitudePruning) reached " \
                                          f"after {self._prunes_done} of {self.pruning_epochs} prunes"
            else:
                self.report.completed = True
            self._phase = "done"
            info(f"[lightning_prune] epoch {trainer.current_epoch}: done")
        _lightning.end_on_should_stop(trainer)

    def _summarise(self) -> None:
        self.report.prunes_done = self._prunes_done
        self.report.metric_after = self._last_val[1] if self._last_val is not None else None
        stats = M.sparsity_stats(self._params)
        self.report.sparsity = stats
        self.report.seconds_total = self._elapsed()
