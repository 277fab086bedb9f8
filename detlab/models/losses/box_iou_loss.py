"""Box regression losses on decoded, aligned ``xyxy`` boxes: IoU, bounded IoU, GIoU, DIoU, CIoU.

torchvision's ``generalized_box_iou_loss`` / ``distance_box_iou_loss`` / ``complete_box_iou_loss``
differ from MMDetection's in where ``eps`` enters (added vs. floored unions, the height's ``eps``
in CIoU) and, for CIoU, in MMDetection's ``alpha`` being 0 where ``IoU <= 0.5`` and in its clamp
of the CIoU to ``[-1, 1]``; these are MMDetection's formulas, so that trained models and logged
losses compare.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from detlab.config import ConfigError
from detlab.models.losses.utils import WeightedLoss, weighted_loss
from detlab.registry import MODELS

IOU_MODES = ("linear", "square", "log")


def aligned_bbox_overlaps(bboxes1: torch.Tensor, bboxes2: torch.Tensor, mode: str = "iou",
                          eps: float = 1e-6) -> torch.Tensor:
    """IoU or GIoU of ``bboxes1[i]`` with ``bboxes2[i]``, both ``(..., N, 4)`` ``xyxy`` ->
    ``(..., N)``; unions and enclosing areas are floored at ``eps`` (MMDetection's
    ``bbox_overlaps(..., is_aligned=True)``)."""
    if mode not in ("iou", "giou"):
        raise ValueError(f"aligned overlap mode must be 'iou' or 'giou', got {mode!r}")
    area1 = (bboxes1[..., 2] - bboxes1[..., 0]) * (bboxes1[..., 3] - bboxes1[..., 1])
    area2 = (bboxes2[..., 2] - bboxes2[..., 0]) * (bboxes2[..., 3] - bboxes2[..., 1])
    lt = torch.max(bboxes1[..., :2], bboxes2[..., :2])
    rb = torch.min(bboxes1[..., 2:], bboxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    floor = area1.new_tensor([eps])
    union = torch.max(area1 + area2 - overlap, floor)
    ious = overlap / union
    if mode == "iou":
        return ious
    enclose_wh = (torch.max(bboxes1[..., 2:], bboxes2[..., 2:])
                  - torch.min(bboxes1[..., :2], bboxes2[..., :2])).clamp(min=0)
    enclose_area = torch.max(enclose_wh[..., 0] * enclose_wh[..., 1], floor)
    return ious - (enclose_area - union) / enclose_area


@weighted_loss
def iou_loss(pred: torch.Tensor, target: torch.Tensor, linear: bool = False, mode: str = "log",
             eps: float = 1e-6) -> torch.Tensor:
    """``(N,)`` loss of aligned ``(N, 4)`` xyxy boxes: ``-log(IoU)``, ``1 - IoU`` (``linear``)
    or ``1 - IoU**2`` (``square``), the IoU clamped below at ``eps``."""
    if mode not in IOU_MODES:
        raise ValueError(f"IoU loss mode must be one of {IOU_MODES}, got {mode!r}")
    if linear:
        mode = "linear"
    ious = aligned_bbox_overlaps(pred, target).clamp(min=eps)
    if mode == "linear":
        return 1 - ious
    if mode == "square":
        return 1 - ious**2
    return -ious.log()


@weighted_loss
def bounded_iou_loss(pred: torch.Tensor, target: torch.Tensor, beta: float = 0.2,
                     eps: float = 1e-3) -> torch.Tensor:
    """``(N, 4)`` bounded IoU loss (Tychsen-Smith & Petersson, 2018) of aligned xyxy boxes: the
    IoU bound of each centre offset and size ratio, through a smooth L1 of width ``beta``."""
    pred_ctr = (pred[:, :2] + pred[:, 2:]) * 0.5  # (N, 2): x, y
    pred_wh = pred[:, 2:] - pred[:, :2]
    with torch.no_grad():
        target_ctr = (target[:, :2] + target[:, 2:]) * 0.5
        target_wh = target[:, 2:] - target[:, :2]
    d = (target_ctr - pred_ctr).abs()
    loss_dxy = 1 - torch.max((target_wh - 2 * d) / (target_wh + 2 * d + eps), torch.zeros_like(d))
    loss_dwh = 1 - torch.min(target_wh / (pred_wh + eps), pred_wh / (target_wh + eps))
    loss = torch.cat([loss_dxy, loss_dwh], dim=-1)  # (N, 4): dx, dy, dw, dh
    return torch.where(loss < beta, 0.5 * loss * loss / beta, loss - 0.5 * beta)


@weighted_loss
def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``(N,)`` ``1 - GIoU`` (Rezatofighi et al., 2019) of aligned xyxy boxes."""
    return 1 - aligned_bbox_overlaps(pred, target, mode="giou", eps=eps)


