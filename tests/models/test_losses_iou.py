"""The IoU family against the papers' formulas written out box by box, and against torchvision's
box IoU, GIoU, DIoU and CIoU where MMDetection's definitions agree with them."""

import math

import pytest
import torch
from torchvision.ops import (
    box_iou,
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou,
    generalized_box_iou_loss,
)

from detlab.config import ConfigError
from detlab.models.losses import (
    BoundedIoULoss,
    CIoULoss,
    DIoULoss,
    GIoULoss,
    IoULoss,
    aligned_bbox_overlaps,
)

EPS = torch.finfo(torch.float32).eps
N = 40


def _pairs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, target) xyxy boxes from nearly equal to disjoint, IoUs on both sides of 0.5."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(N, 2, generator=gen, dtype=torch.float64) * 40
    target = torch.cat([xy, xy + torch.rand(N, 2, generator=gen, dtype=torch.float64) * 30 + 2],
                       dim=1)
    shift = torch.randn(N, 4, generator=gen, dtype=torch.float64)
    pred = target + shift * torch.linspace(0.05, 12, N, dtype=torch.float64)[:, None]
    # keep x1 < x2, y1 < y2
    pred = torch.cat([torch.min(pred[:, :2], pred[:, 2:] - 0.5), pred[:, 2:]], dim=1)
    return pred, target


def _geometry(p, t):
    """Per pair: IoU, area of the enclosing box, squared centre distance, squared diagonal of
    the enclosing box -- written out from the definitions."""
    inter_w = max(0.0, min(p[2], t[2]) - max(p[0], t[0]))
    inter_h = max(0.0, min(p[3], t[3]) - max(p[1], t[1]))
    inter = inter_w * inter_h
    union = (p[2] - p[0]) * (p[3] - p[1]) + (t[2] - t[0]) * (t[3] - t[1]) - inter
    cw, ch = max(p[2], t[2]) - min(p[0], t[0]), max(p[3], t[3]) - min(p[1], t[1])
    dx, dy = (p[0] + p[2]) / 2 - (t[0] + t[2]) / 2, (p[1] + p[3]) / 2 - (t[1] + t[3]) / 2
    rho2 = dx**2 + dy**2
    return inter / union, union, cw * ch, rho2, cw**2 + ch**2


def _reference(pred, target, kind: str) -> torch.Tensor:
    rows = []
    for p, t in zip(pred.tolist(), target.tolist(), strict=True):
        iou, union, enclose, rho2, c2 = _geometry(p, t)
        if kind == "log":
            rows.append(-math.log(max(iou, 1e-6)))
        elif kind == "linear":
            rows.append(1 - iou)
        elif kind == "square":
            rows.append(1 - iou**2)
        elif kind == "giou":  # Rezatofighi et al.: IoU - |C \ (A u B)| / |C|
            rows.append(1 - (iou - (enclose - union) / enclose))
        elif kind == "diou":  # Zheng et al. 2020: 1 - IoU + rho^2 / c^2
            rows.append(1 - iou + rho2 / c2)
        else:  # CIoU: + alpha v, alpha = v / (1 - IoU + v); MMDetection: only where IoU > 0.5
            v = 4 / math.pi**2 * (math.atan((t[2] - t[0]) / (t[3] - t[1]))
                                  - math.atan((p[2] - p[0]) / (p[3] - p[1]))) ** 2
            alpha = v / (1 - iou + v) if iou > 0.5 else 0.0
            rows.append(1 - min(1.0, max(-1.0, iou - rho2 / c2 - alpha * v)))
    return torch.tensor(rows, dtype=torch.float64)


CASES = [(IoULoss, {}, "log"), (IoULoss, dict(mode="linear"), "linear"),
         (IoULoss, dict(linear=True), "linear"), (IoULoss, dict(mode="square"), "square"),
         (GIoULoss, {}, "giou"), (DIoULoss, {}, "diou"), (CIoULoss, {}, "ciou")]


