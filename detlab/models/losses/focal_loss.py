"""Sigmoid focal loss (Lin et al., 2017) with MMDetection's targets and weighting."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from detlab.config import ConfigError
from detlab.models.losses.utils import WeightedLoss
from detlab.registry import MODELS


def focal_loss_with_prob(prob: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
                         alpha: float = 0.25) -> torch.Tensor:
    """Element-wise focal loss of probabilities ``prob`` (already through a sigmoid) against
    ``target`` in {0, 1}, both ``(N, C)``."""
    pt = (1 - prob) * target + prob * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    return F.binary_cross_entropy(prob, target, reduction="none") * focal_weight


def expand_sample_weight(weight: torch.Tensor | None, loss: torch.Tensor) -> torch.Tensor | None:
    """Fit ``weight`` to an ``(N, C)`` ``loss``: a per-sample ``(N,)`` weight applies to every
    class of its sample, a flat ``(N * C,)`` one is reshaped (MMDetection's rule)."""
    if weight is None or weight.shape == loss.shape:
        return weight
    if weight.size(0) == loss.size(0):
        return weight.reshape(-1, 1)
    if weight.numel() == loss.numel():
        return weight.reshape(loss.size(0), -1)
    raise ValueError(f"focal loss weight of shape {tuple(weight.shape)} does not fit a loss of "
                     f"shape {tuple(loss.shape)}")


@MODELS.register_module()
class FocalLoss(WeightedLoss):
    """Sigmoid focal loss over ``C`` classes, background being label ``C`` (no output channel).

    Args:
        use_sigmoid: must be True (only the sigmoid form exists, as in MMDetection).
        gamma: focusing parameter.
        alpha: weight of the positive term (``1 - alpha`` for the negative one).
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of the loss.
        activated: the predictions are probabilities already (not logits).
    """

    def __init__(self, use_sigmoid: bool = True, gamma: float = 2.0, alpha: float = 0.25,
                 reduction: str = "mean", loss_weight: float = 1.0,
                 activated: bool = False) -> None:
        super().__init__(reduction, loss_weight)
        if not use_sigmoid:
            raise ConfigError("FocalLoss supports use_sigmoid=True only")
        self.use_sigmoid, self.gamma, self.alpha, self.activated = True, gamma, alpha, activated

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """``pred`` ``(N, C)`` logits (probabilities with ``activated``); ``target`` ``(N,)``
        labels in ``0..C`` (``C`` = background) or ``(N, C)`` targets in [0, 1]; ``weight``
        ``(N,)`` or ``(N, C)``; ``avg_factor`` divides the summed loss (``'mean'``)."""
        if target.dim() == pred.dim():
            one_hot = target.to(pred.dtype)
        else:
            num_classes = pred.shape[-1]
            one_hot = F.one_hot(target.long(), num_classes + 1)[..., :num_classes].to(pred.dtype)
        if self.activated:
            loss = focal_loss_with_prob(pred, one_hot, self.gamma, self.alpha)
        else:
            loss = sigmoid_focal_loss(pred, one_hot, alpha=self.alpha, gamma=self.gamma,
                                      reduction="none")
        return self.reduce(loss, expand_sample_weight(weight, loss), avg_factor, reduction_override)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, {super().extra_repr()}"
