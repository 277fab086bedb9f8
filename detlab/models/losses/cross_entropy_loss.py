"""Cross-entropy losses with MMDetection's semantics: softmax over classes, sigmoid (binary) per
class with integer labels expanded to one-hot, and the per-RoI mask loss of mask heads."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from detlab.config import ConfigError
from detlab.models.losses.utils import WeightedLoss, weight_reduce_loss
from detlab.registry import MODELS

TORCH_IGNORE_INDEX = -100  # F.cross_entropy's default; MMDetection's when ignore_index is None


def cross_entropy(pred: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None,
                  reduction: str = "mean", avg_factor: float | torch.Tensor | None = None,
                  class_weight: torch.Tensor | None = None, ignore_index: int | None = -100,
                  avg_non_ignore: bool = False) -> torch.Tensor:
    """Softmax cross-entropy of ``pred`` ``(N, C, *)`` logits against ``label`` ``(N, *)``.

    ``class_weight`` ``(C,)`` scales each element by its label's weight; ignored labels give 0.
    A ``'mean'`` divides by the number of elements -- ignored ones included -- unless
    ``avg_non_ignore`` (then by the number of labels that are not ``ignore_index``, as
    ``F.cross_entropy`` does without class weights) or an ``avg_factor`` is given.
    """
    ignore_index = TORCH_IGNORE_INDEX if ignore_index is None else ignore_index
    loss = F.cross_entropy(pred, label, weight=class_weight, reduction="none",
                           ignore_index=ignore_index)
    if avg_factor is None and avg_non_ignore and reduction == "mean":
        avg_factor = label.numel() - (label == ignore_index).sum().item()
    if weight is not None:
        weight = weight.float()
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


def expand_onehot_labels(labels: torch.Tensor, label_weights: torch.Tensor | None,
                         label_channels: int, ignore_index: int
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``labels`` ``(N,)`` -> one-hot ``(N, label_channels)`` targets, their weights and the
    valid mask (float, ``(N, label_channels)``).

    A label ``>= label_channels`` (background) is all zeros; a negative one or ``ignore_index``
    is all zeros with weight 0. ``label_weights`` ``(N,)`` applies to every channel of its row.
    """
    valid = (labels >= 0) & (labels != ignore_index)  # (N,)
    channels = torch.arange(label_channels, device=labels.device)
    bin_labels = ((labels[:, None] == channels) & valid[:, None]).to(labels.dtype)
    valid_mask = valid[:, None].expand(labels.size(0), label_channels).float()
    if label_weights is None:
        return bin_labels, valid_mask, valid_mask
    bin_label_weights = label_weights.reshape(-1, 1).repeat(1, label_channels) * valid_mask
    return bin_labels, bin_label_weights, valid_mask


def binary_cross_entropy(pred: torch.Tensor, label: torch.Tensor,
                         weight: torch.Tensor | None = None, reduction: str = "mean",
                         avg_factor: float | torch.Tensor | None = None,
                         class_weight: torch.Tensor | None = None,
                         ignore_index: int | None = -100,
                         avg_non_ignore: bool = False) -> torch.Tensor:
    """Sigmoid cross-entropy of ``pred`` logits.

    ``label`` of one dimension less than ``pred`` (``(N,)`` for ``(N, C)``) holds class indices
    and is expanded to one-hot (see :func:`expand_onehot_labels`); of the same shape, it holds
    targets in [0, 1] and only negative or ``ignore_index`` entries are masked out.
    ``class_weight`` ``(C,)`` is BCE's ``pos_weight`` (it scales the positive term only).
    ``avg_non_ignore`` divides a ``'mean'`` by the number of valid elements.
    """
    ignore_index = TORCH_IGNORE_INDEX if ignore_index is None else ignore_index
    if pred.dim() != label.dim():
        label, weight, valid_mask = expand_onehot_labels(label, weight, pred.size(-1),
                                                         ignore_index)
    else:
        valid_mask = ((label >= 0) & (label != ignore_index)).float()
        weight = valid_mask if weight is None else weight * valid_mask
    if avg_factor is None and avg_non_ignore and reduction == "mean":
        avg_factor = valid_mask.sum().item()
    loss = F.binary_cross_entropy_with_logits(pred, label.float(), pos_weight=class_weight,
                                              reduction="none")
    return weight_reduce_loss(loss, weight.float(), reduction, avg_factor)


