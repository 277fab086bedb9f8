"""YOLOX's SimOTA assignment (MMDetection 2.x's ``SimOTAAssigner``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from detlab.models.assigners.assign_result import AssignResult, empty_result, require
from detlab.models.assigners.iou import bbox_overlaps
from detlab.registry import MODELS

INF = 100000.0
EPS = 1e-7  # added to IoUs before the log of the IoU cost


def center_priors(priors: torch.Tensor, gt_bboxes: torch.Tensor,
                  center_radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which priors may match which ground truths.

    ``priors`` ``(N, 4)`` points ``(x, y, stride_w, stride_h)``, ``gt_bboxes`` ``(G, 4)`` xyxy.
    Returns ``(N,)`` bool -- the point lies inside some box or within ``center_radius``
    strides of some box's center -- and, for those ``V`` priors, ``(V, G)`` bool: inside the
    box *and* within the radius.
    """
    x, y = priors[:, 0:1], priors[:, 1:2]  # (N, 1)
    stride_x, stride_y = priors[:, 2:3], priors[:, 3:4]
    in_box = torch.stack([x - gt_bboxes[:, 0], y - gt_bboxes[:, 1], gt_bboxes[:, 2] - x,
                          gt_bboxes[:, 3] - y], dim=1).min(dim=1).values > 0  # (N, G)
    gt_cx = (gt_bboxes[:, 0] + gt_bboxes[:, 2]) / 2.0
    gt_cy = (gt_bboxes[:, 1] + gt_bboxes[:, 3]) / 2.0
    in_center = torch.stack([x - (gt_cx - center_radius * stride_x),
                             y - (gt_cy - center_radius * stride_y),
                             (gt_cx + center_radius * stride_x) - x,
                             (gt_cy + center_radius * stride_y) - y],
                            dim=1).min(dim=1).values > 0
    valid = (in_box.sum(dim=1) > 0) | (in_center.sum(dim=1) > 0)
    return valid, in_box[valid, :] & in_center[valid, :]


def dynamic_k_matching(cost: torch.Tensor, ious: torch.Tensor,
                       candidate_topk: int) -> torch.Tensor:
    """``(V, G)`` uint8 matching: ground truth ``j`` takes the ``k_j`` priors of least cost,
    ``k_j`` the (integer part of the) sum of its ``candidate_topk`` best IoUs, at least 1; a
    prior taken by several ground truths keeps the one of least cost.

    ``cost`` and ``ious`` ``(V, G)``. Ground truths sharing a ``k`` are matched in one top-k
    call, so the loop runs over the distinct ``k`` (at most ``candidate_topk``), not over the
    ground truths; each column's top-k is the one MMDetection computes for it alone.
    """
    matching = torch.zeros_like(cost, dtype=torch.uint8)
    topk_ious, _ = torch.topk(ious, min(candidate_topk, ious.size(0)), dim=0)
    dynamic_ks = torch.clamp(topk_ious.sum(0).int(), min=1)  # (G,)
    for k in dynamic_ks.unique().tolist():
        cols = torch.nonzero(dynamic_ks == k).squeeze(1)
        _, rows = torch.topk(cost[:, cols], k=k, dim=0, largest=False)  # (k, g)
        matching[rows, cols.expand_as(rows)] = 1
    shared = matching.sum(1) > 1
    if shared.any():
        _, cheapest = torch.min(cost[shared, :], dim=1)
        matching[shared, :] = 0
        matching[shared, cheapest] = 1
    return matching


