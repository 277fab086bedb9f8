"""Knowledge distillation loss (Hinton et al., 2015): KL divergence of the student's softened
class distribution from the teacher's (LD, Zheng et al., 2022, applies it to box distributions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detlab.config import ConfigError
from detlab.models.losses.utils import WeightedLoss, weighted_loss
from detlab.registry import MODELS


@weighted_loss
def knowledge_distillation_kl_div_loss(pred: torch.Tensor, soft_label: torch.Tensor, T: float,
                                       detach_target: bool = True) -> torch.Tensor:
    """``(N,)`` ``KL(softmax(soft_label / T) || softmax(pred / T))`` averaged over the ``C``
    classes and times ``T**2``, of ``pred`` and ``soft_label`` ``(N, C)`` logits."""
    if pred.shape != soft_label.shape:
        raise ValueError(f"the distillation loss needs pred and soft_label of the same shape, got "
                         f"{tuple(pred.shape)} and {tuple(soft_label.shape)}")
    target = F.softmax(soft_label / T, dim=1)
    if detach_target:
        target = target.detach()
    kl = F.kl_div(F.log_softmax(pred / T, dim=1), target, reduction="none")
    return kl.mean(1) * (T * T)


@MODELS.register_module()
class KnowledgeDistillationKLDivLoss(WeightedLoss):
    """KL divergence of a student's predictions from a teacher's soft labels, at temperature
    ``T``.

    Args:
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        loss_weight: multiplier of the loss.
        T: temperature (>= 1) that softens both distributions.
    """

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0, T: float = 10) -> None:
        super().__init__(reduction, loss_weight)
        if T < 1:
            raise ConfigError(f"KnowledgeDistillationKLDivLoss T must be >= 1, got {T}")
        self.T = T

    def forward(self, pred: torch.Tensor, soft_label: torch.Tensor,
                weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """``pred`` (student) and ``soft_label`` (teacher) ``(N, C)`` logits; ``weight``
        ``(N,)``. No gradient flows into the teacher."""
        loss = knowledge_distillation_kl_div_loss(pred, soft_label, T=self.T, reduction="none")
        return self.reduce(loss, weight, avg_factor, reduction_override)

    def extra_repr(self) -> str:
        return f"T={self.T}, {super().extra_repr()}"
