"""The region proposal network's head (Ren et al., 2015), as MMDetection 2.28's ``RPNHead``.

One class, "object": a 3x3 conv (``rpn_conv``, or ``num_convs`` of them) shared by every level,
then 1x1 convs for the objectness (``rpn_cls``, sigmoid by default) and the box deltas
(``rpn_reg``). Training goes through :class:`~detlab.models.heads.anchor_head.AnchorHead`'s
anchor targets (``train_cfg.rpn`` of the detector: ``MaxIoUAssigner(0.7, 0.3, min_pos_iou=0.3)``
and ``RandomSampler(256, 0.5)`` in the zoo); every ground-truth box is an object, whatever its
class. Its losses are ``loss_rpn_cls`` and ``loss_rpn_bbox``.

Interface for the detectors that use it (``RPN`` here, two-stage detectors through their
``rpn_head``):

- ``head(feats) -> (cls_scores, bbox_preds)``: per level ``(B, A, H, W)`` objectness logits (``2A``
  with a softmax ``loss_cls``) and ``(B, 4A, H, W)`` deltas.
- ``head.loss(raw, targets, metas) -> dict(loss_rpn_cls, loss_rpn_bbox)``; ``targets`` are the
  batch's target dicts (``boxes``, optional ``boxes_ignore``; ``labels`` are not used).
  ``head.loss_by_feats(feats, targets, metas)`` does the same from the feature maps.
- ``head.loss_and_proposals(feats, batch_or_targets, metas, proposal_cfg=None) -> (losses,
  proposals)``: the losses as above and, from the same (detached) outputs, each image's proposals
  under ``proposal_cfg`` (a two-stage detector's ``train_cfg.rpn_proposal``; None:
  ``test_cfg``). ``batch_or_targets`` is a :class:`~detlab.structures.Batch` (its targets are
  used) or the list of target dicts.
- ``head.proposals(feats, metas, cfg=None) -> list[Tensor]``: each image's ``(N, 5)`` proposals
  ``x1, y1, x2, y2, score``, best first, in the network input's pixels (not rescaled, not
  un-flipped), under ``cfg`` (None: the head's ``test_cfg``, i.e. the detector's
  ``test_cfg.rpn``). ``head.proposals_by_feat(cls_scores, bbox_preds, metas, cfg)`` does the
  same from raw outputs.
- ``head.predict(raw, metas, rescale=True) -> list[DetResult]``: proposals as detections of
  class 0, in original-image pixels with ``rescale`` (what the ``RPN`` detector returns).

Proposals follow MMDetection 2.28's ``RPNHead._get_bboxes_single`` / ``_bbox_post_process``:
per level the objectness scores (sigmoid, or the softmax's first column), the best ``nms_pre``
of them when a level has more (all, unsorted, otherwise), boxes decoded from their anchors and
clipped to ``img_shape``; then over all levels boxes not wider and taller than
``min_bbox_size`` dropped (``min_bbox_size >= 0``: at 0, empty boxes go), NMS with the level as
the class (levels never suppress each other), the best ``max_per_img``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.heads.anchor_head import AnchorHead, RawOutputs
from detlab.models.heads.base_dense_head import GroundTruth, check_test_cfg, unpack_targets
from detlab.models.heads.nms import multiclass_nms
from detlab.models.heads.postprocess import (
    DEFAULT_NMS,
    boxes_to_original,
    class_probabilities,
    map_to_rows,
    result_meta,
)
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, frozen
from detlab.registry import MODELS
from detlab.structures import DetResult

RPN_ANCHORS = frozen(type="AnchorGenerator", scales=(8, 16, 32), ratios=(0.5, 1.0, 2.0),
                     strides=(4, 8, 16, 32, 64))
DELTA_CODER = frozen(type="DeltaXYWHBBoxCoder", clip_border=True,
                     target_means=(0.0, 0.0, 0.0, 0.0), target_stds=(1.0, 1.0, 1.0, 1.0))
SIGMOID_CE = frozen(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0)
SMOOTH_L1 = frozen(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=1.0)
RPN_INIT = frozen(type="Normal", layer="Conv2d", std=0.01)


@MODELS.register_module()
class RPNHead(AnchorHead):
    """Region proposal head: objectness and box deltas for every anchor.

    Args:
        in_channels: channels of the input feature maps.
        init_cfg: weight initialization (default: every conv normal, std 0.01).
        num_convs: 3x3 convs before the outputs; with more than one they are ConvModules
            (conv + ReLU) under ``rpn_conv.<i>``, as MMDetection names them.
        feat_channels: channels of the 3x3 convs.
        anchor_generator: anchors (default: scales 8, 16, 32, ratios 0.5-2, strides 4-64).
        bbox_coder: box parameterization (default: deltas with means 0, stds 1).
        reg_decoded_bbox: regress decoded boxes (for IoU losses) instead of deltas.
        loss_cls: objectness loss (default: sigmoid cross-entropy; a softmax one gives two
            outputs per anchor, object first).
        loss_bbox: regression loss (default: smooth L1 with beta 1/9; the zoo's configs use L1).
        train_cfg: the detector's ``train_cfg.rpn`` (``assigner``, ``sampler``,
            ``allowed_border``, ``pos_weight``, ``debug``).
        test_cfg: the detector's ``test_cfg.rpn`` (``nms_pre``, ``max_per_img``, ``nms``,
            ``min_bbox_size``).
        num_classes: always 1 (MMDetection fixes it; a config may still name it).
    """

    def __init__(self, in_channels: int,
                 init_cfg: Mapping | Sequence[Mapping] | None = RPN_INIT, num_convs: int = 1,
                 feat_channels: int = 256, anchor_generator: Mapping | Any = RPN_ANCHORS,
                 bbox_coder: Mapping | Any = DELTA_CODER, reg_decoded_bbox: bool = False,
                 loss_cls: Mapping | nn.Module = SIGMOID_CE,
                 loss_bbox: Mapping | nn.Module = SMOOTH_L1, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None, num_classes: int = 1) -> None:
        if num_classes != 1:
            raise ConfigError(f"rpn_head.num_classes must be 1 (one class, 'object'), got "
                              f"{num_classes!r}; drop the key")
        if not isinstance(num_convs, int) or num_convs < 1:
            raise ConfigError(f"rpn_head.num_convs must be a positive int, got {num_convs!r}")
        super().__init__(num_classes=1, in_channels=in_channels, feat_channels=feat_channels,
                         anchor_generator=anchor_generator, bbox_coder=bbox_coder,
                         reg_decoded_bbox=reg_decoded_bbox, loss_cls=loss_cls,
                         loss_bbox=loss_bbox, train_cfg=train_cfg, test_cfg=test_cfg,
                         init_cfg=init_cfg)
        self.num_convs = num_convs
        if num_convs > 1:
            # not in place: the ReLU after the convs (kept for every num_convs) reads their output
            self.rpn_conv = nn.Sequential(*(
                ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3,
                           padding=1, inplace=False) for i in range(num_convs)))
        else:
            self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, self.num_base_priors * self.cls_out_channels, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, self.num_base_priors * 4, 1)
        initialize(self, init_cfg, load_pretrained=False)

    def forward_single(self, x: torch.Tensor,
                       level: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """One level (the convs are shared: ``level`` is unused): ``(B, in_channels, H, W)`` ->
        objectness logits ``(B, A*C, H, W)`` and deltas ``(B, A*4, H, W)``."""
        x = F.relu(self.rpn_conv(x), inplace=False)
        return self.rpn_cls(x), self.rpn_reg(x)

    # ---- training ------------------------------------------------------------------------------

    def ground_truths(self, targets: Sequence[Mapping], metas: Sequence[Mapping],
                      num_images: int, device: torch.device) -> list[GroundTruth]:
        """Each image's boxes, all of class 0 (proposals know no classes; a target's
        ``labels``, if any, are not read)."""
        return class_agnostic_truths(targets, metas, num_images, device)

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_rpn_cls`` and ``loss_rpn_bbox`` of the raw outputs against the boxes of the
        ``targets`` (one dict per image, ``boxes`` and optional ``boxes_ignore``)."""
        losses = super().loss(raw, targets, metas)
        return dict(loss_rpn_cls=losses["loss_cls"], loss_rpn_bbox=losses["loss_bbox"])

    def loss_by_feats(self, feats: Sequence[torch.Tensor], targets: Sequence[Mapping],
                      metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """The losses of the feature maps of a training batch (see :meth:`loss`)."""
        return self.loss(self(feats), targets, metas)

    def loss_and_proposals(self, feats: Sequence[torch.Tensor], batch_or_targets: Any,
                           metas: Sequence[Mapping], proposal_cfg: Mapping | None = None
                           ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """The losses of a training batch and each image's ``(N, 5)`` proposals (detached,
        input pixels) under ``proposal_cfg`` (None: ``test_cfg``), from one forward pass, as
        MMDetection's ``forward_train`` with a ``proposal_cfg``."""
        targets = getattr(batch_or_targets, "targets", batch_or_targets)
        raw = self(feats)
        losses = self.loss(raw, targets, metas)
        return losses, self.proposals_by_feat(raw[0], raw[1], metas, proposal_cfg)

    # ---- proposals -----------------------------------------------------------------------------

    def proposals(self, feats: Sequence[torch.Tensor], metas: Sequence[Mapping],
                  cfg: Mapping | None = None) -> list[torch.Tensor]:
        """Each image's ``(N, 5)`` proposals (``x1, y1, x2, y2, score``, best first, input
        pixels) under ``cfg`` (None: ``test_cfg``)."""
        cls_scores, bbox_preds = self(feats)
        return self.proposals_by_feat(cls_scores, bbox_preds, metas, cfg)

    def proposal_cfg(self, cfg: Mapping | None) -> dict[str, Any]:
        """``cfg`` (or ``test_cfg``) checked, with the keys a proposal step needs."""
        if cfg is None:
            if not self.test_cfg:
                raise ConfigError(f"{type(self).__name__} was built without test_cfg; give the "
                                  f"model test_cfg.rpn (nms_pre, max_per_img, nms, "
                                  f"min_bbox_size)")
            return self.test_cfg
        return check_test_cfg(cfg, self.test_cfg_keys)

    @torch.no_grad()
    def proposals_by_feat(self, cls_scores: Sequence[torch.Tensor],
                          bbox_preds: Sequence[torch.Tensor], metas: Sequence[Mapping],
                          cfg: Mapping | None = None) -> list[torch.Tensor]:
        """Per level ``(B, A*C, H, W)`` logits and ``(B, A*4, H, W)`` deltas -> each image's
        ``(N, 5)`` proposals in input pixels (see the module's docstring for the steps)."""
        cfg = self.proposal_cfg(cfg)
        if len(metas) != cls_scores[0].shape[0]:
            raise ValueError(f"proposals got {cls_scores[0].shape[0]} images but {len(metas)} "
                             f"metas")
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        anchors = self.prior_generator.grid_priors(sizes, dtype=torch.float32,
                                                   device=cls_scores[0].device)
        return [self._proposals_single([c[i].detach() for c in cls_scores],
                                       [b[i].detach() for b in bbox_preds], anchors, meta, cfg)
                for i, meta in enumerate(metas)]

    def _proposals_single(self, cls_scores: Sequence[torch.Tensor],
                          bbox_preds: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor],
                          meta: Mapping, cfg: Mapping) -> torch.Tensor:
        nms_pre = cfg.get("nms_pre", -1)
        scores, deltas, kept_anchors, levels = [], [], [], []
        for level, (cls_map, reg_map, level_anchors) in enumerate(
                zip(cls_scores, bbox_preds, anchors, strict=True)):
            num = level_anchors.shape[0]
            score = class_probabilities(map_to_rows(cls_map.float(), num),
                                        self.use_sigmoid_cls)[:, 0]
            delta = map_to_rows(reg_map.float(), num)
            if 0 < nms_pre < num:
                score, order = score.sort(descending=True)
                score, order = score[:nms_pre], order[:nms_pre]
                delta, level_anchors = delta[order], level_anchors[order]
            scores.append(score)
            deltas.append(delta)
            kept_anchors.append(level_anchors)
            levels.append(torch.full_like(score, level, dtype=torch.long))
        scores, levels = torch.cat(scores), torch.cat(levels)
        boxes = self.decode_boxes(torch.cat(kept_anchors), torch.cat(deltas), meta["img_shape"])
        min_size = cfg.get("min_bbox_size", 0)
        if min_size >= 0:
            wh = boxes[:, 2:] - boxes[:, :2]
            big = (wh[:, 0] > min_size) & (wh[:, 1] > min_size)
            boxes, scores, levels = boxes[big], scores[big], levels[big]
        if boxes.numel() == 0:
            return boxes.new_zeros((0, 5))
        keep, kept_scores = multiclass_nms(boxes, scores, levels, cfg.get("nms", DEFAULT_NMS),
                                           cfg.get("max_per_img"))
        return torch.cat([boxes[keep], kept_scores[:, None]], dim=1)

    def predict(self, raw: RawOutputs, metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Each image's proposals as detections of class 0 (``test_cfg``), in original-image
        pixels with ``rescale`` (un-flipped, divided by ``scale_factor``), else input pixels."""
        return proposal_results(self.proposals_by_feat(raw[0], raw[1], metas), metas, rescale)


def class_agnostic_truths(targets: Sequence[Mapping], metas: Sequence[Mapping], num_images: int,
                          device: torch.device) -> list[GroundTruth]:
    """Each image's ground truth (see :func:`unpack_targets`) with every box of class 0: a
    proposal head's objects, whatever the targets' ``labels``."""
    agnostic = []
    for target in targets:
        boxes = target.get("boxes")
        count = 0 if boxes is None else int(boxes.reshape(-1, 4).shape[0])
        agnostic.append({**target, "labels": torch.zeros(count, dtype=torch.long)})
    return unpack_targets(agnostic, metas, num_images, 1, device)


def proposal_results(proposals: Sequence[torch.Tensor], metas: Sequence[Mapping],
                     rescale: bool = True) -> list[DetResult]:
    """Each image's ``(N, 5)`` proposals (input pixels) as a DetResult of class 0, in
    original-image pixels with ``rescale`` (un-flipped, divided by ``scale_factor``)."""
    results = []
    for found, meta in zip(proposals, metas, strict=True):
        boxes = boxes_to_original(found[:, :4], meta) if rescale else found[:, :4]
        labels = torch.zeros(len(found), dtype=torch.long, device=found.device)
        results.append(DetResult(boxes, found[:, 4], labels, meta=result_meta(meta)))
    return results
