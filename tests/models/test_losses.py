"""Losses against torchvision / torch references, and MMDetection's weighting and reduction."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from detlab.config import ConfigError
from detlab.models import FocalLoss, GIoULoss, L1Loss, SmoothL1Loss
from detlab.models.losses import weight_reduce_loss

EPS = torch.finfo(torch.float32).eps


def _boxes(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 50
    return torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * 30 + 1], dim=1)


def test_weight_reduce_loss():
    loss = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    weight = torch.tensor([[1.0], [0.0]])
    assert weight_reduce_loss(loss, weight, "sum") == 3.0
    assert weight_reduce_loss(loss, weight, "mean") == 0.75
    torch.testing.assert_close(weight_reduce_loss(loss, weight, "none"),
                               torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
    torch.testing.assert_close(weight_reduce_loss(loss, weight, "mean", avg_factor=2),
                               torch.tensor(3.0 / (2 + EPS)))
    assert torch.isfinite(weight_reduce_loss(loss, None, "mean", avg_factor=0))
    with pytest.raises(ValueError, match="avg_factor"):
        weight_reduce_loss(loss, weight, "sum", avg_factor=2)


def test_focal_loss_matches_torchvision():
    torch.manual_seed(0)
    logits = torch.randn(30, 4)
    labels = torch.randint(0, 5, (30,))  # 4 = background
    weights = (torch.rand(30) > 0.2).float()
    one_hot = F.one_hot(labels, 5)[:, :4].float()
    reference = sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0, reduction="none")
    loss = FocalLoss(loss_weight=2.0)
    expected = 2.0 * (reference * weights[:, None]).sum() / (7 + EPS)
    torch.testing.assert_close(loss(logits, labels, weights, avg_factor=7), expected)
    torch.testing.assert_close(loss(logits, labels), 2.0 * reference.mean())
    torch.testing.assert_close(loss(logits, one_hot, reduction_override="sum"),
                               2.0 * reference.sum())
    probs = FocalLoss(activated=True)(logits.sigmoid(), labels, reduction_override="none")
    torch.testing.assert_close(probs, reference, atol=1e-5, rtol=1e-4)


def test_focal_loss_configuration_errors():
    with pytest.raises(ConfigError, match="use_sigmoid"):
        FocalLoss(use_sigmoid=False)
    with pytest.raises(ConfigError, match="reduction"):
        FocalLoss(reduction="average")


@pytest.mark.parametrize("cls, reference", [
    (L1Loss, lambda p, t: F.l1_loss(p, t, reduction="none")),
    (SmoothL1Loss, lambda p, t: F.smooth_l1_loss(p, t, reduction="none", beta=1.0)),
])
def test_l1_type_losses(cls, reference):
    torch.manual_seed(0)
    pred, target = torch.randn(10, 4) * 2, torch.randn(10, 4)
    weight = torch.zeros(10, 4)
    weight[:3] = 1
    loss = cls(loss_weight=0.5)
    expected = reference(pred, target)
    torch.testing.assert_close(loss(pred, target), 0.5 * expected.mean())
    torch.testing.assert_close(loss(pred, target, weight, avg_factor=3),
                               0.5 * expected[:3].sum() / (3 + EPS))
    empty = torch.zeros(0, 4, requires_grad=True)
    out = loss(empty, torch.zeros(0, 4))
    assert out.item() == 0 and out.requires_grad


def test_smooth_l1_beta():
    pred, target = torch.tensor([0.05, 2.0]), torch.zeros(2)
    loss = SmoothL1Loss(beta=0.1, reduction="none")(pred, target)
    torch.testing.assert_close(loss, torch.tensor([0.5 * 0.05**2 / 0.1, 2.0 - 0.05]))
    with pytest.raises(ConfigError, match="beta"):
        SmoothL1Loss(beta=0)


def test_giou_loss_matches_torchvision():
    pred, target = _boxes(20, 0), _boxes(20, 1)
    reference = generalized_box_iou_loss(pred, target, reduction="none", eps=1e-6)
    loss = GIoULoss(loss_weight=2.0)
    torch.testing.assert_close(loss(pred, target), 2.0 * reference.mean())
    weight = torch.zeros(20, 4)
    weight[:5] = 1.0
    torch.testing.assert_close(loss(pred, target, weight, avg_factor=5),
                               2.0 * reference[:5].sum() / (5 + EPS))
    pred.requires_grad_(True)
    zero = loss(pred, target, torch.zeros(20, 4), avg_factor=1)
    assert zero.item() == 0.0
    zero.backward()
    assert torch.all(pred.grad == 0)
    same = loss(target, target, reduction_override="none")
    torch.testing.assert_close(same, torch.zeros(20), atol=1e-5, rtol=0)
