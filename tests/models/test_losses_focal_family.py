"""Quality focal, distribution focal (GFL), varifocal (VFNet) and Gaussian focal (CenterNet)
losses against their papers' formulas written out element by element, and against torch /
torchvision where a special case coincides with them."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from detlab.config import ConfigError
from detlab.models.losses import (
    DistributionFocalLoss,
    GaussianFocalLoss,
    QualityFocalLoss,
    VarifocalLoss,
)

EPS = torch.finfo(torch.float32).eps
N, C = 9, 4
# every reduction, with and without an avg_factor ('sum' with one is an error)
REDUCTIONS = [("mean", None), ("sum", None), ("none", None), ("mean", 3.0), ("none", 3.0)]


def _reduce(elements, reduction, avg_factor=None):
    if reduction == "none":
        return elements
    if reduction == "sum":
        return elements.sum()
    return elements.sum() / (elements.numel() if avg_factor is None else avg_factor + EPS)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- quality focal loss ----------------------------------------------------------------------

def _qfl_reference(logits, labels, scores, beta):
    """Li et al. 2020, eq. 5: ``-|y - s|**beta ((1 - y) log(1 - s) + y log s)`` per class, the
    soft target y being the quality score for the labelled class and 0 elsewhere; summed over the
    classes."""
    rows = []
    for x_row, label, score in zip(logits.tolist(), labels.tolist(), scores.tolist(),
                                   strict=True):
        total = 0.0
        for c, x in enumerate(x_row):
            s, y = _sigmoid(x), (score if c == label else 0.0)
            total += -abs(y - s) ** beta * ((1 - y) * math.log(1 - s) + y * math.log(s))
        rows.append(total)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.fixture
def qfl_case():
    gen = _gen(0)
    logits = torch.randn(N, C, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, C + 1, (N,), generator=gen)  # C = background
    labels[0], labels[1] = C, 2
    scores = torch.rand(N, generator=gen, dtype=torch.float64)
    return logits, labels, scores, torch.rand(N, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("reduction, avg_factor", REDUCTIONS)
@pytest.mark.parametrize("beta", [2.0, 1.5])
def test_quality_focal_loss_is_the_papers_formula(qfl_case, reduction, avg_factor, beta):
    logits, labels, scores, weight = qfl_case
    expected = _reduce(_qfl_reference(logits, labels, scores, beta) * weight, reduction,
                       avg_factor)
    loss = QualityFocalLoss(beta=beta, loss_weight=0.5)
    out = loss(logits, (labels, scores), weight, avg_factor=avg_factor,
               reduction_override=reduction)
    torch.testing.assert_close(out, 0.5 * expected)
    activated = QualityFocalLoss(beta=beta, activated=True, loss_weight=0.5)
    out = activated(logits.sigmoid(), (labels, scores), weight, avg_factor=avg_factor,
                    reduction_override=reduction)
    torch.testing.assert_close(out, 0.5 * expected)


def test_quality_focal_loss_with_quality_one_is_torchvisions_focal_loss(qfl_case):
    """With every quality score 1 the soft targets are one-hot and QFL is the focal loss without
    alpha (torchvision's alpha < 0)."""
    logits, labels, _, _ = qfl_case
    one_hot = F.one_hot(labels, C + 1)[:, :C].double()
    reference = sigmoid_focal_loss(logits, one_hot, alpha=-1, gamma=2.0, reduction="none")
    out = QualityFocalLoss(reduction="none")(logits, (labels, torch.ones(N, dtype=torch.float64)))
    torch.testing.assert_close(out, reference.sum(1))


def test_quality_focal_loss_gradients_are_finite(qfl_case):
    logits, labels, scores, _ = qfl_case
    logits = logits.clone().requires_grad_(True)
    QualityFocalLoss()(logits, (labels, scores), avg_factor=3).backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="pair"):
        QualityFocalLoss()(logits, (labels,))
    with pytest.raises(ConfigError, match="use_sigmoid"):
        QualityFocalLoss(use_sigmoid=False)


# ---- distribution focal loss -----------------------------------------------------------------

def test_distribution_focal_loss_is_the_papers_formula_and_soft_cross_entropy():
    gen = _gen(1)
    logits = torch.randn(N, 17, generator=gen, dtype=torch.float64)
    target = torch.rand(N, generator=gen, dtype=torch.float64) * 15.99
    target[0] = 3.0  # on a bin: all the weight on the left one
    weight = torch.rand(N, generator=gen, dtype=torch.float64)
    rows = []  # Li et al. 2020, eq. 6: -((y_r - y) log S_l + (y - y_l) log S_r)
    for x_row, y in zip(logits.tolist(), target.tolist(), strict=True):
        log_z = math.log(sum(math.exp(v) for v in x_row))
        left = int(y)
        rows.append(-((left + 1 - y) * (x_row[left] - log_z) + (y - left) * (x_row[left + 1]
                                                                               - log_z)))
    expected = torch.tensor(rows, dtype=torch.float64)
    loss = DistributionFocalLoss(loss_weight=0.25)
    torch.testing.assert_close(loss(logits, target, reduction_override="none"), 0.25 * expected)
    torch.testing.assert_close(loss(logits, target, weight, avg_factor=4.0),
                               0.25 * (expected * weight).sum() / (4.0 + EPS))
    # the same as torch's cross-entropy against the two-bin soft target
    soft = torch.zeros(N, 17, dtype=torch.float64)
    left = target.long()
    soft[torch.arange(N), left] = left + 1 - target
    soft[torch.arange(N), left + 1] = target - left
    torch.testing.assert_close(loss(logits, target, reduction_override="sum"),
                               0.25 * F.cross_entropy(logits, soft, reduction="sum"))


