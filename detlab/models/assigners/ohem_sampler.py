"""Online hard example mining (Shrivastava et al., 2016): the RoIs an R-CNN box head finds
hardest, instead of random ones (MMDetection 2.28's ``OHEMSampler``)."""

from __future__ import annotations

from typing import Any

import torch

from detlab.models.assigners.assign_result import AssignResult
from detlab.models.assigners.random_sampler import RandomSampler
from detlab.models.assigners.sampling_result import SamplingResult
from detlab.registry import MODELS


@MODELS.register_module()
class OHEMSampler(RandomSampler):
    """Up to ``num`` RoIs an image, positives up to ``num * pos_fraction``: where there are more
    candidates than wanted, those with the largest classification loss under the RoI head's
    current weights (``context``, the RoI head building the sampler, scores them without
    gradient).

    Args:
        num, pos_fraction, neg_pos_ub, add_gt_as_proposals: as :class:`RandomSampler`.
        context: the RoI head whose ``_bbox_forward`` and ``bbox_head.loss`` rank the RoIs
            (passed by the RoI head, not by the config).
        loss_key: the loss that ranks them.
    """

    needs_context = True  # the RoI head passes itself as context=
    needs_features = True  # and each image's feature maps to sample()

    def __init__(self, num: int, pos_fraction: float, context: Any = None,
                 neg_pos_ub: float = -1, add_gt_as_proposals: bool = True,
                 loss_key: str = "loss_cls", **kwargs: Any) -> None:
        super().__init__(num, pos_fraction, neg_pos_ub, add_gt_as_proposals)
        self.context, self.loss_key = context, loss_key

    def sample(self, assign_result: AssignResult, bboxes: torch.Tensor,
               gt_bboxes: torch.Tensor, gt_labels: torch.Tensor | None = None,
               feats: list[torch.Tensor] | None = None) -> SamplingResult:
        """As :meth:`RandomSampler.sample`, the hardest RoIs taken instead of random ones;
        ``feats`` are the image's feature maps (each ``(1, C, H, W)``)."""
        if self.context is None or feats is None:
            raise ValueError("OHEMSampler needs its RoI head (context=) and the image's "
                             "feature maps (feats=): use it as a RoI head's train_cfg sampler")
        bboxes = bboxes.reshape(-1, bboxes.shape[-1])[:, :4]
        gt_flags = bboxes.new_zeros((bboxes.shape[0],), dtype=torch.uint8)
        if self.add_gt_as_proposals and len(gt_bboxes) > 0:
            if gt_labels is None:
                raise ValueError("OHEMSampler with add_gt_as_proposals=True needs gt_labels")
            bboxes = torch.cat([gt_bboxes, bboxes], dim=0)
            assign_result = assign_result.with_gts(gt_labels)
            gt_flags = torch.cat([bboxes.new_ones(gt_bboxes.shape[0], dtype=torch.uint8),
                                  gt_flags])
        positive = assign_result.gt_inds > 0
        pos_inds = self._hardest(positive, int(self.num * self.pos_fraction), bboxes,
                                 assign_result.labels, feats)
        num_neg = self.num - pos_inds.numel()
        if self.neg_pos_ub >= 0:
            num_neg = min(num_neg, int(self.neg_pos_ub * max(1, pos_inds.numel())))
        background = torch.full_like(assign_result.gt_inds,
                                     self.context.bbox_head.num_classes)
        neg_inds = self._hardest(assign_result.gt_inds == 0, num_neg, bboxes, background, feats)
        return SamplingResult.from_indices(pos_inds, neg_inds, bboxes, gt_bboxes, assign_result,
                                           gt_flags)

    def _hardest(self, candidates: torch.Tensor, num_expected: int, bboxes: torch.Tensor,
                 labels: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """Sorted indices of at most ``num_expected`` True entries of ``candidates``: all of
        them when there are few enough, else those of the largest loss."""
        inds = torch.nonzero(candidates).squeeze(1)
        if inds.numel() > num_expected:
            with torch.no_grad():
                rois = torch.cat([bboxes.new_zeros((inds.numel(), 1)), bboxes[inds]], dim=1)
                cls_score = self.context._bbox_forward(feats, rois)["cls_score"]
                loss = self.context.bbox_head.loss(
                    cls_score=cls_score, bbox_pred=None, rois=rois, labels=labels[inds],
                    label_weights=cls_score.new_ones(cls_score.shape[0]), bbox_targets=None,
                    bbox_weights=None, reduction_override="none")[self.loss_key]
                inds = inds[loss.topk(num_expected).indices]
        return inds.unique()

    def __repr__(self) -> str:
        return (f"OHEMSampler(num={self.num}, pos_fraction={self.pos_fraction}, "
                f"neg_pos_ub={self.neg_pos_ub}, add_gt_as_proposals={self.add_gt_as_proposals},"
                f" loss_key={self.loss_key!r})")
