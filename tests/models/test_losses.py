"""Losses against torchvision / torch references; MMDetection's weighting and reduction, its
``weighted_loss`` decorator and its tutorial's custom loss; every registered loss on empty and
random inputs. (Each loss against MMDetection's own code: ``test_losses_mmdet.py``.)"""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from detlab.config import ConfigError
from detlab.models import FocalLoss, GIoULoss, L1Loss, SmoothL1Loss
from detlab.models import losses as detlab_losses
from detlab.models.losses import reduce_loss, weight_reduce_loss, weighted_loss
from detlab.registry import MODELS

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


def test_reduce_loss_of_nothing_is_zero_not_nan():
    empty = torch.zeros(0, 4, requires_grad=True)
    mean = reduce_loss(empty, "mean")
    assert mean.item() == 0 and mean.requires_grad
    assert weight_reduce_loss(empty, torch.zeros(0, 4), "mean").item() == 0
    with pytest.raises(ValueError, match="reduction"):
        reduce_loss(empty, "avg")


def test_weighted_loss_gives_the_documented_values():
    """The values of MMDetection's ``weighted_loss`` docstring example."""

    @weighted_loss
    def l1(pred, target):
        return (pred - target).abs()

    pred, target = torch.tensor([0.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 1.0])
    weight = torch.tensor([1.0, 0.0, 1.0])
    torch.testing.assert_close(l1(pred, target), torch.tensor(4 / 3))
    torch.testing.assert_close(l1(pred, target, weight), torch.tensor(1.0))
    torch.testing.assert_close(l1(pred, target, reduction="none"), torch.tensor([1.0, 1.0, 2.0]))
    torch.testing.assert_close(l1(pred, target, weight, avg_factor=2), torch.tensor(1.5))
    assert l1.__name__ == "l1"  # functools.wraps: logs and reprs name the loss, not the wrapper


def test_the_mmdetection_tutorial_loss_works_with_only_its_imports_changed(monkeypatch):
    monkeypatch.setattr(MODELS, "_modules", MODELS.module_dict)  # forget MyLoss afterwards

    # ---- MMDetection 2.x, docs "Customize Models" / "Add new loss", imports changed only ----
    import torch
    import torch.nn as nn

    from detlab.models.losses import weighted_loss
    from detlab.registry import LOSSES

    @weighted_loss
    def my_loss(pred, target):
        assert pred.size() == target.size() and target.numel() > 0
        loss = torch.abs(pred - target)
        return loss

    @LOSSES.register_module()
    class MyLoss(nn.Module):

        def __init__(self, reduction='mean', loss_weight=1.0):
            super(MyLoss, self).__init__()  # noqa: UP008
            self.reduction = reduction
            self.loss_weight = loss_weight

        def forward(self,
                    pred,
                    target,
                    weight=None,
                    avg_factor=None,
                    reduction_override=None):
            assert reduction_override in (None, 'none', 'mean', 'sum')
            reduction = (
                reduction_override if reduction_override else self.reduction)
            loss_bbox = self.loss_weight * my_loss(
                pred, target, weight, reduction=reduction, avg_factor=avg_factor)
            return loss_bbox
    # ---- end of the tutorial's code ----

    loss = MODELS.build(dict(type="MyLoss", loss_weight=2.0))  # as a config names it
    assert isinstance(loss, MyLoss)
    torch.manual_seed(0)
    pred, target = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4)
    weight = (torch.rand(6, 4) > 0.5).float()
    expected = 2.0 * L1Loss()(pred, target, weight, avg_factor=3)
    out = loss(pred, target, weight, avg_factor=3)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(loss(pred, target, reduction_override="none"),
                               2.0 * (pred - target).abs())
    out.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_focal_loss_takes_per_sample_per_class_and_flat_weights():
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 3), torch.randint(0, 4, (8,))
    full = torch.rand(8, 3)
    loss = FocalLoss(reduction="none")
    expected = loss(logits, labels) * full
    torch.testing.assert_close(loss(logits, labels, full), expected)
    torch.testing.assert_close(loss(logits, labels, full.flatten()), expected)
    torch.testing.assert_close(loss(logits, labels, full[:, 0]),
                               loss(logits, labels) * full[:, :1])
    with pytest.raises(ValueError, match="does not fit"):
        loss(logits, labels, torch.ones(5))


