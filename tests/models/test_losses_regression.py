"""Balanced L1 (Libra R-CNN) against its paper's formula and gradient, and MSE against torch's,
for every reduction, weight and avg_factor."""

import math

import pytest
import torch
import torch.nn.functional as F

from detlab.config import ConfigError
from detlab.models.losses import BalancedL1Loss, MSELoss, balanced_l1_loss, mse_loss

EPS = torch.finfo(torch.float32).eps
REDUCTIONS = [("mean", None), ("sum", None), ("none", None), ("mean", 3.0), ("none", 3.0)]


def _reduce(elements, reduction, avg_factor=None):
    if reduction == "none":
        return elements
    if reduction == "sum":
        return elements.sum()
    return elements.sum() / (elements.numel() if avg_factor is None else avg_factor + EPS)


def _case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(8, 4, generator=gen, dtype=torch.float64) * 1.5
    target = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    return pred, target, (torch.rand(8, 4, generator=gen, dtype=torch.float64) > 0.3).double()


def _balanced_l1_reference(x: float, alpha: float, gamma: float, beta: float) -> float:
    """Pang et al. 2019, eq. 8, with b from alpha ln(b + 1) = gamma (continuous gradient)."""
    b = math.exp(gamma / alpha) - 1
    x = abs(x)
    if x < beta:
        return alpha / b * (b * x + 1) * math.log(b * x / beta + 1) - alpha * x
    return gamma * x + gamma / b - alpha * beta


@pytest.mark.parametrize("reduction, avg_factor", REDUCTIONS)
@pytest.mark.parametrize("alpha, gamma, beta", [(0.5, 1.5, 1.0), (0.3, 2.0, 0.7)])
def test_balanced_l1_is_the_papers_formula(reduction, avg_factor, alpha, gamma, beta):
    pred, target, weight = _case()
    elements = torch.tensor([[_balanced_l1_reference(p - t, alpha, gamma, beta)
                              for p, t in zip(pr, tr, strict=True)]
                             for pr, tr in zip(pred.tolist(), target.tolist(), strict=True)],
                            dtype=torch.float64)
    loss = BalancedL1Loss(alpha=alpha, gamma=gamma, beta=beta, loss_weight=2.0)
    torch.testing.assert_close(loss(pred, target, weight, avg_factor=avg_factor,
                                    reduction_override=reduction),
                               2.0 * _reduce(elements * weight, reduction, avg_factor))


def test_balanced_l1_gradient_is_alpha_log_inside_and_gamma_outside():
    """The promoted inlier gradient ``alpha ln(b |x| / beta + 1)``, bounded by ``gamma``."""
    alpha, gamma, beta = 0.5, 1.5, 1.0
    b = math.exp(gamma / alpha) - 1
    diff = torch.tensor([0.1, 0.5, 0.9, 1.5, -3.0, -0.4], dtype=torch.float64)
    pred = diff.clone().requires_grad_(True)
    BalancedL1Loss(reduction="sum")(pred, torch.zeros(6, dtype=torch.float64)).backward()
    expected = [math.copysign(alpha * math.log(b * abs(x) / beta + 1) if abs(x) < beta else gamma,
                              x) for x in diff.tolist()]
    torch.testing.assert_close(pred.grad, torch.tensor(expected, dtype=torch.float64))


def test_balanced_l1_empty_and_errors():
    empty = torch.zeros(0, 4, requires_grad=True)
    out = BalancedL1Loss()(empty, torch.zeros(0, 4), torch.zeros(0, 4), avg_factor=0)
    assert out.item() == 0 and out.requires_grad
    with pytest.raises(ConfigError, match="beta"):
        BalancedL1Loss(beta=0)
    with pytest.raises(ValueError, match="same shape"):
        balanced_l1_loss(torch.zeros(2, 4), torch.zeros(3, 4))


@pytest.mark.parametrize("reduction, avg_factor", REDUCTIONS)
def test_mse_is_torchs(reduction, avg_factor):
    pred, target, weight = _case(1)
    loss = MSELoss(loss_weight=0.5)
    elements = F.mse_loss(pred, target, reduction="none") * weight
    torch.testing.assert_close(loss(pred, target, weight, avg_factor=avg_factor,
                                    reduction_override=reduction),
                               0.5 * _reduce(elements, reduction, avg_factor))
    if avg_factor is None and reduction != "none":
        torch.testing.assert_close(mse_loss(pred, target, reduction=reduction),
                                   F.mse_loss(pred, target, reduction=reduction))
