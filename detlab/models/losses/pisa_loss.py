"""PISA (Cao et al., 2020, "Prime Sample Attention in Object Detection"): the two ways it puts
the prime samples first, as functions a head's loss calls.

- :func:`isr_p` (importance-based sample reweighting, positive part): the positives of each
  class are ranked by their hierarchical local rank (IoU-HLR: first by IoU within their object,
  then across the class's objects); each positive's classification weight becomes
  ``(bias + (1 - bias) * weight * (n - rank) / n) ** k``, rescaled so that the positives'
  classification loss keeps its total.
- :func:`carl_loss` (classification-aware regression loss): the positives' regression loss
  weighted by ``(bias + (1 - bias) * score) ** k`` of their class's predicted score (rescaled
  to sum to the number of positives), so that the gradient also raises the scores of
  well-localized samples.

Both follow MMDetection 2.28's ``isr_p`` and ``carl_loss`` number for number (including how it
numbers the objects of a batch across images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from detlab.models.losses.box_iou_loss import aligned_bbox_overlaps


def _descending_rank(values: torch.Tensor) -> torch.Tensor:
    """Each value's rank (0: the largest), ties broken as ``torch.sort`` breaks them."""
    return values.sort(descending=True)[1].sort()[1]


@torch.no_grad()
def isr_p(cls_score: torch.Tensor, bbox_pred: torch.Tensor, labels: torch.Tensor,
          label_weights: torch.Tensor, bbox_targets: torch.Tensor, anchors: torch.Tensor,
          pos_gt_inds: Sequence[torch.Tensor | None], loss_cls: Callable[..., torch.Tensor],
          bbox_coder: Any, k: float = 2.0, bias: float = 0.0,
          num_classes: int = 80) -> torch.Tensor:
    """The classification weights of the batch's anchors after ISR-P (the positives' changed,
    the others' kept).

    Args:
        cls_score: ``(N, C')`` logits of all anchors of the batch (image after image).
        bbox_pred: ``(N, 4)`` predicted deltas.
        labels: ``(N,)`` targets (``num_classes`` for background); label_weights ``(N,)``.
        bbox_targets: ``(N, 4)`` target deltas (``bbox_coder``'s encoding).
        anchors: ``(N, 4)`` the anchors the deltas are relative to.
        pos_gt_inds: per image, the object index of each of its positives in anchor order
            (``SamplingResult.pos_assigned_gt_inds``; None for an image without any).
        loss_cls: the head's classification loss, called with ``reduction_override='none'``.
        bbox_coder: decodes deltas into boxes (``decode(anchors, deltas)``).
        k, bias: the mapping ``(bias + (1 - bias) * w) ** k`` (``train_cfg.isr``).
        num_classes: object classes.
    """
    weights = label_weights.clone()
    pos = ((labels >= 0) & (labels < num_classes)).nonzero().reshape(-1)
    if pos.numel() == 0:
        return weights
    pos_labels = labels[pos]
    # MMDetection numbers each image's objects from the previous image's largest index + 1
    objects, offset = [], 0
    for inds in pos_gt_inds:
        if inds is None:
            continue
        objects.append(inds + offset)
        if len(inds):
            offset = int(inds.max()) + 1
    objects = torch.cat(objects) if objects else pos.new_zeros(0)
    if len(objects) != len(pos):
        raise ValueError(f"isr_p: {len(pos)} positive labels but {len(objects)} positives in "
                         f"the sampling results")
    boxes = bbox_coder.decode(anchors[pos], bbox_pred[pos].detach().reshape(-1, 4))
    target_boxes = bbox_coder.decode(anchors[pos], bbox_targets[pos].reshape(-1, 4))
    ious = aligned_bbox_overlaps(boxes, target_boxes)
    importance = weights[pos].clone()
    count = pos_labels.bincount().max()
    for label in pos_labels.unique():
        in_class = (pos_labels == label).nonzero().view(-1)
        class_objects = objects[in_class]
        for obj in class_objects.unique():
            of_object = in_class[class_objects == obj]
            # local rank first: a better-localized sample of one object outranks the others
            ious[of_object] += count - _descending_rank(ious[of_object]).float()
        rank = _descending_rank(ious[in_class])
        importance[in_class] *= (count - rank.float()) / count
    importance = (bias + importance * (1 - bias)).pow(k)
    pos_loss = loss_cls(cls_score[pos].detach(), pos_labels, reduction_override="none")
    expand = (slice(None), None) if pos_loss.dim() > 1 else (slice(None),)
    before = (pos_loss * weights[pos][expand]).sum()
    after = (pos_loss * importance[expand]).sum()
    weights[pos] = importance * (before / after)
    return weights


def carl_loss(cls_score: torch.Tensor, labels: torch.Tensor, bbox_pred: torch.Tensor,
              bbox_targets: torch.Tensor, loss_bbox: Callable[..., torch.Tensor],
              k: float = 1.0, bias: float = 0.2, avg_factor: float | None = None,
              sigmoid: bool = False, num_classes: int = 80) -> torch.Tensor:
    """The classification-aware regression loss of the positives (a scalar).

    Args:
        cls_score: ``(N, C')`` logits (sigmoid per class with ``sigmoid``, else softmax over
            the classes and background).
        labels: ``(N,)`` targets (``num_classes`` for background).
        bbox_pred, bbox_targets: ``(N, 4)`` predicted and target deltas.
        loss_bbox: the regression loss, called with ``reduction_override='none'``.
        k, bias: the mapping ``(bias + (1 - bias) * score) ** k`` (``train_cfg.carl``).
        avg_factor: what the summed loss is divided by (default: ``N``).
        num_classes: object classes.
    """
    pos = ((labels >= 0) & (labels < num_classes)).nonzero().reshape(-1)
    if pos.numel() == 0:
        return cls_score.sum() * 0.0
    pos_labels = labels[pos]
    probs = cls_score.sigmoid() if sigmoid else cls_score.softmax(-1)
    weights = (bias + (1 - bias) * probs[pos, pos_labels]).pow(k)
    # gradients flow through the weights into the scores, normalizer included
    weights = weights * (float(len(pos)) / weights.sum())
    if avg_factor is None:
        avg_factor = bbox_targets.size(0)
    reg = loss_bbox(bbox_pred[pos], bbox_targets[pos], reduction_override="none") / avg_factor
    return (reg * weights[:, None]).sum()
