"""ATSS's head (Zhang et al., 2020): FCOS's GroupNorm towers and centerness on anchors, the
anchors assigned by adaptive training sample selection (``train_cfg.assigner=dict(
type='ATSSAssigner', topk=9)``, which gets the anchors per level from :class:`AnchorHead`).

Loss: focal classification over the non-ignored anchors divided by the positives, a GIoU-type
loss of the decoded boxes over the positives weighted by their centerness targets and divided
by the sum of those targets, and a binary cross-entropy of the centerness divided by the
positives; both divisors are averaged over processes, as MMDetection does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.dist import reduce_mean
from detlab.models.assigners import PseudoSampler
from detlab.models.heads.anchor_head import AnchorHead, AnchorTargets
from detlab.models.heads.fcos_head import GN_32, SIGMOID_BCE, centerness_target
from detlab.models.heads.postprocess import levels_to_rows
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, Scale, frozen
from detlab.registry import MODELS

# MMDetection's AnchorHead defaults, which an ATSSHead config without these keys gets
ANCHORS = frozen(type="AnchorGenerator", scales=(8, 16, 32), ratios=(0.5, 1.0, 2.0),
                 strides=(4, 8, 16, 32, 64))
DELTA_CODER = frozen(type="DeltaXYWHBBoxCoder", clip_border=True,
                     target_means=(0.0, 0.0, 0.0, 0.0), target_stds=(1.0, 1.0, 1.0, 1.0))
SIGMOID_CE = frozen(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0)
SMOOTH_L1 = frozen(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=1.0)
# normal(0, 0.01) convs; the classifier's bias starts every score at the 0.01 prior
ATSS_INIT = frozen(type="Normal", layer="Conv2d", std=0.01,
                   override=frozen(type="Normal", name="atss_cls", std=0.01, bias_prob=0.01))

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]


def anchor_centerness(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``(N,)`` centerness of the centers of ``(N, 4)`` xyxy anchors in their ``(N, 4)`` xyxy
    ground-truth boxes."""
    cx = (anchors[:, 2] + anchors[:, 0]) / 2
    cy = (anchors[:, 3] + anchors[:, 1]) / 2
    distances = torch.stack([cx - boxes[:, 0], cy - boxes[:, 1], boxes[:, 2] - cx,
                             boxes[:, 3] - cy], dim=1)
    return centerness_target(distances)


