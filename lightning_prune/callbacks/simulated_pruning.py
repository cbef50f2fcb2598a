"""``SimulatedPruning``: DG2PF's per-step simulated pruning with straight-through gradients (eq. 2-3)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from lightning_prune.callbacks.base import check_resume_hparams, check_single
from lightning_prune.callbacks.gradual import GradualMagnitudePruning
from lightning_prune.errors import PruningConfigError
from lightning_prune.structural import masks as M

__all__ = ["SimulatedPruning"]


class SimulatedPruning(Callback):
    """Zero the smallest still-unpruned weights for each training step's forward and backward, then restore them.

    During the pruning epochs of :class:`GradualMagnitudePruning` (and only then), at the start of
    every training batch the ``sparsity`` fraction of the weights the controller still keeps with
    the smallest magnitude (eq. 2-3; counted globally or per tensor, following the controller's
    ``scope``) is set to zero. Forward and backward run with those zeros; as the weights themselves
    (not a mask multiplier) were zeroed, every weight, the zeroed ones included, receives the gradient
    of that masked forward (straight-through). Before the optimizer step (``on_before_optimizer_step``;
    also at the end of every batch, for gradient accumulation) the zeroed values are written back bit
    for bit, and the optimizer updates all unpruned weights. Permanently pruned weights stay zero
    and get no update (the controller zeroes their gradients).

    Args:
        sparsity: Fraction ``s_sim`` of the unpruned weights zeroed per step, in [0, 1) (0: off;
            the paper uses 0.1).

    Example:
        >>> from lightning_prune import GradualMagnitudePruning, SimulatedPruning
        >>> from lightning_prune.demos import DemoModule, demo_loaders, demo_trainer
        >>> simulated = SimulatedPruning(sparsity=0.1)
        >>> pruning = GradualMagnitudePruning(sparsity=0.5, pruning_epochs=2, patience=0, finetune_patience=1)
        >>> demo_trainer([pruning, simulated]).fit(DemoModule(), *demo_loaders())
        >>> simulated.steps  # one per training batch of the 2 pruning epochs
        8
    """

    def __init__(self, sparsity: float = 0.1) -> None:
        super().__init__()
        if not (isinstance(sparsity, float | int) and not isinstance(sparsity, bool) and 0 <= sparsity < 1):
            raise PruningConfigError(f"sparsity={sparsity!r} is outside [0, 1)",
                                     hint="use e.g. sparsity=0.1 (the paper), or 0 to switch simulated pruning off")
        self.sparsity = float(sparsity)
        self.steps = 0
        self._controller: GradualMagnitudePruning | None = None
        self._saved: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def simulating(self) -> bool:
        """True between a batch's zeroing and the restore."""
        return bool(self._saved)

    def _hparams(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"hparams": self._hparams(), "steps": self.steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_resume_hparams(self, state_dict.get("hparams"), self._hparams())
        self.steps = int(state_dict["steps"])

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._controller = GradualMagnitudePruning.find(trainer, self)
        check_single(trainer, self)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        controller = self._controller
        if controller is None or not controller.pruning or self.sparsity == 0 or self._saved:
            return
        params = controller.parameters
        chosen = M.simulated_masks(params, controller.masks, self.sparsity, controller.scope)
        with torch.no_grad():
            for name, selected in chosen.items():
                param = params[name]
                self._saved[name] = (selected, param[selected].clone())
                param.masked_fill_(selected, 0.0)
        self.steps += 1

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.restore()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.restore()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.restore()

    def restore(self) -> None:
        """Write the zeroed weights back (no-op when nothing is zeroed)."""
        if not self._saved or self._controller is None:
            return
        params = self._controller.parameters
        with torch.no_grad():
            for name, (selected, values) in self._saved.items():
                params[name][selected] = values
        self._saved = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_controller"], state["_saved"] = None, {}
        return state
