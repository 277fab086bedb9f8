"""YOLOF's head (Chen et al., 2021, "You Only Look One-level Feature") as MMDetection 2.28
builds it, on :class:`~detlab.models.heads.AnchorHead`.

One level (the dilated encoder's output). A classification subnet (``cls_subnet``,
``num_cls_convs`` 3x3 conv + BN + ReLU) ends in ``cls_score``; a regression subnet
(``bbox_subnet``, ``num_reg_convs`` of them) ends in ``bbox_pred`` (deltas per anchor) and
``object_pred`` (one objectness logit per anchor). The class logits leave the head already
multiplied by the implicit objectness: ``cls + obj - log(1 + exp(cls) + exp(obj))``, the logit
of ``sigmoid(cls) * sigmoid(obj)`` (each exponential clamped at 1e8 as MMDetection does), so the
shared post-processing applies unchanged.

Training: the anchors inside the image are matched by ``UniformAssigner`` (each object takes
its ``match_times`` nearest predicted boxes and nearest anchors; matches of low anchor IoU are
ignored, and so are predictions overlapping any object by more than ``neg_ignore_thr``), then
the sampler (MMDetection's rule: none with the focal loss). The focal loss covers every
non-ignored anchor; the GIoU loss covers the assigner's matches -- the predicted boxes
(decoded from the deltas, gradients kept) against their objects, a match ignored by
``pos_ignore_thr`` weighted 0. Both are divided by the positives (at least one an image; plus
the negatives when sampling), averaged over processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.dist import reduce_mean
from detlab.models.anchors import anchor_inside_flags
from detlab.models.heads.anchor_head import AnchorHead
from detlab.models.heads.base_dense_head import GroundTruth
from detlab.models.heads.postprocess import levels_to_rows
from detlab.models.init import bias_init_with_prob
from detlab.models.utils import ConvModule, constant_init, frozen
from detlab.registry import MODELS

# the exponentials of the implicit objectness are clamped here, as MMDetection's
EXP_CLAMP = 1e8
# YOLOF's own settings (MMDetection's YOLOFHead inherits AnchorHead's multi-level defaults,
# which a one-level head cannot use; its config gives these)
YOLOF_ANCHORS = frozen(type="AnchorGenerator", ratios=(1.0,), scales=(1, 2, 4, 8, 16),
                       strides=(32,))
YOLOF_CODER = frozen(type="DeltaXYWHBBoxCoder", target_means=(0.0,) * 4,
                     target_stds=(1.0,) * 4, add_ctr_clamp=True, ctr_clamp=32)
FOCAL = frozen(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)
GIOU = frozen(type="GIoULoss", loss_weight=1.0)
BN = frozen(type="BN", requires_grad=True)


@dataclass
class YOLOFTargets:
    """Training targets of a batch.

    Attributes:
        labels, label_weights: ``(B, A)`` (``num_classes`` for background; weight 0 for ignored
            anchors and anchors outside the image).
        pred_boxes: ``(M, 4)`` xyxy predicted boxes of the assigner's matches of all images
            (decoded from the deltas, with their gradients).
        target_boxes: ``(M, 4)`` xyxy object of each match.
        box_weights: ``(M,)`` 1 for a kept match, 0 for one ignored by ``pos_ignore_thr``.
        num_pos, num_neg: positive and negative anchors of each image.
    """

    labels: torch.Tensor
    label_weights: torch.Tensor
    pred_boxes: torch.Tensor
    target_boxes: torch.Tensor
    box_weights: torch.Tensor
    num_pos: list[int]
    num_neg: list[int]


@MODELS.register_module()
class YOLOFHead(AnchorHead):
    """Args (MMDetection's names):
        num_classes: object classes (sigmoid scores, no background).
        in_channels: channels of the input map (and of every subnet conv).
        num_cls_convs, num_reg_convs: convs of the classification and regression subnets.
        norm_cfg: norm of the subnet convs.
        feat_channels: accepted as AnchorHead's (unused: the subnets keep ``in_channels``).
        anchor_generator: one level of anchors (default: YOLOF's, stride 32, 5 sizes).
        bbox_coder: deltas (default: YOLOF's, center shift clamped at 32 pixels).
        reg_decoded_bbox: MMDetection's AnchorHead flag; YOLOF's box loss always compares
            decoded boxes.
        loss_cls, loss_bbox: focal and GIoU losses by default.
        train_cfg: ``assigner`` (``UniformAssigner``), ``sampler``, ``allowed_border``,
            ``pos_weight``, ``debug``.
        test_cfg: ``nms_pre``, ``score_thr``, ``nms``, ``min_bbox_size``, ``max_per_img``.
        init_cfg: kept for MMDetection's configs; :meth:`init_weights` is the head's own.
    """

    def __init__(self, num_classes: int, in_channels: int, num_cls_convs: int = 2,
                 num_reg_convs: int = 4, norm_cfg: Mapping | None = BN,
                 feat_channels: int = 256, anchor_generator: Mapping | Any = YOLOF_ANCHORS,
                 bbox_coder: Mapping | Any = YOLOF_CODER, reg_decoded_bbox: bool = True,
                 loss_cls: Mapping | nn.Module = FOCAL, loss_bbox: Mapping | nn.Module = GIOU,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         feat_channels=feat_channels, anchor_generator=anchor_generator,
                         bbox_coder=bbox_coder, reg_decoded_bbox=reg_decoded_bbox,
                         loss_cls=loss_cls, loss_bbox=loss_bbox, train_cfg=train_cfg,
                         test_cfg=test_cfg, init_cfg=init_cfg)
        if self.prior_generator.num_levels != 1:
            raise ConfigError(f"YOLOFHead reads one feature level, but bbox_head."
                              f"anchor_generator has {self.prior_generator.num_levels} strides; "
                              f"give it one, e.g. strides=[32]")
        if not self.use_sigmoid_cls:
            raise ConfigError("YOLOFHead's implicit objectness needs sigmoid class scores: set "
                              "bbox_head.loss_cls.use_sigmoid=True")
        self.num_cls_convs, self.num_reg_convs = num_cls_convs, num_reg_convs
        self.norm_cfg = norm_cfg
        self.cls_subnet = nn.Sequential(*(
            ConvModule(in_channels, in_channels, 3, padding=1, norm_cfg=norm_cfg)
            for _ in range(num_cls_convs)))
        self.bbox_subnet = nn.Sequential(*(
            ConvModule(in_channels, in_channels, 3, padding=1, norm_cfg=norm_cfg)
            for _ in range(num_reg_convs)))
        priors = self.num_base_priors
        self.cls_score = nn.Conv2d(in_channels, priors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, priors * 4, 3, padding=1)
        self.object_pred = nn.Conv2d(in_channels, priors, 3, padding=1)
        self.init_weights()

    def init_weights(self) -> None:
        """MMDetection's: every conv normal (std 0.01, bias 0), norms at weight 1 / bias 0, the
        classifier's bias at the 0.01 prior."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                constant_init(m, 1.0)
        nn.init.constant_(self.cls_score.bias, bias_init_with_prob(0.01))

    # ---- forward -----------------------------------------------------------------------------

    def forward_single(self, x: torch.Tensor,
                       level: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The one level: ``(B, in_channels, H, W)`` -> class logits with the implicit
        objectness ``(B, A*C, H, W)`` and deltas ``(B, A*4, H, W)``."""
        cls = self.cls_score(self.cls_subnet(x))
        n, _, h, w = cls.shape
        cls = cls.view(n, -1, self.num_classes, h, w)
        reg_feat = self.bbox_subnet(x)
        deltas = self.bbox_pred(reg_feat)
        obj = self.object_pred(reg_feat).view(n, -1, 1, h, w)
        normalizer = torch.log(1.0 + cls.exp().clamp(max=EXP_CLAMP)
                               + obj.exp().clamp(max=EXP_CLAMP))
        return (cls + obj - normalizer).view(n, -1, h, w), deltas

    # ---- targets and loss --------------------------------------------------------------------

    def yolof_targets(self, anchors: torch.Tensor, valid: torch.Tensor,
                      reg_rows: torch.Tensor, gts: Sequence[GroundTruth],
                      metas: Sequence[Mapping]) -> YOLOFTargets:
        """Targets of the batch from the ``(A, 4)`` anchors, their ``(B, A)`` valid flags and
        the ``(B, A, 4)`` deltas (see :class:`YOLOFTargets`)."""
        self.check_trainable()
        labels, label_weights, preds, boxes, weights = [], [], [], [], []
        num_pos, num_neg = [], []
        for i, gt in enumerate(gts):
            inside = anchor_inside_flags(anchors, valid[i], metas[i]["img_shape"],
                                         self.train_cfg.get("allowed_border", -1))
            idx = torch.nonzero(inside).squeeze(1)
            if idx.numel() == 0:  # nothing to learn from this image
                image_labels, image_weights, _, _ = self._empty_targets(anchors)
                labels.append(image_labels)
                label_weights.append(image_weights)
                num_pos.append(0)
                num_neg.append(0)
                continue
            decoded = self.decode_boxes(anchors[idx], reg_rows[i][idx])
            assign = self.assigner.assign(anchors[idx], gt.boxes, gt.boxes_ignore,
                                          None if self.sampling else gt.labels,
                                          pred_bboxes=decoded)
            sample = self.sampler.sample(assign, anchors[idx], gt.boxes)
            image_labels, image_weights, _, _ = self._fill_targets(anchors, idx, sample, gt)
            labels.append(image_labels)
            label_weights.append(image_weights)
            preds.append(assign.extra["pos_predicted_boxes"])
            boxes.append(assign.extra["target_boxes"])
            weights.append(assign.extra["pos_idx"])
            num_pos.append(len(sample.pos_inds))
            num_neg.append(len(sample.neg_inds))
        empty = reg_rows.new_zeros((0, 4))
        return YOLOFTargets(
            torch.stack(labels), torch.stack(label_weights),
            torch.cat(preds) if preds else empty, torch.cat(boxes) if boxes else empty,
            torch.cat(weights).float() if weights else reg_rows.new_zeros(0), num_pos, num_neg)

    def loss(self, raw: tuple[list[torch.Tensor], list[torch.Tensor]],
             targets: Sequence[Mapping], metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls`` and ``loss_bbox`` (see the module docstring)."""
        cls_scores, bbox_preds = raw[0], raw[1]
        if len(cls_scores) != 1:
            raise ValueError(f"YOLOFHead takes one feature level, got {len(cls_scores)}")
        priors = self.get_priors(cls_scores, metas)
        cls_rows = levels_to_rows(cls_scores, self.cls_out_channels).float()
        reg_rows = levels_to_rows(bbox_preds, 4).float()
        gts = self.ground_truths(targets, metas, len(metas), cls_rows.device)
        t = self.yolof_targets(priors.priors, priors.valid, reg_rows, gts, metas)
        num_samples = sum(max(n, 1) for n in t.num_pos)
        if self.sampling:
            num_samples += sum(max(n, 1) for n in t.num_neg)
        avg_factor = reduce_mean(cls_rows.new_tensor(float(num_samples))).clamp(min=1.0).item()
        loss_cls = self.loss_cls(cls_rows.reshape(-1, self.cls_out_channels),
                                 t.labels.reshape(-1), t.label_weights.reshape(-1),
                                 avg_factor=avg_factor)
        if t.pred_boxes.shape[0] == 0:
            loss_bbox = reg_rows.sum() * 0  # no match: zero, still in the graph
        else:
            loss_bbox = self.loss_bbox(t.pred_boxes, t.target_boxes, t.box_weights,
                                       avg_factor=avg_factor)
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox)