def _iou_and_centre_penalty(pred: torch.Tensor, target: torch.Tensor,
                            eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU (``eps`` added to the union) and squared centre distance over the squared diagonal of
    the enclosing box (``eps`` added), both ``(N,)``."""
    wh = (torch.min(pred[:, 2:], target[:, 2:]) - torch.max(pred[:, :2], target[:, :2]))
    wh = wh.clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_t = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    ious = overlap / (area_p + area_t - overlap + eps)
    enclose_wh = (torch.max(pred[:, 2:], target[:, 2:])
                  - torch.min(pred[:, :2], target[:, :2])).clamp(min=0)
    c2 = enclose_wh[:, 0] ** 2 + enclose_wh[:, 1] ** 2 + eps
    left = ((target[:, 0] + target[:, 2]) - (pred[:, 0] + pred[:, 2])) ** 2 / 4
    right = ((target[:, 1] + target[:, 3]) - (pred[:, 1] + pred[:, 3])) ** 2 / 4
    return ious, (left + right) / c2


@weighted_loss
def diou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``(N,)`` ``1 - DIoU`` (Zheng et al., 2020) of aligned xyxy boxes."""
    ious, centre_penalty = _iou_and_centre_penalty(pred, target, eps)
    return 1 - (ious - centre_penalty)


@weighted_loss
def ciou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``(N,)`` ``1 - CIoU`` (Zheng et al., 2021) of aligned xyxy boxes; the aspect-ratio term
    counts only where ``IoU > 0.5`` and the CIoU is clamped to ``[-1, 1]`` (MMDetection).

    A perfect box (IoU rounding to 1, same aspect ratio) has an aspect-ratio term of 0 here, where
    MMDetection's ``0 / 0`` makes its loss and gradient NaN.
    """
    ious, centre_penalty = _iou_and_centre_penalty(pred, target, eps)
    w1, h1 = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1] + eps
    w2, h2 = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1] + eps
    v = (4 / math.pi**2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        denominator = 1 - ious + v
        alpha = (ious > 0.5).float() * v / denominator
        alpha = torch.where(denominator > 0, alpha, torch.zeros_like(alpha))
    cious = ious - (centre_penalty + alpha * v)
    return 1 - cious.clamp(min=-1.0, max=1.0)


def zero_loss_of_unweighted(pred: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor | None:
    """``(pred * weight).sum()`` -- an exact 0 that still depends on ``pred`` -- when no
    ``weight`` is positive (no box to regress), else None."""
    if weight is None or bool((weight > 0).any()):
        return None
    if pred.dim() == weight.dim() + 1:
        weight = weight.unsqueeze(1)
    return (pred * weight).sum()


def box_weight(weight: torch.Tensor | None, pred: torch.Tensor, name: str) -> torch.Tensor | None:
    """A ``(N, 4)`` weight averaged over the coordinates to fit a ``(N,)`` loss."""
    if weight is None or weight.dim() <= 1:
        return weight
    if weight.shape != pred.shape:
        raise ValueError(f"{name} weight must be (N,) or of pred's shape {tuple(pred.shape)}, "
                         f"got {tuple(weight.shape)}")
    return weight.mean(-1)


def _check_box_shapes(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape or (pred.numel() > 0 and pred.shape[-1] != 4):
        raise ValueError(f"{name} needs pred and target boxes of the same (N, 4) shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")


def _enclosing_family_loss(module: WeightedLoss, loss_fn: Callable, pred: torch.Tensor,
                           target: torch.Tensor, weight: torch.Tensor | None,
                           avg_factor: float | torch.Tensor | None,
                           reduction_override: str | None) -> torch.Tensor:
    """The forward the GIoU, DIoU and CIoU losses share: an exact 0 without a positive weight,
    else ``loss_fn(pred, target, eps)`` per box, weighted and reduced."""
    zero = zero_loss_of_unweighted(pred, weight)
    if zero is not None:
        return zero
    name = type(module).__name__
    _check_box_shapes(pred, target, name)
    loss = loss_fn(pred, target, eps=module.eps, reduction="none")
    return module.reduce(loss, box_weight(weight, pred, name), avg_factor, reduction_override)


@MODELS.register_module()
class GIoULoss(WeightedLoss):
    """``1 - GIoU(pred, target)`` of aligned xyxy boxes.

    Args:
        eps: floor of the unions and enclosing areas.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of the loss.
    """

    def __init__(self, eps: float = 1e-6, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        self.eps = float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """``pred``, ``target``: ``(N, 4)`` xyxy; ``weight``: ``(N,)`` or ``(N, 4)`` (averaged
        over the coordinates). Without a positive weight the loss is an exact 0 connected to
        ``pred``, whatever the reduction."""
        return _enclosing_family_loss(self, giou_loss, pred, target, weight, avg_factor,
                                      reduction_override)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, {super().extra_repr()}"


@MODELS.register_module()
class DIoULoss(WeightedLoss):
    """``1 - DIoU(pred, target)``: ``1 - IoU`` plus the squared distance of the centres over the
    squared diagonal of the enclosing box.

    Args:
        eps: added to the union and to the squared diagonal.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of the loss.
    """

    def __init__(self, eps: float = 1e-6, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        self.eps = float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """As :meth:`GIoULoss.forward`."""
        return _enclosing_family_loss(self, diou_loss, pred, target, weight, avg_factor,
                                      reduction_override)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, {super().extra_repr()}"


@MODELS.register_module()
class CIoULoss(WeightedLoss):
    """``1 - CIoU(pred, target)``: DIoU's loss plus an aspect-ratio term where ``IoU > 0.5``.

    Args:
        eps: added to the union, the squared diagonal and the heights.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of the loss.
    """

    def __init__(self, eps: float = 1e-6, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        self.eps = float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """As :meth:`GIoULoss.forward`."""
        return _enclosing_family_loss(self, ciou_loss, pred, target, weight, avg_factor,
                                      reduction_override)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, {super().extra_repr()}"


@MODELS.register_module()
class IoULoss(WeightedLoss):
    """IoU loss of aligned xyxy boxes: ``-log(IoU)`` (``mode='log'``), ``1 - IoU``
    (``'linear'``) or ``1 - IoU**2`` (``'square'``).

    Args:
        linear: deprecated spelling of ``mode='linear'``.
        eps: the IoU's lower clamp (keeps the log finite).
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of the loss.
        mode: ``'log'``, ``'linear'`` or ``'square'``.
    """

    def __init__(self, linear: bool = False, eps: float = 1e-6, reduction: str = "mean",
                 loss_weight: float = 1.0, mode: str = "log") -> None:
        super().__init__(reduction, loss_weight)
        if mode not in IOU_MODES:
            raise ConfigError(f"IoULoss mode must be one of {IOU_MODES}, got {mode!r}")
        if linear:
            mode = "linear"
            warnings.warn("IoULoss(linear=True) is deprecated: use mode='linear'",
                          DeprecationWarning, stacklevel=2)
        self.mode, self.linear, self.eps = mode, linear, float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """``pred``, ``target``: ``(N, 4)`` xyxy; ``weight``: ``(N,)`` or ``(N, 4)`` (averaged
        over the coordinates). Without a positive weight, and unless the reduction is
        ``'none'``, the loss is an exact 0 connected to ``pred``."""
        reduction = self.resolve_reduction(reduction_override)
        zero = zero_loss_of_unweighted(pred, weight) if reduction != "none" else None
        if zero is not None:
            return zero
        _check_box_shapes(pred, target, "IoULoss")
        weight = box_weight(weight, pred, "IoULoss")
        loss = iou_loss(pred, target, mode=self.mode, eps=self.eps, reduction="none")
        return self.reduce(loss, weight, avg_factor, reduction)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, eps={self.eps}, {super().extra_repr()}"


@MODELS.register_module()
class BoundedIoULoss(WeightedLoss):
    """Bounded IoU loss (Tychsen-Smith & Petersson, 2018), per coordinate ``(N, 4)``.

    Args:
        beta: width of the smooth L1's quadratic part.
        eps: keeps the ratios finite.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of the loss.
    """

    def __init__(self, beta: float = 0.2, eps: float = 1e-3, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        self.beta, self.eps = float(beta), float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """``pred``, ``target``: ``(N, 4)`` xyxy (no gradient flows into ``target``);
        ``weight``: ``(N, 4)``, or ``(N,)`` for all 4 coordinates of a box (where
        MMDetection's broadcast fails). Without a positive weight the loss is an exact 0
        connected to ``pred``."""
        zero = zero_loss_of_unweighted(pred, weight)
        if zero is not None:
            return zero
        _check_box_shapes(pred, target, "BoundedIoULoss")
        if weight is not None and weight.dim() == pred.dim() - 1:
            weight = weight.unsqueeze(-1)
        loss = bounded_iou_loss(pred, target, beta=self.beta, eps=self.eps, reduction="none")
        return self.reduce(loss, weight, avg_factor, reduction_override)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, eps={self.eps}, {super().extra_repr()}"
