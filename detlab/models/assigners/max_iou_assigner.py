"""Assign each prior (anchor) to the ground-truth box it overlaps most (MMDetection 2.x's
``MaxIoUAssigner``), vectorized over priors and ground truths."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from detlab.config import ConfigError
from detlab.models.assigners.assign_result import AssignResult
from detlab.models.utils import frozen
from detlab.registry import MODELS

IOU_2D = frozen(type="BboxOverlaps2D")


def _neg_range(neg_iou_thr: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(neg_iou_thr, (int, float)):
        return 0.0, float(neg_iou_thr)
    if isinstance(neg_iou_thr, Sequence) and len(neg_iou_thr) == 2:
        return float(neg_iou_thr[0]), float(neg_iou_thr[1])
    raise ConfigError(f"MaxIoUAssigner neg_iou_thr must be a number or a (low, high) pair, got "
                      f"{neg_iou_thr!r}")


@MODELS.register_module()
class MaxIoUAssigner:
    """Each prior gets ``-1`` (ignored), ``0`` (negative) or ``i + 1`` (the i-th ground truth).

    1. Every prior starts ignored.
    2. Priors whose best IoU is in ``[0, neg_iou_thr)`` (or ``[lo, hi)``) become negatives.
    3. Priors whose best IoU is ``>= pos_iou_thr`` take that ground truth.
    4. With ``match_low_quality``, each ground truth whose best IoU is ``>= min_pos_iou`` also
       takes its best prior(s) -- all priors tied at that IoU with ``gt_max_assign_all`` -- the
       later ground truth winning a prior claimed by several.

    Args:
        pos_iou_thr: IoU for a positive.
        neg_iou_thr: IoU below which a prior is negative; a ``(lo, hi)`` pair for a range.
        min_pos_iou: the least IoU for a low-quality match.
        gt_max_assign_all: a low-quality match takes all priors tied at the best IoU.
        ignore_iof_thr: priors whose IoF with an ignored box exceeds it are ignored (-1: off).
        ignore_wrt_candidates: IoF over the prior's area (True) or the ignored box's (False).
        match_low_quality: step 4 on or off.
        gpu_assign_thr: accepted for MMDetection configs; assignment runs where the boxes are.
        iou_calculator: the overlap function, ``dict(type='BboxOverlaps2D')``.
    """

    def __init__(self, pos_iou_thr: float, neg_iou_thr: float | Sequence[float],
                 min_pos_iou: float = 0.0, gt_max_assign_all: bool = True,
                 ignore_iof_thr: float = -1, ignore_wrt_candidates: bool = True,
                 match_low_quality: bool = True, gpu_assign_thr: int = -1,
                 iou_calculator: Mapping | object = IOU_2D) -> None:
        self.iou_calculator = MODELS.build(iou_calculator)
        self.pos_iou_thr, self.neg_iou_thr = float(pos_iou_thr), neg_iou_thr
        self.neg_range = _neg_range(neg_iou_thr)
        self.min_pos_iou, self.gt_max_assign_all = float(min_pos_iou), gt_max_assign_all
        self.ignore_iof_thr, self.ignore_wrt_candidates = ignore_iof_thr, ignore_wrt_candidates
        self.match_low_quality, self.gpu_assign_thr = match_low_quality, gpu_assign_thr

    def assign(self, priors: torch.Tensor, gt_bboxes: torch.Tensor,
               gt_bboxes_ignore: torch.Tensor | None = None,
               gt_labels: torch.Tensor | None = None, *,
               num_level_priors: Sequence[int] | None = None,
               pred_scores: torch.Tensor | None = None,
               pred_bboxes: torch.Tensor | None = None) -> AssignResult:
        """Assign ``(N, 4)`` xyxy priors to ``(G, 4)`` xyxy ground truths (labels ``(G,)``);
        ``gt_bboxes_ignore`` ``(K, 4)`` xyxy boxes to ignore.

        The keyword-only ``num_level_priors``, ``pred_scores`` and ``pred_bboxes`` are the
        assigner interface's extras (for ATSS-, SimOTA- or TOOD-style assigners); IoU
        assignment ignores them.
        """
        overlaps = self.iou_calculator(gt_bboxes, priors)  # (G, N)
        if (self.ignore_iof_thr > 0 and gt_bboxes_ignore is not None
                and gt_bboxes_ignore.numel() > 0 and priors.numel() > 0):
            if self.ignore_wrt_candidates:
                iof = self.iou_calculator(priors, gt_bboxes_ignore, mode="iof").max(dim=1).values
            else:
                iof = self.iou_calculator(gt_bboxes_ignore, priors, mode="iof").max(dim=0).values
            overlaps[:, iof > self.ignore_iof_thr] = -1
        return self.assign_wrt_overlaps(overlaps, gt_labels)

    def assign_wrt_overlaps(self, overlaps: torch.Tensor,
                            gt_labels: torch.Tensor | None = None) -> AssignResult:
        """Assign from a ``(G, N)`` overlap matrix (``-1`` marks ignored priors)."""
        num_gts, num_bboxes = overlaps.shape
        gt_inds = overlaps.new_full((num_bboxes,), -1, dtype=torch.long)
        if num_gts == 0 or num_bboxes == 0:
            if num_gts == 0:
                gt_inds[:] = 0  # no object anywhere: every prior is background
            labels = None if gt_labels is None else gt_inds.new_full((num_bboxes,), -1)
            return AssignResult(num_gts, gt_inds, overlaps.new_zeros((num_bboxes,)), labels)
        max_overlaps, argmax = overlaps.max(dim=0)
        lo, hi = self.neg_range
        gt_inds[(max_overlaps >= lo) & (max_overlaps < hi)] = 0
        positive = max_overlaps >= self.pos_iou_thr
        gt_inds[positive] = argmax[positive] + 1
        if self.match_low_quality:
            self._match_low_quality(overlaps, gt_inds)
        labels = None
        if gt_labels is not None:
            labels = gt_inds.new_full((num_bboxes,), -1)
            pos = gt_inds > 0
            labels[pos] = gt_labels[gt_inds[pos] - 1].long()
        return AssignResult(num_gts, gt_inds, max_overlaps, labels)

    def _match_low_quality(self, overlaps: torch.Tensor, gt_inds: torch.Tensor) -> None:
        """Give each ground truth its best prior(s), in place; where several claim one prior the
        highest index wins (MMDetection assigns them one after the other)."""
        num_gts = overlaps.shape[0]
        gt_max, gt_argmax = overlaps.max(dim=1)  # (G,)
        eligible = gt_max >= self.min_pos_iou
        rank = torch.arange(1, num_gts + 1, device=overlaps.device)
        if self.gt_max_assign_all:
            claims = (overlaps == gt_max[:, None]) & eligible[:, None]  # (G, N)
            winner = (claims.long() * rank[:, None]).max(dim=0).values  # 0: unclaimed
        else:
            winner = torch.zeros_like(gt_inds)
            winner.scatter_reduce_(0, gt_argmax[eligible], rank[eligible], reduce="amax")
        claimed = winner > 0
        gt_inds[claimed] = winner[claimed]

    def __repr__(self) -> str:
        return (f"MaxIoUAssigner(pos_iou_thr={self.pos_iou_thr}, neg_iou_thr={self.neg_iou_thr}, "
                f"min_pos_iou={self.min_pos_iou}, ignore_iof_thr={self.ignore_iof_thr}, "
                f"match_low_quality={self.match_low_quality})")


@MODELS.register_module()
class AscendMaxIoUAssigner(MaxIoUAssigner):
    """MaxIoUAssigner under the name of MMDetection's batched Ascend (NPU) version, which
    assigns the same priors (arguments as MaxIoUAssigner)."""
