"""Box regression losses: L1, smooth L1 (on deltas) and GIoU (on decoded xyxy boxes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from detlab.config import ConfigError
from detlab.models.losses.utils import WeightedLoss
from detlab.registry import MODELS


def _check_shapes(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name} needs pred and target of the same shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")


@MODELS.register_module()
class L1Loss(WeightedLoss):
    """``|pred - target|``, weighted and reduced.

    Args:
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of the loss.
    """

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """``pred``, ``target``, ``weight``: ``(N, 4)`` (any equal shapes)."""
        if target.numel() == 0:
            return pred.sum() * 0  # keeps the graph connected when there is nothing to regress
        _check_shapes(pred, target, "L1Loss")
        loss = F.l1_loss(pred, target, reduction="none")
        return self.reduce(loss, weight, avg_factor, reduction_override)


@MODELS.register_module()
class SmoothL1Loss(WeightedLoss):
    """Huber-like loss: ``0.5 * d**2 / beta`` for ``d < beta``, else ``d - 0.5 * beta``.

    Args:
        beta: where the loss turns from quadratic to linear (> 0).
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of the loss.
    """

    def __init__(self, beta: float = 1.0, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        if beta <= 0:
            raise ConfigError(f"SmoothL1Loss beta must be > 0, got {beta}")
        self.beta = float(beta)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """``pred``, ``target``, ``weight``: ``(N, 4)`` (any equal shapes)."""
        if target.numel() == 0:
            return pred.sum() * 0
        _check_shapes(pred, target, "SmoothL1Loss")
        loss = F.smooth_l1_loss(pred, target, reduction="none", beta=self.beta)
        return self.reduce(loss, weight, avg_factor, reduction_override)


@MODELS.register_module()
class GIoULoss(WeightedLoss):
    """``1 - GIoU(pred, target)`` of aligned xyxy boxes (torchvision's
    ``generalized_box_iou_loss``).

    Args:
        eps: keeps the divisions finite for degenerate boxes.
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
        over the 4 coordinates, as MMDetection does)."""
        if weight is not None and not bool((weight > 0).any()):
            # nothing to regress: an exact zero that still depends on pred
            return (pred * (weight[..., None] if weight.dim() < pred.dim() else weight)).sum()
        _check_shapes(pred, target, "GIoULoss")
        if weight is not None and weight.dim() > 1:
            weight = weight.mean(-1)
        loss = generalized_box_iou_loss(pred, target, reduction="none", eps=self.eps)
        return self.reduce(loss, weight, avg_factor, reduction_override)
