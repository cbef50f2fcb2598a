"""DG2PF's loss (eq. 5-9) against a hand computation on a three-sample batch."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_prune.losses import (
    corrected_targets,
    dg2pf_loss,
    distillation_kl,
    performance_weighted_loss,
    performance_weights,
)

STUDENT = [[2.0, 0.5, -1.0], [0.2, 1.5, 0.1], [-0.3, 0.4, 2.2]]
TEACHER = [[1.0, 0.0, 0.0], [0.5, 2.0, -0.5], [0.0, 1.0, 0.5]]
TARGETS = [0, 2, 2]  # sample 0 and 2: student right; sample 1: student wrong (predicts 1)


def softmax(row: list[float], t: float = 1.0) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def reference(alpha: float, tau: float, gamma: float, beta: float, t2: bool = True) -> float:
    """Eq. 5-9 in plain Python, the documented reading (see lightning_prune.losses)."""
    kl = pw = 0.0
    for z_s, z_t, c in zip(STUDENT, TEACHER, TARGETS):
        p_s, p_t = softmax(z_s, tau), softmax(z_t, tau)
        kl += sum(t * (math.log(t) - math.log(s)) for s, t in zip(p_s, p_t))
        q = softmax(z_s)  # student probabilities at T=1
        w = (1 - softmax(z_t)[c]) ** gamma + beta  # eq. 5
        right = max(range(3), key=lambda k: q[k]) == c
        target = q if right else [1.0 if k == c else 0.0 for k in range(3)]  # eq. 6
        pw += w * -sum(y * math.log(p) for y, p in zip(target, q))  # eq. 7
    kl, pw = kl / 3, pw / 3
    return (alpha * kl + (1 - alpha) * pw) * (tau**2 if t2 else 1.0)


def tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(STUDENT, requires_grad=True), torch.tensor(TEACHER), torch.tensor(TARGETS)


@pytest.mark.parametrize(("alpha", "tau", "gamma", "beta"), [(0.9, 0.5, 1.0, 0.1), (0.0, 1.0, 2.0, 0.0),
                                                             (1.0, 4.0, 1.0, 0.1), (0.25, 2.0, 0.5, 0.3)])
def test_dg2pf_loss_matches_hand_computation(alpha: float, tau: float, gamma: float, beta: float) -> None:
    z_s, z_t, y = tensors()
    loss = dg2pf_loss(z_s, z_t, y, alpha=alpha, temperature=tau, gamma=gamma, beta=beta)
    assert loss.item() == pytest.approx(reference(alpha, tau, gamma, beta), rel=1e-5)
    unscaled = dg2pf_loss(z_s, z_t, y, alpha, tau, gamma, beta, scale_by_t2=False)
    assert unscaled.item() == pytest.approx(reference(alpha, tau, gamma, beta, t2=False), rel=1e-5)


def test_eq6_corrected_targets_student_where_right_label_where_wrong() -> None:
    z_s, _, y = tensors()
    q = corrected_targets(z_s, y)
    probs = torch.softmax(z_s.detach(), 1)
    assert torch.allclose(q[0], probs[0]) and torch.allclose(q[2], probs[2])
    assert q[1].tolist() == [0.0, 0.0, 1.0]
    assert not q.requires_grad  # a target, not a path for gradients


def test_correct_samples_add_value_but_no_gradient() -> None:
    """The documented reading of eq. 6: CE(sg(q), q) has zero gradient; wrong samples get w * (p - onehot)."""
    z_s, z_t, y = tensors()
    performance_weighted_loss(z_s, z_t, y).backward()
    grad = z_s.grad
    assert torch.allclose(grad[0], torch.zeros(3), atol=1e-7) and torch.allclose(grad[2], torch.zeros(3), atol=1e-7)
    w1 = (1 - torch.softmax(z_t[1], 0)[2]) + 0.1
    expected = w1 * (torch.softmax(z_s.detach()[1], 0) - torch.tensor([0.0, 0.0, 1.0])) / 3
    assert torch.allclose(grad[1], expected, atol=1e-7)


def test_performance_weights_and_kl() -> None:
    _, z_t, y = tensors()
    w = performance_weights(z_t, y, gamma=2.0, beta=0.0)
    expected = [(1 - softmax(TEACHER[i])[TARGETS[i]]) ** 2 for i in range(3)]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)
    z = torch.randn(4, 5)
    assert distillation_kl(z, z, 0.5).item() == pytest.approx(0.0, abs=1e-7)
    assert distillation_kl(z, torch.randn(4, 5), 0.5).item() > 0


def test_spatial_logits_are_flattened_to_samples() -> None:
    z_s, z_t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    y = torch.randint(0, 3, (2, 4))
    flat = dg2pf_loss(z_s.movedim(1, -1).reshape(-1, 3), z_t.movedim(1, -1).reshape(-1, 3), y.reshape(-1), 0.5, 2.0)
    assert dg2pf_loss(z_s, z_t, y, 0.5, 2.0).item() == pytest.approx(flat.item(), rel=1e-6)
