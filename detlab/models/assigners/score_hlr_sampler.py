"""PISA's negative sampling for R-CNN (ISR-N, Cao et al., 2020): the negatives the box head
scores highest, ranked by their score hierarchical local rank (Score-HLR), each with a
classification weight from its rank (MMDetection 2.28's ``ScoreHLRSampler``)."""

from __future__ import annotations

from typing import Any

import torch

from detlab.models.assigners.assign_result import AssignResult
from detlab.models.assigners.random_sampler import RandomSampler, random_choice
from detlab.models.assigners.sampling_result import SamplingResult
from detlab.registry import MODELS


def nms_match(dets: torch.Tensor, iou_threshold: float) -> list[torch.Tensor]:
    """Greedy NMS that keeps the groups (mmcv's ``nms_match``): boxes by decreasing score, each
    box not yet grouped starts a group of itself and every later ungrouped box overlapping it
    by IoU >= ``iou_threshold``. ``dets`` is ``(N, 5)`` (x1 y1 x2 y2 score); each group is an
    index tensor, its leader first, then its members by decreasing score."""
    if dets.shape[0] == 0:
        return []
    boxes, scores = dets[:, :4].detach(), dets[:, 4].detach()
    order = scores.sort(descending=True)[1]
    boxes = boxes[order]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    wh = (torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
          - torch.maximum(boxes[:, None, :2], boxes[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    ious = inter / (area[:, None] + area[None, :] - inter) >= iou_threshold  # as mmcv: no eps
    grouped = torch.zeros(len(order), dtype=torch.bool, device=dets.device)
    positions = torch.arange(len(order), device=dets.device)
    groups = []
    for i in range(len(order)):
        if grouped[i]:
            continue
        members = ious[i] & ~grouped & (positions > i)
        grouped |= members
        groups.append(order[torch.cat([positions[i:i + 1], positions[members]])])
    return groups


@MODELS.register_module()
class ScoreHLRSampler(RandomSampler):
    """Positives at random, as :class:`RandomSampler`; negatives by Score-HLR: the box head
    (``context``, under its current weights, without gradient) scores every negative; those
    whose best object-class probability is above ``score_thr`` are grouped by
    :func:`nms_match` of their predicted boxes (IoU ``iou_thr``), ranked within their group and
    then across groups, and the best ranked taken first (the others at random). Each taken
    negative gets the classification weight ``(bias + (1 - bias) * w) ** k`` of its rank ``w``
    (1 for the best), rescaled so that the taken negatives' loss keeps its total.

    :meth:`sample` returns ``(SamplingResult, negative label weights)``; a RoI head using this
    sampler (``PISARoIHead``) puts those weights into its classification targets.

    Args:
        num, pos_fraction, neg_pos_ub, add_gt_as_proposals: as :class:`RandomSampler` (the
            ground truths are added even to an image without any, as MMDetection's).
        context: the RoI head whose ``_bbox_forward`` and ``bbox_head`` score the negatives
            (passed by the RoI head, not by the config).
        k, bias: the weight mapping.
        score_thr: negatives scored at most this are drawn at random, after the ranked ones.
        iou_thr: the grouping IoU.
    """

    needs_context = True  # the RoI head passes itself as context=
    needs_features = True  # and each image's feature maps to sample()
    returns_weights = True  # sample() gives the negatives' label weights too

    def __init__(self, num: int, pos_fraction: float, context: Any = None,
                 neg_pos_ub: float = -1, add_gt_as_proposals: bool = True, k: float = 0.5,
                 bias: float = 0.0, score_thr: float = 0.05, iou_thr: float = 0.5,
                 **kwargs: Any) -> None:
        super().__init__(num, pos_fraction, neg_pos_ub, add_gt_as_proposals)
        self.context, self.k, self.bias = context, k, bias
        self.score_thr, self.iou_thr = score_thr, iou_thr

    def sample(self, assign_result: AssignResult, bboxes: torch.Tensor,
               gt_bboxes: torch.Tensor, gt_labels: torch.Tensor | None = None,
               feats: list[torch.Tensor] | None = None
               ) -> tuple[SamplingResult, torch.Tensor | None]:
        """``(SamplingResult, (Q,) label weights of its negatives or None without any)``;
        ``feats`` are the image's feature maps (each ``(1, C, H, W)``)."""
        if self.context is None or feats is None:
            raise ValueError("ScoreHLRSampler needs its RoI head (context=) and the image's "
                             "feature maps (feats=): use it as a PISARoIHead's train_cfg "
                             "sampler")
        bboxes = bboxes.reshape(-1, bboxes.shape[-1])[:, :4]
        gt_flags = bboxes.new_zeros((bboxes.shape[0],), dtype=torch.uint8)
        if self.add_gt_as_proposals:
            if gt_labels is None:
                raise ValueError("ScoreHLRSampler with add_gt_as_proposals=True needs "
                                 "gt_labels")
            bboxes = torch.cat([gt_bboxes.reshape(-1, 4), bboxes], dim=0)
            assign_result = assign_result.with_gts(gt_labels)
            gt_flags = torch.cat([bboxes.new_ones(gt_bboxes.shape[0], dtype=torch.uint8),
                                  gt_flags])
        pos_inds = torch.nonzero(assign_result.gt_inds > 0).reshape(-1)
        num_pos = int(self.num * self.pos_fraction)
        if pos_inds.numel() > num_pos:
            pos_inds = random_choice(pos_inds, num_pos)
        num_neg = self.num - pos_inds.numel()
        if self.neg_pos_ub >= 0:
            num_neg = min(num_neg, int(self.neg_pos_ub * max(1, pos_inds.numel())))
        neg_inds, weights = self._sample_neg(assign_result, num_neg, bboxes, feats)
        return SamplingResult.from_indices(pos_inds, neg_inds, bboxes, gt_bboxes, assign_result,
                                           gt_flags), weights

    @torch.no_grad()
    def _sample_neg(self, assign_result: AssignResult, num_expected: int, bboxes: torch.Tensor,
                    feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The negatives taken (ranked ones first) and their label weights."""
        neg_inds = torch.nonzero(assign_result.gt_inds == 0).reshape(-1)
        num_neg = neg_inds.numel()
        if num_neg == 0:
            return neg_inds, None
        head = self.context.bbox_head
        neg_boxes = bboxes[neg_inds]
        rois = torch.cat([neg_boxes.new_zeros((num_neg, 1)), neg_boxes], dim=1)
        forward = self.context._bbox_forward(feats, rois)
        cls_score, bbox_pred = forward["cls_score"], forward["bbox_pred"]
        loss = head.loss(cls_score=cls_score, bbox_pred=None, rois=None,
                         labels=neg_inds.new_full((num_neg,), head.num_classes),
                         label_weights=cls_score.new_ones(num_neg), bbox_targets=None,
                         bbox_weights=None, reduction_override="none")["loss_cls"]
        max_score, best_class = cls_score.softmax(-1)[:, :-1].max(-1)
        valid = (max_score > self.score_thr).nonzero().reshape(-1)
        invalid = (max_score <= self.score_thr).nonzero().reshape(-1)
        num_valid = valid.numel()
        num_expected = min(num_neg, num_expected)
        num_ranked = min(num_valid, num_expected)
        if num_valid == 0:
            return neg_inds[torch.randperm(num_neg)[:num_expected].to(neg_inds.device)], \
                cls_score.new_ones(num_expected)
        deltas = bbox_pred[valid].view(num_valid, -1, 4)
        # class-agnostic regression (which MMDetection's sampler cannot index): the one box
        chosen = best_class[valid] if deltas.shape[1] > 1 else torch.zeros_like(valid)
        deltas = deltas[torch.arange(num_valid, device=deltas.device), chosen]
        boxes = head.bbox_coder.decode(rois[valid, 1:], deltas)
        scores = max_score[valid]
        # within a group, rank by score; the groups' best, second best ... then by score
        importance = cls_score.new_zeros(num_valid)
        for group in nms_match(torch.cat([boxes, scores[:, None]], -1), self.iou_thr):
            rank = torch.arange(len(group), dtype=scores.dtype, device=scores.device)
            importance[group] = num_valid - rank + scores[group]
        by_importance = importance.sort(descending=True)[1]
        rank_of = by_importance.sort()[1]
        ranked = by_importance[:num_expected]
        take = valid[ranked]
        num_random = num_expected - num_ranked
        if num_random > 0:
            random = torch.randperm(invalid.numel())[:num_random].to(invalid.device)
            take = torch.cat([take, invalid[random]])
        weights = cls_score.new_ones(num_expected)
        upper = max(num_expected, num_valid)
        ranked_weights = (upper - rank_of[ranked].float()) / upper
        weights[:num_ranked] = ranked_weights
        weights[num_ranked:] = ranked_weights.min()
        weights = (self.bias + (1 - self.bias) * weights).pow(self.k)
        taken_loss = loss[take]
        weights *= taken_loss.sum() / (taken_loss * weights).sum()
        return neg_inds[take], weights

    def __repr__(self) -> str:
        return (f"ScoreHLRSampler(num={self.num}, pos_fraction={self.pos_fraction}, "
                f"k={self.k}, bias={self.bias}, score_thr={self.score_thr}, "
                f"iou_thr={self.iou_thr})")
