"""The sampler that keeps every assigned prior (for focal-loss heads, which need no sampling)."""

from __future__ import annotations

import torch

from detlab.models.assigners.assign_result import AssignResult
from detlab.models.assigners.sampling_result import SamplingResult
from detlab.registry import MODELS

__all__ = ["PseudoSampler", "SamplingResult"]


@MODELS.register_module()
class PseudoSampler:
    """Takes every positive and every negative of an :class:`AssignResult` as they are."""

    def sample(self, assign_result: AssignResult, bboxes: torch.Tensor,
               gt_bboxes: torch.Tensor, gt_labels: torch.Tensor | None = None) -> SamplingResult:
        """``bboxes`` ``(N, 4)`` xyxy priors, ``gt_bboxes`` ``(G, 4)`` xyxy ground truth;
        ``gt_labels`` is accepted for the samplers' shared signature and not needed."""
        pos_inds = torch.nonzero(assign_result.gt_inds > 0).squeeze(-1)
        neg_inds = torch.nonzero(assign_result.gt_inds == 0).squeeze(-1)
        gt_flags = bboxes.new_zeros(bboxes.shape[0], dtype=torch.uint8)
        return SamplingResult.from_indices(pos_inds, neg_inds, bboxes, gt_bboxes, assign_result,
                                           gt_flags)

    def __repr__(self) -> str:
        return "PseudoSampler()"
