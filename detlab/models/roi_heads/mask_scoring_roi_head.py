"""Mask Scoring R-CNN's RoI head (Huang et al., 2019; MMDetection 2.28's
``MaskScoringRoIHead``): Mask R-CNN's, plus a :class:`MaskIoUHead` that learns the IoU of each
predicted mask with its ground truth, so that a mask is scored by its quality and not only by
its box's class score.

Training adds ``loss_mask_iou`` to ``loss_mask`` (``train_cfg.rcnn.mask_thr_binary`` thresholds
the predicted masks for the IoU targets); at test time each :class:`DetResult` gets
``mask_scores``: the class score times the predicted mask IoU of the detection's class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.assigners import SamplingResult
from detlab.models.roi_heads.base_roi_head import RCNN_TRAIN_CFG_KEYS
from detlab.models.roi_heads.standard_roi_head import StandardRoIHead
from detlab.registry import MODELS
from detlab.structures import DetResult


@MODELS.register_module()
class MaskScoringRoIHead(StandardRoIHead):
    """A :class:`StandardRoIHead` with a mask branch and a mask IoU head on its features.

    Args:
        mask_iou_head: the mask IoU head (``MaskIoUHead`` config or module).
        **kwargs: :class:`StandardRoIHead`'s arguments (``mask_head`` required).
    """

    train_cfg_keys: ClassVar[tuple[str, ...]] = (*RCNN_TRAIN_CFG_KEYS, "mask_thr_binary")

    def __init__(self, mask_iou_head: Mapping | nn.Module | None = None, **kwargs: Any) -> None:
        if mask_iou_head is None:
            raise ConfigError("model.roi_head.mask_iou_head is required by MaskScoringRoIHead, "
                              "e.g. dict(type='MaskIoUHead', num_convs=4, num_fcs=2, "
                              "roi_feat_size=14, in_channels=256, conv_out_channels=256, "
                              "fc_out_channels=1024, num_classes=80)")
        if kwargs.get("mask_head") is None:
            raise ConfigError("MaskScoringRoIHead scores masks: model.roi_head needs a "
                              "mask_head (FCNMaskHead) besides the mask_iou_head")
        super().__init__(**kwargs)
        self.mask_iou_head = MODELS.build(mask_iou_head)
        self._last_mask_results: dict[str, Any] | None = None

    def _mask_forward(self, x: Sequence[torch.Tensor], rois: torch.Tensor | None = None,
                      pos_inds: torch.Tensor | None = None,
                      bbox_feats: torch.Tensor | None = None) -> dict[str, Any]:
        """As :class:`StandardRoIHead`'s; the output is kept for the test-time mask scores
        (which need the features the masks came from)."""
        results = super()._mask_forward(x, rois, pos_inds, bbox_feats)
        self._last_mask_results = results
        return results

    def _mask_forward_train(self, x: Sequence[torch.Tensor],
                            sampling_results: Sequence[SamplingResult],
                            bbox_feats: torch.Tensor | None, gt_masks: Sequence[Any],
                            img_metas: Sequence[Mapping]) -> dict[str, Any]:
        """The mask branch's loss, then ``loss_mask_iou``: the IoU head on the mask features
        and each positive's mask logits of its class."""
        pos_labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        mask_results = super()._mask_forward_train(x, sampling_results, bbox_feats, gt_masks,
                                                   img_metas)
        self._last_mask_results = None  # kept for testing only: do not hold the graph
        mask_pred = mask_results["mask_pred"]
        index = torch.arange(mask_pred.size(0), device=mask_pred.device)
        pos_mask_pred = mask_pred[index, pos_labels]
        mask_iou_pred = self.mask_iou_head(mask_results["mask_feats"], pos_mask_pred)
        pos_mask_iou_pred = mask_iou_pred[index, pos_labels]
        targets = self.mask_iou_head.get_targets(sampling_results, gt_masks, pos_mask_pred,
                                                 mask_results["mask_targets"], self.train_cfg)
        mask_results["loss_mask"].update(self.mask_iou_head.loss(pos_mask_iou_pred, targets))
        return mask_results

    def predict_masks(self, x: Sequence[torch.Tensor], metas: Sequence[Mapping],
                      det_bboxes: Sequence[torch.Tensor], det_labels: Sequence[torch.Tensor],
                      results: list[DetResult], rescale: bool = True) -> list[DetResult]:
        """The masks as :class:`StandardRoIHead`'s, and each detection's ``mask_scores``
        (MMDetection's ``simple_test_mask``)."""
        self._last_mask_results = None
        results = super().predict_masks(x, metas, det_bboxes, det_labels, results, rescale)
        mask_results, self._last_mask_results = self._last_mask_results, None
        if mask_results is None:  # no detections in any image
            return [dataclasses.replace(r, mask_scores=r.scores.new_zeros((0,)))
                    for r in results]
        labels = torch.cat(list(det_labels))
        index = torch.arange(len(labels), device=labels.device)
        mask_iou_pred = self.mask_iou_head(mask_results["mask_feats"],
                                           mask_results["mask_pred"][index, labels])
        counts = [len(d) for d in det_bboxes]
        out = []
        for result, iou_pred, dets, image_labels in zip(
                results, mask_iou_pred.split(counts, 0), det_bboxes, det_labels, strict=True):
            scores = self.mask_iou_head.get_mask_scores(iou_pred, dets, image_labels)
            out.append(dataclasses.replace(result, mask_scores=scores))
        return out
