"""Seesaw loss (Wang et al., 2021) for long-tailed classification, as MMDetection 2.28's
``SeesawLoss`` (the LVIS Seesaw Mask R-CNN configs).

The box head then scores ``num_classes + 2`` columns: the classes, then an objectness pair
(object, background). The classes' cross-entropy is re-weighted per pair of classes: a
mitigation factor ``(N_j / N_i) ** p`` lowers the penalty a frequent class ``i`` puts on a rarer
class ``j`` (``N`` counted over training, the ``cum_samples`` buffer), and a compensation factor
``(s_j / s_i) ** q`` raises it back for classes scored above the true one. The objectness pair
has a plain cross-entropy. Scores at test time are the classes' softmax times the object
probability, and the background probability last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.losses.cross_entropy_loss import cross_entropy
from detlab.models.losses.utils import check_reduction, weight_reduce_loss
from detlab.registry import MODELS


def _accuracy(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if scores.shape[0] == 0:
        return scores.new_zeros(1)
    correct = (scores.argmax(dim=1) == labels).float().sum(0, keepdim=True)
    return correct * (100.0 / scores.shape[0])


def seesaw_ce_loss(cls_score: torch.Tensor, labels: torch.Tensor,
                   label_weights: torch.Tensor | None, cum_samples: torch.Tensor,
                   num_classes: int, p: float, q: float, eps: float, reduction: str = "mean",
                   avg_factor: float | None = None) -> torch.Tensor:
    """The seesaw cross-entropy of ``(N, C)`` class logits against ``(N,)`` labels (all
    objects), ``cum_samples`` ``(C,)`` the samples seen of each class."""
    onehot = F.one_hot(labels, num_classes)
    weights = cls_score.new_ones(onehot.shape)
    if p > 0:
        ratio = cum_samples[None, :].clamp(min=1) / cum_samples[:, None].clamp(min=1)
        below = (ratio < 1.0).float()
        weights = weights * (ratio.pow(p) * below + (1 - below))[labels.long(), :]
    if q > 0:
        scores = F.softmax(cls_score.detach(), dim=1)
        own = scores[torch.arange(len(scores), device=scores.device), labels.long()]
        ratio = scores / own[:, None].clamp(min=eps)
        above = (ratio > 1.0).float()
        weights = weights * (ratio.pow(q) * above + (1 - above))
    cls_score = cls_score + weights.log() * (1 - onehot)
    loss = F.cross_entropy(cls_score, labels, weight=None, reduction="none")
    if label_weights is not None:
        label_weights = label_weights.float()
    return weight_reduce_loss(loss, label_weights, reduction, avg_factor)


@MODELS.register_module()
class SeesawLoss(nn.Module):
    """Seesaw loss: ``loss_cls_classes`` (seesaw cross-entropy on the objects) and
    ``loss_cls_objectness`` (cross-entropy of object vs background) of ``(N, C + 2)`` logits.

    Args:
        use_sigmoid: only False (a softmax loss).
        p: the mitigation factor's exponent.
        q: the compensation factor's exponent.
        num_classes: object classes (the box head's ``num_classes``).
        eps: the least true-class score in the compensation factor's divisor.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of both losses.
        return_dict: the two losses as a dict (else their sum).

    Attributes:
        cum_samples: ``(C + 1,)`` buffer, the labels seen in training (background last); it is
            saved in checkpoints.
    """

    # what a box head reads to use it (MMDetection's flags)
    custom_cls_channels = True
    custom_activation = True
    custom_accuracy = True

    def __init__(self, use_sigmoid: bool = False, p: float = 0.8, q: float = 2.0,
                 num_classes: int = 1203, eps: float = 1e-2, reduction: str = "mean",
                 loss_weight: float = 1.0, return_dict: bool = True) -> None:
        super().__init__()
        if use_sigmoid:
            raise ConfigError("SeesawLoss supports use_sigmoid=False only")
        check_reduction(reduction, "SeesawLoss")
        self.use_sigmoid = False
        self.p, self.q, self.num_classes, self.eps = p, q, num_classes, eps
        self.reduction, self.loss_weight, self.return_dict = reduction, loss_weight, return_dict
        self.register_buffer("cum_samples", torch.zeros(num_classes + 1, dtype=torch.float))

    def _split(self, cls_score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if cls_score.shape[-1] != self.num_classes + 2:
            raise ValueError(f"SeesawLoss(num_classes={self.num_classes}) takes "
                             f"{self.num_classes + 2} score columns, got {cls_score.shape[-1]}")
        return cls_score[..., :-2], cls_score[..., -2:]

    def get_cls_channels(self, num_classes: int) -> int:
        """The box head's classifier width: the classes and the objectness pair."""
        if num_classes != self.num_classes:
            raise ConfigError(f"bbox_head.loss_cls SeesawLoss num_classes={self.num_classes} "
                              f"differs from bbox_head.num_classes={num_classes}; set both alike")
        return num_classes + 2

    def get_activation(self, cls_score: torch.Tensor) -> torch.Tensor:
        """``(N, C + 2)`` logits -> ``(N, C + 1)`` scores: each class's softmax times the
        object probability, then the background probability."""
        classes, objectness = self._split(cls_score)
        classes, objectness = F.softmax(classes, dim=-1), F.softmax(objectness, dim=-1)
        return torch.cat([classes * objectness[..., [0]], objectness[..., [1]]], dim=-1)

    def get_accuracy(self, cls_score: torch.Tensor, labels: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
        """``acc_objectness`` (object vs background) and ``acc_classes`` (on the objects), in
        percent."""
        objects = labels < self.num_classes
        classes, objectness = self._split(cls_score)
        return dict(acc_objectness=_accuracy(objectness,
                                             (labels == self.num_classes).long()),
                    acc_classes=_accuracy(classes[objects], labels[objects]))

    def forward(self, cls_score: torch.Tensor, labels: torch.Tensor,
                label_weights: torch.Tensor | None = None, avg_factor: float | None = None,
                reduction_override: str | None = None
                ) -> dict[str, torch.Tensor] | torch.Tensor:
        """``(N, C + 2)`` logits and ``(N,)`` labels (``num_classes``: background); counts the
        labels into ``cum_samples`` first (training statistics, as MMDetection)."""
        if reduction_override not in (None, "none", "mean", "sum"):
            raise ValueError(f"reduction_override must be None, 'none', 'mean' or 'sum', got "
                             f"{reduction_override!r}")
        reduction = reduction_override or self.reduction
        classes, objectness = self._split(cls_score)
        objects = labels < self.num_classes
        self.cum_samples += torch.bincount(labels, minlength=self.num_classes + 1)[
            :self.num_classes + 1].to(self.cum_samples.dtype)
        label_weights = labels.new_ones(labels.shape, dtype=torch.float) \
            if label_weights is None else label_weights.float()
        if objects.sum() > 0:
            loss_classes = self.loss_weight * seesaw_ce_loss(
                classes[objects], labels[objects], label_weights[objects],
                self.cum_samples[:self.num_classes], self.num_classes, self.p, self.q,
                self.eps, reduction, avg_factor)
        else:
            loss_classes = classes[objects].sum()
        loss_objectness = self.loss_weight * cross_entropy(
            objectness, (labels == self.num_classes).long(), label_weights, reduction,
            avg_factor)
        if self.return_dict:
            return dict(loss_cls_objectness=loss_objectness, loss_cls_classes=loss_classes)
        return loss_classes + loss_objectness

    def extra_repr(self) -> str:
        return (f"p={self.p}, q={self.q}, num_classes={self.num_classes}, eps={self.eps}, "
                f"reduction={self.reduction!r}, loss_weight={self.loss_weight}")