@MODELS.register_module()
class SimOTAAssigner:
    """SimOTA: each ground truth takes its ``k`` cheapest priors, ``k`` estimated from its best
    predicted IoUs; the cost is ``cls_weight`` * BCE(sqrt(score), one-hot label) + ``iou_weight``
    * -log(IoU + 1e-7), plus 100000 unless the prior lies inside the box and within
    ``center_radius`` strides of its center. Priors in neither region of any box are negatives
    without a cost.

    ``max_overlaps`` is the positive's predicted-box IoU, ``-100000`` elsewhere (0 everywhere
    when nothing matches, as MMDetection's).

    Needs from the head: ``priors`` ``(N, 4)`` points ``(x, y, stride_w, stride_h)`` (e.g.
    ``MlvlPointGenerator.grid_priors(..., with_stride=True)``), ``pred_scores`` ``(N, C)``
    probabilities (YOLOX: class score times objectness), ``pred_bboxes`` ``(N, 4)`` xyxy, and
    ``gt_labels``. On a CUDA out-of-memory error it retries on the CPU, as MMDetection does.

    Args:
        center_radius: the center region's half size, in strides.
        candidate_topk: the IoUs summed for each ground truth's ``k``.
        iou_weight, cls_weight: weights of the two costs.
    """

    def __init__(self, center_radius: float = 2.5, candidate_topk: int = 10,
                 iou_weight: float = 3.0, cls_weight: float = 1.0) -> None:
        self.center_radius, self.candidate_topk = center_radius, candidate_topk
        self.iou_weight, self.cls_weight = iou_weight, cls_weight

    def assign(self, priors: torch.Tensor, gt_bboxes: torch.Tensor,
               gt_bboxes_ignore: torch.Tensor | None = None,
               gt_labels: torch.Tensor | None = None, *,
               num_level_priors: Sequence[int] | None = None,
               pred_scores: torch.Tensor | None = None,
               pred_bboxes: torch.Tensor | None = None) -> AssignResult:
        """Assign ``(N, 4)`` strided points to ``(G, 4)`` xyxy ground truths (labels ``(G,)``);
        ``gt_bboxes_ignore`` is not used (nor by MMDetection)."""
        for name, value in (("pred_scores", pred_scores), ("pred_bboxes", pred_bboxes),
                            ("gt_labels", gt_labels)):
            require("SimOTAAssigner", name, value)
        if priors.ndim != 2 or priors.shape[1] != 4:
            raise ValueError(f"SimOTAAssigner needs (N, 4) priors (x, y, stride_w, stride_h); "
                             f"got {tuple(priors.shape)}: generate them with_stride=True")
        try:
            return self._assign(priors, gt_bboxes, gt_labels, pred_scores, pred_bboxes)
        except torch.cuda.OutOfMemoryError:
            warnings.warn("SimOTAAssigner ran out of GPU memory; assigning this image on the "
                          "CPU (reduce the batch or image size to avoid it)", stacklevel=2)
            torch.cuda.empty_cache()
            device = pred_scores.device
            result = self._assign(priors.cpu(), gt_bboxes.cpu().float(), gt_labels.cpu(),
                                  pred_scores.cpu(), pred_bboxes.cpu())
            result.gt_inds = result.gt_inds.to(device)
            result.max_overlaps = result.max_overlaps.to(device)
            result.labels = result.labels.to(device)
            return result

    def _assign(self, priors: torch.Tensor, gt_bboxes: torch.Tensor, gt_labels: torch.Tensor,
                pred_scores: torch.Tensor, pred_bboxes: torch.Tensor) -> AssignResult:
        num_gts, num_priors = gt_bboxes.shape[0], pred_bboxes.shape[0]
        valid, in_box_and_center = center_priors(priors, gt_bboxes, self.center_radius)
        valid_bboxes, valid_scores = pred_bboxes[valid], pred_scores[valid]
        num_valid = valid_bboxes.shape[0]
        if num_gts == 0 or num_priors == 0 or num_valid == 0:
            return empty_result(num_gts, num_priors, gt_labels, pred_bboxes)
        ious = bbox_overlaps(valid_bboxes, gt_bboxes)  # (V, G)
        cost = (self._cls_cost(valid_scores, gt_labels) * self.cls_weight
                + -torch.log(ious + EPS) * self.iou_weight + (~in_box_and_center) * INF)
        matching = dynamic_k_matching(cost, ious, self.candidate_topk)
        matched = matching.sum(1) > 0  # (V,)
        positive = valid.clone()
        positive[valid] = matched
        gt_inds = pred_bboxes.new_zeros((num_priors,), dtype=torch.long)
        matched_gt = matching[matched, :].argmax(1)
        gt_inds[positive] = matched_gt + 1
        labels = gt_inds.new_full((num_priors,), -1)
        labels[positive] = gt_labels[matched_gt].long()
        max_overlaps = gt_inds.new_full((num_priors,), -INF, dtype=torch.float32)
        max_overlaps[positive] = (matching * ious).sum(1)[matched]
        return AssignResult(num_gts, gt_inds, max_overlaps, labels)

    @staticmethod
    def _cls_cost(scores: torch.Tensor, gt_labels: torch.Tensor) -> torch.Tensor:
        """``(V, G)`` binary cross-entropy of ``sqrt(scores)`` ``(V, C)`` with each ground
        truth's one-hot label, summed over the classes."""
        num_valid, num_gts = scores.shape[0], gt_labels.shape[0]
        onehot = F.one_hot(gt_labels.to(torch.int64), scores.shape[-1]).float()
        onehot = onehot.unsqueeze(0).expand(num_valid, -1, -1)  # (V, G, C)
        probs = scores.to(torch.float32).sqrt().unsqueeze(1).expand(-1, num_gts, -1)
        bce = F.binary_cross_entropy(probs, onehot, reduction="none")
        return bce.sum(-1).to(scores.dtype)

    def __repr__(self) -> str:
        return (f"SimOTAAssigner(center_radius={self.center_radius}, "
                f"candidate_topk={self.candidate_topk}, iou_weight={self.iou_weight}, "
                f"cls_weight={self.cls_weight})")
