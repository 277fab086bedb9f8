"""SSD's head (Liu et al., 2016): per level, its own 3x3 convs for class scores and box deltas
(no towers shared across levels, a different number of anchors on each level), softmax over
the classes and background, and hard negative mining.

Training follows MMDetection 2.x's ``SSDHead``: anchors assigned by ``train_cfg.assigner``
(SSD's ``MaxIoUAssigner`` with ``min_pos_iou=0`` and ``gt_max_assign_all=False``: every object
keeps its best anchor), never sampled. Per image, the cross-entropy of every positive anchor
plus that of the ``neg_pos_ratio`` times as many background anchors with the highest loss (hard
negatives); box deltas by smooth L1 (``train_cfg.smoothl1_beta``) at the positives. Both sums
are divided by the positives of the whole batch (at least one per image).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.heads.anchor_head import AnchorHead, AnchorTargets
from detlab.models.heads.base_dense_head import TRAIN_CFG_KEYS, check_component
from detlab.models.heads.postprocess import levels_to_rows
from detlab.models.init import initialize
from detlab.models.necks.ssd_neck import DepthwiseSeparableConvModule
from detlab.models.utils import ConvModule, frozen
from detlab.registry import MODELS

SSD300_ANCHORS = frozen(type="SSDAnchorGenerator", scale_major=False, input_size=300,
                        strides=(8, 16, 32, 64, 100, 300),
                        ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
                        basesize_ratio_range=(0.1, 0.9))
SSD_CODER = frozen(type="DeltaXYWHBBoxCoder", clip_border=True, target_means=(0.0,) * 4,
                   target_stds=(1.0,) * 4)
SSD_INIT = frozen(type="Xavier", layer="Conv2d", distribution="uniform", bias=0)
SOFTMAX_CE = frozen(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)


@MODELS.register_module()
class SSDHead(AnchorHead):
    """SSD head.

    Args:
        num_classes: object classes (background excluded; the classifier has one more output).
        in_channels: channels of each level's input map.
        stacked_convs: conv + norm + activation layers before each level's predictors.
        feat_channels: channels of those layers.
        use_depthwise: those layers depthwise separable, plus a depthwise 3x3 before 1x1
            predictors (SSDlite).
        conv_cfg, norm_cfg, act_cfg: of the stacked layers (no activation by default).
        anchor_generator: anchors, a different count per level (default: SSD300's).
        bbox_coder: box parameterization (default: deltas with means 0, stds 1).
        reg_decoded_bbox: regress decoded boxes instead of deltas.
        train_cfg: ``assigner``, ``allowed_border``, ``pos_weight``, ``neg_pos_ratio`` (hard
            negatives per positive), ``smoothl1_beta``, ``debug``.
        test_cfg: see :class:`AnchorHead`.
        init_cfg: weight initialization (default: Xavier uniform convs, zero biases).
    """

    train_cfg_keys: ClassVar[tuple[str, ...]] = TRAIN_CFG_KEYS + ("neg_pos_ratio",
                                                                  "smoothl1_beta")

    def __init__(self, num_classes: int = 80,
                 in_channels: Sequence[int] = (512, 1024, 512, 256, 256, 256),
                 stacked_convs: int = 0, feat_channels: int = 256, use_depthwise: bool = False,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = None,
                 act_cfg: Mapping | None = None,
                 anchor_generator: Mapping | Any = SSD300_ANCHORS,
                 bbox_coder: Mapping | Any = SSD_CODER, reg_decoded_bbox: bool = False,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = SSD_INIT) -> None:
        beta = (train_cfg or {}).get("smoothl1_beta", 1.0)
        super().__init__(num_classes=num_classes, in_channels=tuple(in_channels),
                         feat_channels=feat_channels, anchor_generator=anchor_generator,
                         bbox_coder=bbox_coder, reg_decoded_bbox=reg_decoded_bbox,
                         loss_cls=SOFTMAX_CE, loss_bbox=dict(type="SmoothL1Loss", beta=beta),
                         train_cfg=train_cfg, test_cfg=test_cfg, init_cfg=init_cfg)
        self.num_base_priors = list(self.prior_generator.num_base_priors)
        if len(self.in_channels) != len(self.num_base_priors):
            raise ConfigError(f"SSDHead in_channels={list(self.in_channels)} needs one entry per "
                              f"level of its anchor generator ({len(self.num_base_priors)})")
        if self.train_cfg and "neg_pos_ratio" not in self.train_cfg:
            raise ConfigError("SSDHead's train_cfg needs neg_pos_ratio (hard negatives per "
                              "positive, 3 in SSD)")
        self.stacked_convs, self.use_depthwise = stacked_convs, use_depthwise
        self.cls_convs, self.reg_convs = nn.ModuleList(), nn.ModuleList()
        for channels, anchors in zip(self.in_channels, self.num_base_priors, strict=True):
            self.cls_convs.append(self._branch(channels, anchors * self.cls_out_channels,
                                               conv_cfg, norm_cfg, act_cfg))
            self.reg_convs.append(self._branch(channels, anchors * 4, conv_cfg, norm_cfg,
                                               act_cfg))
        initialize(self, init_cfg, load_pretrained=False)

    def _check_components(self, num_classes: int) -> None:
        # as the base's, except that SSD's levels have different numbers of anchors
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes <= 0:
            raise ConfigError(f"bbox_head num_classes must be a positive int (the number of "
                              f"object classes, background excluded), got {num_classes!r}")
        check_component(self.prior_generator, "anchor_generator", "prior generator",
                        ("grid_priors", "valid_flags"))
        check_component(self.bbox_coder, "bbox_coder", "box coder", ("encode", "decode"))

    def _branch(self, channels: int, outputs: int, conv_cfg: Mapping | None,
                norm_cfg: Mapping | None, act_cfg: Mapping | None) -> nn.Sequential:
        conv = DepthwiseSeparableConvModule if self.use_depthwise else ConvModule
        layers: list[nn.Module] = []
        for _ in range(self.stacked_convs):
            layers.append(conv(channels, self.feat_channels, 3, padding=1, conv_cfg=conv_cfg,
                               norm_cfg=norm_cfg, act_cfg=act_cfg))
            channels = self.feat_channels
        if self.use_depthwise:
            layers.append(ConvModule(channels, channels, 3, padding=1, groups=channels,
                                     conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg))
        kernel = 1 if self.use_depthwise else 3
        layers.append(nn.Conv2d(channels, outputs, kernel_size=kernel, padding=kernel // 2))
        return nn.Sequential(*layers)

    def forward_single(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Level ``level``: ``(B, in_channels[level], H, W)`` -> logits ``(B, A_l * (C + 1), H,
        W)`` and deltas ``(B, A_l * 4, H, W)``."""
        return self.cls_convs[level](x), self.reg_convs[level](x)

    # ---- loss ----------------------------------------------------------------------------------

    def loss(self, raw: tuple[list[torch.Tensor], list[torch.Tensor]],
             targets: Sequence[Mapping], metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls`` (positives and hard negatives) and ``loss_bbox`` (smooth L1 at the
        positives), both over the batch's positives."""
        cls_scores, bbox_preds = raw[0], raw[1]
        priors = self.get_priors(cls_scores, metas)
        t = self.get_targets(priors, targets, metas)
        cls_rows = levels_to_rows(cls_scores, self.cls_out_channels).float()
        reg_rows = levels_to_rows(bbox_preds, 4).float()
        return self.loss_by_targets(cls_rows, reg_rows, priors.priors, t)

    def loss_by_targets(self, cls_rows: torch.Tensor, reg_rows: torch.Tensor,
                        anchors: torch.Tensor, t: AnchorTargets) -> dict[str, torch.Tensor]:
        """``(B, A, C + 1)`` logits and ``(B, A, 4)`` deltas against the targets: per image the
        positives' cross-entropy plus the ``neg_pos_ratio * positives`` largest of the
        background anchors', all images' sums over ``t.avg_factor``."""
        ratio = self.train_cfg["neg_pos_ratio"]
        per_anchor = F.cross_entropy(cls_rows.flatten(0, 1), t.labels.flatten(),
                                     reduction="none").view_as(t.labels) * t.label_weights
        total = cls_rows.new_zeros(())
        for losses, labels in zip(per_anchor, t.labels, strict=True):
            positive = labels < self.num_classes
            negatives = losses[labels == self.num_classes]
            hard = min(int(ratio * int(positive.sum())), negatives.numel())
            total = total + losses[positive].sum() + negatives.topk(hard)[0].sum()
        reg = reg_rows.reshape(-1, 4)
        if self.reg_decoded_bbox:
            reg = self.decode_boxes(anchors.expand(len(reg_rows), -1, -1).reshape(-1, 4), reg)
        loss_bbox = self.loss_bbox(reg, t.bbox_targets.reshape(-1, 4),
                                   t.bbox_weights.reshape(-1, 4), avg_factor=t.avg_factor)
        return dict(loss_cls=total / t.avg_factor, loss_bbox=loss_bbox)
