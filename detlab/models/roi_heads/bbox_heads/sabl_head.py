"""The R-CNN box head of side-aware boundary localization (SABL, Wang et al., 2020; MMDetection
2.28's ``SABLHead``).

Classification is a plain fc branch on the flattened RoI features. Localization works side by
side: two convs refine the RoI features, an attention map per direction pools them into a row
(x) and a column (y) of features, a 1-D conv and a transposed conv bring each to
``num_buckets`` positions, and each position predicts (shared linear layers) a bucket logit and
an in-bucket offset. The left half of the x positions belongs to the left side, the right half
(mirrored, numbered from the right edge inwards) to the right side; likewise top / bottom.
:class:`~detlab.models.bucketing_coder.BucketingBBoxCoder` turns them into boxes and a
localization confidence that multiplies the class scores before NMS.

``bbox_pred`` is a pair ``(bucket_logits, bucket_offsets)``, each ``(K, 4 * S)``; the RoI heads
split it per image with :meth:`SABLHead.bbox_pred_split`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.assigners import SamplingResult
from detlab.models.heads.nms import check_nms_cfg, multiclass_nms
from detlab.models.heads.postprocess import boxes_to_original
from detlab.models.init import initialize
from detlab.models.roi_heads.bbox_heads.bbox_head import accuracy
from detlab.models.utils import ConvModule, thaw
from detlab.registry import MODELS

SABL_CODER = dict(type="BucketingBBoxCoder", num_buckets=14, scale_factor=1.7)
SOFTMAX_CE = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)
SIGMOID_CE = dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0)
OFFSET_LOSS = dict(type="SmoothL1Loss", beta=0.1, loss_weight=1.0)


def _fc_branch(num_fcs: int, in_features: int, out_features: int) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(in_features if i == 0 else out_features, out_features)
                         for i in range(num_fcs))


@MODELS.register_module()
class SABLHead(nn.Module):
    """Side-aware box head: class scores, bucket logits and bucket offsets of each RoI.

    Args:
        num_classes: object classes (background excluded).
        cls_in_channels, reg_in_channels: channels of the RoI features for each branch.
        roi_feat_size: side of the (square) pooled RoI features.
        reg_feat_up_ratio: the transposed convs' upsampling of the side features;
            ``roi_feat_size * reg_feat_up_ratio`` must equal the coder's ``num_buckets``.
        reg_pre_kernel, reg_pre_num: the 2-D convs before the attention pooling.
        reg_post_kernel, reg_post_num: the 1-D convs after it.
        cls_out_channels, num_cls_fcs: the classification fcs.
        reg_offset_out_channels, reg_cls_out_channels, num_reg_fcs: the fcs before the bucket
            offset / logit predictors (shared by all positions).
        reg_class_agnostic: must be True (one box per RoI).
        norm_cfg: norm of the convs (None).
        bbox_coder: a ``BucketingBBoxCoder`` config.
        loss_cls: softmax classification loss; loss_bbox_cls: sigmoid bucket loss;
            loss_bbox_reg: offset loss (SmoothL1, beta 0.1).
        init_cfg: default Xavier-uniform linears, Normal predictors and attention convs,
            Kaiming upsampling.
    """

    def __init__(self, num_classes: int, cls_in_channels: int = 256, reg_in_channels: int = 256,
                 roi_feat_size: int = 7, reg_feat_up_ratio: int = 2, reg_pre_kernel: int = 3,
                 reg_post_kernel: int = 3, reg_pre_num: int = 2, reg_post_num: int = 1,
                 cls_out_channels: int = 1024, reg_offset_out_channels: int = 256,
                 reg_cls_out_channels: int = 256, num_cls_fcs: int = 1, num_reg_fcs: int = 0,
                 reg_class_agnostic: bool = True, norm_cfg: Mapping | None = None,
                 bbox_coder: Mapping | Any = SABL_CODER,
                 loss_cls: Mapping | nn.Module = SOFTMAX_CE,
                 loss_bbox_cls: Mapping | nn.Module = SIGMOID_CE,
                 loss_bbox_reg: Mapping | nn.Module = OFFSET_LOSS,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes <= 0:
            raise ConfigError(f"roi_head.bbox_head.num_classes must be a positive int (object "
                              f"classes, background excluded), got {num_classes!r}")
        if not reg_class_agnostic:
            raise ConfigError("SABLHead regresses one box per RoI: set roi_head.bbox_head."
                              "reg_class_agnostic=True")
        self.reg_feat_up_ratio = int(reg_feat_up_ratio)
        if self.reg_feat_up_ratio < 2:
            raise ConfigError(f"SABLHead reg_feat_up_ratio must be >= 2, got "
                              f"{reg_feat_up_ratio!r}")
        self.bbox_coder = MODELS.build(bbox_coder)
        self.num_buckets = self.bbox_coder.num_buckets
        self.up_reg_feat_size = roi_feat_size * self.reg_feat_up_ratio
        if self.up_reg_feat_size != self.num_buckets:
            raise ConfigError(f"SABLHead needs roi_feat_size * reg_feat_up_ratio "
                              f"({roi_feat_size} * {reg_feat_up_ratio}) to equal bbox_coder."
                              f"num_buckets ({self.num_buckets})")
        self.num_classes, self.roi_feat_size = num_classes, roi_feat_size
        self.cls_in_channels, self.reg_in_channels = cls_in_channels, reg_in_channels
        self.cls_out_channels = cls_out_channels
        self.reg_pre_num, self.reg_post_num = reg_pre_num, reg_post_num
        self.reg_class_agnostic, self.norm_cfg = True, norm_cfg
        self.side_num = math.ceil(self.num_buckets / 2)
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_bbox_cls = MODELS.build(loss_bbox_cls)
        self.loss_bbox_reg = MODELS.build(loss_bbox_reg)

        self.cls_fcs = _fc_branch(num_cls_fcs, cls_in_channels * roi_feat_size ** 2,
                                  cls_out_channels)
        up = self.reg_feat_up_ratio
        self.upsample_x = nn.ConvTranspose1d(reg_in_channels, reg_in_channels, up, stride=up)
        self.upsample_y = nn.ConvTranspose1d(reg_in_channels, reg_in_channels, up, stride=up)
        self.reg_pre_convs = nn.ModuleList(
            ConvModule(reg_in_channels, reg_in_channels, reg_pre_kernel,
                       padding=reg_pre_kernel // 2, norm_cfg=norm_cfg)
            for _ in range(reg_pre_num))
        self.reg_post_conv_xs = nn.ModuleList(
            ConvModule(reg_in_channels, reg_in_channels, (1, reg_post_kernel),
                       padding=(0, reg_post_kernel // 2), norm_cfg=norm_cfg)
            for _ in range(reg_post_num))
        self.reg_post_conv_ys = nn.ModuleList(
            ConvModule(reg_in_channels, reg_in_channels, (reg_post_kernel, 1),
                       padding=(reg_post_kernel // 2, 0), norm_cfg=norm_cfg)
            for _ in range(reg_post_num))
        self.reg_conv_att_x = nn.Conv2d(reg_in_channels, 1, 1)
        self.reg_conv_att_y = nn.Conv2d(reg_in_channels, 1, 1)
        self.fc_cls = nn.Linear(cls_out_channels, num_classes + 1)
        self.relu = nn.ReLU(inplace=True)
        self.reg_cls_fcs = _fc_branch(num_reg_fcs, reg_in_channels, reg_cls_out_channels)
        self.reg_offset_fcs = _fc_branch(num_reg_fcs, reg_in_channels, reg_offset_out_channels)
        # sized by the *_out_channels, as MMDetection's (equal to reg_in_channels without fcs)
        self.fc_reg_cls = nn.Linear(reg_cls_out_channels, 1)
        self.fc_reg_offset = nn.Linear(reg_offset_out_channels, 1)
        if init_cfg is None:
            init_cfg = [
                dict(type="Xavier", layer="Linear", distribution="uniform", override=[
                    dict(type="Normal", name="reg_conv_att_x", std=0.01),
                    dict(type="Normal", name="reg_conv_att_y", std=0.01),
                    dict(type="Normal", name="fc_reg_cls", std=0.01),
                    dict(type="Normal", name="fc_cls", std=0.01),
                    dict(type="Normal", name="fc_reg_offset", std=0.001)]),
                dict(type="Kaiming", distribution="normal",
                     override=[dict(name="upsample_x"), dict(name="upsample_y")])]
        self.init_cfg = thaw(init_cfg)
        initialize(self, self.init_cfg, load_pretrained=False)

    # the BBoxHead properties the RoI heads ask for
    custom_cls_channels = custom_activation = custom_accuracy = False

    def init_weights(self) -> None:
        """Apply ``init_cfg``."""
        initialize(self, self.init_cfg)

    # ---- forward -----------------------------------------------------------------------------

    def cls_forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for fc in self.cls_fcs:
            x = self.relu(fc(x))
        return self.fc_cls(x)

    def attention_pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Column-wise (x) and row-wise (y) features, pooled with normalized sigmoid
        attention: ``(K, C, W)`` and ``(K, C, H)``."""
        att_x = self.reg_conv_att_x(x).sigmoid()
        att_y = self.reg_conv_att_y(x).sigmoid()
        att_x = att_x / att_x.sum(dim=2, keepdim=True)
        att_y = att_y / att_y.sum(dim=3, keepdim=True)
        return (x * att_x).sum(dim=2), (x * att_y).sum(dim=3)

    def side_aware_feature_extractor(self, x: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, C, s, s)`` -> x and y side features ``(K, num_buckets, C)``."""
        for conv in self.reg_pre_convs:
            x = conv(x)
        fx, fy = self.attention_pool(x)
        if self.reg_post_num > 0:
            fx, fy = fx.unsqueeze(2), fy.unsqueeze(3)
            for conv_x, conv_y in zip(self.reg_post_conv_xs, self.reg_post_conv_ys,
                                      strict=True):
                fx, fy = conv_x(fx), conv_y(fy)
            fx, fy = fx.squeeze(2), fy.squeeze(3)
        fx = self.relu(self.upsample_x(fx))
        fy = self.relu(self.upsample_y(fy))
        return fx.transpose(1, 2).contiguous(), fy.transpose(1, 2).contiguous()

    def reg_pred(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, B, C)`` side features -> offsets and bucket logits ``(K, B)``."""
        x_offset = x_cls = x.reshape(-1, self.reg_in_channels)
        for fc in self.reg_offset_fcs:
            x_offset = self.relu(fc(x_offset))
        for fc in self.reg_cls_fcs:
            x_cls = self.relu(fc(x_cls))
        return (self.fc_reg_offset(x_offset).view(x.size(0), -1),
                self.fc_reg_cls(x_cls).view(x.size(0), -1))

    def side_aware_split(self, feat: torch.Tensor) -> torch.Tensor:
        """``(K, B)`` positions -> the first side's buckets then the second's, each numbered
        from its own edge inwards."""
        first = feat[:, :math.ceil(self.up_reg_feat_size / 2)]
        second = feat[:, self.up_reg_feat_size // 2:].flip(dims=(1,))
        return torch.cat([first, second], dim=-1)

    def reg_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fx, fy = self.side_aware_feature_extractor(x)
        offset_x, cls_x = self.reg_pred(fx)
        offset_y, cls_y = self.reg_pred(fy)
        split = self.side_aware_split
        return (torch.cat([split(cls_x), split(cls_y)], dim=-1),
                torch.cat([split(offset_x), split(offset_y)], dim=-1))

    def forward(self, x: torch.Tensor
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``(K, C, s, s)`` RoI features -> ``(K, num_classes + 1)`` class logits and
        ``(bucket_logits, bucket_offsets)``, each ``(K, 4 * S)``."""
        bbox_pred = self.reg_forward(x)
        return self.cls_forward(x), bbox_pred

    @staticmethod
    def bbox_pred_split(bbox_pred: Sequence[torch.Tensor], counts: Sequence[int]
                        ) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """The batch's ``(bucket_logits, bucket_offsets)`` -> one pair per image."""
        logits, offsets = bbox_pred
        return tuple(zip(logits.split(list(counts), 0), offsets.split(list(counts), 0),
                         strict=True))

    # ---- targets and loss --------------------------------------------------------------------

    def _bucket_target_single(self, pos_bboxes: torch.Tensor, neg_bboxes: torch.Tensor,
                              pos_gt_bboxes: torch.Tensor, pos_gt_labels: torch.Tensor
                              ) -> tuple[torch.Tensor, ...]:
        num_pos, num_neg = pos_bboxes.shape[0], neg_bboxes.shape[0]
        num, width = num_pos + num_neg, 4 * self.side_num
        labels = pos_bboxes.new_full((num,), self.num_classes, dtype=torch.long)
        label_weights = pos_bboxes.new_zeros(num)
        targets = [pos_bboxes.new_zeros(num, width) for _ in range(4)]
        if num_pos > 0:
            labels[:num_pos] = pos_gt_labels
            label_weights[:num_pos] = 1.0
            offsets, offset_weights, buckets, bucket_weights = self.bbox_coder.encode(
                pos_bboxes, pos_gt_bboxes)
            for target, value in zip(targets, (buckets, bucket_weights, offsets,
                                               offset_weights), strict=True):
                target[:num_pos] = value
        if num_neg > 0:
            label_weights[-num_neg:] = 1.0
        return (labels, label_weights, *targets)

    def get_targets(self, sampling_results: Sequence[SamplingResult],
                    gt_bboxes: Sequence[torch.Tensor] | None,
                    gt_labels: Sequence[torch.Tensor] | None, rcnn_train_cfg: Mapping,
                    concat: bool = True) -> tuple[Any, ...]:
        """``(labels, label_weights, (bucket_targets, offset_targets), (bucket_weights,
        offset_weights))`` of every image's sampled RoIs, positives first (MMDetection's
        order); the ground truth comes from the sampling results."""
        per_image = [self._bucket_target_single(res.pos_bboxes, res.neg_bboxes,
                                                res.pos_gt_bboxes, res.pos_gt_labels)
                     for res in sampling_results]
        columns = [list(c) for c in zip(*per_image, strict=True)]
        if concat:
            columns = [torch.cat(c, 0) for c in columns]
        labels, label_weights, buckets, bucket_weights, offsets, offset_weights = columns
        return labels, label_weights, (buckets, offsets), (bucket_weights, offset_weights)

    def loss(self, cls_score: torch.Tensor | None, bbox_pred: Sequence[torch.Tensor] | None,
             rois: torch.Tensor, labels: torch.Tensor, label_weights: torch.Tensor,
             bbox_targets: Sequence[torch.Tensor], bbox_weights: Sequence[torch.Tensor],
             reduction_override: str | None = None) -> dict[str, torch.Tensor]:
        """``loss_cls`` and ``acc`` (logged), ``loss_bbox_cls`` (sigmoid cross-entropy of
        each side's buckets, averaged over RoI sides) and ``loss_bbox_reg`` (offsets, averaged
        over RoIs)."""
        losses: dict[str, torch.Tensor] = {}
        if cls_score is not None:
            avg_factor = max(float((label_weights > 0).sum()), 1.0)
            losses["loss_cls"] = self.loss_cls(cls_score, labels, label_weights,
                                               avg_factor=avg_factor,
                                               reduction_override=reduction_override)
            losses["acc"] = accuracy(cls_score.detach(), labels)
        if bbox_pred is not None:
            bucket_logits, bucket_offsets = bbox_pred
            bucket_targets, offset_targets = bbox_targets
            bucket_weights, offset_weights = bbox_weights
            side_targets = bucket_targets.reshape(-1, self.side_num)
            losses["loss_bbox_cls"] = self.loss_bbox_cls(
                bucket_logits.reshape(-1, self.side_num), side_targets,
                bucket_weights.reshape(-1, self.side_num), avg_factor=side_targets.size(0),
                reduction_override=reduction_override)
            losses["loss_bbox_reg"] = self.loss_bbox_reg(
                bucket_offsets, offset_targets, offset_weights,
                avg_factor=offset_targets.size(0), reduction_override=reduction_override)
        return losses

    # ---- detections and refinement -----------------------------------------------------------

    def get_bboxes(self, rois: torch.Tensor, cls_score: torch.Tensor | None,
                   bbox_pred: Sequence[torch.Tensor] | None, meta: Mapping,
                   rescale: bool = False, cfg: Mapping | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's detections: boxes decoded from the buckets (clipped to the input),
        back in the original image with ``rescale``; with ``cfg`` the class scores above
        ``score_thr`` times the localization confidence go through per-class NMS ->
        ``(k, 5)`` and ``(k,)`` labels; without, all boxes and class probabilities."""
        scores = F.softmax(cls_score, dim=1) if cls_score is not None else None
        confidence = None
        img_shape = meta.get("img_shape")
        if bbox_pred is not None:
            bboxes, confidence = self.bbox_coder.decode(rois[:, 1:], bbox_pred, img_shape)
        else:
            bboxes = rois[:, 1:].clone()
        if rescale and bboxes.shape[0] > 0:
            bboxes = boxes_to_original(bboxes, meta)
        if cfg is None:
            return bboxes, scores
        return self.multiclass_nms(bboxes, scores, cfg, confidence)

    def multiclass_nms(self, bboxes: torch.Tensor, scores: torch.Tensor, cfg: Mapping,
                       confidence: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """MMDetection's ``multiclass_nms`` with ``score_factors``: candidates are the (RoI,
        class) pairs whose class score is above ``score_thr``; NMS ranks them by the class
        score times the RoI's localization confidence."""
        num_rois, num_classes = scores.shape[0], scores.shape[1] - 1
        boxes = bboxes[:, None].expand(num_rois, num_classes, 4).reshape(-1, 4)
        labels = torch.arange(num_classes, device=scores.device).expand(num_rois,
                                                                        num_classes).reshape(-1)
        flat = scores[:, :-1].reshape(-1)
        valid = torch.nonzero(flat > cfg.get("score_thr", 0.0)).squeeze(1)
        if confidence is not None:
            flat = flat * confidence[:, None].expand(num_rois, num_classes).reshape(-1)
        boxes, flat, labels = boxes[valid], flat[valid], labels[valid]
        if boxes.numel() == 0:
            return torch.cat([boxes, flat[:, None]], -1), labels
        max_num = cfg.get("max_per_img", -1)
        nms_cfg = check_nms_cfg(cfg.get("nms", dict(type="nms", iou_threshold=0.5)),
                                "model.test_cfg.rcnn.nms")
        keep, kept = multiclass_nms(boxes, flat, labels, nms_cfg,
                                    max_num if max_num > 0 else None)
        return torch.cat([boxes[keep], kept[:, None]], -1), labels[keep]

    def regress_by_class(self, rois: torch.Tensor, labels: torch.Tensor,
                         bbox_pred: Sequence[torch.Tensor], meta: Mapping) -> torch.Tensor:
        """``(n, 4)`` boxes or ``(n, 5)`` RoIs moved as their buckets say (class-agnostic:
        ``labels`` unused), clipped to the input; the same shape back (Cascade R-CNN)."""
        if rois.ndim != 2 or rois.shape[1] not in (4, 5):
            raise ValueError(f"regress_by_class takes (n, 4) boxes or (n, 5) RoIs, got "
                             f"{tuple(rois.shape)}")
        boxes, _ = self.bbox_coder.decode(rois[:, -4:], bbox_pred, meta.get("img_shape"))
        return boxes if rois.shape[1] == 4 else torch.cat([rois[:, :1], boxes], dim=1)

    def refine_bboxes(self, rois: torch.Tensor, labels: torch.Tensor,
                      bbox_pred: Sequence[torch.Tensor], pos_is_gts: Sequence[torch.Tensor],
                      metas: Sequence[Mapping]) -> list[torch.Tensor]:
        """The next cascade stage's proposals: each image's sampled RoIs regressed, the
        ground truths added as proposals left out."""
        logits, offsets = bbox_pred
        refined = []
        for index, meta in enumerate(metas):
            inds = torch.nonzero(rois[:, 0] == index).squeeze(1)
            boxes = self.regress_by_class(rois[inds, 1:], labels[inds],
                                          (logits[inds], offsets[inds]), meta)
            keep = torch.ones(inds.numel(), dtype=torch.bool, device=boxes.device)
            is_gt = pos_is_gts[index]
            if is_gt is not None and len(is_gt):
                keep[:len(is_gt)] = ~is_gt.bool()
            refined.append(boxes[keep])
        return refined
