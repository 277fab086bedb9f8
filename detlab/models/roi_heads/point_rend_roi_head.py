"""PointRend's RoI head (Kirillov et al., 2020; MMDetection 2.28's ``PointRendRoIHead``):
Mask R-CNN's with a coarse mask head (``CoarseMaskHead``, 7 x 7) and a point head
(``MaskPointHead``) that re-classifies single points of the masks from fine-grained FPN
features.

Training adds ``loss_point`` to ``loss_mask``: ``train_cfg.rcnn.num_points`` points per positive,
most of them where the coarse mask is least sure (``oversample_ratio``,
``importance_sample_ratio``). Testing refines each detection's mask ``subdivision_steps`` times:
upsampled by ``scale_factor`` (bilinear), its ``subdivision_num_points`` most uncertain cells
re-classified by the point head, before the mask is pasted into the image as Mask R-CNN's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.assigners import SamplingResult
from detlab.models.roi_heads.base_roi_head import RCNN_TEST_CFG_KEYS, RCNN_TRAIN_CFG_KEYS
from detlab.models.roi_heads.point_sample import point_sample, rel_roi_point_to_rel_img_point
from detlab.models.roi_heads.roi_extractors import boxes_to_rois
from detlab.models.roi_heads.standard_roi_head import (
    _FLIP_DIMS,
    StandardRoIHead,
    _input_boxes,
    _paste_size,
    _scale_factor,
)
from detlab.registry import MODELS
from detlab.structures import DetResult


@MODELS.register_module()
class PointRendRoIHead(StandardRoIHead):
    """A :class:`StandardRoIHead` with a box branch, a coarse mask branch and a point head.

    Args:
        point_head: the :class:`MaskPointHead` config or module.
        **kwargs: :class:`StandardRoIHead`'s arguments (``bbox_head`` and ``mask_head``
            required).
    """

    train_cfg_keys: ClassVar[tuple[str, ...]] = (
        *RCNN_TRAIN_CFG_KEYS, "num_points", "oversample_ratio", "importance_sample_ratio")
    test_cfg_keys: ClassVar[tuple[str, ...]] = (
        *RCNN_TEST_CFG_KEYS, "subdivision_steps", "subdivision_num_points", "scale_factor")

    def __init__(self, point_head: Mapping | nn.Module | None = None, **kwargs: Any) -> None:
        if point_head is None:
            raise ConfigError("model.roi_head.point_head is required by PointRendRoIHead, e.g. "
                              "dict(type='MaskPointHead', num_fcs=3, in_channels=256, "
                              "fc_channels=256, num_classes=80, coarse_pred_each_layer=True)")
        if kwargs.get("bbox_head") is None or kwargs.get("mask_head") is None:
            raise ConfigError("PointRendRoIHead needs both model.roi_head.bbox_head and "
                              "model.roi_head.mask_head (a CoarseMaskHead)")
        super().__init__(**kwargs)
        self.point_head = MODELS.build(point_head)

    # ---- training ----------------------------------------------------------------------------

    def _mask_forward_train(self, x: Sequence[torch.Tensor],
                            sampling_results: Sequence[SamplingResult],
                            bbox_feats: torch.Tensor | None, gt_masks: Sequence[Any],
                            img_metas: Sequence[Mapping]) -> dict[str, Any]:
        """The coarse mask's loss, then ``loss_point`` of the positives' sampled points."""
        mask_results = super()._mask_forward_train(x, sampling_results, bbox_feats, gt_masks,
                                                   img_metas)
        mask_results["loss_mask"].update(self._mask_point_forward_train(
            x, sampling_results, mask_results["mask_pred"], gt_masks))
        return mask_results

    def _mask_point_forward_train(self, x: Sequence[torch.Tensor],
                                  sampling_results: Sequence[SamplingResult],
                                  mask_pred: torch.Tensor, gt_masks: Sequence[Any]
                                  ) -> dict[str, torch.Tensor]:
        labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        if mask_pred.size(0) == 0:  # no positive in the batch (MMDetection fails here)
            return dict(loss_point=mask_pred.sum() * 0)
        points = self.point_head.get_roi_rel_points_train(mask_pred, labels, self.train_cfg)
        rois = boxes_to_rois([res.pos_bboxes for res in sampling_results])
        fine = self._get_fine_grained_point_feats(x, rois, points)
        coarse = point_sample(mask_pred, points)
        point_pred = self.point_head(fine, coarse)
        targets = self.point_head.get_targets(rois, points, sampling_results, gt_masks,
                                              self.train_cfg)
        return self.point_head.loss(point_pred, targets, labels)

    def _get_fine_grained_point_feats(self, x: Sequence[torch.Tensor], rois: torch.Tensor,
                                      rel_roi_points: torch.Tensor) -> torch.Tensor:
        """``(N, channels, P)``: the mask extractor's maps read at each RoI's ``(N, P, 2)``
        points, the levels' channels concatenated (RoIs in image order)."""
        extractor = self.mask_roi_extractor
        levels = []
        for level in range(extractor.num_inputs):
            feats, scale = x[level], 1.0 / float(extractor.featmap_strides[level])
            parts = []
            for index in range(feats.size(0)):
                chosen = rois[:, 0].long() == index
                if chosen.any():
                    feat = feats[index].unsqueeze(0)
                    points = rel_roi_point_to_rel_img_point(
                        rois[chosen], rel_roi_points[chosen], feat, scale).unsqueeze(0)
                    parts.append(point_sample(feat, points).squeeze(0).transpose(0, 1))
            levels.append(torch.cat(parts, dim=0))
        return torch.cat(levels, dim=1)

    # ---- testing -----------------------------------------------------------------------------

    def _mask_point_forward_test(self, x: Sequence[torch.Tensor], rois: torch.Tensor,
                                 labels: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)`` refined logits of each RoI's class from the coarse ``(N, C, h,
        w)`` logits (only the class's channel is kept: the others are not pasted)."""
        cfg = self.test_cfg
        for key in ("subdivision_steps", "subdivision_num_points", "scale_factor"):
            if key not in cfg:
                raise ConfigError(f"test_cfg.rcnn.{key} is missing: PointRend refines its masks "
                                  f"with subdivision_steps=5, subdivision_num_points=784, "
                                  f"scale_factor=2")
        index = torch.arange(len(labels), device=labels.device)
        refined = mask_pred[index, labels][:, None]
        scale, steps = cfg["scale_factor"], cfg["subdivision_steps"]
        for step in range(steps):
            refined = F.interpolate(refined, scale_factor=scale, mode="bilinear",
                                    align_corners=False)
            num, channels, height, width = refined.shape
            # MMDetection's rule (on the already upsampled size): skip while every cell of
            # the next step would be refined anyway
            if cfg["subdivision_num_points"] >= scale ** 2 * height * width and \
                    step < steps - 1:
                continue
            cells, points = self.point_head.get_roi_rel_points_test(refined, torch.zeros_like(
                labels), cfg)
            fine = self._get_fine_grained_point_feats(x, rois, points)
            point_pred = self.point_head(fine, point_sample(mask_pred, points))
            if point_pred.size(1) > 1:
                point_pred = point_pred[index, labels][:, None]
            refined = refined.reshape(num, channels, height * width)
            refined = refined.scatter_(2, cells.unsqueeze(1), point_pred)
            refined = refined.view(num, channels, height, width)
        return refined

    def predict_masks(self, x: Sequence[torch.Tensor], metas: Sequence[Mapping],
                      det_bboxes: Sequence[torch.Tensor], det_labels: Sequence[torch.Tensor],
                      results: list[DetResult], rescale: bool = True) -> list[DetResult]:
        """Each image's coarse masks, refined point by point on that image's features, pasted
        as :class:`StandardRoIHead`'s (MMDetection's ``simple_test_mask``)."""
        scales = [_scale_factor(meta, d.device) for meta, d in zip(metas, det_bboxes,
                                                                  strict=True)]
        boxes = [_input_boxes(d[:, :4], s, meta) if rescale else d[:, :4]
                 for d, s, meta in zip(det_bboxes, scales, metas, strict=True)]
        counts = [len(b) for b in boxes]
        mask_preds: Sequence[torch.Tensor | None] = [None] * len(boxes)
        if sum(counts):
            mask_preds = self._mask_forward(x, boxes_to_rois(boxes))["mask_pred"].split(counts)
        out = []
        for i, (result, pred, image_boxes, labels, scale, meta) in enumerate(zip(
                results, mask_preds, boxes, det_labels, scales, metas, strict=True)):
            if len(image_boxes) == 0:
                masks = torch.zeros((0, *_paste_size(meta, scale, rescale)), dtype=torch.bool,
                                    device=image_boxes.device)
            else:
                rois = boxes_to_rois([image_boxes])
                refined = self._mask_point_forward_test([level[i:i + 1] for level in x], rois,
                                                        labels, pred)
                # one channel, the detection's class: pasted as a class-agnostic mask
                masks = self._paste_one_channel(refined, image_boxes, labels, scale, meta,
                                                rescale)
            out.append(dataclasses.replace(result, masks=masks))
        return out

    def _paste_one_channel(self, refined: torch.Tensor, boxes: torch.Tensor,
                           labels: torch.Tensor, scale: torch.Tensor, meta: Mapping,
                           rescale: bool) -> torch.Tensor:
        head = self.mask_head
        agnostic, head.class_agnostic = head.class_agnostic, True
        try:
            masks = head.predict_masks(refined, boxes, labels, self.test_cfg,
                                       meta["ori_shape"][:2], scale, rescale)
        finally:
            head.class_agnostic = agnostic
        if rescale and meta.get("flip"):
            masks = masks.flip(_FLIP_DIMS[meta.get("flip_direction") or "horizontal"])
        return masks
