"""PISA's RoI head (Cao et al., 2020, "Prime Sample Attention in Object Detection"; MMDetection
2.28's ``PISARoIHead``): a :class:`StandardRoIHead` whose classification targets carry the
prime-sample weights -- the negatives' from the ``ScoreHLRSampler`` (ISR-N), the positives' from
:func:`~detlab.models.losses.pisa_loss.isr_p` (``train_cfg.isr``) -- and whose losses add the
classification-aware regression loss ``loss_carl`` (``train_cfg.carl``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from detlab.models.assigners import SamplingResult
from detlab.models.heads.base_dense_head import GroundTruth
from detlab.models.losses.pisa_loss import carl_loss, isr_p
from detlab.models.roi_heads.base_roi_head import RCNN_TRAIN_CFG_KEYS
from detlab.models.roi_heads.roi_extractors import boxes_to_rois
from detlab.models.roi_heads.standard_roi_head import StandardRoIHead
from detlab.registry import MODELS


def class_deltas(bbox_pred: torch.Tensor, labels: torch.Tensor, num_classes: int
                 ) -> torch.Tensor:
    """``(N, 4)`` deltas: each RoI's row of its label's class (class-specific ``(N, C*4)``
    predictions; a background RoI gets the last class's, unused), or ``bbox_pred`` itself
    when class-agnostic."""
    if bbox_pred.shape[-1] == 4:
        return bbox_pred
    per_class = bbox_pred.view(bbox_pred.shape[0], -1, 4)
    rows = torch.arange(per_class.shape[0], device=per_class.device)
    return per_class[rows, labels.clamp(max=num_classes - 1)]


@MODELS.register_module()
class PISARoIHead(StandardRoIHead):
    """:class:`StandardRoIHead` with PISA's sample weights and CARL.

    ``train_cfg`` (``model.train_cfg.rcnn``) has, besides the assigner, usually a
    ``ScoreHLRSampler`` (whose negative weights replace the negatives' classification weights),
    ``isr=dict(k=2, bias=0)`` (positives reweighted by IoU-HLR) and ``carl=dict(k=1,
    bias=0.2)`` (``loss_carl`` added); each is optional.
    """

    train_cfg_keys: ClassVar[tuple[str, ...]] = RCNN_TRAIN_CFG_KEYS + ("isr", "carl")

    def loss(self, feats: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
             targets: Sequence[Mapping], metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """:meth:`StandardRoIHead.loss` (``loss_cls``, ``acc``, ``loss_bbox``, ``loss_mask``)
        with the prime-sample weights, and ``loss_carl`` with ``train_cfg.carl``."""
        self._neg_label_weights: list[torch.Tensor | None] = []
        try:
            return super().loss(feats, proposals, targets, metas)
        finally:
            del self._neg_label_weights

    def assign_and_sample(self, proposals: torch.Tensor, gt: GroundTruth,
                          feats: Sequence[torch.Tensor], index: int) -> SamplingResult:
        """As :meth:`StandardRoIHead.assign_and_sample`; a sampler's negative label weights
        (``ScoreHLRSampler``) are kept for :meth:`_bbox_forward_train`."""
        result = super().assign_and_sample(proposals, gt, feats, index)
        weights = None
        if isinstance(result, tuple):
            result, weights = result
        self._neg_label_weights.append(weights)
        return result

    def _bbox_forward_train(self, x: Sequence[torch.Tensor],
                            sampling_results: Sequence[SamplingResult],
                            gt_bboxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor],
                            img_metas: Sequence[Mapping]) -> dict[str, Any]:
        """The box branch on the sampled RoIs, its losses weighted by PISA."""
        rois = boxes_to_rois([res.bboxes for res in sampling_results])
        bbox_results = self._bbox_forward(x, rois)
        labels, label_weights, bbox_targets, bbox_weights = self.bbox_head.get_targets(
            sampling_results, gt_bboxes, gt_labels, self.train_cfg)
        neg_weights = getattr(self, "_neg_label_weights", [])
        if neg_weights and neg_weights[0] is not None:
            start = 0
            for res, weights in zip(sampling_results, neg_weights, strict=True):
                start += len(res.pos_bboxes)
                if weights is not None:
                    label_weights[start:start + len(res.neg_bboxes)] = weights
                start += len(res.neg_bboxes)
        cls_score, bbox_pred = bbox_results["cls_score"], bbox_results["bbox_pred"]
        head = self.bbox_head
        isr = self.train_cfg.get("isr")
        if isr is not None:
            label_weights = isr_p(cls_score, class_deltas(bbox_pred, labels, head.num_classes),
                                  labels, label_weights, bbox_targets, rois[:, 1:],
                                  [res.pos_assigned_gt_inds for res in sampling_results],
                                  head.loss_cls, head.bbox_coder, **isr,
                                  num_classes=head.num_classes)
        bbox_targets_all = (labels, label_weights, bbox_targets, bbox_weights)
        loss_bbox = head.loss(cls_score, bbox_pred, rois, *bbox_targets_all)
        carl = self.train_cfg.get("carl")
        if carl is not None:
            loss_bbox["loss_carl"] = carl_loss(
                cls_score, labels, class_deltas(bbox_pred, labels, head.num_classes),
                bbox_targets, head.loss_bbox, **carl, num_classes=head.num_classes)
        bbox_results.update(loss_bbox=loss_bbox, rois=rois, bbox_targets=bbox_targets_all)
        return bbox_results
