"""Varifocal loss (VarifocalNet, Zhang et al., 2021): a BCE against IoU-aware classification
targets, positives weighted by their target and negatives down-weighted focally."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detlab.config import ConfigError
from detlab.models.losses.utils import WeightedLoss, weight_reduce_loss
from detlab.registry import MODELS


def varifocal_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                   alpha: float = 0.75, gamma: float = 2.0, iou_weighted: bool = True,
                   reduction: str = "mean",
                   avg_factor: float | torch.Tensor | None = None) -> torch.Tensor:
    """Varifocal loss of ``pred`` ``(N, C)`` logits against ``target`` ``(N, C)`` (the IoU of
    the predicted box with its object for its class, 0 elsewhere).

    Positives (``target > 0``) are weighted by ``target`` (``iou_weighted``) or 1, negatives by
    ``alpha * sigmoid(pred)**gamma``; then ``weight`` and the reduction apply.
    """
    if pred.shape != target.shape:
        raise ValueError(f"the varifocal loss needs pred and target of the same (N, C) shape, "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")
    prob = pred.sigmoid()
    target = target.type_as(pred)
    positive = (target > 0.0).float()
    negative_weight = alpha * (prob - target).abs().pow(gamma) * (target <= 0.0).float()
    focal_weight = (target * positive if iou_weighted else positive) + negative_weight
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


@MODELS.register_module()
class VarifocalLoss(WeightedLoss):
    """Varifocal loss (VFNet).

    Args:
        use_sigmoid: must be True (the sigmoid form only, as in MMDetection).
        alpha: weight of the negatives' focal term (>= 0).
        gamma: focusing parameter of the negatives.
        iou_weighted: weight the positives by their IoU target (else by 1).
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of the loss.
    """

    def __init__(self, use_sigmoid: bool = True, alpha: float = 0.75, gamma: float = 2.0,
                 iou_weighted: bool = True, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        if use_sigmoid is not True:
            raise ConfigError("VarifocalLoss supports use_sigmoid=True only")
        if alpha < 0:
            raise ConfigError(f"VarifocalLoss alpha must be >= 0, got {alpha}")
        self.use_sigmoid, self.alpha, self.gamma = True, float(alpha), float(gamma)
        self.iou_weighted = iou_weighted

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """``pred`` ``(N, C)`` logits, ``target`` ``(N, C)`` IoU targets, ``weight``
        broadcastable to ``(N, C)``."""
        reduction = self.resolve_reduction(reduction_override)
        return self.loss_weight * varifocal_loss(pred, target, weight, self.alpha, self.gamma,
                                                 self.iou_weighted, reduction, avg_factor)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, gamma={self.gamma}, iou_weighted={self.iou_weighted}, "
                f"{super().extra_repr()}")
