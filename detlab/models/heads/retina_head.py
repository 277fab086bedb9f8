"""RetinaNet's head (Lin et al., 2017): two towers of 3x3 convs shared across levels, one for
classification (sigmoid, one output per class and anchor), one for box deltas."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.models.heads.anchor_head import AnchorHead
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, frozen
from detlab.registry import MODELS

RETINA_ANCHORS = frozen(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3,
                        ratios=(0.5, 1.0, 2.0), strides=(8, 16, 32, 64, 128))
DELTA_CODER = frozen(type="DeltaXYWHBBoxCoder", target_means=(0.0, 0.0, 0.0, 0.0),
                     target_stds=(1.0, 1.0, 1.0, 1.0))
FOCAL = frozen(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)
L1 = frozen(type="L1Loss", loss_weight=1.0)
# normal(0, 0.01) convs; the classifier's bias starts every score at the 0.01 prior
RETINA_INIT = frozen(type="Normal", layer="Conv2d", std=0.01,
                     override=frozen(type="Normal", name="retina_cls", std=0.01, bias_prob=0.01))


@MODELS.register_module()
class RetinaHead(AnchorHead):
    """RetinaNet head.

    Args:
        num_classes: object classes (background excluded).
        in_channels: channels of the input feature maps.
        stacked_convs: 3x3 conv + ReLU layers in each tower.
        conv_cfg, norm_cfg: of the tower convs; e.g. ``norm_cfg=dict(type='GN', num_groups=32,
            requires_grad=True)`` adds a norm layer to each.
        feat_channels: channels of the tower convs.
        anchor_generator: anchors (default: RetinaNet's 9 per location, strides 8-128).
        bbox_coder: box parameterization (default: deltas with means 0, stds 1).
        reg_decoded_bbox: regress decoded boxes (for IoU losses) instead of deltas.
        loss_cls: classification loss (default: focal loss, gamma 2, alpha 0.25).
        loss_bbox: regression loss (default: L1).
        train_cfg, test_cfg: see :class:`AnchorHead`; ``test_cfg.nms`` may be ``soft_nms``.
        init_cfg: weight initialization (default: normal std 0.01, classifier bias prior 0.01).
    """

    def __init__(self, num_classes: int, in_channels: int, stacked_convs: int = 4,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = None,
                 feat_channels: int = 256, anchor_generator: Mapping | Any = RETINA_ANCHORS,
                 bbox_coder: Mapping | Any = DELTA_CODER, reg_decoded_bbox: bool = False,
                 loss_cls: Mapping | nn.Module = FOCAL, loss_bbox: Mapping | nn.Module = L1,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = RETINA_INIT) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         feat_channels=feat_channels, anchor_generator=anchor_generator,
                         bbox_coder=bbox_coder, reg_decoded_bbox=reg_decoded_bbox,
                         loss_cls=loss_cls, loss_bbox=loss_bbox, train_cfg=train_cfg,
                         test_cfg=test_cfg, init_cfg=init_cfg)
        self.stacked_convs = stacked_convs
        self.cls_convs = self._tower(stacked_convs, conv_cfg, norm_cfg)
        self.reg_convs = self._tower(stacked_convs, conv_cfg, norm_cfg)
        channels = feat_channels if stacked_convs > 0 else in_channels
        self.retina_cls = nn.Conv2d(channels, self.num_base_priors * self.cls_out_channels, 3,
                                    padding=1)
        self.retina_reg = nn.Conv2d(channels, self.num_base_priors * 4, 3, padding=1)
        initialize(self, init_cfg, load_pretrained=False)

    def _tower(self, depth: int, conv_cfg: Mapping | None,
               norm_cfg: Mapping | None) -> nn.ModuleList:
        return nn.ModuleList(
            ConvModule(self.in_channels if i == 0 else self.feat_channels, self.feat_channels, 3,
                       padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for i in range(depth))

    def forward_single(self, x: torch.Tensor,
                       level: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """One level (the towers are shared: ``level`` is unused): ``(B, in_channels, H, W)`` ->
        scores ``(B, A*C, H, W)`` (logits) and deltas ``(B, A*4, H, W)``."""
        cls_feat = reg_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        return self.retina_cls(cls_feat), self.retina_reg(reg_feat)
