"""YOLOv3's grid-constrained max-IoU assignment (MMDetection 2.x's ``GridAssigner``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from detlab.models.assigners.assign_result import (
    AssignResult,
    assigned_labels,
    empty_result,
    require,
)
from detlab.models.assigners.atss_assigner import IOU_2D
from detlab.registry import MODELS


def later_claims_win(claims: torch.Tensor) -> torch.Tensor:
    """``(N,)`` 1-based index of the last ground truth claiming each prior in ``claims``
    ``(G, N)`` bool, 0 where none does (the result of assigning ground truths one by one)."""
    rank = torch.arange(1, claims.shape[0] + 1, device=claims.device)
    return (claims.long() * rank[:, None]).max(dim=0).values


@MODELS.register_module()
class GridAssigner:
    """Max-IoU assignment restricted to the anchors *responsible* for a ground truth (those of
    the grid cell holding its center).

    1. Every anchor is ignored (``-1``); anchors whose best IoU is in ``[0, neg_iou_thr]``
       (or ``(lo, hi]``) become negatives.
    2. Responsible anchors whose best responsible IoU exceeds ``pos_iou_thr`` take it.
    3. Each ground truth whose best responsible IoU exceeds ``min_pos_iou`` takes that anchor
       (all anchors tied at it with ``gt_max_assign_all``), later ground truths winning.

    ``max_overlaps`` is each anchor's best IoU among ground truths it is responsible for
    (``-1`` where it is responsible for none), as MMDetection's.

    Needs from the head: ``priors`` ``(N, 4)`` xyxy anchors and ``responsible_flags`` ``(N,)``
    bool (``YOLOAnchorGenerator.responsible_flags``, levels concatenated). This keyword is the
    one addition to the assigners' shared signature: no other input says which cell holds a
    ground truth's center.

    Args:
        pos_iou_thr: IoU above which a responsible anchor is positive.
        neg_iou_thr: IoU up to which an anchor is negative; a ``(lo, hi)`` pair for a range.
        min_pos_iou: IoU above which a ground truth takes its best responsible anchor.
        gt_max_assign_all: step 3 takes all anchors tied at the best IoU.
        iou_calculator: the overlap function, ``dict(type='BboxOverlaps2D')``.
    """

    def __init__(self, pos_iou_thr: float, neg_iou_thr: float | Sequence[float],
                 min_pos_iou: float = 0.0, gt_max_assign_all: bool = True,
                 iou_calculator: Mapping | object = IOU_2D) -> None:
        self.iou_calculator = MODELS.build(iou_calculator)
        self.pos_iou_thr, self.neg_iou_thr = pos_iou_thr, neg_iou_thr
        self.min_pos_iou, self.gt_max_assign_all = min_pos_iou, gt_max_assign_all

    def assign(self, priors: torch.Tensor, gt_bboxes: torch.Tensor,
               gt_bboxes_ignore: torch.Tensor | None = None,
               gt_labels: torch.Tensor | None = None, *,
               num_level_priors: Sequence[int] | None = None,
               pred_scores: torch.Tensor | None = None,
               pred_bboxes: torch.Tensor | None = None,
               responsible_flags: torch.Tensor | None = None) -> AssignResult:
        """Assign ``(N, 4)`` xyxy anchors to ``(G, 4)`` xyxy ground truths (labels ``(G,)``);
        ``gt_bboxes_ignore`` is not used (nor by MMDetection)."""
        require("GridAssigner", "responsible_flags", responsible_flags,
                " (YOLOAnchorGenerator.responsible_flags)")
        num_gts, num_priors = gt_bboxes.shape[0], priors.shape[0]
        overlaps = self.iou_calculator(gt_bboxes, priors)  # (G, N)
        if num_gts == 0 or num_priors == 0:
            return empty_result(num_gts, num_priors, gt_labels, overlaps, fill=-1)
        gt_inds = overlaps.new_full((num_priors,), -1, dtype=torch.long)
        max_overlaps = overlaps.max(dim=0)[0]
        if isinstance(self.neg_iou_thr, (int, float)):
            gt_inds[(max_overlaps >= 0) & (max_overlaps <= self.neg_iou_thr)] = 0
        else:
            lo, hi = self.neg_iou_thr
            gt_inds[(max_overlaps > lo) & (max_overlaps <= hi)] = 0
        responsible = responsible_flags.bool()
        overlaps[:, ~responsible] = -1.0
        max_overlaps, argmax = overlaps.max(dim=0)
        positive = (max_overlaps > self.pos_iou_thr) & responsible
        gt_inds[positive] = argmax[positive] + 1
        winner = self._low_quality(overlaps, responsible)
        gt_inds[winner > 0] = winner[winner > 0]
        return AssignResult(num_gts, gt_inds, max_overlaps, assigned_labels(gt_inds, gt_labels))

    def _low_quality(self, overlaps: torch.Tensor, responsible: torch.Tensor) -> torch.Tensor:
        """``(N,)`` the ground truth (1-based) each anchor takes in step 3, 0 for none."""
        gt_max, gt_argmax = overlaps.max(dim=1)  # (G,)
        eligible = gt_max > self.min_pos_iou
        if self.gt_max_assign_all:
            claims = (overlaps == gt_max[:, None]) & responsible[None, :] & eligible[:, None]
        else:
            claims = torch.zeros_like(overlaps, dtype=torch.bool)
            rows = torch.arange(len(gt_max), device=overlaps.device)
            claims[rows, gt_argmax] = eligible & responsible[gt_argmax]
        return later_claims_win(claims)

    def __repr__(self) -> str:
        return (f"GridAssigner(pos_iou_thr={self.pos_iou_thr}, neg_iou_thr={self.neg_iou_thr}, "
                f"min_pos_iou={self.min_pos_iou}, gt_max_assign_all={self.gt_max_assign_all})")