@pytest.mark.filterwarnings("ignore:IoULoss\\(linear=True\\) is deprecated")
@pytest.mark.parametrize("cls, cfg, kind", CASES)
def test_values_are_the_papers_formulas(cls, cfg, kind):
    pred, target = _pairs()
    expected = _reference(pred, target, kind)
    loss = cls(**cfg, loss_weight=2.0)
    torch.testing.assert_close(loss(pred, target, reduction_override="none"), 2.0 * expected,
                               rtol=1e-6, atol=1e-6)
    weight = torch.rand(N, dtype=torch.float64)
    torch.testing.assert_close(loss(pred, target, weight), 2.0 * (expected * weight).mean(),
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss(pred, target, weight, avg_factor=7.0),
                               2.0 * (expected * weight).sum() / (7.0 + EPS), rtol=1e-6,
                               atol=1e-6)
    torch.testing.assert_close(loss(pred, target, weight, reduction_override="sum"),
                               2.0 * (expected * weight).sum(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls", [IoULoss, GIoULoss, DIoULoss, CIoULoss])
def test_coordinate_weights_are_averaged_per_box(cls):
    pred, target = _pairs(1)
    weight = torch.rand(N, 4, dtype=torch.float64)
    loss = cls(reduction="sum")
    torch.testing.assert_close(loss(pred, target, weight), loss(pred, target, weight.mean(-1)))
    with pytest.raises(ValueError, match="weight"):
        loss(pred, target, torch.ones(N, 3, dtype=torch.float64))


def test_aligned_overlaps_are_torchvisions_diagonal():
    pred, target = _pairs(2)
    torch.testing.assert_close(aligned_bbox_overlaps(pred, target),
                               box_iou(pred, target).diagonal())
    torch.testing.assert_close(aligned_bbox_overlaps(pred, target, mode="giou"),
                               generalized_box_iou(pred, target).diagonal())
    batched = aligned_bbox_overlaps(torch.stack([pred, target]), torch.stack([target, pred]))
    torch.testing.assert_close(batched[0], batched[1])  # (B, N, 4) boxes; IoU is symmetric


def test_giou_and_diou_match_torchvision():
    pred, target = _pairs(3)
    torch.testing.assert_close(GIoULoss(reduction="none")(pred, target),
                               generalized_box_iou_loss(pred, target), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(DIoULoss(reduction="none")(pred, target),
                               distance_box_iou_loss(pred, target), rtol=1e-6, atol=1e-6)


def test_ciou_is_torchvisions_above_iou_half_and_diou_below():
    """MMDetection drops CIoU's aspect-ratio term where IoU <= 0.5; torchvision keeps it."""
    pred, target = _pairs(4)
    iou = box_iou(pred, target).diagonal()
    assert (iou > 0.5).sum() >= 5 and (iou <= 0.5).sum() >= 5
    ours = CIoULoss(reduction="none")(pred, target)
    high = iou > 0.5
    torch.testing.assert_close(ours[high], complete_box_iou_loss(pred, target)[high],
                               rtol=1e-6, atol=1e-6)
    low = ~high & (distance_box_iou_loss(pred, target) < 2)  # and CIoU's clamp inactive
    torch.testing.assert_close(ours[low], distance_box_iou_loss(pred, target)[low],
                               rtol=1e-6, atol=1e-6)


def _bounded_reference(pred, target, beta=0.2):
    """Tychsen-Smith & Petersson: 1 - the IoU bound of each centre offset and size, through a
    smooth L1 of width beta."""
    rows = []
    for p, t in zip(pred.tolist(), target.tolist(), strict=True):
        wp, hp, wt, ht = p[2] - p[0], p[3] - p[1], t[2] - t[0], t[3] - t[1]
        dx = abs((t[0] + t[2]) / 2 - (p[0] + p[2]) / 2)
        dy = abs((t[1] + t[3]) / 2 - (p[1] + p[3]) / 2)
        terms = [1 - max(0.0, (wt - 2 * dx) / (wt + 2 * dx)),
                 1 - max(0.0, (ht - 2 * dy) / (ht + 2 * dy)),
                 1 - min(wt / wp, wp / wt), 1 - min(ht / hp, hp / ht)]
        rows.append([0.5 * x * x / beta if x < beta else x - 0.5 * beta for x in terms])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("beta", [0.2, 0.5])
def test_bounded_iou_is_the_papers_formula(beta):
    pred, target = _pairs(5)
    loss = BoundedIoULoss(beta=beta, eps=1e-9)
    expected = _bounded_reference(pred, target, beta)
    torch.testing.assert_close(loss(pred, target, reduction_override="none"), expected,
                               rtol=1e-6, atol=1e-6)
    weight = (torch.rand(N, 4) > 0.5).double()
    torch.testing.assert_close(loss(pred, target, weight, avg_factor=5.0),
                               (expected * weight).sum() / (5.0 + EPS), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss(pred, target, weight[:, 0]),
                               (expected * weight[:, :1]).mean(), rtol=1e-6, atol=1e-6)


def test_bounded_iou_sends_no_gradient_to_the_target():
    pred, target = _pairs(6)
    pred.requires_grad_(True)
    target.requires_grad_(True)
    BoundedIoULoss()(pred, target).backward()
    assert target.grad is None and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("cls", [IoULoss, GIoULoss, DIoULoss, CIoULoss, BoundedIoULoss])
def test_no_positive_weight_gives_an_exact_connected_zero(cls):
    pred, target = _pairs(7)
    pred.requires_grad_(True)
    for weight in (torch.zeros(N, dtype=torch.float64), torch.zeros(N, 4, dtype=torch.float64)):
        out = cls()(pred, target, weight, avg_factor=1.0)
        assert out.item() == 0 and out.requires_grad
        out.backward()
        assert (pred.grad == 0).all()
    if cls is IoULoss:  # IoULoss keeps the element-wise shape for 'none'
        out = cls()(pred, target, torch.zeros(N, dtype=torch.float64), reduction_override="none")
        assert out.shape == (N,) and (out == 0).all()


@pytest.mark.parametrize("cls", [IoULoss, GIoULoss, DIoULoss, CIoULoss, BoundedIoULoss])
def test_gradients_stay_finite_on_degenerate_boxes(cls):
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 6)
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0],     # identical
                         [20.0, 20.0, 30.0, 40.0],   # disjoint
                         [2.0, 2.0, 5.0, 5.0],       # inside
                         [3.0, 3.0, 3.0, 8.0],       # zero width
                         [4.0, 4.0, 4.0, 4.0],       # a point
                         [-5.0, -5.0, 15.0, 15.0]],  # around
                        requires_grad=True)
    out = cls(reduction="none")(pred, target)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(pred.grad).all()
    if cls is not BoundedIoULoss:
        assert out[0].abs().item() < 1e-5  # a perfect box costs nothing


def test_configuration_errors():
    with pytest.raises(ConfigError, match="mode"):
        IoULoss(mode="cubic")
    with pytest.warns(DeprecationWarning, match="linear"):
        assert IoULoss(linear=True).mode == "linear"
    with pytest.raises(ValueError, match="same"):
        GIoULoss()(torch.zeros(3, 4), torch.zeros(2, 4))
