"""TOOD's task-aligned assignment (MMDetection 2.x's ``TaskAlignedAssigner``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from detlab.config import ConfigError
from detlab.models.assigners.assign_result import (
    AssignResult,
    assigned_labels,
    empty_result,
    require,
)
from detlab.models.assigners.atss_assigner import INF, IOU_2D, best_positive, centers, inside_gts
from detlab.registry import MODELS


@MODELS.register_module()
class TaskAlignedAssigner:
    """Task-aligned assignment: for each ground truth, the ``topk`` priors of highest
    alignment ``score ** alpha * IoU ** beta`` (score of the ground truth's class, IoU of the
    predicted box) whose centers lie inside the box are positives; a prior positive for several
    ground truths takes the one its prediction overlaps most. Everything else is negative.

    ``max_overlaps`` is the positive's predicted-box IoU, ``-100000000`` elsewhere;
    ``assign_metrics`` the positive's alignment metric, 0 elsewhere (as MMDetection's).

    Needs from the head: ``pred_scores`` ``(N, C)`` probabilities, ``pred_bboxes`` ``(N, 4)``
    xyxy (both detached here) and ``gt_labels``.

    MMDetection passes ``alpha`` and ``beta`` to each ``assign`` call (TOOD's head reads them
    from ``train_cfg.alpha`` / ``train_cfg.beta``); here they are the assigner's, and a head
    builds it with them: ``MODELS.build(train_cfg['assigner'], alpha=train_cfg['alpha'],
    beta=train_cfg['beta'])`` (a value in the assigner's own config wins).

    Args:
        topk: positives' candidates per ground truth.
        iou_calculator: the overlap function, ``dict(type='BboxOverlaps2D')``.
        alpha, beta: exponents of the score and of the IoU in the alignment metric.
    """

    def __init__(self, topk: int, iou_calculator: Mapping | object = IOU_2D,
                 alpha: float = 1, beta: float = 6) -> None:
        if topk < 1:
            raise ConfigError(f"TaskAlignedAssigner topk must be at least 1, got {topk}")
        self.iou_calculator = MODELS.build(iou_calculator)
        self.topk, self.alpha, self.beta = topk, alpha, beta

    def assign(self, priors: torch.Tensor, gt_bboxes: torch.Tensor,
               gt_bboxes_ignore: torch.Tensor | None = None,
               gt_labels: torch.Tensor | None = None, *,
               num_level_priors: Sequence[int] | None = None,
               pred_scores: torch.Tensor | None = None,
               pred_bboxes: torch.Tensor | None = None) -> AssignResult:
        """Assign ``(N, 4)`` xyxy priors to ``(G, 4)`` xyxy ground truths (labels ``(G,)``);
        ``gt_bboxes_ignore`` is not used (nor by MMDetection)."""
        for name, value in (("pred_scores", pred_scores), ("pred_bboxes", pred_bboxes),
                            ("gt_labels", gt_labels)):
            require("TaskAlignedAssigner", name, value)
        priors = priors[:, :4]
        num_gts, num_priors = gt_bboxes.shape[0], priors.shape[0]
        overlaps = self.iou_calculator(pred_bboxes, gt_bboxes).detach()  # (N, G)
        scores = pred_scores[:, gt_labels].detach()
        if num_gts == 0 or num_priors == 0:
            result = empty_result(num_gts, num_priors, gt_labels, priors)
            result.assign_metrics = priors.new_zeros((num_priors,))
            return result
        metrics = scores ** self.alpha * overlaps ** self.beta
        _, candidates = metrics.topk(min(self.topk, num_priors), dim=0, largest=True)
        gt_range = torch.arange(num_gts, device=priors.device)
        cx, cy = centers(priors)
        is_pos = (metrics[candidates, gt_range] > 0) \
            & inside_gts(cx[candidates], cy[candidates], gt_bboxes)
        max_overlaps, argmax = best_positive(overlaps, candidates, is_pos)
        pos = max_overlaps != -INF
        gt_inds = priors.new_zeros((num_priors,), dtype=torch.long)
        gt_inds[pos] = argmax[pos] + 1
        assign_metrics = priors.new_zeros((num_priors,))
        assign_metrics[pos] = metrics[pos, argmax[pos]]
        return AssignResult(num_gts, gt_inds, max_overlaps, assigned_labels(gt_inds, gt_labels),
                            assign_metrics)

    def __repr__(self) -> str:
        return (f"TaskAlignedAssigner(topk={self.topk}, alpha={self.alpha}, "
                f"beta={self.beta})")
