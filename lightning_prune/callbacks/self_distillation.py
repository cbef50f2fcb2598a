"""``SelfDistillation``: distil a frozen copy of the model into the model being pruned, with no code change."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from lightning_prune._logging import info
from lightning_prune.callbacks.base import (
    PruningController,
    PruningSatellite,
    check_resume_hparams,
    check_single,
)
from lightning_prune.errors import PruningConfigError
from lightning_prune.errors import check as _check
from lightning_prune.losses import dg2pf_loss, distillation_kl
from lightning_prune.structural.folding import folded_copy

__all__ = ["LOSSES", "SelfDistillation"]

LOSSES = ("dg2pf", "hinton")
_TARGET_KEYS = ("y", "target", "targets", "label", "labels")


def _logits(output: Any, who: str) -> Tensor:
    """The logits in a model output: a tensor, the first element of a tuple, ``["logits"]`` or ``.logits``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(getattr(output, "logits", None), Tensor):
        return output.logits
    raise PruningConfigError(f"cannot find logits in the {who}'s output of type {type(output).__name__}",
                             hint="hook a module that returns logits with `student_module=` (e.g. 'model')")


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode with no gradients, without instance-level method wrappers."""
    clone = copy.deepcopy(module)
    for attr in ("training_step", "on_load_checkpoint"):  # wrappers other callbacks set on the instance
        clone.__dict__.pop(attr, None)
    clone.eval()
    clone.requires_grad_(False)
    return clone


class SelfDistillation(PruningSatellite, Callback):
    """Distil a frozen, unpruned copy of the model (the teacher) into the model being trained.

    Works with an unmodified ``LightningModule`` whose ``training_step`` computes its own loss:

    * **student logits**: the output of the *last* call, during ``training_step``, of the student
      module: the LightningModule itself (its ``forward``, i.e. ``self(x)``), or the submodule named
      by ``student_module`` (e.g. ``"model"``) for modules that call their network directly. A
      tensor output is the logits; otherwise its first element, ``["logits"]`` or ``.logits``;
    * **teacher logits**: the teacher, a frozen copy of that same module, called on the *same
      inputs* (captured by a forward hook), in eval mode under ``no_grad`` (with ``fold_batchnorm``,
      a copy with each BatchNorm folded into the convolution before it, checked against the teacher
      on the first batch it sees; a module ``torch.fx`` cannot trace runs unfolded, the log says why);
    * **targets**: ``batch[target_key]``, by default ``batch[1]`` for ``(inputs, targets)`` tuples and
      the first of ``y``, ``target(s)``, ``label(s)`` for dict batches; or ``targets_fn(batch)``;
    * **loss**: ``training_step``'s returned loss (a tensor, or the ``"loss"`` of a dict) is
      replaced by eq. 9, :func:`~lightning_prune.losses.dg2pf_loss` (``loss="dg2pf"``), or increased
      by ``alpha * KL * T^2`` (``loss="hinton"``, the ICE authors' fine-tuning distillation).

    The teacher is the student as it is when distillation starts: at the end of epoch
    ``start_epoch - 1`` (by default after a controller's ``pretrain_epochs``; when fit starts if
    that is 0), or the weights in ``teacher`` (a checkpoint or ``state_dict`` file). It lives in this
    callback, not in the module: it is not in ``parameters()``, the optimizer or the module's
    ``state_dict``; its weights are saved in this callback's checkpoint state so that a resumed run
    distils from the same teacher. With ``StructuredPruning`` it stays unpruned. As a satellite of
    either controller it detaches the teacher (:meth:`detach_teacher`) when the controller enters a
    ``"finetune"`` phase (``GradualMagnitudePruning``'s pruned fine-tuning); from then on the module's
    own loss is used unchanged. Also works without a controller. Automatic optimization only.

    Args:
        alpha: Weight of the KL term, in [0, 1].
        temperature: Distillation temperature ``tau`` > 0 (the paper: 0.5; ICE: 2).
        loss: ``"dg2pf"`` (replace the loss by eq. 9) or ``"hinton"`` (add ``alpha * KL * T^2``).
        gamma: Exponent of the performance weights (eq. 5), ``"dg2pf"`` only.
        beta: Offset of the performance weights (eq. 5), ``"dg2pf"`` only.
        teacher: Path of the teacher's weights (Lightning checkpoint or ``state_dict``; relative
            paths are also looked up in ``$LIGHTNING_PRUNE_DATA``); ``None``: a copy of the student.
        scale_by_t2: Multiply by ``T^2`` (eq. 9 and Hinton); ``False`` for the ICE variant.
        student_module: Name of the submodule whose output is the logits (``None``: the module itself).
        target_key: Index or key of the targets in the batch (``None``: see above).
        targets_fn: ``batch -> targets`` for other batch layouts (Python or a YAML import path).
        start_epoch: First epoch that distils (``None``: the controller's ``pretrain_epochs``, else 0).
        fold_batchnorm: Run the teacher with its convolution + BatchNorm pairs folded (the same function
            up to float rounding, one pass over the activations fewer); ``False``: run it as it is.

    Example:
        >>> from lightning_prune import SelfDistillation, StructuredPruning
        >>> from lightning_prune.demos import DemoModule, demo_loaders, demo_trainer
        >>> distil = SelfDistillation(alpha=0.9, temperature=0.5, loss="dg2pf")
        >>> demo_trainer([StructuredPruning(), distil]).fit(DemoModule(), *demo_loaders())
        >>> all(not p.requires_grad for p in distil.teacher.parameters()), distil.teacher.model.layer1[0].conv1.out_channels
        (True, 8)
    """

    def __init__(
        self,
        alpha: float = 0.9,
        temperature: float = 0.5,
        loss: str = "dg2pf",
        gamma: float = 1.0,
        beta: float = 0.1,
        teacher: str | None = None,
        scale_by_t2: bool = True,
        student_module: str | None = None,
        target_key: int | str | None = None,
        targets_fn: Callable[[Any], Tensor] | None = None,
        start_epoch: int | None = None,
        fold_batchnorm: bool = True,
    ) -> None:
        super().__init__()
        number = (float, int)
        _check(isinstance(alpha, number) and not isinstance(alpha, bool) and 0 <= alpha <= 1,
               f"alpha={alpha!r} is outside [0, 1]", "use e.g. alpha=0.9 (the paper)")
        _check(isinstance(temperature, number) and not isinstance(temperature, bool) and temperature > 0,
               f"temperature={temperature!r} must be > 0", "use e.g. temperature=0.5 (DG2PF) or 2 (ICE)")
        _check(loss in LOSSES, f"loss={loss!r} is unknown; valid: {', '.join(LOSSES)}",
               "use 'dg2pf' (eq. 9 replaces the loss) or 'hinton' (KL added to your loss)")
        _check(isinstance(gamma, number) and gamma > 0, f"gamma={gamma!r} must be > 0", "use gamma=1.0 (the paper)")
        _check(isinstance(beta, number) and beta >= 0, f"beta={beta!r} must be >= 0", "use beta=0.1 (the paper)")
        _check(teacher is None or (isinstance(teacher, str) and bool(teacher)), f"teacher={teacher!r} is not a path",
               "pass the path of a checkpoint, or None to distil from a copy of the model")
        _check(student_module is None or (isinstance(student_module, str) and bool(student_module)),
               f"student_module={student_module!r} is not a module name", "use e.g. 'model', or None")
        _check(target_key is None or isinstance(target_key, str) or (isinstance(target_key, int) and target_key >= 0),
               f"target_key={target_key!r} must be None, an index >= 0 or a key", "use e.g. target_key=1 or 'label'")
        _check(targets_fn is None or callable(targets_fn), f"targets_fn={targets_fn!r} is not callable",
               "pass a function batch -> targets")
        _check(start_epoch is None or (isinstance(start_epoch, int) and start_epoch >= 0),
               f"start_epoch={start_epoch!r} must be None or an integer >= 0", "use None to follow the controller")
        self.alpha, self.temperature, self.loss = float(alpha), float(temperature), loss
        self.gamma, self.beta, self.teacher_path, self.scale_by_t2 = float(gamma), float(beta), teacher, scale_by_t2
        self.student_module, self.target_key, self.targets_fn = student_module, target_key, targets_fn
        _check(isinstance(fold_batchnorm, bool), f"fold_batchnorm={fold_batchnorm!r} is not a bool",
               "use True (fold the teacher's BatchNorms) or False")
        self.start_epoch, self.fold_batchnorm = start_epoch, fold_batchnorm
        self.teacher: nn.Module | None = None
        self._runner: nn.Module | None = None  # what computes the teacher's logits: a folded copy or the teacher
        self._detached = False
        self._pending_teacher: dict[str, Tensor] | None = None
        self._start = 0
        self._module: pl.LightningModule | None = None
        self._student: nn.Module | None = None
        self._hook: Any = None
        self._original_step: Any = None
        self._had_instance_step = False
        self._capturing = False
        self._captured: tuple[tuple[Any, ...], dict[str, Any], Any] | None = None

    # ------------------------------------------------------------------ identity and state
    def _hparams(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "temperature": self.temperature, "loss": self.loss, "gamma": self.gamma,
                "beta": self.beta, "teacher": self.teacher_path, "scale_by_t2": self.scale_by_t2,
                "student_module": self.student_module, "target_key": self.target_key, "start_epoch": self.start_epoch}

    @property
    def detached(self) -> bool:
        """True once :meth:`detach_teacher` was called: the module's own loss is used from then on."""
        return self._detached

    @override
    def state_dict(self) -> dict[str, Any]:
        weights = None
        if not self._detached and self.teacher_path is None:
            source = self.teacher.state_dict() if self.teacher is not None else self._pending_teacher
            weights = {k: v.detach().cpu().clone() for k, v in source.items()} if source is not None else None
        return {"hparams": self._hparams(), "detached": self._detached, "teacher": weights}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_resume_hparams(self, state_dict.get("hparams"), self._hparams())
        self._detached = bool(state_dict["detached"])
        weights = state_dict["teacher"]
        if self._detached:
            self.teacher, self._pending_teacher = None, None
        elif weights is not None:
            if self.teacher is not None:
                self._load_teacher(weights)
            else:
                self._pending_teacher = dict(weights)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for attr in ("_module", "_student", "_hook", "_original_step", "_captured", "_runner"):
            state[attr] = None
        return state

    # ------------------------------------------------------------------ teacher control
    def detach_teacher(self) -> None:
        """Stop distilling and release the teacher (done when a controller enters its ``"finetune"`` phase)."""
        if not self._detached:
            info("[lightning_prune] SelfDistillation: teacher detached")
        self._detached = True
        self.teacher, self._pending_teacher, self._runner = None, None, None

    def snapshot_teacher(self, student: nn.Module | None = None) -> None:
        """Make the teacher a frozen copy of the student's current weights."""
        student = student if student is not None else self._student
        self._runner = None
        if student is None:
            raise PruningConfigError("SelfDistillation has no student yet", hint="call it during fit")
        if self.teacher is not None:
            try:
                self._load_teacher(student.state_dict())
                return
            except RuntimeError:  # the student's structure changed: copy it afresh
                pass
        self.teacher = _frozen_copy(student)

    def _load_teacher(self, weights: dict[str, Tensor]) -> None:
        assert self.teacher is not None
        self._runner = None
        with torch.no_grad():
            self.teacher.load_state_dict(weights, strict=True)

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_single(trainer, self)
        _check(pl_module.automatic_optimization, f"{type(pl_module).__name__} uses manual optimization",
               "SelfDistillation changes the loss training_step returns, which needs automatic optimization")
        controller = PruningController.find(trainer, self, required=False)
        self._start = self.start_epoch if self.start_epoch is not None else (
            controller.pretrain_epochs if controller is not None else 0)
        self._module = pl_module
        self._student = self._find_student(pl_module)
        if self.teacher is None and not self._detached:
            self.teacher = _frozen_copy(self._student)
            if self.teacher_path is not None:
                from lightning_prune.models.weights import load_state_dict_file

                load_state_dict_file(self.teacher, self.teacher_path)
            elif self._pending_teacher is not None:
                self._load_teacher(self._pending_teacher)
        self._pending_teacher = None
        self._hook = self._student.register_forward_hook(self._capture, with_kwargs=True)
        self._wrap_training_step(pl_module)

    @override
    def on_phase_change(self, trainer: pl.Trainer, pl_module: pl.LightningModule, controller: PruningController,
                        phase: str) -> None:
        if phase == "finetune":
            self.detach_teacher()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.teacher is not None and self._student is not None:
            dtype = next((p.dtype for p in self._student.parameters() if p.is_floating_point()), None)
            self.teacher.to(device=pl_module.device, dtype=dtype)
            self.teacher.eval()
            self._runner = None

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._maybe_snapshot(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_snapshot(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._unwrap(pl_module)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._unwrap(pl_module)  # Lightning skips teardown hooks when fit raises

    def _unwrap(self, pl_module: pl.LightningModule) -> None:
        """Remove the forward hook and give the module its own ``training_step`` back."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._original_step is not None:
            if self._had_instance_step:
                pl_module.training_step = self._original_step  # type: ignore[method-assign]
            else:
                pl_module.__dict__.pop("training_step", None)
            self._original_step = None
        self._captured = None

    # ------------------------------------------------------------------ the loss
    def active(self, trainer: pl.Trainer) -> bool:
        """Whether this training step distils (teacher present, not detached, from ``start_epoch`` on)."""
        return self.teacher is not None and not self._detached and trainer.current_epoch >= self._start

    def _maybe_snapshot(self, trainer: pl.Trainer) -> None:
        """The teacher is the student at the end of epoch ``start - 1`` (before any prune of epoch ``start``).

        Taken at validation end too, so that a checkpoint saved at that validation already holds it.
        """
        due = self._start > 0 and trainer.current_epoch == self._start - 1
        if due and self.teacher_path is None and not self._detached:
            self.snapshot_teacher()

    def _find_student(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.student_module is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.student_module)
        except AttributeError:
            names = [n for n, _ in pl_module.named_children()]
            raise PruningConfigError(f"student_module={self.student_module!r} is not a submodule of "
                                     f"{type(pl_module).__name__}", hint=f"its children are {names}") from None

    def _capture(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self._capturing and module is self._student:
            self._captured = (args, kwargs, output)

    def _wrap_training_step(self, pl_module: pl.LightningModule) -> None:
        if self._original_step is not None:
            return
        self._had_instance_step = "training_step" in pl_module.__dict__
        original = pl_module.training_step
        distiller = self

        def training_step(*args: Any, **kwargs: Any) -> Any:
            trainer = pl_module.trainer
            if not distiller.active(trainer):
                return original(*args, **kwargs)
            distiller._capturing, distiller._captured = True, None
            try:
                out = original(*args, **kwargs)
            finally:
                distiller._capturing = False
            captured, distiller._captured = distiller._captured, None
            if out is None:  # the user skipped this batch
                return out
            batch = args[0] if args else kwargs.get("batch")
            return distiller._distil(pl_module, captured, batch, out)

        self._original_step = original
        pl_module.training_step = training_step  # type: ignore[method-assign]

    def _targets(self, batch: Any) -> Tensor:
        if self.targets_fn is not None:
            return self.targets_fn(batch)
        key = self.target_key
        if key is None:
            if isinstance(batch, dict):
                key = next((k for k in _TARGET_KEYS if k in batch), None)
            elif isinstance(batch, tuple | list) and len(batch) > 1:
                key = 1
        try:
            targets = batch[key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            targets = None
        if not isinstance(targets, Tensor):
            raise PruningConfigError(
                f"cannot find the targets in a batch of type {type(batch).__name__} (target_key={self.target_key!r})",
                hint="set SelfDistillation(target_key=...) to their index or dict key, or pass targets_fn=",
            )
        return targets

    def _teacher_logits(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        """The teacher's logits; the first call decides whether a folded copy computes them, this call included."""
        assert self.teacher is not None
        if self._runner is not None:
            return _logits(self._runner(*args, **kwargs), "teacher")
        logits = _logits(self.teacher(*args, **kwargs), "teacher")
        self._runner = self.teacher
        if self.fold_batchnorm:
            folded, reason = folded_copy(self.teacher)
            if folded is not None:
                try:
                    other = _logits(folded(*args, **kwargs), "folded teacher")
                    tol = max(1e-3, 16 * torch.finfo(logits.dtype).eps) * max(float(logits.abs().max()), 1.0)
                    same = other.shape == logits.shape and bool(torch.allclose(other, logits, rtol=0.0, atol=tol))
                except Exception:  # noqa: BLE001 - a traced copy that cannot run is not used
                    same = False
                reason = "" if same else "its folded copy does not compute the same logits"
            if not reason:  # from here on every step's logits are the folded copy's, this one's too (resume
                self._runner, logits = folded, other  # then recomputes exactly what an unbroken run did)
            info("[lightning_prune] SelfDistillation: the teacher runs with its BatchNorms folded" if not reason
                 else f"[lightning_prune] SelfDistillation: the teacher runs unfolded: {reason}")
        return logits

    def _distil(self, pl_module: pl.LightningModule, captured: Any, batch: Any, out: Any) -> Any:
        if captured is None:
            raise PruningConfigError(
                f"{type(pl_module).__name__}.training_step never called the student module "
                f"({self.student_module or 'the LightningModule itself'})",
                hint="set student_module= to the submodule your training_step calls, e.g. 'model'",
            )
        args, kwargs, output = captured
        student = _logits(output, "student")
        with torch.no_grad():
            teacher = self._teacher_logits(args, kwargs).detach()
        user_loss = out["loss"] if isinstance(out, dict) else out
        if self.loss == "dg2pf":
            targets = self._targets(batch).to(student.device)
            loss = dg2pf_loss(student, teacher, targets, self.alpha, self.temperature, self.gamma, self.beta,
                              scale_by_t2=self.scale_by_t2)
        else:
            scale = self.temperature**2 if self.scale_by_t2 else 1.0
            loss = user_loss + self.alpha * distillation_kl(student, teacher, self.temperature) * scale
        pl_module.log("distill/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=student.shape[0],
                      sync_dist=True)
        if isinstance(out, dict):
            return {**out, "loss": loss}
        return loss
