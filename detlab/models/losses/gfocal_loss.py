"""Generalized focal losses (GFL, Li et al., 2020): the quality focal loss of a joint
class-and-quality score, and the distribution focal loss of a discretized box side."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from detlab.config import ConfigError
from detlab.models.losses.utils import WeightedLoss, weighted_loss
from detlab.registry import MODELS


def _positives(label: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose label is a class (not background ``num_classes``, not negative) and their
    labels."""
    pos = ((label >= 0) & (label < num_classes)).nonzero().squeeze(1)
    return pos, label[pos].long()


def _quality_focal(pred: torch.Tensor, target: Sequence[torch.Tensor], beta: float,
                   activated: bool) -> torch.Tensor:
    if len(target) != 2:
        raise ValueError("the quality focal loss target is a pair (labels (N,), scores (N,))")
    label, score = target
    prob = pred if activated else pred.sigmoid()
    bce = F.binary_cross_entropy if activated else F.binary_cross_entropy_with_logits
    # every class is a negative of quality 0 ...
    loss = bce(pred, prob.new_zeros(pred.shape), reduction="none") * prob.pow(beta)
    pos, pos_label = _positives(label, pred.size(1))
    # ... except each positive's own class, whose target is its quality score
    scale = score[pos] - prob[pos, pos_label]
    pos_loss = bce(pred[pos, pos_label], score[pos], reduction="none") * scale.abs().pow(beta)
    return loss.index_put((pos, pos_label), pos_loss).sum(dim=1)


@weighted_loss
def quality_focal_loss(pred: torch.Tensor, target: Sequence[torch.Tensor],
                       beta: float = 2.0) -> torch.Tensor:
    """``(N,)`` quality focal loss of ``pred`` ``(N, C)`` logits against ``target`` = (labels
    ``(N,)`` in ``0..C``, ``C`` = background; quality scores ``(N,)`` in [0, 1]): the
    BCE of each class against its soft target (the score for the labelled class, 0 for the
    others), scaled by ``|target - sigmoid(pred)|**beta``, summed over the classes."""
    return _quality_focal(pred, target, beta, activated=False)


@weighted_loss
def quality_focal_loss_with_prob(pred: torch.Tensor, target: Sequence[torch.Tensor],
                                 beta: float = 2.0) -> torch.Tensor:
    """:func:`quality_focal_loss` of probabilities ``pred`` (already through a sigmoid)."""
    return _quality_focal(pred, target, beta, activated=True)


@weighted_loss
def distribution_focal_loss(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``(N,)`` distribution focal loss of ``pred`` ``(N, n + 1)`` logits over the bins
    ``0..n`` against continuous targets ``label`` ``(N,)`` in ``[0, n)``: the cross-entropy of
    the two bins around the target, weighted by the target's nearness to each."""
    dis_left = label.long()
    dis_right = dis_left + 1
    weight_left = dis_right.float() - label
    weight_right = label - dis_left.float()
    return (F.cross_entropy(pred, dis_left, reduction="none") * weight_left
            + F.cross_entropy(pred, dis_right, reduction="none") * weight_right)


@MODELS.register_module()
class QualityFocalLoss(WeightedLoss):
    """Quality focal loss (GFL): a focal BCE against a soft target, the predicted box's quality
    (IoU) for its class and 0 elsewhere.

    Args:
        use_sigmoid: must be True (the sigmoid form only, as in MMDetection).
        beta: focusing parameter.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of the loss.
        activated: the predictions are probabilities already (not logits).
    """

    def __init__(self, use_sigmoid: bool = True, beta: float = 2.0, reduction: str = "mean",
                 loss_weight: float = 1.0, activated: bool = False) -> None:
        super().__init__(reduction, loss_weight)
        if use_sigmoid is not True:
            raise ConfigError("QualityFocalLoss supports use_sigmoid=True only")
        self.use_sigmoid, self.beta, self.activated = True, float(beta), activated

    def forward(self, pred: torch.Tensor, target: Sequence[torch.Tensor],
                weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """``pred`` ``(N, C)``; ``target`` (labels ``(N,)`` with ``C`` = background, quality
        scores ``(N,)``); ``weight`` ``(N,)``."""
        func = quality_focal_loss_with_prob if self.activated else quality_focal_loss
        loss = func(pred, target, beta=self.beta, reduction="none")
        return self.reduce(loss, weight, avg_factor, reduction_override)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, activated={self.activated}, {super().extra_repr()}"


@MODELS.register_module()
class DistributionFocalLoss(WeightedLoss):
    """Distribution focal loss (GFL) of a box side predicted as a distribution over bins.

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
        """``pred`` ``(N, n + 1)`` logits, ``target`` ``(N,)`` in ``[0, n)`` (a target of
        exactly ``n`` has no right bin: clamp it below ``n`` first, as GFL's head does),
        ``weight`` ``(N,)``."""
        if target.numel() > 0 and bool((target >= pred.size(-1) - 1).any()):
            raise ValueError(f"DistributionFocalLoss targets must be < {pred.size(-1) - 1} (the "
                             f"last bin), got a maximum of {target.max().item()}")
        loss = distribution_focal_loss(pred, target, reduction="none")
        return self.reduce(loss, weight, avg_factor, reduction_override)