@MODELS.register_module()
class ATSSHead(AnchorHead):
    """ATSS head.

    Args:
        num_classes: object classes (background excluded).
        in_channels: channels of the input feature maps.
        pred_kernel_size: kernel size of the three predictors.
        stacked_convs: 3x3 convs in each tower.
        conv_cfg, norm_cfg: of the tower convs (default: GroupNorm of 32 groups).
        feat_channels: channels of the tower convs.
        anchor_generator: anchors (the zoo's: one square anchor of 8 strides per location).
        bbox_coder: box parameterization (the zoo's: deltas with stds 0.1, 0.1, 0.2, 0.2).
        reg_decoded_bbox: must stay True: the box loss and the centerness targets take decoded
            boxes.
        loss_cls: classification loss (the zoo's: focal loss).
        loss_bbox: box loss on decoded boxes (the zoo's: GIoU, weight 2).
        loss_centerness: centerness loss (default: sigmoid cross-entropy).
        train_cfg: ``assigner`` (``ATSSAssigner``), ``allowed_border``, ``pos_weight``,
            ``debug``; a ``sampler`` is not used (every anchor counts, as in MMDetection).
        test_cfg: ``nms_pre``, ``score_thr``, ``nms``, ``min_bbox_size``, ``max_per_img``.
        init_cfg: weight initialization (default: normal std 0.01, classifier bias prior 0.01).
    """

    def __init__(self, num_classes: int, in_channels: int, pred_kernel_size: int = 3,
                 stacked_convs: int = 4, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = GN_32, feat_channels: int = 256,
                 anchor_generator: Mapping | Any = ANCHORS,
                 bbox_coder: Mapping | Any = DELTA_CODER, reg_decoded_bbox: bool = True,
                 loss_cls: Mapping | nn.Module = SIGMOID_CE,
                 loss_bbox: Mapping | nn.Module = SMOOTH_L1,
                 loss_centerness: Mapping | nn.Module = SIGMOID_BCE,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = ATSS_INIT) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         feat_channels=feat_channels, anchor_generator=anchor_generator,
                         bbox_coder=bbox_coder, reg_decoded_bbox=reg_decoded_bbox,
                         loss_cls=loss_cls, loss_bbox=loss_bbox, train_cfg=train_cfg,
                         test_cfg=test_cfg, init_cfg=init_cfg)
        if not reg_decoded_bbox:
            raise ConfigError("ATSSHead regresses decoded boxes (its centerness targets are "
                              "read from them): leave bbox_head.reg_decoded_bbox=True")
        # every anchor counts: MMDetection's ATSSHead never samples, whatever train_cfg says
        self.sampling, self.sampler = False, PseudoSampler()
        self.loss_centerness = MODELS.build(loss_centerness)
        self.pred_kernel_size, self.stacked_convs = pred_kernel_size, stacked_convs
        self.cls_convs = self._tower(conv_cfg, norm_cfg)
        self.reg_convs = self._tower(conv_cfg, norm_cfg)
        self.atss_cls = self._predictor(self.num_base_priors * self.cls_out_channels)
        self.atss_reg = self._predictor(self.num_base_priors * 4)
        self.atss_centerness = self._predictor(self.num_base_priors)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.prior_generator.strides)
        initialize(self, self.init_cfg, load_pretrained=False)

    def _tower(self, conv_cfg: Mapping | None, norm_cfg: Mapping | None) -> nn.ModuleList:
        return nn.ModuleList(
            ConvModule(self.in_channels if i == 0 else self.feat_channels, self.feat_channels,
                       3, stride=1, padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for i in range(self.stacked_convs))

    def _predictor(self, out_channels: int) -> nn.Conv2d:
        # sized by feat_channels even without tower convs, as MMDetection's
        return nn.Conv2d(self.feat_channels, out_channels, self.pred_kernel_size,
                         padding=self.pred_kernel_size // 2)

    def forward_single(self, x: torch.Tensor,
                       level: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One level: ``(B, in_channels, H, W)`` -> class logits ``(B, A*C, H, W)``, deltas
        ``(B, A*4, H, W)`` (float32, times the level's scale) and centerness logits
        ``(B, A, H, W)``."""
        cls_feat = reg_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        bbox_pred = self.scales[level](self.atss_reg(reg_feat)).float()
        return self.atss_cls(cls_feat), bbox_pred, self.atss_centerness(reg_feat)

    # ---- loss ----------------------------------------------------------------------------------

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls``, ``loss_bbox`` and ``loss_centerness`` of the raw outputs against the
        ground truth (one target dict and one meta dict per image)."""
        cls_scores, bbox_preds, centernesses = raw
        priors = self.get_priors(cls_scores, metas)
        # the ATSS assigner looks at the anchors alone: no predictions handed over
        t = self.get_targets(priors, targets, metas)
        # float32 rows, whatever the forward ran in (MMDetection's force_fp32)
        cls_rows = levels_to_rows(cls_scores, self.cls_out_channels).float()  # (B, A, C)
        reg_rows = levels_to_rows(bbox_preds, 4).float()  # (B, A, 4)
        ctr_rows = levels_to_rows(centernesses, 1).float()  # (B, A, 1)
        return self.loss_by_targets(cls_rows, reg_rows, ctr_rows, priors.priors, t)

    def loss_by_targets(self, cls_rows: torch.Tensor, reg_rows: torch.Tensor,
                        ctr_rows: torch.Tensor, anchors: torch.Tensor,
                        t: AnchorTargets) -> dict[str, torch.Tensor]:
        """The losses over the whole batch: ``(B, A, C)`` logits, ``(B, A, 4)`` deltas,
        ``(B, A, 1)`` centerness logits, ``(A, 4)`` anchors and the targets (box targets
        decoded xyxy boxes)."""
        num_samples = max(reduce_mean(torch.tensor(t.avg_factor, dtype=torch.float,
                                                   device=cls_rows.device)).item(), 1.0)
        labels = t.labels.reshape(-1)
        loss_cls = self.loss_cls(cls_rows.reshape(-1, self.cls_out_channels), labels,
                                 t.label_weights.reshape(-1), avg_factor=num_samples)
        pos = torch.nonzero((labels >= 0) & (labels < self.num_classes)).squeeze(1)
        reg, ctr = reg_rows.reshape(-1, 4), ctr_rows.reshape(-1)
        pos_anchors = anchors.repeat(len(reg_rows), 1)[pos]
        pos_boxes = t.bbox_targets.reshape(-1, 4)[pos]
        pos_centerness = anchor_centerness(pos_anchors, pos_boxes)
        # every process reduces its sum, positives or not, so the collectives pair up
        bbox_avg_factor = reduce_mean(pos_centerness.sum().detach()).clamp(min=1).item()
        if len(pos) == 0:  # zeros that keep the graph (every parameter gets a gradient)
            return dict(loss_cls=loss_cls, loss_bbox=reg.sum() * 0,
                        loss_centerness=ctr.sum() * 0)
        decoded = self.decode_boxes(pos_anchors, reg[pos])
        loss_bbox = self.loss_bbox(decoded, pos_boxes, weight=pos_centerness,
                                   avg_factor=1.0) / bbox_avg_factor
        loss_centerness = self.loss_centerness(ctr[pos], pos_centerness,
                                               avg_factor=num_samples)
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_centerness=loss_centerness)
