"""Side-aware boundary localization's box coder (SABL, Wang et al., 2020; MMDetection 2.x's
``BucketingBBoxCoder``).

Each side of a box is found in two steps, relative to its prior scaled by ``scale_factor``: which
of ``ceil(num_buckets / 2)`` buckets next to the side holds the boundary (a classification),
then the boundary's offset from that bucket's center, in bucket widths (a regression). The
predictions are ``(N, 4 * S)`` bucket logits and ``(N, 4 * S)`` offsets, ``S`` buckets per side,
sides in the order left, right, top, bottom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from detlab.config import ConfigError
from detlab.registry import MODELS


def rescale_boxes(boxes: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """``(N, 4)`` xyxy boxes scaled by ``scale_factor`` about their centers."""
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    w = (boxes[:, 2] - boxes[:, 0]) * scale_factor
    h = (boxes[:, 3] - boxes[:, 1]) * scale_factor
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def side_buckets(priors: torch.Tensor, num_buckets: int, scale_factor: float
                 ) -> tuple[torch.Tensor, ...]:
    """The buckets of ``(N, 4)`` xyxy priors scaled by ``scale_factor``: bucket width and height
    ``(N,)``, and the centers ``(N, S)`` of the left, right, top and bottom buckets, each side's
    numbered from its own edge inwards."""
    boxes = rescale_boxes(priors, scale_factor)
    side_num = math.ceil(num_buckets / 2.0)
    bucket_w = (boxes[:, 2] - boxes[:, 0]) / num_buckets
    bucket_h = (boxes[:, 3] - boxes[:, 1]) / num_buckets
    steps = (0.5 + torch.arange(0, side_num).to(boxes).float())[None, :]
    left = boxes[:, 0, None] + steps * bucket_w[:, None]
    right = boxes[:, 2, None] - steps * bucket_w[:, None]
    top = boxes[:, 1, None] + steps * bucket_h[:, None]
    bottom = boxes[:, 3, None] - steps * bucket_h[:, None]
    return bucket_w, bucket_h, left, right, top, bottom


@MODELS.register_module()
class BucketingBBoxCoder:
    """Bucket classification and in-bucket offsets of each side of a box.

    Args:
        num_buckets: buckets across a scaled prior (``ceil(num_buckets / 2)`` per side).
        scale_factor: the prior is scaled by it (about its center) before bucketing, so that
            the buckets reach boundaries outside the prior.
        offset_topk: the offsets of this many nearest buckets are trained.
        offset_upperbound: the offsets of the 2nd..``offset_topk``-th nearest buckets are
            trained only when below it (in bucket widths).
        cls_ignore_neighbor: leave out of the bucket classification the buckets, other than the
            nearest, whose center lies within one bucket of the boundary.
        clip_border: clip decoded boxes to ``max_shape`` (to ``w - 1``, ``h - 1``).
    """

    def __init__(self, num_buckets: int, scale_factor: float, offset_topk: int = 2,
                 offset_upperbound: float = 1.0, cls_ignore_neighbor: bool = True,
                 clip_border: bool = True) -> None:
        if not isinstance(num_buckets, int) or num_buckets < 2:
            raise ConfigError(f"BucketingBBoxCoder num_buckets must be an int >= 2, got "
                              f"{num_buckets!r}")
        side_num = math.ceil(num_buckets / 2.0)
        if not 1 <= offset_topk <= side_num:
            raise ConfigError(f"BucketingBBoxCoder offset_topk must be in [1, {side_num}] (the "
                              f"buckets per side of num_buckets={num_buckets}), got "
                              f"{offset_topk!r}")
        self.num_buckets, self.scale_factor = num_buckets, float(scale_factor)
        self.offset_topk, self.offset_upperbound = offset_topk, offset_upperbound
        self.cls_ignore_neighbor, self.clip_border = cls_ignore_neighbor, clip_border
        self.side_num = side_num

    def encode(self, bboxes: torch.Tensor, gt_bboxes: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(N, 4)`` xyxy priors and targets -> offsets, offset weights, one-hot bucket labels
        and bucket weights, each ``(N, 4 * S)`` (sides left, right, top, bottom)."""
        if bboxes.shape != gt_bboxes.shape or bboxes.ndim != 2 or bboxes.shape[-1] != 4:
            raise ValueError(f"BucketingBBoxCoder.encode needs (N, 4) priors and targets, got "
                             f"{tuple(bboxes.shape)} and {tuple(gt_bboxes.shape)}")
        bboxes, gt = bboxes.float(), gt_bboxes.float()
        bucket_w, bucket_h, left, right, top, bottom = side_buckets(
            bboxes, self.num_buckets, self.scale_factor)
        sizes = (bucket_w, bucket_w, bucket_h, bucket_h)
        centers = (left, right, top, bottom)
        # offsets from each bucket's center to the boundary, in bucket widths
        edges = (gt[:, 0], gt[:, 2], gt[:, 1], gt[:, 3])
        offsets = [(c - e[:, None]) / s[:, None]
                   for c, e, s in zip(centers, edges, sizes, strict=True)]
        offset_weights, nearest = [], []
        rows = torch.arange(0, bboxes.size(0)).to(bboxes).long()
        for off in offsets:
            dist, order = off.abs().topk(self.offset_topk, dim=1, largest=False, sorted=True)
            weight = off.new_zeros(off.size())
            weight[rows, order[:, 0]] = 1.0
            for k in range(1, self.offset_topk):
                weight[rows, order[:, k]] = (dist[:, k] < self.offset_upperbound).float()
            offset_weights.append(weight)
            nearest.append(order[:, 0])
        labels = torch.stack(nearest, dim=-1)
        bucket_labels = F.one_hot(labels.view(-1), self.side_num).view(labels.size(0),
                                                                      -1).float()
        near = torch.cat([(off.abs() < 1).float() for off in offsets], dim=-1)
        if self.cls_ignore_neighbor:
            cls_weights = (~((near == 1) & (bucket_labels == 0))).float()
        else:
            cls_weights = torch.ones_like(near)
        return (torch.cat(offsets, dim=-1), torch.cat(offset_weights, dim=-1), bucket_labels,
                cls_weights)

    def decode(self, bboxes: torch.Tensor, pred_bboxes: Sequence[torch.Tensor],
               max_shape: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 4)`` xyxy priors and ``(bucket_logits, offsets)``, each ``(N, 4 * S)`` -> boxes
        ``(N, 4)`` xyxy (clipped to ``max_shape`` ``(h, w, ...)`` with ``clip_border``) and
        their localization confidence ``(N,)``: per side the best bucket's probability, plus
        the second's when they are neighbours, averaged over the four sides."""
        if len(pred_bboxes) != 2:
            raise ValueError("BucketingBBoxCoder.decode needs (bucket_logits, offsets)")
        cls_preds, offset_preds = pred_bboxes
        num = bboxes.size(0)
        if cls_preds.size(0) != num or offset_preds.size(0) != num:
            raise ValueError(f"BucketingBBoxCoder.decode got {num} priors but "
                             f"{cls_preds.size(0)} and {offset_preds.size(0)} predictions")
        side_num = self.side_num
        scores = F.softmax(cls_preds.view(-1, side_num), dim=1)  # (N * 4, S)
        best_scores, best = scores.topk(2, dim=1, largest=True, sorted=True)
        boxes = rescale_boxes(bboxes, self.scale_factor)
        bucket_w = (boxes[..., 2] - boxes[..., 0]) / self.num_buckets
        bucket_h = (boxes[..., 3] - boxes[..., 1]) / self.num_buckets
        left, right, top, bottom = (best[k::4, 0] for k in range(4))
        offsets = offset_preds.view(-1, 4, side_num)
        rows = torch.arange(num).to(bboxes).long()
        x1 = boxes[..., 0] + (0.5 + left.float()) * bucket_w \
            - offsets[:, 0, :][rows, left] * bucket_w
        x2 = boxes[..., 2] - (0.5 + right.float()) * bucket_w \
            - offsets[:, 1, :][rows, right] * bucket_w
        y1 = boxes[..., 1] + (0.5 + top.float()) * bucket_h \
            - offsets[:, 2, :][rows, top] * bucket_h
        y2 = boxes[..., 3] - (0.5 + bottom.float()) * bucket_h \
            - offsets[:, 3, :][rows, bottom] * bucket_h
        if self.clip_border and max_shape is not None:
            x1 = x1.clamp(min=0, max=max_shape[1] - 1)
            y1 = y1.clamp(min=0, max=max_shape[0] - 1)
            x2 = x2.clamp(min=0, max=max_shape[1] - 1)
            y2 = y2.clamp(min=0, max=max_shape[0] - 1)
        decoded = torch.cat([x1[:, None], y1[:, None], x2[:, None], y2[:, None]], dim=-1)
        neighbours = (best[:, 0] - best[:, 1]).abs() == 1
        confidence = best_scores[:, 0] + best_scores[:, 1] * neighbours.float()
        return decoded, confidence.view(-1, 4).mean(dim=1)

    def __repr__(self) -> str:
        return (f"BucketingBBoxCoder(num_buckets={self.num_buckets}, "
                f"scale_factor={self.scale_factor}, offset_topk={self.offset_topk}, "
                f"offset_upperbound={self.offset_upperbound}, "
                f"cls_ignore_neighbor={self.cls_ignore_neighbor}, "
                f"clip_border={self.clip_border})")
