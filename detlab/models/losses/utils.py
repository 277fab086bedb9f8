"""MMDetection's loss reduction: element-wise weights, then ``none`` / ``mean`` / ``sum``, where a
``mean`` with ``avg_factor`` is ``sum / (avg_factor + eps)`` (e.g. the number of positives)."""

from __future__ import annotations

import torch
from torch import nn

from detlab.config import ConfigError

REDUCTIONS = ("none", "mean", "sum")


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """``loss`` unchanged (``'none'``), averaged (``'mean'``) or summed (``'sum'``)."""
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def weight_reduce_loss(loss: torch.Tensor, weight: torch.Tensor | None = None,
                       reduction: str = "mean",
                       avg_factor: float | torch.Tensor | None = None) -> torch.Tensor:
    """Multiply the element-wise ``loss`` by ``weight`` (broadcast), then reduce.

    With ``avg_factor``, ``'mean'`` is ``loss.sum() / (avg_factor + eps)`` (eps = float32's
    machine epsilon, so an ``avg_factor`` of 0 cannot divide by zero) and ``'none'`` leaves the
    loss as is; ``'sum'`` with an ``avg_factor`` is an error.
    """
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return reduce_loss(loss, reduction)
    if reduction == "mean":
        return loss.sum() / (avg_factor + torch.finfo(torch.float32).eps)
    if reduction == "none":
        return loss
    raise ValueError('avg_factor can not be used with reduction="sum"')


class WeightedLoss(nn.Module):
    """Base of the losses: holds ``reduction`` and ``loss_weight`` and applies them.

    Subclasses compute the element-wise loss and call :meth:`reduce`.
    """

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ConfigError(f"{type(self).__name__} reduction must be one of {REDUCTIONS}, got "
                              f"{reduction!r}")
        self.reduction, self.loss_weight = reduction, float(loss_weight)

    def reduce(self, loss: torch.Tensor, weight: torch.Tensor | None,
               avg_factor: float | torch.Tensor | None,
               reduction_override: str | None) -> torch.Tensor:
        """``loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)``; the
        reduction is ``reduction_override`` when given."""
        if reduction_override not in (None, *REDUCTIONS):
            raise ValueError(f"reduction_override must be None or one of {REDUCTIONS}, got "
                             f"{reduction_override!r}")
        reduction = reduction_override or self.reduction
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, loss_weight={self.loss_weight}"
