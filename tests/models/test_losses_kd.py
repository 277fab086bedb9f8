"""KnowledgeDistillationKLDivLoss against the KL divergence written out, and against torch's
``kl_div``; no gradient reaches the teacher."""

import math

import pytest
import torch
import torch.nn.functional as F

from detlab.config import ConfigError
from detlab.models.losses import KnowledgeDistillationKLDivLoss

EPS = torch.finfo(torch.float32).eps


def _kd_reference(student, teacher, T):
    """``T**2 / C * sum_c q_c (log q_c - log p_c)``, q and p the softmaxes at temperature T of
    the teacher and the student (Hinton et al. 2015; averaged over the C classes)."""
    rows = []
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        log_zs = math.log(sum(math.exp(v / T) for v in s_row))
        log_zt = math.log(sum(math.exp(v / T) for v in t_row))
        kl = sum(math.exp(t / T - log_zt) * ((t / T - log_zt) - (s / T - log_zs))
                 for s, t in zip(s_row, t_row, strict=True))
        rows.append(T * T * kl / len(s_row))
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("T", [10, 1, 3.5])
def test_values_are_the_temperature_scaled_kl_divergence(T):
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(7, 5, generator=gen, dtype=torch.float64) * 3
    teacher = torch.randn(7, 5, generator=gen, dtype=torch.float64) * 3
    weight = torch.rand(7, generator=gen, dtype=torch.float64)
    expected = _kd_reference(student, teacher, T)
    loss = KnowledgeDistillationKLDivLoss(T=T, loss_weight=2.0)
    torch.testing.assert_close(loss(student, teacher, reduction_override="none"), 2.0 * expected)
    torch.testing.assert_close(loss(student, teacher, weight), 2.0 * (expected * weight).mean())
    torch.testing.assert_close(loss(student, teacher, weight, avg_factor=3.0),
                               2.0 * (expected * weight).sum() / (3.0 + EPS))
    torch.testing.assert_close(loss(student, teacher, reduction_override="sum"),
                               2.0 * T * T / 5 * F.kl_div(F.log_softmax(student / T, 1),
                                                          F.softmax(teacher / T, 1),
                                                          reduction="sum"))
    assert loss(teacher, teacher).abs().item() < 1e-12  # no divergence from itself


def test_the_teacher_gets_no_gradient():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    KnowledgeDistillationKLDivLoss()(student, teacher).backward()
    assert teacher.grad is None and torch.isfinite(student.grad).all()


def test_errors():
    with pytest.raises(ConfigError, match="T must be >= 1"):
        KnowledgeDistillationKLDivLoss(T=0.5)
    with pytest.raises(ValueError, match="same shape"):
        KnowledgeDistillationKLDivLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
