"""Center-region assignment (MMDetection 2.x's ``CenterRegionAssigner``, FSAF-style)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from detlab.models.assigners.assign_result import AssignResult
from detlab.models.assigners.atss_assigner import IOU_2D
from detlab.registry import MODELS


def scale_boxes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """``(M, 4)`` xyxy boxes scaled by ``scale`` about their centers."""
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)


def points_in_boxes(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``(M, K)`` bool: point ``(M, 2)`` strictly inside xyxy box ``(K, 4)``."""
    x, y = points[:, 0:1], points[:, 1:2]
    return (x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])


def priorities(gt_bboxes: torch.Tensor) -> torch.Tensor:
    """``(G,)`` priority of each ground truth: the smaller the box, the higher."""
    areas = (gt_bboxes[:, 2] - gt_bboxes[:, 0]) * (gt_bboxes[:, 3] - gt_bboxes[:, 1])
    _, order = areas.sort(descending=True)
    return order.argsort()


def one_gt_per_prior(in_core: torch.Tensor, in_shadow: torch.Tensor,
                     priority: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prior takes the core it lies in of highest priority.

    ``in_core``, ``in_shadow`` ``(N, G)`` bool. Returns ``(N,)`` 1-based ground-truth indices
    (0: none) and ``(S, 2)`` (prior, 1-based ground truth) pairs that shadow the prior: its
    shadow regions, then the other cores it lies in.
    """
    num_priors, num_gts = in_core.shape
    gt_inds = in_core.new_zeros((num_priors,), dtype=torch.long)
    shadowed = torch.nonzero(in_shadow)
    if in_core.sum() == 0:
        shadowed[:, 1] += 1
        return gt_inds, shadowed
    pair_priority = in_core.new_full((num_priors, num_gts), -1, dtype=torch.long)
    matched = in_core.any(dim=1)
    pair_priority[in_core] = priority[torch.nonzero(in_core)[:, 1]]
    _, best = pair_priority[matched].max(dim=1)
    gt_inds[matched] = best + 1
    others = in_core.clone()
    others[matched, best] = False
    shadowed = torch.cat([shadowed, torch.nonzero(others)], dim=0)
    shadowed[:, 1] += 1
    return gt_inds, shadowed


@MODELS.register_module()
class CenterRegionAssigner:
    """Priors whose center lies in a ground truth's core (the box scaled by ``pos_scale``,
    overlapping the prior by IoF > ``min_pos_iof``) are positives of it -- of the smallest such
    box when several -- and those in its shadow (scaled by ``neg_scale``) but not its core are
    *shadowed* by it; centers inside an ignored box scaled by ``ignore_gt_scale`` are ignored.

    ``max_overlaps`` is None (as MMDetection's). ``extra['shadowed_labels']`` holds ``(S, 2)``
    (prior index, label) pairs when labels are given; a positive shadowed by a box of its own
    class is turned negative, unless ``foreground_dominate`` (then the pair is dropped).

    Needs from the head: ``priors`` ``(N, 4)`` xyxy.

    Args:
        pos_scale: the core's scale of the box.
        neg_scale: the shadow's scale of the box.
        min_pos_iof: least IoF of a prior with the core (and the shadow).
        ignore_gt_scale: the scale of ignored boxes whose centers are ignored.
        foreground_dominate: a shadowed positive stays positive.
        iou_calculator: the overlap function, ``dict(type='BboxOverlaps2D')``.
    """

    def __init__(self, pos_scale: float, neg_scale: float, min_pos_iof: float = 1e-2,
                 ignore_gt_scale: float = 0.5, foreground_dominate: bool = False,
                 iou_calculator: Mapping | object = IOU_2D) -> None:
        self.iou_calculator = MODELS.build(iou_calculator)
        self.pos_scale, self.neg_scale, self.min_pos_iof = pos_scale, neg_scale, min_pos_iof
        self.ignore_gt_scale, self.foreground_dominate = ignore_gt_scale, foreground_dominate

    def assign(self, priors: torch.Tensor, gt_bboxes: torch.Tensor,
               gt_bboxes_ignore: torch.Tensor | None = None,
               gt_labels: torch.Tensor | None = None, *,
               num_level_priors: Sequence[int] | None = None,
               pred_scores: torch.Tensor | None = None,
               pred_bboxes: torch.Tensor | None = None) -> AssignResult:
        """Assign ``(N, 4)`` xyxy priors to ``(G, 4)`` xyxy ground truths (labels ``(G,)``);
        ``gt_bboxes_ignore`` ``(K, 4)`` xyxy boxes to ignore."""
        if priors.ndim != 2 or priors.shape[1] != 4:
            raise ValueError(f"CenterRegionAssigner needs (N, 4) xyxy priors, got "
                             f"{tuple(priors.shape)}")
        centers = (priors[:, 2:4] + priors[:, 0:2]) / 2
        in_core = points_in_boxes(centers, gt_bboxes) & (self.iou_calculator(
            priors, scale_boxes(gt_bboxes, self.pos_scale), mode="iof") > self.min_pos_iof)
        in_shadow = (self.iou_calculator(priors, scale_boxes(gt_bboxes, self.neg_scale),
                                         mode="iof") > self.min_pos_iof) & ~in_core
        num_gts, num_priors = gt_bboxes.shape[0], priors.shape[0]
        if num_gts == 0 or num_priors == 0:
            gt_inds = in_core.new_zeros((num_priors,), dtype=torch.long)
            shadowed = gt_inds.new_empty((0, 2))
        else:
            gt_inds, shadowed = one_gt_per_prior(in_core, in_shadow, priorities(gt_bboxes))
        if gt_bboxes_ignore is not None and gt_bboxes_ignore.numel() > 0:
            ignored = points_in_boxes(centers, scale_boxes(gt_bboxes_ignore,
                                                           self.ignore_gt_scale)).any(dim=1)
            gt_inds[ignored] = -1
        labels, shadowed_labels = None, None
        if gt_labels is not None:
            labels, shadowed_labels = self._labels(gt_inds, shadowed, gt_labels)
        return AssignResult(num_gts, gt_inds, None, labels,
                            extra={"shadowed_labels": shadowed_labels})

    def _labels(self, gt_inds: torch.Tensor, shadowed: torch.Tensor,
                gt_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels of the priors and ``(S, 2)`` (prior, label) shadow pairs; a positive shadowed
        by its own class is turned negative (``gt_inds`` in place) or the pair is dropped."""
        labels = gt_inds.new_full(gt_inds.shape, -1)
        pos = gt_inds > 0
        labels[pos] = gt_labels[gt_inds[pos] - 1]
        shadowed_labels = shadowed.clone()
        if shadowed.numel() == 0:
            return labels, shadowed_labels
        prior_idx, gt_idx = shadowed[:, 0], shadowed[:, 1]
        shadowed_labels[:, 1] = gt_labels[gt_idx - 1]
        same_class = labels[prior_idx] == shadowed_labels[:, 1]
        if self.foreground_dominate:
            return labels, shadowed_labels[~same_class]
        labels[prior_idx[same_class]] = -1
        gt_inds[prior_idx[same_class]] = 0
        return labels, shadowed_labels

    def __repr__(self) -> str:
        return (f"CenterRegionAssigner(pos_scale={self.pos_scale}, neg_scale={self.neg_scale}, "
                f"min_pos_iof={self.min_pos_iof}, ignore_gt_scale={self.ignore_gt_scale}, "
                f"foreground_dominate={self.foreground_dominate})")
