"""The sampler that keeps every assigned prior (for focal-loss heads, which need no sampling)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detlab.models.assigners.assign_result import AssignResult
from detlab.registry import MODELS


@dataclass
class SamplingResult:
    """Positive and negative priors chosen for the loss of one image.

    Attributes:
        pos_inds, neg_inds: ``(P,)`` and ``(Q,)`` indices into the priors.
        pos_bboxes, neg_bboxes: ``(P, 4)`` and ``(Q, 4)`` xyxy priors.
        pos_assigned_gt_inds: ``(P,)`` index of each positive's ground truth.
        pos_gt_bboxes: ``(P, 4)`` xyxy ground truth of each positive.
        pos_gt_labels: ``(P,)`` labels of those, or None.
        num_gts: number of ground-truth boxes.
    """

    pos_inds: torch.Tensor
    neg_inds: torch.Tensor
    pos_bboxes: torch.Tensor
    neg_bboxes: torch.Tensor
    pos_assigned_gt_inds: torch.Tensor
    pos_gt_bboxes: torch.Tensor
    pos_gt_labels: torch.Tensor | None
    num_gts: int


@MODELS.register_module()
class PseudoSampler:
    """Takes every positive and every negative of an :class:`AssignResult` as they are."""

    def sample(self, assign_result: AssignResult, bboxes: torch.Tensor,
               gt_bboxes: torch.Tensor) -> SamplingResult:
        """``bboxes`` ``(N, 4)`` xyxy priors, ``gt_bboxes`` ``(G, 4)`` xyxy ground truth."""
        pos_inds = torch.nonzero(assign_result.gt_inds > 0).squeeze(-1)
        neg_inds = torch.nonzero(assign_result.gt_inds == 0).squeeze(-1)
        assigned = assign_result.gt_inds[pos_inds] - 1
        pos_gt = gt_bboxes[assigned] if gt_bboxes.numel() else gt_bboxes.new_zeros((0, 4))
        labels = assign_result.labels[pos_inds] if assign_result.labels is not None else None
        return SamplingResult(pos_inds, neg_inds, bboxes[pos_inds], bboxes[neg_inds], assigned,
                              pos_gt.reshape(-1, 4), labels, assign_result.num_gts)

    def __repr__(self) -> str:
        return "PseudoSampler()"
