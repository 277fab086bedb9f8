"""The standard RoI head of Faster / Mask R-CNN (MMDetection 2.28's ``StandardRoIHead``): each
image's proposals assigned to its ground truth and sampled, pooled by the RoI extractor, then
classified and refined by the box head (and segmented by the mask head).

Subclasses override the same pieces as MMDetection's do -- ``_bbox_forward(x, rois)``
returning ``dict(cls_score, bbox_pred, bbox_feats)`` (Double-Head R-CNN), ``_bbox_forward_train``,
``_mask_forward`` / ``_mask_forward_train`` -- and the rest keeps working.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.assigners import SamplingResult
from detlab.models.heads.base_dense_head import GroundTruth, unpack_targets
from detlab.models.roi_heads.base_roi_head import BaseRoIHead
from detlab.models.roi_heads.roi_extractors import boxes_to_rois
from detlab.registry import MODELS
from detlab.structures import DetResult, flip_boxes

MASK_HEADS = "detlab.models.roi_heads.mask_heads"


def _scale_factor(meta: Mapping, device: torch.device) -> torch.Tensor:
    """The image's ``(4,)`` float32 (w, h, w, h) factors from the original image to the input
    (a single float is used for both sides)."""
    scale = torch.as_tensor(np.asarray(meta.get("scale_factor", 1.0), dtype=np.float32),
                            device=device).reshape(-1)
    return scale.expand(4) if scale.numel() == 1 else scale


# the mask dimensions a flip mirrors, by flip direction
_FLIP_DIMS = {"horizontal": (-1,), "vertical": (-2,), "diagonal": (-2, -1)}


def _input_boxes(boxes: torch.Tensor, scale: torch.Tensor, meta: Mapping) -> torch.Tensor:
    """``(n, 4)`` xyxy detections of the original image brought back to the input's pixels
    (times the scale factor, as MMDetection's ``simple_test_mask``), and into a flipped input's
    frame when the input was flipped (a test-time flip: the boxes were un-flipped)."""
    boxes = boxes * scale
    if meta.get("flip"):
        boxes = flip_boxes(boxes, meta["img_shape"], meta.get("flip_direction") or "horizontal")
    return boxes


def _paste_size(meta: Mapping, scale: torch.Tensor, rescale: bool) -> tuple[int, int]:
    """``(h, w)`` of the masks of an image: the original image's with ``rescale``, else its
    size times the scale factor, rounded (MMDetection's ``get_seg_masks``)."""
    h, w = meta["ori_shape"][:2]
    if rescale:
        return int(h), int(w)
    return int(np.round(h * scale[1].item())), int(np.round(w * scale[0].item()))


def mask_heads_available() -> bool:
    """Whether detlab's mask heads package is there (the mask branch needs it)."""
    return importlib.util.find_spec(MASK_HEADS) is not None


@MODELS.register_module()
class StandardRoIHead(BaseRoIHead):
    """One box head (and optionally one mask head) on RoI-pooled features.

    Arguments: see :class:`~detlab.models.roi_heads.base_roi_head.BaseRoIHead`. ``train_cfg``
    needs ``assigner`` (e.g. ``MaxIoUAssigner`` 0.5 / 0.5) and ``sampler`` (``RandomSampler``
    of 512 RoIs, a quarter positive, the ground truths added as proposals); ``test_cfg`` has
    ``score_thr``, ``nms`` (``nms`` or ``soft_nms``) and ``max_per_img``.
    """

    # ---- building ----------------------------------------------------------------------------

    def init_assigner_sampler(self) -> None:
        """``bbox_assigner`` and ``bbox_sampler`` from ``train_cfg`` (None without one)."""
        self.bbox_assigner = self.bbox_sampler = None
        if self.train_cfg:
            for key in ("assigner", "sampler"):
                if key not in self.train_cfg:
                    raise ConfigError(f"model.train_cfg.rcnn needs {key}, e.g. assigner=dict("
                                      f"type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5,"
                                      f" min_pos_iou=0.5, match_low_quality=False, "
                                      f"ignore_iof_thr=-1), sampler=dict(type='RandomSampler', "
                                      f"num=512, pos_fraction=0.25, neg_pos_ub=-1, "
                                      f"add_gt_as_proposals=True)")
            self.bbox_assigner = MODELS.build(self.train_cfg["assigner"])
            sampler = self.train_cfg["sampler"]
            kind = sampler.get("type") if isinstance(sampler, Mapping) else None
            context = getattr(MODELS.module_dict.get(kind), "needs_context", False)
            # OHEM ranks the RoIs with this head's own box branch
            self.bbox_sampler = MODELS.build(sampler, context=self) if context \
                else MODELS.build(sampler)

    def init_bbox_head(self, bbox_roi_extractor: Mapping | nn.Module | None,
                       bbox_head: Mapping | nn.Module) -> None:
        """``bbox_roi_extractor`` and ``bbox_head``."""
        if bbox_roi_extractor is None:
            raise ConfigError("model.roi_head needs a bbox_roi_extractor with its bbox_head, "
                              "e.g. dict(type='SingleRoIExtractor', roi_layer=dict(type="
                              "'RoIAlign', output_size=7, sampling_ratio=0), out_channels=256, "
                              "featmap_strides=[4, 8, 16, 32])")
        self.bbox_roi_extractor = MODELS.build(bbox_roi_extractor)
        self.bbox_head = MODELS.build(bbox_head)

    def init_mask_head(self, mask_roi_extractor: Mapping | nn.Module | None,
                       mask_head: Mapping | nn.Module) -> None:
        """``mask_head``, and ``mask_roi_extractor`` (the box branch's when None: the mask head
        then reads the positives' pooled box features)."""
        if not mask_heads_available():
            raise ConfigError("model.roi_head.mask_head: mask heads are not built yet in detlab "
                              f"({MASK_HEADS} does not exist); remove mask_roi_extractor and "
                              "mask_head from model.roi_head to train the box branch only")
        if mask_roi_extractor is not None:
            self.mask_roi_extractor = MODELS.build(mask_roi_extractor)
            self.share_roi_extractor = False
        else:
            self.share_roi_extractor = True
            self.mask_roi_extractor = self.bbox_roi_extractor
        self.mask_head = MODELS.build(mask_head)

    # ---- training ----------------------------------------------------------------------------

    def assign_and_sample(self, proposals: torch.Tensor, gt: GroundTruth,
                          feats: Sequence[torch.Tensor], index: int) -> SamplingResult:
        """One image's ``(N, 4+)`` proposals assigned to its ground truth (``gt.labels`` and
        ignored boxes included) and sampled; ``feats`` and ``index`` are for samplers that
        look at the image's features (OHEM)."""
        if self.bbox_assigner is None:
            raise ConfigError(f"{type(self).__name__} has no train_cfg, so it cannot compute a "
                              f"loss: give the model a train_cfg.rcnn with an assigner and a "
                              f"sampler")
        assign = self.bbox_assigner.assign(proposals[:, :4], gt.boxes, gt.boxes_ignore,
                                           gt.labels)
        sampler = self.bbox_sampler
        if getattr(sampler, "needs_features", False):
            return sampler.sample(assign, proposals, gt.boxes, gt.labels,
                                  feats=[level[index][None] for level in feats])
        return sampler.sample(assign, proposals, gt.boxes, gt.labels)

    def loss(self, feats: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
             targets: Sequence[Mapping], metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls``, ``acc`` (logged) and ``loss_bbox`` of the box branch (and
        ``loss_mask`` of the mask branch) from the feature maps, each image's ``(N, 4+)``
        proposals (input pixels) and the batch's target / meta dicts."""
        device = feats[0].device
        num_classes = self.bbox_head.num_classes if self.with_bbox else self.mask_head.num_classes
        gts = unpack_targets(targets, metas, len(metas), num_classes, device)
        if len(proposals) != len(metas):
            raise ValueError(f"roi_head.loss got {len(proposals)} proposal sets for "
                             f"{len(metas)} images")
        sampling_results = [self.assign_and_sample(p.to(device), gt, feats, i)
                            for i, (p, gt) in enumerate(zip(proposals, gts, strict=True))]
        losses: dict[str, torch.Tensor] = {}
        bbox_results: dict[str, Any] = {"bbox_feats": None}
        if self.with_bbox:
            bbox_results = self._bbox_forward_train(feats, sampling_results,
                                                    [gt.boxes for gt in gts],
                                                    [gt.labels for gt in gts], metas)
            losses.update(bbox_results["loss_bbox"])
        if self.with_mask:
            gt_masks = [t.get("masks") for t in targets]
            mask_results = self._mask_forward_train(feats, sampling_results,
                                                    bbox_results["bbox_feats"], gt_masks, metas)
            losses.update(mask_results["loss_mask"])
        return losses

    def _bbox_forward(self, x: Sequence[torch.Tensor], rois: torch.Tensor) -> dict[str, Any]:
        """The box branch on ``(K, 5)`` RoIs: ``dict(cls_score, bbox_pred, bbox_feats)``."""
        bbox_feats = self.bbox_roi_extractor(x[:self.bbox_roi_extractor.num_inputs], rois)
        if self.with_shared_head:
            bbox_feats = self.shared_head(bbox_feats)
        cls_score, bbox_pred = self.bbox_head(bbox_feats)
        return dict(cls_score=cls_score, bbox_pred=bbox_pred, bbox_feats=bbox_feats)

    def _bbox_forward_train(self, x: Sequence[torch.Tensor],
                            sampling_results: Sequence[SamplingResult],
                            gt_bboxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor],
                            img_metas: Sequence[Mapping]) -> dict[str, Any]:
        """The box branch on the sampled RoIs, with its losses under ``loss_bbox``."""
        rois = boxes_to_rois([res.bboxes for res in sampling_results])
        bbox_results = self._bbox_forward(x, rois)
        bbox_targets = self.bbox_head.get_targets(sampling_results, gt_bboxes, gt_labels,
                                                  self.train_cfg)
        loss_bbox = self.bbox_head.loss(bbox_results["cls_score"], bbox_results["bbox_pred"],
                                        rois, *bbox_targets)
        bbox_results.update(loss_bbox=loss_bbox, rois=rois, bbox_targets=bbox_targets)
        return bbox_results

    # ---- mask branch -------------------------------------------------------------------------

    def _mask_forward_train(self, x: Sequence[torch.Tensor],
                            sampling_results: Sequence[SamplingResult],
                            bbox_feats: torch.Tensor | None,
                            gt_masks: Sequence[Any], img_metas: Sequence[Mapping]
                            ) -> dict[str, Any]:
        """The mask branch on the positive RoIs, with its loss under ``loss_mask``."""
        if not self.share_roi_extractor:
            pos_rois = boxes_to_rois([res.pos_bboxes for res in sampling_results])
            mask_results = self._mask_forward(x, pos_rois)
        else:
            pos_inds = torch.cat([
                torch.cat([torch.ones(len(res.pos_bboxes), dtype=torch.bool),
                           torch.zeros(len(res.neg_bboxes), dtype=torch.bool)])
                for res in sampling_results]).to(bbox_feats.device)
            mask_results = self._mask_forward(x, pos_inds=pos_inds, bbox_feats=bbox_feats)
        mask_targets = self.mask_head.get_targets(sampling_results, gt_masks, self.train_cfg)
        pos_labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        loss_mask = self.mask_head.loss(mask_results["mask_pred"], mask_targets, pos_labels)
        mask_results.update(loss_mask=loss_mask, mask_targets=mask_targets)
        return mask_results

    def _mask_forward(self, x: Sequence[torch.Tensor], rois: torch.Tensor | None = None,
                      pos_inds: torch.Tensor | None = None,
                      bbox_feats: torch.Tensor | None = None) -> dict[str, Any]:
        """The mask head on ``(K, 5)`` RoIs, or on the ``pos_inds`` rows of the box branch's
        pooled features: ``dict(mask_pred, mask_feats)``."""
        if (rois is None) == (pos_inds is None or bbox_feats is None):
            raise ValueError("_mask_forward takes rois, or pos_inds with bbox_feats")
        if rois is not None:
            mask_feats = self.mask_roi_extractor(x[:self.mask_roi_extractor.num_inputs], rois)
            if self.with_shared_head:
                mask_feats = self.shared_head(mask_feats)
        else:
            mask_feats = bbox_feats[pos_inds]
        return dict(mask_pred=self.mask_head(mask_feats), mask_feats=mask_feats)

    def predict_masks(self, x: Sequence[torch.Tensor], metas: Sequence[Mapping],
                      det_bboxes: Sequence[torch.Tensor], det_labels: Sequence[torch.Tensor],
                      results: list[DetResult], rescale: bool = True) -> list[DetResult]:
        """The mask branch at test time (MMDetection's ``simple_test_mask``): the mask head on
        each image's detections (boxes brought back to input pixels when ``rescale`` put them
        in the original image's), pasted by ``mask_head.predict_masks`` into the original
        image (``rescale``; a flipped input's masks mirrored back, as its boxes are) or the
        input's size, into each DetResult's ``masks``."""
        scale_factors = [_scale_factor(meta, d.device) for meta, d in zip(metas, det_bboxes,
                                                                          strict=True)]
        boxes = [_input_boxes(d[:, :4], s, meta) if rescale else d[:, :4]
                 for d, s, meta in zip(det_bboxes, scale_factors, metas, strict=True)]
        mask_preds: Sequence[torch.Tensor | None] = [None] * len(boxes)
        if any(len(b) for b in boxes):
            mask_pred = self._mask_forward(x, boxes_to_rois(boxes))["mask_pred"]
            mask_preds = mask_pred.split([len(b) for b in boxes], 0)
        out = []
        for result, pred, image_boxes, labels, scale, meta in zip(
                results, mask_preds, boxes, det_labels, scale_factors, metas, strict=True):
            if len(image_boxes) == 0:
                masks = torch.zeros((0, *_paste_size(meta, scale, rescale)), dtype=torch.bool,
                                    device=image_boxes.device)
            else:
                masks = self.mask_head.predict_masks(pred, image_boxes, labels, self.test_cfg,
                                                     meta["ori_shape"][:2], scale, rescale)
                if rescale and meta.get("flip"):  # pasted as the input was: mirror back
                    masks = masks.flip(_FLIP_DIMS[meta.get("flip_direction") or "horizontal"])
            out.append(dataclasses.replace(result, masks=masks))
        return out

    # ---- testing -----------------------------------------------------------------------------

    def simple_test_bboxes(self, x: Sequence[torch.Tensor], img_metas: Sequence[Mapping],
                           proposals: Sequence[torch.Tensor], rcnn_test_cfg: Mapping | None,
                           rescale: bool = False
                           ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each image's ``(k, 5)`` detections (x1 y1 x2 y2 score) and ``(k,)`` labels; with
        ``rcnn_test_cfg`` None, all decoded boxes and class probabilities instead."""
        rois = boxes_to_rois(proposals)
        counts = [len(p) for p in proposals]
        if rois.shape[0] == 0:
            return ([rois.new_zeros((0, 5)) for _ in proposals],
                    [rois.new_zeros((0,), dtype=torch.long) for _ in proposals])
        bbox_results = self._bbox_forward(x, rois)
        cls_scores = bbox_results["cls_score"].split(counts, 0)
        bbox_pred = bbox_results["bbox_pred"]
        if bbox_pred is None:
            bbox_preds = (None,) * len(proposals)
        elif isinstance(bbox_pred, torch.Tensor):
            bbox_preds = bbox_pred.split(counts, 0)
        else:  # a head with paired predictions (SABL's bucket logits and offsets)
            bbox_preds = self.bbox_head.bbox_pred_split(bbox_pred, counts)
        det_bboxes, det_labels = [], []
        for image_rois, cls_score, pred, meta in zip(rois.split(counts, 0), cls_scores,
                                                     bbox_preds, img_metas, strict=True):
            if image_rois.shape[0] == 0:
                det_bboxes.append(image_rois.new_zeros((0, 5)))
                det_labels.append(image_rois.new_zeros((0,), dtype=torch.long))
                continue
            boxes, labels = self.bbox_head.get_bboxes(image_rois, cls_score, pred, meta,
                                                      rescale=rescale, cfg=rcnn_test_cfg)
            det_bboxes.append(boxes)
            det_labels.append(labels)
        return det_bboxes, det_labels