def test_distribution_focal_loss_rejects_a_target_on_the_last_bin():
    with pytest.raises(ValueError, match="< 16"):
        DistributionFocalLoss()(torch.randn(2, 17), torch.tensor([3.0, 16.0]))


# ---- varifocal loss --------------------------------------------------------------------------

def _vfl_reference(logits, target, alpha, gamma, iou_weighted):
    """Zhang et al. 2021, eq. 2: ``-q (q log p + (1 - q) log(1 - p))`` where q > 0,
    ``-alpha p**gamma log(1 - p)`` where q = 0 (the positive weight q is 1 without
    iou_weighted)."""
    out = torch.empty_like(logits)
    for i in range(logits.shape[0]):
        for c in range(logits.shape[1]):
            p, q = _sigmoid(logits[i, c].item()), target[i, c].item()
            if q > 0:
                out[i, c] = -(q if iou_weighted else 1.0) * (q * math.log(p)
                                                             + (1 - q) * math.log(1 - p))
            else:
                out[i, c] = -alpha * p**gamma * math.log(1 - p)
    return out


@pytest.mark.parametrize("reduction, avg_factor", REDUCTIONS)
@pytest.mark.parametrize("alpha, gamma, iou_weighted", [(0.75, 2.0, True), (0.5, 1.5, False)])
def test_varifocal_loss_is_the_papers_formula(reduction, avg_factor, alpha, gamma, iou_weighted):
    gen = _gen(2)
    logits = torch.randn(N, C, generator=gen, dtype=torch.float64) * 2
    target = torch.rand(N, C, generator=gen, dtype=torch.float64)
    target = target * (torch.rand(N, C, generator=gen) > 0.7)
    weight = torch.rand(N, C, generator=gen, dtype=torch.float64)
    expected = _reduce(_vfl_reference(logits, target, alpha, gamma, iou_weighted) * weight,
                       reduction, avg_factor)
    loss = VarifocalLoss(alpha=alpha, gamma=gamma, iou_weighted=iou_weighted, loss_weight=2.0)
    torch.testing.assert_close(loss(logits, target, weight, avg_factor=avg_factor,
                                    reduction_override=reduction), 2.0 * expected)


def test_varifocal_loss_errors():
    with pytest.raises(ConfigError, match="alpha"):
        VarifocalLoss(alpha=-0.1)
    with pytest.raises(ConfigError, match="use_sigmoid"):
        VarifocalLoss(use_sigmoid=False)
    with pytest.raises(ValueError, match="same"):
        VarifocalLoss()(torch.zeros(2, 3), torch.zeros(2, 4))


# ---- Gaussian focal loss ---------------------------------------------------------------------

@pytest.mark.parametrize("reduction, avg_factor", REDUCTIONS)
@pytest.mark.parametrize("alpha, gamma", [(2.0, 4.0), (1.5, 3.0)])
def test_gaussian_focal_loss_is_cornernets_formula(reduction, avg_factor, alpha, gamma):
    """Law & Deng 2018, eq. 1: ``-(1 - p)**alpha log p`` at the peaks (y = 1),
    ``-(1 - y)**gamma p**alpha log(1 - p)`` elsewhere."""
    gen = _gen(3)
    target = torch.rand(2, 3, 5, 5, generator=gen, dtype=torch.float64) ** 3
    target[0, 1, 2, 2] = target[1, 0, 4, 1] = 1.0
    pred = torch.rand(2, 3, 5, 5, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    weight = torch.rand(2, 3, 5, 5, generator=gen, dtype=torch.float64)
    elements = torch.where(target == 1, -(1 - pred) ** alpha * pred.log(),
                           -(1 - target) ** gamma * pred**alpha * (1 - pred).log())
    loss = GaussianFocalLoss(alpha=alpha, gamma=gamma)
    torch.testing.assert_close(loss(pred, target, weight, avg_factor=avg_factor,
                                    reduction_override=reduction),
                               _reduce(elements * weight, reduction, avg_factor))


def test_gaussian_focal_loss_is_finite_at_certain_predictions():
    pred = torch.tensor([0.0, 1.0, 1.0, 0.0], requires_grad=True)
    target = torch.tensor([0.0, 1.0, 0.5, 1.0])
    out = GaussianFocalLoss(reduction="none")(pred, target)
    assert torch.isfinite(out).all() and out[0] == 0 and out[1] == 0
    out[:3].sum().backward()
    assert torch.isfinite(pred.grad).all()
