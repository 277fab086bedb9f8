"""ATSS: adaptive training sample selection (MMDetection 2.x's ``ATSSAssigner``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from detlab.models.assigners.assign_result import (
    AssignResult,
    assigned_labels,
    empty_result,
    require,
)
from detlab.models.utils import frozen
from detlab.registry import MODELS

IOU_2D = frozen(type="BboxOverlaps2D")
INF = 100000000


def centers(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N,)`` x and ``(N,)`` y centers of ``(N, 4)`` xyxy boxes."""
    return (boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0


def inside_gts(cx: torch.Tensor, cy: torch.Tensor, gt_bboxes: torch.Tensor) -> torch.Tensor:
    """``(K, G)`` bool: the point ``(cx, cy)`` ``(K, G)`` lies more than 0.01 inside its column's
    ground truth ``gt_bboxes`` ``(G, 4)`` xyxy."""
    sides = torch.stack([cx - gt_bboxes[:, 0], cy - gt_bboxes[:, 1], gt_bboxes[:, 2] - cx,
                         gt_bboxes[:, 3] - cy], dim=1)  # (K, 4, G)
    return sides.min(dim=1)[0] > 0.01


def best_positive(overlaps: torch.Tensor, candidates: torch.Tensor,
                  is_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prior's best ground truth among those it is a positive candidate of.

    ``overlaps`` ``(N, G)``, ``candidates`` ``(K, G)`` prior indices, ``is_pos`` ``(K, G)``.
    Returns ``(N,)`` the best overlap (``-INF`` where none) and its ground truth's index; ties
    go to the lower index, read from a ``(G, N)`` layout as MMDetection reads it.
    """
    num_gts = overlaps.shape[1]
    gt_cols = torch.arange(num_gts, device=overlaps.device).expand_as(candidates)
    rows, cols = candidates[is_pos], gt_cols[is_pos]
    masked = torch.full_like(overlaps, -INF).t().contiguous()  # (G, N)
    masked[cols, rows] = overlaps[rows, cols]
    return masked.t().max(dim=1)


@MODELS.register_module()
class ATSSAssigner:
    """Adaptive training sample selection.

    For each ground truth: on each level, the ``topk`` priors whose centers are nearest its
    center are candidates; candidates whose IoU reaches the mean + standard deviation of the
    candidates' IoUs, and whose center lies inside the box, are positives. A prior positive for
    several ground truths takes the one it overlaps most. Everything else is negative (``0``),
    priors inside ignored boxes (``ignore_iof_thr``) ignored (``-1``) unless positive.

    ``max_overlaps`` is the positive's IoU, ``-100000000`` elsewhere (as MMDetection's).

    Needs from the head: ``num_level_priors`` (the priors per level, in the order of
    ``priors``); with ``alpha`` (DDOD's cost), also ``pred_scores`` ``(N, C)`` probabilities,
    ``pred_bboxes`` ``(N, 4)`` xyxy and ``gt_labels``.

    Args:
        topk: candidates per level and ground truth.
        alpha: None for IoU; else the quality is ``score ** (1 - alpha) * IoU(pred) ** alpha``
            (DDOD).
        iou_calculator: the overlap function, ``dict(type='BboxOverlaps2D')``.
        ignore_iof_thr: priors whose IoF with an ignored box exceeds it are ignored (-1: off).
    """

    def __init__(self, topk: int, alpha: float | None = None,
                 iou_calculator: Mapping | object = IOU_2D, ignore_iof_thr: float = -1) -> None:
        self.iou_calculator = MODELS.build(iou_calculator)
        self.topk, self.alpha, self.ignore_iof_thr = topk, alpha, ignore_iof_thr

    def assign(self, priors: torch.Tensor, gt_bboxes: torch.Tensor,
               gt_bboxes_ignore: torch.Tensor | None = None,
               gt_labels: torch.Tensor | None = None, *,
               num_level_priors: Sequence[int] | None = None,
               pred_scores: torch.Tensor | None = None,
               pred_bboxes: torch.Tensor | None = None) -> AssignResult:
        """Assign ``(N, 4)`` xyxy priors to ``(G, 4)`` xyxy ground truths (labels ``(G,)``);
        ``gt_bboxes_ignore`` ``(K, 4)`` xyxy boxes to ignore."""
        require("ATSSAssigner", "num_level_priors", num_level_priors)
        priors = priors[:, :4]
        if sum(num_level_priors) != len(priors):
            raise ValueError(f"ATSSAssigner: num_level_priors {list(num_level_priors)} add up to "
                             f"{sum(num_level_priors)}, but there are {len(priors)} priors")
        overlaps = self._quality(priors, gt_bboxes, gt_labels, pred_scores, pred_bboxes)
        num_gts, num_priors = gt_bboxes.shape[0], priors.shape[0]
        if num_gts == 0 or num_priors == 0:
            return empty_result(num_gts, num_priors, gt_labels, overlaps)
        gt_inds = overlaps.new_zeros((num_priors,), dtype=torch.long)
        gt_cx, gt_cy = centers(gt_bboxes)
        cx, cy = centers(priors)
        distances = (torch.stack([cx, cy], 1)[:, None, :]
                     - torch.stack([gt_cx, gt_cy], 1)[None, :, :]).pow(2).sum(-1).sqrt()
        if (self.ignore_iof_thr > 0 and gt_bboxes_ignore is not None
                and gt_bboxes_ignore.numel() > 0):
            ignored = self.iou_calculator(priors, gt_bboxes_ignore, mode="iof").max(dim=1)[0] \
                > self.ignore_iof_thr
            distances[ignored, :] = INF
            gt_inds[ignored] = -1
        candidates = self._candidates(distances, num_level_priors)  # (K, G)
        cand_overlaps = overlaps[candidates, torch.arange(num_gts, device=priors.device)]
        threshold = cand_overlaps.mean(0) + cand_overlaps.std(0)
        is_pos = (cand_overlaps >= threshold[None, :]) \
            & inside_gts(cx[candidates], cy[candidates], gt_bboxes)
        max_overlaps, argmax = best_positive(overlaps, candidates, is_pos)
        pos = max_overlaps != -INF
        gt_inds[pos] = argmax[pos] + 1
        return AssignResult(num_gts, gt_inds, max_overlaps, assigned_labels(gt_inds, gt_labels))

    def _quality(self, priors: torch.Tensor, gt_bboxes: torch.Tensor,
                 gt_labels: torch.Tensor | None, pred_scores: torch.Tensor | None,
                 pred_bboxes: torch.Tensor | None) -> torch.Tensor:
        """``(N, G)`` IoU of priors and ground truths, or DDOD's cost with ``alpha``."""
        if self.alpha is None:
            return self.iou_calculator(priors, gt_bboxes)
        for name, value in (("pred_scores", pred_scores), ("pred_bboxes", pred_bboxes),
                            ("gt_labels", gt_labels)):
            require("ATSSAssigner", name, value, " when alpha is set (DDOD's cost)")
        cls_cost = pred_scores[:, gt_labels]
        overlaps = self.iou_calculator(pred_bboxes, gt_bboxes)
        return cls_cost ** (1 - self.alpha) * overlaps ** self.alpha

    def _candidates(self, distances: torch.Tensor,
                    num_level_priors: Sequence[int]) -> torch.Tensor:
        """``(K, G)`` indices of the ``topk`` nearest priors of each level (per level: fewer
        when the level has fewer priors)."""
        candidates, start = [], 0
        for count in num_level_priors:  # one top-k a level; levels are few
            k = min(self.topk, count)
            _, idx = distances[start:start + count].topk(k, dim=0, largest=False)
            candidates.append(idx + start)
            start += count
        return torch.cat(candidates, dim=0)

    def __repr__(self) -> str:
        return (f"ATSSAssigner(topk={self.topk}, alpha={self.alpha}, "
                f"ignore_iof_thr={self.ignore_iof_thr})")