def mask_cross_entropy(pred: torch.Tensor, target: torch.Tensor, label: torch.Tensor,
                       reduction: str = "mean", avg_factor: float | torch.Tensor | None = None,
                       class_weight: torch.Tensor | None = None,
                       ignore_index: int | None = None) -> torch.Tensor:
    """Mean sigmoid cross-entropy of each RoI's mask logits for its own class.

    ``pred`` ``(N, C, H, W)`` logits (``C = 1``: class-agnostic), ``target`` ``(N, H, W)`` in
    [0, 1], ``label`` ``(N,)`` the class of each RoI. Returns a ``(1,)`` tensor. Only
    ``reduction='mean'`` without ``avg_factor`` or ``ignore_index`` exists, as in MMDetection.
    """
    if ignore_index is not None:
        raise ValueError("the mask cross-entropy does not support ignore_index")
    if reduction != "mean" or avg_factor is not None:
        raise ValueError("the mask cross-entropy supports reduction='mean' without avg_factor "
                         f"only, got reduction={reduction!r}, avg_factor={avg_factor!r}")
    rois = torch.arange(pred.size(0), dtype=torch.long, device=pred.device)
    pred_slice = pred[rois, label].squeeze(1)  # (N, H, W): each RoI's mask of its class
    if pred_slice.numel() == 0:
        return pred_slice.sum()[None]
    return F.binary_cross_entropy_with_logits(pred_slice, target, weight=class_weight,
                                              reduction="mean")[None]


@MODELS.register_module()
class CrossEntropyLoss(WeightedLoss):
    """Cross-entropy: softmax (default), sigmoid (``use_sigmoid``) or per-RoI mask
    (``use_mask``).

    Args:
        use_sigmoid: per-class sigmoid (binary) cross-entropy instead of a softmax.
        use_mask: the mask heads' loss; ``forward``'s third argument is then the RoIs' labels.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.
        class_weight: a weight per class (softmax: per label; sigmoid: the positive term's).
        ignore_index: the label to ignore (None: -100, ``F.cross_entropy``'s default).
        loss_weight: multiplier of the loss.
        avg_non_ignore: ``'mean'`` averages over the non-ignored labels only (as
            ``F.cross_entropy``); False averages over all of them, ignored ones included.
    """

    def __init__(self, use_sigmoid: bool = False, use_mask: bool = False,
                 reduction: str = "mean", class_weight: Sequence[float] | None = None,
                 ignore_index: int | None = None, loss_weight: float = 1.0,
                 avg_non_ignore: bool = False) -> None:
        super().__init__(reduction, loss_weight)
        if use_sigmoid and use_mask:
            raise ConfigError("CrossEntropyLoss takes use_sigmoid or use_mask, not both")
        self.use_sigmoid, self.use_mask = use_sigmoid, use_mask
        self.class_weight = None if class_weight is None else list(class_weight)
        self.ignore_index, self.avg_non_ignore = ignore_index, avg_non_ignore
        if ignore_index is not None and not avg_non_ignore and reduction == "mean":
            warnings.warn("CrossEntropyLoss with ignore_index averages over all labels, ignored "
                          "ones included; set avg_non_ignore=True to average over the others "
                          "only, as torch's cross_entropy does", UserWarning, stacklevel=2)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None,
                avg_factor: float | torch.Tensor | None = None,
                reduction_override: str | None = None,
                ignore_index: int | None = None) -> torch.Tensor:
        """``pred`` ``(N, C)`` logits; ``target`` ``(N,)`` labels (sigmoid: or ``(N, C)``
        targets in [0, 1]); ``weight`` ``(N,)`` per sample (with ``use_mask``: the ``(N,)``
        labels of the RoIs, ``pred`` ``(N, C, H, W)``, ``target`` ``(N, H, W)``).
        ``ignore_index`` overrides the configured one for this call."""
        reduction = self.resolve_reduction(reduction_override)
        ignore_index = self.ignore_index if ignore_index is None else ignore_index
        class_weight = None if self.class_weight is None else pred.new_tensor(self.class_weight)
        if self.use_mask:
            if weight is None:
                raise ValueError("CrossEntropyLoss(use_mask=True) takes the (N,) class labels of "
                                 "the RoIs as its third argument, got None")
            loss = mask_cross_entropy(pred, target, weight, reduction, avg_factor, class_weight,
                                      ignore_index)
        else:
            criterion = binary_cross_entropy if self.use_sigmoid else cross_entropy
            loss = criterion(pred, target, weight, reduction, avg_factor, class_weight,
                             ignore_index, self.avg_non_ignore)
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return (f"use_sigmoid={self.use_sigmoid}, use_mask={self.use_mask}, "
                f"avg_non_ignore={self.avg_non_ignore}, {super().extra_repr()}")
