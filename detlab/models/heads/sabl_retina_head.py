"""SABL's RetinaNet head (side-aware boundary localization, Wang et al., 2020; MMDetection 2.x's
``SABLRetinaHead``).

RetinaNet's two towers, with one square anchor per location (``square_anchor_generator``) and,
instead of box deltas, each side's bucket logits (``retina_bbox_cls``) and in-bucket offsets
(``retina_bbox_reg``) -- see :class:`~detlab.models.bucketing_coder.BucketingBBoxCoder`. A square
is assigned through its approximating anchors (``approx_anchor_generator``: RetinaNet's 9
anchors at the square's location) with ``ApproxMaxIoUAssigner``, as Guided Anchoring does. At
test time the scores are multiplied by the buckets' localization confidence.

Raw outputs: ``(cls_scores, bbox_cls_preds, bbox_reg_preds)``, per level ``(B, C, H, W)``,
``(B, 4 * S, H, W)`` and ``(B, 4 * S, H, W)``, ``S = ceil(num_buckets / 2)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.anchors import (
    check_approx_and_square,
    squares_inside_flags,
)
from detlab.models.bucketing_coder import BucketingBBoxCoder
from detlab.models.heads.base_dense_head import BaseDenseHead, GroundTruth, pad_shape_of
from detlab.models.heads.nms import multiclass_nms
from detlab.models.heads.postprocess import (
    DEFAULT_NMS,
    boxes_to_original,
    class_probabilities,
    filter_scores_and_topk,
    levels_to_rows,
    map_to_rows,
    result_meta,
)
from detlab.models.heads.retina_head import FOCAL, RETINA_INIT
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, frozen
from detlab.registry import MODELS
from detlab.structures import DetResult

APPROX_ANCHORS = frozen(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3,
                        ratios=(0.5, 1.0, 2.0), strides=(8, 16, 32, 64, 128))
SQUARE_ANCHORS = frozen(type="AnchorGenerator", ratios=(1.0,), scales=(4,),
                        strides=(8, 16, 32, 64, 128))
BUCKETING = frozen(type="BucketingBBoxCoder", num_buckets=14, scale_factor=3.0)
BUCKET_CE = frozen(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.5)
OFFSET_SMOOTH_L1 = frozen(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=1.5)


@MODELS.register_module()
class SABLRetinaHead(BaseDenseHead):
    """RetinaNet head with side-aware boundary localization.

    Args:
        num_classes: object classes (background excluded).
        in_channels: channels of the input feature maps.
        stacked_convs: 3x3 conv + ReLU layers in each tower.
        feat_channels: channels of the tower convs.
        approx_anchor_generator: the anchors that stand for a square in assignment (a square's
            overlap with an object is their best IoU).
        square_anchor_generator: one square anchor per location, the prior of the buckets;
            its ``scales[0]`` must be the approx generator's ``octave_base_scale`` and its
            strides the same.
        conv_cfg, norm_cfg: of the tower convs.
        bbox_coder: the bucketing coder (``num_buckets``, ``scale_factor`` ...).
        reg_decoded_bbox: kept for MMDetection's signature (SABL regresses offsets).
        train_cfg: ``assigner`` (one taking ``approxs``: ``ApproxMaxIoUAssigner``),
            ``sampler``, ``allowed_border``, ``pos_weight``, ``debug``.
        test_cfg: ``nms_pre``, ``score_thr``, ``nms``, ``max_per_img`` (``min_bbox_size`` is
            accepted and, as in MMDetection, not applied).
        loss_cls: classification loss (default: focal loss).
        loss_bbox_cls: bucket classification loss (default: sigmoid cross-entropy, weight 1.5).
        loss_bbox_reg: offset regression loss (default: smooth L1, beta 1/9, weight 1.5).
        init_cfg: weight initialization (default: RetinaNet's).
    """

    def __init__(self, num_classes: int, in_channels: int, stacked_convs: int = 4,
                 feat_channels: int = 256,
                 approx_anchor_generator: Mapping | Any = APPROX_ANCHORS,
                 square_anchor_generator: Mapping | Any = SQUARE_ANCHORS,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = None,
                 bbox_coder: Mapping | Any = BUCKETING, reg_decoded_bbox: bool = False,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 loss_cls: Mapping | nn.Module = FOCAL,
                 loss_bbox_cls: Mapping | nn.Module = BUCKET_CE,
                 loss_bbox_reg: Mapping | nn.Module = OFFSET_SMOOTH_L1,
                 init_cfg: Mapping | Sequence[Mapping] | None = RETINA_INIT) -> None:
        check_approx_and_square("SABLRetinaHead", approx_anchor_generator,
                                square_anchor_generator)
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         prior_generator=square_anchor_generator, bbox_coder=bbox_coder,
                         loss_cls=loss_cls, loss_bbox=loss_bbox_reg, train_cfg=train_cfg,
                         test_cfg=test_cfg, init_cfg=init_cfg)
        if not isinstance(self.bbox_coder, BucketingBBoxCoder):
            raise ConfigError(f"SABLRetinaHead needs bbox_coder=dict(type='BucketingBBoxCoder', "
                              f"num_buckets=14, scale_factor=3.0), got "
                              f"{type(self.bbox_coder).__name__}")
        if self.num_base_priors != 1:
            raise ConfigError(f"SABLRetinaHead's square_anchor_generator must give one anchor per "
                              f"location (ratios=[1.0] and one scale), it gives "
                              f"{self.num_base_priors}")
        self.approx_anchor_generator = MODELS.build(approx_anchor_generator)
        self.approxs_per_octave = self.approx_anchor_generator.num_base_priors[0]
        self.loss_bbox_cls = MODELS.build(loss_bbox_cls)
        if self.assigner is not None and \
                "approxs" not in inspect.signature(self.assigner.assign).parameters:
            raise ConfigError(f"SABLRetinaHead assigns squares through their approximating "
                              f"anchors: model.train_cfg.assigner must take them, e.g. "
                              f"type='ApproxMaxIoUAssigner', got "
                              f"{type(self.assigner).__name__}")
        self.feat_channels, self.stacked_convs = feat_channels, stacked_convs
        self.reg_decoded_bbox = reg_decoded_bbox
        self.num_buckets, self.side_num = self.bbox_coder.num_buckets, self.bbox_coder.side_num
        self.cls_convs = self._tower(conv_cfg, norm_cfg)
        self.reg_convs = self._tower(conv_cfg, norm_cfg)
        self.retina_cls = nn.Conv2d(feat_channels, self.cls_out_channels, 3, padding=1)
        self.retina_bbox_reg = nn.Conv2d(feat_channels, self.side_num * 4, 3, padding=1)
        self.retina_bbox_cls = nn.Conv2d(feat_channels, self.side_num * 4, 3, padding=1)
        initialize(self, init_cfg, load_pretrained=False)

    def _tower(self, conv_cfg: Mapping | None, norm_cfg: Mapping | None) -> nn.ModuleList:
        return nn.ModuleList(
            ConvModule(self.in_channels if i == 0 else self.feat_channels, self.feat_channels, 3,
                       padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for i in range(self.stacked_convs))

    @property
    def loss_bbox_reg(self) -> nn.Module:
        """The offset regression loss (kept as :attr:`loss_bbox`)."""
        return self.loss_bbox

    @property
    def square_anchor_generator(self) -> Any:
        """MMDetection's name of :attr:`prior_generator`."""
        return self.prior_generator

    def forward_single(self, x: torch.Tensor, level: int = 0) -> tuple[torch.Tensor, ...]:
        """One level (shared towers): ``(B, in_channels, H, W)`` -> class logits ``(B, C, H,
        W)``, bucket logits and offsets ``(B, 4 * S, H, W)``."""
        cls_feat = reg_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        return self.retina_cls(cls_feat), self.retina_bbox_cls(reg_feat), \
            self.retina_bbox_reg(reg_feat)

    # ---- targets -----------------------------------------------------------------------------

    def _inside_flags(self, approxs: torch.Tensor, sizes: Sequence[tuple[int, int]],
                      meta: Mapping) -> torch.Tensor:
        """``(A,)`` bool per square: any of its approximating anchors is valid (inside the
        padded image) and within ``allowed_border`` of the image."""
        return squares_inside_flags(self.approx_anchor_generator, approxs, sizes,
                                    pad_shape_of(meta), meta["img_shape"],
                                    self.train_cfg.get("allowed_border", -1),
                                    self.approxs_per_octave)

    def targets_per_image(self, squares: torch.Tensor, approxs: torch.Tensor,
                          inside: torch.Tensor, gt: GroundTruth) -> tuple:
        """One image's targets: labels and label weights ``(A,)``, bucket labels and weights,
        offsets and offset weights ``(A, 4 * S)``, and the numbers of positives and
        negatives."""
        num, width = squares.shape[0], self.side_num * 4
        labels = torch.full((num,), self.num_classes, dtype=torch.long, device=squares.device)
        label_weights = squares.new_zeros(num)
        cls_t, cls_w, reg_t, reg_w = (squares.new_zeros((num, width)) for _ in range(4))
        idx = torch.nonzero(inside).squeeze(1)
        if idx.numel() == 0:
            return labels, label_weights, cls_t, cls_w, reg_t, reg_w, 0, 0
        inside_approxs = approxs.reshape(num, self.approxs_per_octave, 4)[idx].reshape(-1, 4)
        assign = self.assigner.assign(squares[idx], gt.boxes, gt.boxes_ignore, None,
                                      approxs=inside_approxs)
        sample = self.sampler.sample(assign, squares[idx], gt.boxes)
        pos, neg = idx[sample.pos_inds], idx[sample.neg_inds]
        if pos.numel() > 0:
            reg_t[pos], reg_w[pos], cls_t[pos], cls_w[pos] = self.bbox_coder.encode(
                sample.pos_bboxes, sample.pos_gt_bboxes)
            labels[pos] = gt.labels[sample.pos_assigned_gt_inds]
            pos_weight = self.train_cfg.get("pos_weight", -1)
            label_weights[pos] = 1.0 if pos_weight <= 0 else float(pos_weight)
        label_weights[neg] = 1.0
        return labels, label_weights, cls_t, cls_w, reg_t, reg_w, len(pos), len(neg)

    # ---- loss ----------------------------------------------------------------------------------

    def loss(self, raw: tuple[list[torch.Tensor], ...], targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls`` (over non-ignored squares), ``loss_bbox_cls`` and ``loss_bbox_reg``
        (over positives' sides), each divided by the positives (at least one per image; plus
        the negatives when sampling), the side losses also by ``4 * S`` and ``4 *
        offset_topk``."""
        self.check_trainable()
        cls_scores, bbox_cls_preds, bbox_reg_preds = raw
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        device = cls_scores[0].device
        squares = torch.cat(self.prior_generator.grid_priors(sizes, dtype=torch.float32,
                                                             device=device))
        approxs = torch.cat(self.approx_anchor_generator.grid_priors(
            sizes, dtype=torch.float32, device=device))
        gts = self.ground_truths(targets, metas, len(cls_scores[0]), device)
        per_image = [self.targets_per_image(squares, approxs,
                                            self._inside_flags(approxs, sizes, meta), gt)
                     for gt, meta in zip(gts, metas, strict=True)]
        labels, label_w, cls_t, cls_w, reg_t, reg_w, num_pos, num_neg = zip(*per_image,
                                                                             strict=True)
        avg = sum(max(n, 1) for n in num_pos)
        if self.sampling:
            avg += sum(max(n, 1) for n in num_neg)
        width = self.side_num * 4
        cls_rows = levels_to_rows(cls_scores, self.cls_out_channels).reshape(
            -1, self.cls_out_channels)
        loss_cls = self.loss_cls(cls_rows, torch.cat(labels), torch.cat(label_w),
                                 avg_factor=avg)
        loss_bbox_cls = self.loss_bbox_cls(
            levels_to_rows(bbox_cls_preds, width).reshape(-1, width), torch.cat(cls_t).long(),
            torch.cat(cls_w), avg_factor=avg * width)
        loss_bbox_reg = self.loss_bbox_reg(
            levels_to_rows(bbox_reg_preds, width).reshape(-1, width), torch.cat(reg_t),
            torch.cat(reg_w), avg_factor=avg * 4 * self.bbox_coder.offset_topk)
        return dict(loss_cls=loss_cls, loss_bbox_cls=loss_bbox_cls, loss_bbox_reg=loss_bbox_reg)

    # ---- post-processing -----------------------------------------------------------------------

    def predict(self, raw: tuple[list[torch.Tensor], ...], metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Each image's detections: per level the ``nms_pre`` best (square, class) pairs above
        ``score_thr``, their boxes decoded from the buckets (clipped to the image), then over
        all levels the boxes mapped to the original image (``rescale``), the scores multiplied
        by the localization confidence, NMS and ``max_per_img``."""
        if not self.test_cfg:
            raise ConfigError("SABLRetinaHead was built without test_cfg; give the model a "
                              "test_cfg (nms_pre, score_thr, nms, max_per_img)")
        cls_scores, bbox_cls_preds, bbox_reg_preds = raw
        if len(metas) != cls_scores[0].shape[0]:
            raise ValueError(f"predict got {cls_scores[0].shape[0]} images but {len(metas)} "
                             f"metas")
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        squares = self.prior_generator.grid_priors(sizes, dtype=torch.float32,
                                                   device=cls_scores[0].device)
        return [self._predict_image([c[i] for c in cls_scores], [b[i] for b in bbox_cls_preds],
                                    [r[i] for r in bbox_reg_preds], squares, meta, rescale)
                for i, meta in enumerate(metas)]

    def _predict_image(self, cls_scores: Sequence[torch.Tensor],
                       bbox_cls_preds: Sequence[torch.Tensor],
                       bbox_reg_preds: Sequence[torch.Tensor], squares: Sequence[torch.Tensor],
                       meta: Mapping, rescale: bool) -> DetResult:
        cfg = self.test_cfg
        found = []
        for cls, bucket, offset, prior in zip(cls_scores, bbox_cls_preds, bbox_reg_preds,
                                              squares, strict=True):
            num = prior.shape[0]
            scores = class_probabilities(map_to_rows(cls.float(), num), self.use_sigmoid_cls)
            scores, labels, keep = filter_scores_and_topk(scores, cfg.get("score_thr", 0.0),
                                                          cfg.get("nms_pre", -1))
            preds = (map_to_rows(bucket.float(), num)[keep].contiguous(),
                     map_to_rows(offset.float(), num)[keep].contiguous())
            boxes, confidence = self.bbox_coder.decode(prior[keep].contiguous(), preds,
                                                       max_shape=meta["img_shape"])
            found.append((boxes, scores, labels, confidence))
        boxes, scores, labels, confidence = (torch.cat([level[k] for level in found])
                                             for k in range(4))
        if rescale:
            boxes = boxes_to_original(boxes, meta)
        scores = scores * confidence
        keep, scores = multiclass_nms(boxes, scores, labels, cfg.get("nms", DEFAULT_NMS),
                                      cfg.get("max_per_img"))
        return DetResult(boxes[keep], scores, labels[keep], meta=result_meta(meta))
