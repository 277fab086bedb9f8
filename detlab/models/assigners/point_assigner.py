"""RepPoints' point assignment (MMDetection 2.x's ``PointAssigner``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detlab.models.assigners.assign_result import AssignResult, assigned_labels
from detlab.registry import MODELS


def _level_distances(points_xy: torch.Tensor, on_level: torch.Tensor, gt_xy: torch.Tensor,
                     gt_wh: torch.Tensor, pos_num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``pos_num`` points of one level nearest each ground truth of that level.

    ``points_xy`` ``(N, 2)``, ``on_level`` ``(N,)`` bool, ``gt_xy`` / ``gt_wh`` ``(g, 2)``.
    Returns ``(k, g)`` distances (in box sizes) and ``(k, g)`` point indices into all ``N``.
    """
    level_index = torch.nonzero(on_level).squeeze(1)
    level_xy = points_xy[on_level]  # (n, 2)
    dist = ((level_xy[:, None, :] - gt_xy[None]) / gt_wh[None]).norm(dim=-1)  # (n, g)
    nearest, idx = torch.topk(dist, min(pos_num, len(level_xy)), dim=0, largest=False)
    return nearest, level_index[idx]


@MODELS.register_module()
class PointAssigner:
    """Each ground truth takes the ``pos_num`` points of its pyramid level nearest its center
    (distance in units of the box's width and height); a point taken by several keeps the
    nearest (the first on ties). The level of a box of size ``w x h`` is
    ``int((log2(w / scale) + log2(h / scale)) / 2)``, clamped to the points' levels; a point's
    level is ``int(log2(stride))``. Every other point is negative.

    ``max_overlaps`` is None (as MMDetection's).

    Needs from the head: ``priors`` ``(N, 3)`` points ``(x, y, stride)`` or ``(N, 4)``
    ``(x, y, stride_w, stride_h)`` (``MlvlPointGenerator.grid_priors(..., with_stride=True)``).

    Args:
        scale: the box size of level 0.
        pos_num: points per ground truth.
    """

    def __init__(self, scale: float = 4, pos_num: int = 3) -> None:
        self.scale, self.pos_num = scale, pos_num

    def assign(self, priors: torch.Tensor, gt_bboxes: torch.Tensor,
               gt_bboxes_ignore: torch.Tensor | None = None,
               gt_labels: torch.Tensor | None = None, *,
               num_level_priors: Sequence[int] | None = None,
               pred_scores: torch.Tensor | None = None,
               pred_bboxes: torch.Tensor | None = None) -> AssignResult:
        """Assign ``(N, 3 or 4)`` strided points to ``(G, 4)`` xyxy ground truths (labels
        ``(G,)``); ``gt_bboxes_ignore`` is not used (nor by MMDetection)."""
        if priors.ndim != 2 or priors.shape[1] < 3:
            raise ValueError(f"PointAssigner needs (N, 3) (x, y, stride) points, got "
                             f"{tuple(priors.shape)}: generate them with_stride=True")
        num_points, num_gts = priors.shape[0], gt_bboxes.shape[0]
        gt_inds = priors.new_zeros((num_points,), dtype=torch.long)
        if num_gts == 0 or num_points == 0:
            return AssignResult(num_gts, gt_inds, None, assigned_labels(gt_inds, gt_labels))
        points_xy, points_lvl = priors[:, :2], torch.log2(priors[:, 2]).int()
        gt_xy = (gt_bboxes[:, :2] + gt_bboxes[:, 2:]) / 2
        gt_wh = (gt_bboxes[:, 2:] - gt_bboxes[:, :2]).clamp(min=1e-6)
        gt_lvl = ((torch.log2(gt_wh[:, 0] / self.scale)
                   + torch.log2(gt_wh[:, 1] / self.scale)) / 2).int()
        gt_lvl = torch.clamp(gt_lvl, min=points_lvl.min(), max=points_lvl.max())
        taken = gt_bboxes.new_full((num_points, num_gts), float("inf"))  # (N, G) distances
        for level in gt_lvl.unique().tolist():  # one top-k a level; levels are few
            on_level, gts = points_lvl == level, torch.nonzero(gt_lvl == level).squeeze(1)
            if not on_level.any():
                continue
            nearest, idx = _level_distances(points_xy, on_level, gt_xy[gts], gt_wh[gts],
                                            self.pos_num)
            taken[idx, gts.expand_as(idx)] = nearest
        best, best_gt = taken.min(dim=1)
        assigned = best < float("inf")
        gt_inds[assigned] = best_gt[assigned] + 1
        return AssignResult(num_gts, gt_inds, None, assigned_labels(gt_inds, gt_labels))

    def __repr__(self) -> str:
        return f"PointAssigner(scale={self.scale}, pos_num={self.pos_num})"
