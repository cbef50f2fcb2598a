"""Distillation losses of DG2PF (eq. 5-9) and Hinton's soft-target term, as plain functions.

Conventions (the paper leaves them open; the choices are pinned by ``tests/test_losses.py``):

* Logits are ``(B, C)``; larger inputs ``(B, C, d1, ...)`` are treated as ``B * d1 * ...`` samples.
  Targets are class indices. The teacher's logits are always detached.
* **KL** (eq. 8) is ``KL(teacher || student) = sum_c p_t (log p_t - log p_s)`` with both
  distributions taken at temperature ``tau`` (``softmax(z / tau)``), averaged over samples. Eq. 8
  prints ``y_t (log y_t - y_s)``, missing the log of the student term; the standard KL is meant.
* **Sample weights** (eq. 5) ``w_i = (1 - p_t(c_i))^gamma + beta`` use the teacher's ordinary
  probabilities (temperature 1): the teacher's confidence in the true class, as the text says.
* **Corrected targets** (eq. 6): "correctly classified" means the *student's* arg-max equals the
  label (the text: "where the model has made a correct classification"); for those samples the
  target is the student's own probability vector (temperature 1), otherwise the one-hot label. The
  corrected target is a *target*, so it is detached: a correctly classified sample adds its
  weighted entropy to the value of the loss but no gradient (the gradient of ``CE(sg(q), q)`` with
  respect to the logits is ``q - q = 0``); misclassified samples get the ordinary, weighted
  cross-entropy gradient.
* **L_PW** (eq. 7) is ``(1 / B) sum_i w_i CE_i`` (divided by the batch size, not by ``sum w``).
* **L_KD** (eq. 9) is ``(alpha KL + (1 - alpha) L_PW) tau^2``; ``scale_by_t2=False`` drops the
  ``tau^2`` (the ICE authors' variant uses temperature 2 and no ``tau^2``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "corrected_targets",
    "dg2pf_loss",
    "distillation_kl",
    "performance_weighted_loss",
    "performance_weights",
]


def _flat(logits: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    if logits.dim() < 2:
        raise ValueError(f"logits must be (batch, classes, ...), got shape {tuple(logits.shape)}")
    if logits.dim() > 2:
        logits = logits.movedim(1, -1).reshape(-1, logits.shape[1])
        targets = targets.reshape(-1) if targets is not None else None
    return logits, targets


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``KL(teacher || student)`` of the tempered distributions, averaged over samples (eq. 8).

    Example:
        >>> z = torch.tensor([[2.0, 0.0, -1.0]])
        >>> float(distillation_kl(z, z, temperature=0.5))
        0.0
    """
    student, _ = _flat(student_logits)
    teacher, _ = _flat(teacher_logits.detach())
    log_s = F.log_softmax(student.float() / temperature, dim=1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")


def performance_weights(teacher_logits: Tensor, targets: Tensor, gamma: float = 1.0, beta: float = 0.1) -> Tensor:
    """Eq. 5: ``w_i = (1 - p_teacher(true class))^gamma + beta``, one weight per sample.

    Example:
        >>> w = performance_weights(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        >>> round(float(w), 6)  # the teacher gives the true class 0.5
        0.6
    """
    teacher, targets = _flat(teacher_logits.detach(), targets)
    p_true = F.softmax(teacher.float(), dim=1).gather(1, targets.long().unsqueeze(1)).squeeze(1)
    return (1.0 - p_true).pow(gamma) + beta


def corrected_targets(student_logits: Tensor, targets: Tensor) -> Tensor:
    """Eq. 6: the student's own (detached) probabilities where it is right, the one-hot label elsewhere.

    Example:
        >>> q = corrected_targets(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]))
        >>> [round(v, 4) for v in q[0].tolist()], q[1].tolist()
        ([0.8808, 0.1192], [0.0, 1.0])
    """
    student, targets = _flat(student_logits.detach(), targets)
    probs = F.softmax(student.float(), dim=1)
    one_hot = F.one_hot(targets.long(), probs.shape[1]).to(probs.dtype)
    correct = probs.argmax(1) == targets
    return torch.where(correct.unsqueeze(1), probs, one_hot)


def performance_weighted_loss(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, gamma: float = 1.0, beta: float = 0.1
) -> Tensor:
    """Eq. 7: ``(1 / B) sum_i w_i CE(y*_i, softmax(z_i))`` with eq. 5 weights and eq. 6 targets.

    Example:
        >>> z = torch.tensor([[0.0, 3.0]])
        >>> round(float(performance_weighted_loss(z, z, torch.tensor([0]))), 4)  # wrong: w * CE vs label
        3.2089
    """
    student, _ = _flat(student_logits, targets)
    weights = performance_weights(teacher_logits, targets, gamma, beta)
    soft = corrected_targets(student_logits, targets)
    ce = -(soft * F.log_softmax(student.float(), dim=1)).sum(1)
    return (weights * ce).mean()


def dg2pf_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    alpha: float,
    temperature: float,
    gamma: float = 1.0,
    beta: float = 0.1,
    *,
    scale_by_t2: bool = True,
) -> Tensor:
    """DG2PF's distillation loss, eq. 9: ``(alpha KL + (1 - alpha) L_PW) tau^2``.

    Args:
        student_logits: The pruned model's logits, ``(B, C)`` (gradients flow through these).
        teacher_logits: The frozen teacher's logits (detached here).
        targets: Class indices, ``(B,)``.
        alpha: Weight of the KL term, in [0, 1].
        temperature: ``tau`` of the KL term (and of the ``tau^2`` factor), > 0.
        gamma: Exponent of the eq. 5 sample weights.
        beta: Offset of the eq. 5 sample weights.
        scale_by_t2: Multiply by ``tau^2`` (eq. 9); ``False`` leaves the combination unscaled.

    Example:
        >>> z_s, z_t = torch.tensor([[1.0, 0.0, 0.5]]), torch.tensor([[2.0, 0.0, -1.0]])
        >>> loss = dg2pf_loss(z_s, z_t, torch.tensor([0]), alpha=0.9, temperature=0.5)
        >>> loss.shape, bool(loss > 0)
        (torch.Size([]), True)
    """
    kl = distillation_kl(student_logits, teacher_logits, temperature)
    pw = performance_weighted_loss(student_logits, teacher_logits, targets, gamma, beta)
    loss = alpha * kl + (1.0 - alpha) * pw
    return loss * temperature**2 if scale_by_t2 else loss