# ---- every registered loss: random inputs -> finite values and gradients; empty -> 0 ------------

def _labels(n):
    return torch.randint(0, 4, (n,))  # 3 classes, 3 = background


def _inputs(name: str, n: int):
    """(pred, target, weight) of ``n`` samples for the loss registered as ``name``."""
    scores = (torch.rand(n, 3) * (torch.rand(n, 3) > 0.6))
    heatmap = torch.rand(n, 3, 4, 4)
    table = {
        "CrossEntropyLoss": (torch.randn(n, 3), _labels(n).clamp(max=2), torch.rand(n)),
        "FocalLoss": (torch.randn(n, 3), _labels(n), torch.rand(n)),
        "QualityFocalLoss": (torch.randn(n, 3), (_labels(n), torch.rand(n)), torch.rand(n)),
        "DistributionFocalLoss": (torch.randn(n, 9), torch.rand(n) * 7.9, torch.rand(n)),
        "VarifocalLoss": (torch.randn(n, 3), scores, torch.rand(n, 3)),
        "GaussianFocalLoss": (torch.rand(n, 3, 4, 4) * 0.9 + 0.05, heatmap, None),
        "KnowledgeDistillationKLDivLoss": (torch.randn(n, 3), torch.randn(n, 3), torch.rand(n)),
        "GHMC": (torch.randn(n, 3), _labels(n), torch.ones(n)),
        "GHMR": (torch.randn(n, 4) * 0.1, torch.randn(n, 4) * 0.1, torch.ones(n, 4)),
    }
    if name in table:
        return table[name]
    if name in ("L1Loss", "SmoothL1Loss", "BalancedL1Loss", "MSELoss"):
        return torch.randn(n, 4), torch.randn(n, 4), torch.ones(n, 4)
    return _boxes(n, 0), _boxes(n, 1), torch.ones(n)  # the IoU family: xyxy boxes


REGISTERED_LOSSES = sorted(
    name for name, obj in MODELS.module_dict.items()
    if getattr(obj, "__module__", "").startswith(detlab_losses.__name__))


# SeesawLoss scores C + 2 columns and returns two losses (a dict): its own tests are in
# test_faster_rcnn.py and test_losses_mmdet.py
GENERIC_LOSSES = [name for name in REGISTERED_LOSSES if name != "SeesawLoss"]


def test_every_mmdetection_loss_asked_for_is_registered():
    assert set(REGISTERED_LOSSES) == {
        "CrossEntropyLoss", "FocalLoss", "L1Loss", "SmoothL1Loss", "IoULoss", "GIoULoss",
        "DIoULoss", "CIoULoss", "BoundedIoULoss", "QualityFocalLoss", "DistributionFocalLoss",
        "VarifocalLoss", "GaussianFocalLoss", "GHMC", "GHMR", "BalancedL1Loss", "MSELoss",
        "KnowledgeDistillationKLDivLoss", "SeesawLoss"}


def _call(loss, pred, target, weight, **kwargs):
    if isinstance(pred, torch.Tensor):
        pred = pred.requires_grad_(True)
    return loss(pred, target, weight, **kwargs), pred


@pytest.mark.parametrize("name", GENERIC_LOSSES)
def test_random_inputs_give_finite_values_and_gradients(name):
    torch.manual_seed(0)
    loss = MODELS.build(dict(type=name))
    out, pred = _call(loss, *_inputs(name, 7), avg_factor=5)
    assert out.dim() == 0 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


@pytest.mark.parametrize("avg_factor", [None, 1.0])
@pytest.mark.parametrize("name", GENERIC_LOSSES)
def test_empty_inputs_give_zero_not_nan(name, avg_factor):
    """No sample (an image without objects, a batch without positives): the loss is 0 and still
    backpropagates (zero gradients), for every reduction but 'none'."""
    pred, target, weight = _inputs(name, 0)
    loss = MODELS.build(dict(type=name))
    out, pred = _call(loss, pred, target, weight, avg_factor=avg_factor)
    assert out.numel() == 1 and out.item() == 0
    if out.requires_grad:
        out.backward()
        assert (pred.grad == 0).all()
    if avg_factor is None and name not in ("GHMC", "GHMR"):  # GHM always averages: no 'sum'
        out, _ = _call(loss, *_inputs(name, 0), reduction_override="sum")
        assert out.item() == 0
