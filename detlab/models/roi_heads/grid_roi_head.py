"""Grid R-CNN's RoI head (Lu et al., 2019; MMDetection 2.28's ``GridRoIHead``): the box head
only classifies (``with_reg=False``); a :class:`~detlab.models.roi_heads.grid_head.GridHead`
on RoIs pooled by ``grid_roi_extractor`` (14 x 14) locates each box's grid points, and the
detections' sides are moved onto them.

Training: the box branch's loss as :class:`StandardRoIHead`'s, then the positives jittered at
random (up to 15 % of their size; the grid learns to correct them), at most
``train_cfg.rcnn.max_num_grid`` of them drawn at random, and ``loss_grid`` (added to the box
branch's losses; absent, as in MMDetection, when a batch has no positive). Testing: the box
head's detections (in input pixels), their grid heatmaps, the refined boxes, then brought back
to the original image (a flipped input's boxes un-flipped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.assigners import SamplingResult
from detlab.models.heads.postprocess import boxes_to_original, result_meta
from detlab.models.roi_heads.base_roi_head import RCNN_TRAIN_CFG_KEYS
from detlab.models.roi_heads.roi_extractors import boxes_to_rois
from detlab.models.roi_heads.standard_roi_head import StandardRoIHead
from detlab.registry import MODELS
from detlab.structures import DetResult

JITTER_AMPLITUDE = 0.15


@MODELS.register_module()
class GridRoIHead(StandardRoIHead):
    """A classifying box branch and a grid branch that places the boxes.

    Args:
        grid_roi_extractor: the grid branch's RoI extractor (None: the box branch's).
        grid_head: the :class:`GridHead` config or module.
        **kwargs: :class:`StandardRoIHead`'s arguments (no mask branch).
    """

    train_cfg_keys: ClassVar[tuple[str, ...]] = (*RCNN_TRAIN_CFG_KEYS, "pos_radius",
                                                 "max_num_grid")

    def __init__(self, grid_roi_extractor: Mapping | nn.Module | None = None,
                 grid_head: Mapping | nn.Module | None = None, **kwargs: Any) -> None:
        if grid_head is None:
            raise ConfigError("model.roi_head.grid_head is required by GridRoIHead, e.g. "
                              "dict(type='GridHead', grid_points=9, num_convs=8, "
                              "in_channels=256, point_feat_channels=64, "
                              "norm_cfg=dict(type='GN', num_groups=36))")
        if kwargs.get("mask_head") is not None:
            raise ConfigError("GridRoIHead has no mask branch in detlab (MMDetection's would "
                              "segment the boxes before their grid refinement); remove "
                              "mask_roi_extractor and mask_head from model.roi_head")
        super().__init__(**kwargs)
        if grid_roi_extractor is not None:
            self.grid_roi_extractor = MODELS.build(grid_roi_extractor)
            self.share_roi_extractor = False
        else:
            self.grid_roi_extractor = self.bbox_roi_extractor
            self.share_roi_extractor = True
        self.grid_head = MODELS.build(grid_head)

    def _grid_feats(self, x: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        feats = self.grid_roi_extractor(x[:self.grid_roi_extractor.num_inputs], rois)
        return self.shared_head(feats) if self.with_shared_head else feats

    @staticmethod
    def _random_jitter(sampling_results: Sequence[SamplingResult], img_metas: Sequence[Mapping],
                       amplitude: float = JITTER_AMPLITUDE) -> list[SamplingResult]:
        """The sampling results with their positives moved and resized at random (centers by
        up to ``amplitude`` of the size, sides scaled by up to ``1 +- amplitude``), clipped to
        the image (to ``size - 1``, as MMDetection)."""
        jittered = []
        for result, meta in zip(sampling_results, img_metas, strict=True):
            boxes = result.pos_bboxes
            offsets = boxes.new_empty(boxes.shape[0], 4).uniform_(-amplitude, amplitude)
            center = (boxes[:, 2:4] + boxes[:, :2]) / 2
            size = (boxes[:, 2:4] - boxes[:, :2]).abs()
            center = center + size * offsets[:, :2]
            size = size * (1 + offsets[:, 2:])
            new = torch.cat([center - size / 2, center + size / 2], dim=1)
            shape = meta.get("img_shape")
            if shape is not None:
                new[:, 0::2].clamp_(min=0, max=shape[1] - 1)
                new[:, 1::2].clamp_(min=0, max=shape[0] - 1)
            jittered.append(SamplingResult(**{**vars(result), "pos_bboxes": new}))
        return jittered

    def _bbox_forward_train(self, x: Sequence[torch.Tensor],
                            sampling_results: Sequence[SamplingResult],
                            gt_bboxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor],
                            img_metas: Sequence[Mapping]) -> dict[str, Any]:
        """The box branch's losses, and ``loss_grid`` of (up to ``max_num_grid``) jittered
        positives."""
        bbox_results = super()._bbox_forward_train(x, sampling_results, gt_bboxes, gt_labels,
                                                   img_metas)
        jittered = self._random_jitter(sampling_results, img_metas)
        pos_rois = boxes_to_rois([res.pos_bboxes for res in jittered])
        if pos_rois.shape[0] == 0:
            return bbox_results
        grid_feats = self._grid_feats(x, pos_rois)
        limit = self.train_cfg.get("max_num_grid", 192)
        chosen = torch.randperm(grid_feats.shape[0])[:min(grid_feats.shape[0], limit)]
        grid_pred = self.grid_head(grid_feats[chosen.to(grid_feats.device)])
        grid_targets = self.grid_head.get_targets(jittered, self.train_cfg)
        grid_targets = grid_targets[chosen.to(grid_targets.device)]
        bbox_results["loss_bbox"].update(self.grid_head.loss(grid_pred, grid_targets))
        return bbox_results

    def predict(self, feats: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
                metas: Sequence[Mapping], rescale: bool = True) -> list[DetResult]:
        """Detections of each image: the box head's (input pixels), refined by the grid, then
        brought to the original image with ``rescale``."""
        if self.test_cfg is None:
            raise ConfigError("GridRoIHead.predict needs test settings: give the model a "
                              "test_cfg.rcnn such as dict(score_thr=0.03, nms=dict(type='nms', "
                              "iou_threshold=0.3), max_per_img=100)")
        det_bboxes, det_labels = self.simple_test_bboxes(feats, metas, proposals, self.test_cfg,
                                                         rescale=False)
        counts = [len(d) for d in det_bboxes]
        if sum(counts):
            was_training = self.grid_head.training
            self.grid_head.eval()  # the fused heatmaps only
            grid_pred = self.grid_head(self._grid_feats(
                feats, boxes_to_rois([d[:, :4] for d in det_bboxes])))["fused"]
            self.grid_head.train(was_training)
            grid_preds = grid_pred.split(counts, 0)
            det_bboxes = [self.grid_head.get_bboxes(d, g, meta) if len(d) else d
                          for d, g, meta in zip(det_bboxes, grid_preds, metas, strict=True)]
        results = []
        for dets, labels, meta in zip(det_bboxes, det_labels, metas, strict=True):
            boxes = dets[:, :4]
            if rescale:  # a flipped input's boxes un-flipped too (test-time flip)
                boxes = boxes_to_original(boxes, meta)
            results.append(DetResult(boxes=boxes, scores=dets[:, 4], labels=labels,
                                     meta=result_meta(meta)))
        return results
