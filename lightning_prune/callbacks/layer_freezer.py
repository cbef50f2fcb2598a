"""``LayerFreezer``: ICE-Pruning's freezing of the conv layers that move least during fine-tuning."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from lightning_prune._logging import info
from lightning_prune.callbacks.base import (
    PruningController,
    PruningSatellite,
    TrialStep,
    check_resume_hparams,
    check_single,
)
from lightning_prune.callbacks.structured import StructuredPruning
from lightning_prune.errors import check as _check
from lightning_prune.structural import graph as structure


def _convs(module: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}


def _l1(module: nn.Module) -> dict[str, float]:
    return {n: float(m.weight.detach().abs().sum()) for n, m in _convs(module).items()}


def movement_scores(before: dict[str, float], after: dict[str, float], l2: dict[str, float]) -> dict[str, float]:
    """ICE's score of each conv: ``| sum|W_after| - sum|W_before| | / ||W_original||_2``.

    Example:
        >>> movement_scores({"a": 2.0, "b": 5.0}, {"a": 3.0, "b": 5.5}, {"a": 2.0, "b": 1.0})
        {'a': 0.5, 'b': 0.5}
    """
    return {n: abs(after[n] - before[n]) / max(l2[n], 1e-12) for n in after}


class LayerFreezer(PruningSatellite, Callback):
    """Freeze the conv layers that move least during fine-tuning (ICE-Pruning's layer freezing).

    Its probe is a :class:`~lightning_prune.callbacks.base.TrialStep` requested when pruning starts:
    the controller prunes the first component on trial and fine-tunes one epoch; every conv layer is
    scored by :func:`movement_scores` (L1 norms after vs. before that epoch, over the original L2
    norm); the controller then restores the unpruned model and the ``ceil(freeze_fraction * n)``
    lowest-scoring convs are frozen (``requires_grad=False``, so they cost no weight-gradient
    computation), with their BatchNorm when ``freeze_bn``. Frozen layers are still pruned and stay
    frozen across every structural change and across resume. The probe's time is reported in
    ``report.json`` under ``extra.probe``, the scores under ``extra.layer_freezer``. A satellite of
    :class:`~lightning_prune.StructuredPruning`.

    Args:
        freeze_fraction: Fraction of conv layers to freeze, in [0, 1].
        probe: ``"first_component"`` (the only probe: the authors').
        freeze_bn: Also freeze the affine parameters of each frozen conv's BatchNorm.
        freeze_bn_stats: Also stop those BatchNorms' running statistics (eval mode during
            training); the authors' code keeps them updating.

    Example:
        >>> from lightning_prune import LayerFreezer, StructuredPruning
        >>> from lightning_prune.demos import DemoModule, demo_loaders, demo_trainer
        >>> freezer, module = LayerFreezer(freeze_fraction=0.25), DemoModule()
        >>> demo_trainer([StructuredPruning(), freezer]).fit(module, *demo_loaders())
        >>> len(freezer.frozen), all(not module.get_submodule(conv).weight.requires_grad for conv in freezer.frozen)
        (2, True)
    """

    def __init__(self, freeze_fraction: float = 0.3, probe: str = "first_component", freeze_bn: bool = True,
                 freeze_bn_stats: bool = False) -> None:
        _check(isinstance(freeze_fraction, int | float) and 0 <= freeze_fraction <= 1,
               f"freeze_fraction={freeze_fraction!r} must be in [0, 1]", "use e.g. 0.3 to freeze 30 % of the conv layers")
        _check(probe == "first_component", f"probe={probe!r} is unknown; valid: first_component",
               "use probe='first_component'")
        self.freeze_fraction, self.probe, self.freeze_bn, self.freeze_bn_stats = (
            float(freeze_fraction), probe, freeze_bn, freeze_bn_stats)
        self.frozen: list[str] | None = None  # conv names, decided by the probe
        self.norms: dict[str, str] = {}
        self.scores: dict[str, float] = {}
        self._measurements: dict[str, dict[str, float]] = {}

    def _hparams(self) -> dict[str, Any]:
        return {"freeze_fraction": self.freeze_fraction, "probe": self.probe, "freeze_bn": self.freeze_bn,
                "freeze_bn_stats": self.freeze_bn_stats}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"hparams": self._hparams(), "frozen": self.frozen, "norms": dict(self.norms),
                "scores": dict(self.scores), "measurements": {k: dict(v) for k, v in self._measurements.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_resume_hparams(self, state_dict.get("hparams"), self._hparams())
        self.frozen = state_dict["frozen"]
        self.norms = dict(state_dict["norms"])
        self.scores = dict(state_dict["scores"])
        self._measurements = {k: dict(v) for k, v in state_dict["measurements"].items()}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            StructuredPruning.find(trainer, self)
            check_single(trainer, self)

    # ------------------------------------------------------------------ the probe
    @override
    def on_pruning_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                         controller: PruningController) -> None:
        if self.frozen is not None:
            return
        self.norms = structure.conv_norm_pairs(pl_module, controller.example_input(trainer, pl_module))  # type: ignore[attr-defined]
        self._measurements = {"l2_original": {n: float(m.weight.detach().norm()) for n, m in _convs(pl_module).items()}}
        controller.request(TrialStep(epochs=1))

    @override
    def on_trial_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController) -> None:
        self._measurements["l1_before"] = _l1(pl_module)

    @override
    def on_trial_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController) -> None:
        self.scores = movement_scores(self._measurements["l1_before"], _l1(pl_module),
                                      self._measurements["l2_original"])
        ranked = sorted(self.scores, key=lambda n: (self.scores[n], n))
        self.frozen = trainer.strategy.broadcast(ranked[:math.ceil(self.freeze_fraction * len(self.scores))], src=0)
        info(f"[lightning_prune] freezing {len(self.frozen)} of {len(self.scores)} conv layers: {', '.join(self.frozen)}")

    @override
    def report_section(self) -> dict[str, Any]:
        if self.frozen is None:
            return {}
        return {"layer_freezer": {"scores": dict(self.scores), "frozen": list(self.frozen)}}

    # ------------------------------------------------------------------ freezing
    def _frozen_modules(self, pl_module: pl.LightningModule) -> list[nn.Module]:
        modules = dict(pl_module.named_modules())
        names = list(self.frozen or [])
        if self.freeze_bn:
            names += [self.norms[n] for n in names if n in self.norms]
        return [modules[n] for n in names if n in modules]

    def apply(self, pl_module: pl.LightningModule) -> None:
        """Set ``requires_grad=False`` on the frozen layers' parameters."""
        for module in self._frozen_modules(pl_module):
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(False)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.frozen is not None:  # resumed: flags are not part of a checkpoint
            self.apply(pl_module)

    @override
    def on_structure_changed(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             controller: PruningController) -> None:
        if self.frozen is not None:
            self.apply(pl_module)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.freeze_bn_stats and self.frozen:
            modules = dict(pl_module.named_modules())
            for conv in self.frozen:
                if conv in self.norms and self.norms[conv] in modules:
                    modules[self.norms[conv]].eval()
