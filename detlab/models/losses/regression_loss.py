"""Element-wise regression losses (on box deltas, or any aligned tensors): L1, smooth L1,
balanced L1 and squared error. The IoU family, on decoded boxes, is in ``box_iou_loss``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from detlab.config import ConfigError
from detlab.models.losses.utils import WeightedLoss, weighted_loss
from detlab.registry import MODELS


def _check_shapes(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name} needs pred and target of the same shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")


@weighted_loss
def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``|pred - target|``; 0 (connected to ``pred``) when ``target`` is empty."""
    if target.numel() == 0:
        return pred.sum() * 0
    _check_shapes(pred, target, "l1_loss")
    return F.l1_loss(pred, target, reduction="none")


@weighted_loss
def smooth_l1_loss(pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """``0.5 * d**2 / beta`` where ``d = |pred - target| < beta``, else ``d - 0.5 * beta``."""
    if target.numel() == 0:
        return pred.sum() * 0
    _check_shapes(pred, target, "smooth_l1_loss")
    return F.smooth_l1_loss(pred, target, reduction="none", beta=beta)


@weighted_loss
def balanced_l1_loss(pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0,
                     alpha: float = 0.5, gamma: float = 1.5) -> torch.Tensor:
    """Balanced L1 (Libra R-CNN, Pang et al., 2019) of ``d = |pred - target|``, with
    ``b = e**(gamma / alpha) - 1``: ``alpha / b * (b * d + 1) * log(b * d / beta + 1) - alpha * d``
    where ``d < beta``, else ``gamma * d + gamma / b - alpha * beta``."""
    if target.numel() == 0:
        return pred.sum() * 0
    _check_shapes(pred, target, "balanced_l1_loss")
    diff = torch.abs(pred - target)
    b = math.e ** (gamma / alpha) - 1
    inner = alpha / b * (b * diff + 1) * torch.log(b * diff / beta + 1) - alpha * diff
    return torch.where(diff < beta, inner, gamma * diff + gamma / b - alpha * beta)


@weighted_loss
def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(pred - target)**2``."""
    return F.mse_loss(pred, target, reduction="none")


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
        return self.reduce(l1_loss(pred, target, reduction="none"), weight, avg_factor,
                           reduction_override)


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
        loss = smooth_l1_loss(pred, target, beta=self.beta, reduction="none")
        return self.reduce(loss, weight, avg_factor, reduction_override)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, {super().extra_repr()}"


@MODELS.register_module()
class BalancedL1Loss(WeightedLoss):
    """Balanced L1 loss (Libra R-CNN): more gradient to the inliers (``d < beta``) than smooth
    L1 gives them, the same total gradient ``gamma`` to the outliers.

    Args:
        alpha: gradient of the inliers (smaller: less).
        gamma: bound of the outliers' gradient.
        beta: where the loss turns linear (> 0).
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of the loss.
    """

    def __init__(self, alpha: float = 0.5, gamma: float = 1.5, beta: float = 1.0,
                 reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(reduction, loss_weight)
        if beta <= 0:
            raise ConfigError(f"BalancedL1Loss beta must be > 0, got {beta}")
        self.alpha, self.gamma, self.beta = float(alpha), float(gamma), float(beta)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """``pred``, ``target``, ``weight``: ``(N, 4)`` (any equal shapes)."""
        if target.numel() == 0:
            return pred.sum() * 0
        loss = balanced_l1_loss(pred, target, beta=self.beta, alpha=self.alpha,
                                gamma=self.gamma, reduction="none")
        return self.reduce(loss, weight, avg_factor, reduction_override)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, gamma={self.gamma}, beta={self.beta}, "
                f"{super().extra_repr()}")


@MODELS.register_module()
class MSELoss(WeightedLoss):
    """``(pred - target)**2``, weighted and reduced.

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
        """``pred``, ``target``, ``weight``: any equal (broadcastable) shapes."""
        return self.reduce(mse_loss(pred, target, reduction="none"), weight, avg_factor,
                           reduction_override)
