"""The priors a sampler picks for the loss of one image."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detlab.models.assigners.assign_result import AssignResult


@dataclass
class SamplingResult:
    """Positive and negative priors chosen for the loss of one image.

    Attributes:
        pos_inds, neg_inds: ``(P,)`` and ``(Q,)`` indices into the priors (the sampler's
            ``bboxes``, with the ground truths in front when it adds them as proposals).
        pos_bboxes, neg_bboxes: ``(P, 4)`` and ``(Q, 4)`` xyxy priors.
        pos_assigned_gt_inds: ``(P,)`` index of each positive's ground truth.
        pos_gt_bboxes: ``(P, 4)`` xyxy ground truth of each positive.
        pos_gt_labels: ``(P,)`` labels of those, or None.
        num_gts: number of ground-truth boxes.
        pos_is_gt: ``(P,)`` uint8, 1 where the positive is a ground truth added as a proposal.
    """

    pos_inds: torch.Tensor
    neg_inds: torch.Tensor
    pos_bboxes: torch.Tensor
    neg_bboxes: torch.Tensor
    pos_assigned_gt_inds: torch.Tensor
    pos_gt_bboxes: torch.Tensor
    pos_gt_labels: torch.Tensor | None
    num_gts: int
    pos_is_gt: torch.Tensor | None = None

    @classmethod
    def from_indices(cls, pos_inds: torch.Tensor, neg_inds: torch.Tensor,
                     bboxes: torch.Tensor, gt_bboxes: torch.Tensor,
                     assign_result: AssignResult, gt_flags: torch.Tensor) -> SamplingResult:
        """The result for positives ``pos_inds`` and negatives ``neg_inds`` of ``bboxes``
        ``(N, 4)`` xyxy, assigned by ``assign_result`` to ``gt_bboxes`` ``(G, 4)`` xyxy;
        ``gt_flags`` ``(N,)`` marks ground truths added as proposals."""
        assigned = assign_result.gt_inds[pos_inds] - 1
        if gt_bboxes.numel() == 0:
            pos_gt = gt_bboxes.new_zeros((0, 4))
        else:
            pos_gt = gt_bboxes.reshape(-1, 4)[assigned.long(), :]
        labels = None if assign_result.labels is None else assign_result.labels[pos_inds]
        return cls(pos_inds, neg_inds, bboxes[pos_inds], bboxes[neg_inds], assigned, pos_gt,
                   labels, gt_bboxes.shape[0], gt_flags[pos_inds])

    @property
    def bboxes(self) -> torch.Tensor:
        """``(P + Q, 4)`` the positives, then the negatives."""
        return torch.cat([self.pos_bboxes, self.neg_bboxes])
