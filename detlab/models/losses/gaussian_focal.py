"""Gaussian focal loss (CornerNet / CenterNet): a focal loss on heatmaps whose targets are
Gaussian bumps, negatives near an object's peak down-weighted by ``(1 - target)**gamma``."""

from __future__ import annotations

import torch

from detlab.models.losses.utils import WeightedLoss, weighted_loss
from detlab.registry import MODELS

LOG_EPS = 1e-12  # keeps log(0) finite


@weighted_loss
def gaussian_focal_loss(pred: torch.Tensor, gaussian_target: torch.Tensor, alpha: float = 2.0,
                        gamma: float = 4.0) -> torch.Tensor:
    """Element-wise loss of probabilities ``pred`` against a heatmap ``gaussian_target`` (1 at
    the peaks): ``-log(p) (1 - p)**alpha`` at the peaks, ``-log(1 - p) p**alpha (1 - t)**gamma``
    everywhere."""
    pos_weights = gaussian_target.eq(1)
    neg_weights = (1 - gaussian_target).pow(gamma)
    pos_loss = -(pred + LOG_EPS).log() * (1 - pred).pow(alpha) * pos_weights
    neg_loss = -(1 - pred + LOG_EPS).log() * pred.pow(alpha) * neg_weights
    return pos_loss + neg_loss


@MODELS.register_module()
class GaussianFocalLoss(WeightedLoss):
    """Focal loss on Gaussian heatmap targets (CenterNet's heatmap loss).

    Args:
        alpha: focusing power of the prediction.
        gamma: power of ``1 - target`` that spares the negatives near a peak.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of the loss.
    """

    def __init__(self, alpha: float = 2.0, gamma: float = 4.0, reduction: str = "mean",
                 loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        self.alpha, self.gamma = float(alpha), float(gamma)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """``pred`` probabilities (after a sigmoid) and ``target`` heatmaps of the same shape,
        e.g. ``(B, C, H, W)``; ``weight`` broadcastable to them."""
        loss = gaussian_focal_loss(pred, target, alpha=self.alpha, gamma=self.gamma,
                                   reduction="none")
        return self.reduce(loss, weight, avg_factor, reduction_override)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, {super().extra_repr()}"
