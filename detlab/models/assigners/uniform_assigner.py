"""YOLOF's uniform matching (MMDetection 2.x's ``UniformAssigner``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from detlab.config import ConfigError
from detlab.models.assigners.assign_result import AssignResult, assigned_labels, require
from detlab.models.assigners.atss_assigner import IOU_2D
from detlab.registry import MODELS


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` xyxy -> ``(..., 4)`` (center x, center y, w, h)."""
    x1, y1, x2, y2 = boxes.split((1, 1, 1, 1), dim=-1)
    return torch.cat([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


@MODELS.register_module()
class UniformAssigner:
    """Uniform matching: each ground truth takes its ``match_times`` nearest predicted boxes
    and its ``match_times`` nearest anchors (L1 distance of center and size), so every box
    gets as many positives; a match whose anchor IoU is below ``pos_ignore_thr`` is ignored,
    and so is any prediction whose best IoU exceeds ``neg_ignore_thr``. A prior matched twice
    keeps the later match in the order of ``extra`` (written as one indexed assignment, as
    MMDetection does: the later write wins on the CPU).

    As MMDetection's: ``max_overlaps`` holds each ground truth's best anchor IoU, ``(G,)``
    (not one value a prior), and ``labels`` is ``-1`` everywhere when there is nothing to
    match even without ``gt_labels``. ``extra`` holds, for the ``2 * match_times * G`` matches
    in order, ``pos_idx`` (kept, not ignored), ``pos_predicted_boxes`` and ``target_boxes``.

    Needs from the head: ``priors`` ``(N, 4)`` xyxy anchors and ``pred_bboxes`` ``(N, 4)``
    xyxy, with ``N >= match_times``. The nearest boxes are chosen on the CPU, as MMDetection
    does, so that ties break the same way on every device.

    Args:
        pos_ignore_thr: least anchor IoU of a match.
        neg_ignore_thr: predictions whose best IoU exceeds it are ignored, not negative.
        match_times: matches per ground truth, from the predictions and again from the anchors.
        iou_calculator: the overlap function, ``dict(type='BboxOverlaps2D')``.
    """

    def __init__(self, pos_ignore_thr: float, neg_ignore_thr: float, match_times: int = 4,
                 iou_calculator: Mapping | object = IOU_2D) -> None:
        if match_times < 1:
            raise ConfigError(f"UniformAssigner match_times must be at least 1, got "
                              f"{match_times}")
        self.iou_calculator = MODELS.build(iou_calculator)
        self.pos_ignore_thr, self.neg_ignore_thr = pos_ignore_thr, neg_ignore_thr
        self.match_times = match_times

    def assign(self, priors: torch.Tensor, gt_bboxes: torch.Tensor,
               gt_bboxes_ignore: torch.Tensor | None = None,
               gt_labels: torch.Tensor | None = None, *,
               num_level_priors: Sequence[int] | None = None,
               pred_scores: torch.Tensor | None = None,
               pred_bboxes: torch.Tensor | None = None) -> AssignResult:
        """Assign ``(N, 4)`` xyxy anchors (with their ``(N, 4)`` predicted boxes) to ``(G, 4)``
        xyxy ground truths (labels ``(G,)``); ``gt_bboxes_ignore`` is not used (nor by
        MMDetection)."""
        require("UniformAssigner", "pred_bboxes", pred_bboxes)
        num_gts, num_priors = gt_bboxes.shape[0], pred_bboxes.shape[0]
        if num_gts == 0 or num_priors == 0:
            return self._empty(num_gts, pred_bboxes)
        if num_priors < self.match_times:
            raise ValueError(f"UniformAssigner matches match_times={self.match_times} priors a "
                             f"ground truth but the image has only {num_priors} priors")
        gt_cxcywh = xyxy_to_cxcywh(gt_bboxes)
        pred_cost = torch.cdist(xyxy_to_cxcywh(pred_bboxes), gt_cxcywh, p=1).cpu()
        anchor_cost = torch.cdist(xyxy_to_cxcywh(priors), gt_cxcywh, p=1).cpu()
        nearest_pred = torch.topk(pred_cost, k=self.match_times, dim=0, largest=False)[1]
        nearest_anchor = torch.topk(anchor_cost, k=self.match_times, dim=0, largest=False)[1]
        # (match_times, 2G) -> flat: per rank, the predictions' matches then the anchors'
        matches = torch.cat([nearest_pred, nearest_anchor], dim=1).reshape(-1)
        matches = matches.to(pred_bboxes.device)
        pred_overlaps = self.iou_calculator(pred_bboxes, gt_bboxes)
        anchor_overlaps = self.iou_calculator(priors, gt_bboxes)
        gt_inds = pred_bboxes.new_zeros((num_priors,), dtype=torch.long)
        gt_inds[pred_overlaps.max(dim=1)[0] > self.neg_ignore_thr] = -1
        match_gt = torch.arange(num_gts, device=pred_bboxes.device).repeat(self.match_times * 2)
        ignored = anchor_overlaps[matches, match_gt] < self.pos_ignore_thr
        match_inds = match_gt + 1
        match_inds[ignored] = -1
        gt_inds[matches] = match_inds
        result = AssignResult(num_gts, gt_inds, anchor_overlaps.max(dim=0)[0],
                              assigned_labels(gt_inds, gt_labels))
        result.extra = {"pos_idx": ~ignored, "pos_predicted_boxes": pred_bboxes[matches],
                        "target_boxes": gt_bboxes[match_gt]}
        return result

    @staticmethod
    def _empty(num_gts: int, like: torch.Tensor) -> AssignResult:
        num_priors = like.shape[0]
        result = AssignResult(num_gts, like.new_zeros((num_priors,), dtype=torch.long), None,
                              like.new_full((num_priors,), -1, dtype=torch.long))
        result.extra = {"pos_idx": like.new_empty(0, dtype=torch.bool),
                        "pos_predicted_boxes": like.new_empty((0, 4)),
                        "target_boxes": like.new_empty((0, 4))}
        return result

    def __repr__(self) -> str:
        return (f"UniformAssigner(pos_ignore_thr={self.pos_ignore_thr}, "
                f"neg_ignore_thr={self.neg_ignore_thr}, match_times={self.match_times})")
