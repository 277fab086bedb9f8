"""Sample a fixed number of priors for the loss, a fraction of them positive (R-CNN)."""

from __future__ import annotations

import torch

from detlab.config import ConfigError
from detlab.models.assigners.assign_result import AssignResult
from detlab.models.assigners.sampling_result import SamplingResult
from detlab.registry import MODELS


def random_choice(gallery: torch.Tensor, num: int) -> torch.Tensor:
    """``num`` elements of ``gallery`` ``(M,)`` drawn at random without replacement, by
    ``torch.randperm`` on the CPU generator (the draws MMDetection's ``RandomSampler`` makes)."""
    perm = torch.randperm(gallery.numel())[:num].to(device=gallery.device)
    return gallery[perm]


@MODELS.register_module()
class RandomSampler:
    """Up to ``num`` priors an image: positives up to ``num * pos_fraction``, negatives for
    the rest, each drawn at random from the assigned ones (MMDetection's ``RandomSampler``).

    Args:
        num: priors sampled per image.
        pos_fraction: the largest fraction of positives.
        neg_pos_ub: at most this many negatives per positive (-1: no bound).
        add_gt_as_proposals: put the ground-truth boxes in front of the priors as positives of
            themselves before sampling (two-stage detectors' proposals).
    """

    def __init__(self, num: int, pos_fraction: float, neg_pos_ub: float = -1,
                 add_gt_as_proposals: bool = True) -> None:
        if num < 0 or not 0 <= pos_fraction <= 1:
            raise ConfigError(f"RandomSampler needs num >= 0 and pos_fraction in [0, 1], got "
                              f"num={num}, pos_fraction={pos_fraction}")
        self.num, self.pos_fraction = num, pos_fraction
        self.neg_pos_ub, self.add_gt_as_proposals = neg_pos_ub, add_gt_as_proposals

    def sample(self, assign_result: AssignResult, bboxes: torch.Tensor,
               gt_bboxes: torch.Tensor, gt_labels: torch.Tensor | None = None) -> SamplingResult:
        """Sample ``bboxes`` ``(N, 4+)`` xyxy priors assigned by ``assign_result`` to
        ``gt_bboxes`` ``(G, 4)`` xyxy; ``gt_labels`` ``(G,)`` is needed with
        ``add_gt_as_proposals``. ``assign_result`` itself is left unchanged."""
        bboxes = bboxes.reshape(-1, bboxes.shape[-1])[:, :4]
        gt_flags = bboxes.new_zeros((bboxes.shape[0],), dtype=torch.uint8)
        if self.add_gt_as_proposals and len(gt_bboxes) > 0:
            if gt_labels is None:
                raise ValueError("RandomSampler with add_gt_as_proposals=True needs gt_labels")
            bboxes = torch.cat([gt_bboxes, bboxes], dim=0)
            assign_result = assign_result.with_gts(gt_labels)
            gt_flags = torch.cat([bboxes.new_ones(gt_bboxes.shape[0], dtype=torch.uint8),
                                  gt_flags])
        pos_inds = self._sample(assign_result.gt_inds > 0, int(self.num * self.pos_fraction))
        num_neg = self.num - pos_inds.numel()
        if self.neg_pos_ub >= 0:
            num_neg = min(num_neg, int(self.neg_pos_ub * max(1, pos_inds.numel())))
        neg_inds = self._sample(assign_result.gt_inds == 0, num_neg)
        return SamplingResult.from_indices(pos_inds, neg_inds, bboxes, gt_bboxes, assign_result,
                                           gt_flags)

    @staticmethod
    def _sample(candidates: torch.Tensor, num_expected: int) -> torch.Tensor:
        """Sorted indices of at most ``num_expected`` of the True entries of ``candidates``."""
        inds = torch.nonzero(candidates).squeeze(1)
        if inds.numel() > num_expected:
            inds = random_choice(inds, num_expected)
        return inds.unique()

    def __repr__(self) -> str:
        return (f"RandomSampler(num={self.num}, pos_fraction={self.pos_fraction}, "
                f"neg_pos_ub={self.neg_pos_ub}, add_gt_as_proposals={self.add_gt_as_proposals})")
