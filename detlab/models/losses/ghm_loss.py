"""Gradient harmonizing losses (GHM, Li et al., 2019): each element is weighted by the inverse
density of elements with a gradient norm like its own, so that the many easy examples (and the
few outliers) do not dominate. GHM-C for classification, GHM-R for box regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detlab.config import ConfigError
from detlab.models.losses.utils import WeightedLoss, weight_reduce_loss
from detlab.registry import MODELS


def gradient_density_weights(g: torch.Tensor, valid: torch.Tensor, edges: torch.Tensor,
                             tot: float, acc_sum: torch.Tensor | None = None,
                             momentum: float = 0.0) -> torch.Tensor:
    """Weights of the elements of gradient norm ``g`` (any shape) binned by ``edges``
    ``(bins + 1,)`` (``edges[i] <= g < edges[i + 1]``): ``tot / count of the bin`` (or of its
    moving average ``acc_sum``, updated in place, when ``momentum > 0``), divided by the number
    of non-empty bins; 0 for the elements that are not ``valid`` or in no bin."""
    bins = edges.numel() - 1
    idx = torch.bucketize(g, edges, right=True) - 1  # the bin i with edges[i] <= g < edges[i+1]
    in_bin = valid & (idx >= 0) & (idx < bins)
    idx = idx.clamp(0, bins - 1)
    counts = torch.bincount(idx[in_bin], minlength=bins)  # (bins,)
    nonempty = counts > 0
    if momentum > 0:
        moved = momentum * acc_sum + ((1 - momentum) * counts.double()).float()
        acc_sum.copy_(torch.where(nonempty, moved, acc_sum))
        per_bin = tot / acc_sum
    else:
        per_bin = (tot / counts.double()).float()
    weights = torch.where(in_bin, per_bin[idx].to(g.dtype), torch.zeros_like(g))
    num_nonempty = int(nonempty.sum().item())
    return weights / num_nonempty if num_nonempty > 0 else weights


def _check_no_sum(reduction: str, name: str) -> None:
    # the loss is always averaged over the valid elements (an avg_factor), which 'sum' excludes
    if reduction == "sum":
        raise ConfigError(f"{name} averages over the valid elements: reduction must be 'mean' "
                          "or 'none', not 'sum'")


def _onehot_targets(labels: torch.Tensor, label_weight: torch.Tensor,
                    channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``labels`` ``(N,)`` -> one-hot ``(N, channels)`` (a label outside ``0..channels-1`` is
    all zeros) and ``label_weight`` ``(N,)`` repeated over the channels."""
    onehot = labels[:, None] == torch.arange(channels, device=labels.device)
    return onehot, label_weight.reshape(-1, 1).expand(label_weight.size(0), channels)


@MODELS.register_module()
class GHMC(WeightedLoss):
    """GHM-C: sigmoid cross-entropy weighted by the inverse gradient density.

    Args:
        bins: number of gradient-norm bins over [0, 1].
        momentum: of the moving average of the bin counts (0: this batch's counts only).
        use_sigmoid: must be True (the sigmoid form only, as in MMDetection).
        loss_weight: multiplier of the loss.
        reduction: ``'mean'`` or ``'none'``.
    """

    def __init__(self, bins: int = 10, momentum: float = 0, use_sigmoid: bool = True,
                 loss_weight: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction, loss_weight)
        if use_sigmoid is not True:
            raise ConfigError("GHMC supports use_sigmoid=True only")
        _check_no_sum(reduction, "GHMC")
        self.bins, self.momentum, self.use_sigmoid = bins, momentum, True
        edges = torch.arange(bins + 1).float() / bins
        edges[-1] += 1e-6  # a gradient norm of exactly 1 falls in the last bin
        self.register_buffer("edges", edges)
        if momentum > 0:
            self.register_buffer("acc_sum", torch.zeros(bins))

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                label_weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """``pred`` ``(N, C)`` logits; ``target`` ``(N,)`` labels (``C`` = background) or
        ``(N, C)`` binary targets; ``label_weight`` ``(N,)`` (or ``(N, C)``), > 0 where valid
        (None: all). ``avg_factor`` is not used: the loss is averaged over the valid
        elements."""
        reduction = self.resolve_reduction(reduction_override)
        if label_weight is None:
            label_weight = pred.new_ones(pred.shape[:target.dim()])
        if pred.dim() != target.dim():
            target, label_weight = _onehot_targets(target, label_weight, pred.size(-1))
        target, label_weight = target.float(), label_weight.float()
        valid = label_weight > 0
        tot = max(valid.float().sum().item(), 1.0)
        g = torch.abs(pred.sigmoid().detach() - target)
        weights = gradient_density_weights(g, valid, self.edges, tot,
                                           getattr(self, "acc_sum", None), self.momentum)
        loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
        return self.loss_weight * weight_reduce_loss(loss, weights, reduction, avg_factor=tot)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, momentum={self.momentum}, {super().extra_repr()}"


@MODELS.register_module()
class GHMR(WeightedLoss):
    """GHM-R: the authentic smooth L1 ``sqrt(d**2 + mu**2) - mu`` weighted by the inverse
    gradient density.

    Args:
        mu: smoothness of the loss near 0.
        bins: number of gradient-norm bins over [0, 1].
        momentum: of the moving average of the bin counts (0: this batch's counts only).
        loss_weight: multiplier of the loss.
        reduction: ``'mean'`` or ``'none'``.
    """

    def __init__(self, mu: float = 0.02, bins: int = 10, momentum: float = 0,
                 loss_weight: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction, loss_weight)
        _check_no_sum(reduction, "GHMR")
        self.mu, self.bins, self.momentum = mu, bins, momentum
        edges = torch.arange(bins + 1).float() / bins
        edges[-1] = 1e3  # the last bin takes any larger norm
        self.register_buffer("edges", edges)
        if momentum > 0:
            self.register_buffer("acc_sum", torch.zeros(bins))

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                label_weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None) -> torch.Tensor:
        """``pred``, ``target``, ``label_weight``: ``(N, 4)``; ``label_weight`` > 0 where valid
        (None: all). ``avg_factor`` is not used: the loss is averaged over the sum of
        ``label_weight``."""
        reduction = self.resolve_reduction(reduction_override)
        if label_weight is None:
            label_weight = torch.ones_like(pred)
        mu = self.mu
        diff = pred - target
        loss = torch.sqrt(diff * diff + mu * mu) - mu
        g = torch.abs(diff / torch.sqrt(mu * mu + diff * diff)).detach()
        tot = max(label_weight.float().sum().item(), 1.0)
        weights = gradient_density_weights(g, label_weight > 0, self.edges, tot,
                                           getattr(self, "acc_sum", None), self.momentum)
        return self.loss_weight * weight_reduce_loss(loss, weights, reduction, avg_factor=tot)

    def extra_repr(self) -> str:
        return f"mu={self.mu}, bins={self.bins}, momentum={self.momentum}, {super().extra_repr()}"
