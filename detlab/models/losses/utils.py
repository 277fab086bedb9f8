"""MMDetection's loss reduction: element-wise weights, then ``none`` / ``mean`` / ``sum``, where a
``mean`` with ``avg_factor`` is ``sum / (avg_factor + eps)`` (e.g. the number of positives).

The three functions keep MMDetection's names and arguments, so a loss written as MMDetection's
"customize losses" tutorial writes it works with only its imports changed::

    from detlab.models.losses import weighted_loss

    @weighted_loss
    def my_loss(pred, target):
        return torch.abs(pred - target)  # element-wise, no reduction

    my_loss(pred, target, weight, reduction='mean', avg_factor=num_pos)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from detlab.config import ConfigError

REDUCTIONS = ("none", "mean", "sum")
# float32's machine epsilon: an avg_factor of 0 (an image whose labels are all ignored) cannot
# divide by zero
AVG_EPS = torch.finfo(torch.float32).eps


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """``loss`` unchanged (``'none'``), averaged (``'mean'``) or summed (``'sum'``).

    The mean of an empty ``loss`` is 0 (connected to the graph), where ``Tensor.mean`` -- and so
    MMDetection -- gives NaN: a batch with nothing to learn from must not poison the run.
    """
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum()
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
        return loss.sum() / (avg_factor + AVG_EPS)
    if reduction == "none":
        return loss
    raise ValueError('avg_factor can not be used with reduction="sum"')


def weighted_loss(loss_func: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Turn an element-wise ``loss_func(pred, target, **kwargs)`` into
    ``loss_func(pred, target, weight=None, reduction='mean', avg_factor=None, **kwargs)``, which
    weights and reduces its result with :func:`weight_reduce_loss` (MMDetection's decorator).

    >>> @weighted_loss
    ... def l1(pred, target):
    ...     return (pred - target).abs()
    >>> l1(torch.tensor([0., 2., 3.]), torch.ones(3), torch.tensor([1., 0., 1.]), avg_factor=2)
    tensor(1.5000)
    """

    @functools.wraps(loss_func)
    def wrapper(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                reduction: str = "mean", avg_factor: float | torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        loss = loss_func(pred, target, **kwargs)
        return weight_reduce_loss(loss, weight, reduction, avg_factor)

    return wrapper


def check_reduction(reduction: str | None, owner: str, allow_none: bool = False) -> None:
    """Raise a :class:`ConfigError` naming ``owner`` unless ``reduction`` is a reduction."""
    if reduction is None and allow_none:
        return
    if reduction not in REDUCTIONS:
        raise ConfigError(f"{owner} reduction must be one of {REDUCTIONS}, got {reduction!r}")


class WeightedLoss(nn.Module):
    """Base of the losses: holds ``reduction`` and ``loss_weight`` and applies them.

    Subclasses compute the element-wise loss and call :meth:`reduce`.
    """

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__()
        check_reduction(reduction, type(self).__name__)
        self.reduction, self.loss_weight = reduction, float(loss_weight)

    def resolve_reduction(self, reduction_override: str | None) -> str:
        """``reduction_override`` when given, else the configured ``reduction``."""
        if reduction_override not in (None, *REDUCTIONS):
            raise ValueError(f"reduction_override must be None or one of {REDUCTIONS}, got "
                             f"{reduction_override!r}")
        return reduction_override or self.reduction

    def reduce(self, loss: torch.Tensor, weight: torch.Tensor | None,
               avg_factor: float | torch.Tensor | None,
               reduction_override: str | None) -> torch.Tensor:
        """``loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)``; the
        reduction is ``reduction_override`` when given."""
        reduction = self.resolve_reduction(reduction_override)
        return self.loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, loss_weight={self.loss_weight}"
