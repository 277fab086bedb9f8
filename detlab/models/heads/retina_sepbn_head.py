"""RetinaNet's head with the tower convs shared across levels but a norm layer per level
(MMDetection's ``RetinaSepBNHead``, used by NAS-FPN, FPG and EfficientNet RetinaNets).

A BatchNorm shared across the pyramid sees the statistics of all levels mixed; keeping one per
level lets each level normalize its own features while the conv weights stay shared.

Layout (MMDetection's names): ``cls_convs[level][i]`` / ``reg_convs[level][i]`` are ConvModules
whose ``conv`` is one and the same module for every level (``cls_convs[0][i].conv``), with a
norm layer of their own. The state_dict therefore names the shared conv weight once per level,
as MMDetection's checkpoints do, while ``parameters()`` counts it once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.heads.anchor_head import AnchorHead
from detlab.models.heads.retina_head import RETINA_INIT
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, frozen
from detlab.registry import MODELS

# MMDetection's AnchorHead defaults, which RetinaSepBNHead inherits (its configs set RetinaNet's)
ANCHOR_HEAD_ANCHORS = frozen(type="AnchorGenerator", scales=(8, 16, 32), ratios=(0.5, 1.0, 2.0),
                             strides=(4, 8, 16, 32, 64))
ANCHOR_HEAD_CODER = frozen(type="DeltaXYWHBBoxCoder", clip_border=True,
                           target_means=(0.0, 0.0, 0.0, 0.0), target_stds=(1.0, 1.0, 1.0, 1.0))
SIGMOID_CE = frozen(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0)
SMOOTH_L1 = frozen(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=1.0)


@MODELS.register_module()
class RetinaSepBNHead(AnchorHead):
    """RetinaNet head whose tower convs are shared across levels and whose norms are not.

    Args:
        num_classes: object classes (background excluded).
        num_ins: feature levels the head reads (one set of norm layers each); the neck's
            ``num_outs``.
        in_channels: channels of the input feature maps.
        stacked_convs: 3x3 ConvModules in each tower.
        conv_cfg, norm_cfg: of the tower convs; ``norm_cfg`` (e.g. ``dict(type='BN',
            requires_grad=True)``) is what gets separated per level -- without it the head is a
            RetinaHead with per-level copies of nothing.
        feat_channels, anchor_generator, bbox_coder, reg_decoded_bbox, loss_cls, loss_bbox,
        train_cfg, test_cfg: as :class:`AnchorHead`, with MMDetection's AnchorHead defaults
            (RetinaNet configs set RetinaNet's anchors, focal and L1 losses).
        init_cfg: must stay None: as in MMDetection the head's init is fixed (convs normal with
            std 0.01, the classifier's bias at the 0.01 prior, norms weight 1 / bias 0).
    """

    def __init__(self, num_classes: int, num_ins: int, in_channels: int,
                 stacked_convs: int = 4, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = None, feat_channels: int = 256,
                 anchor_generator: Mapping | Any = ANCHOR_HEAD_ANCHORS,
                 bbox_coder: Mapping | Any = ANCHOR_HEAD_CODER, reg_decoded_bbox: bool = False,
                 loss_cls: Mapping | nn.Module = SIGMOID_CE,
                 loss_bbox: Mapping | nn.Module = SMOOTH_L1,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        if init_cfg is not None:
            raise ConfigError("model.bbox_head.init_cfg: RetinaSepBNHead has a fixed init (as "
                              "MMDetection, which refuses it too); remove init_cfg")
        if num_ins < 1:
            raise ConfigError(f"model.bbox_head.num_ins must be the number of feature levels "
                              f"(the neck's num_outs), got {num_ins}")
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         feat_channels=feat_channels, anchor_generator=anchor_generator,
                         bbox_coder=bbox_coder, reg_decoded_bbox=reg_decoded_bbox,
                         loss_cls=loss_cls, loss_bbox=loss_bbox, train_cfg=train_cfg,
                         test_cfg=test_cfg, init_cfg=RETINA_INIT)
        self.num_ins, self.stacked_convs = num_ins, stacked_convs
        self.cls_convs = self._towers(conv_cfg, norm_cfg)
        self.reg_convs = self._towers(conv_cfg, norm_cfg)
        channels = feat_channels if stacked_convs > 0 else in_channels
        self.retina_cls = nn.Conv2d(channels, self.num_base_priors * self.cls_out_channels, 3,
                                    padding=1)
        self.retina_reg = nn.Conv2d(channels, self.num_base_priors * 4, 3, padding=1)
        initialize(self, self.init_cfg, load_pretrained=False)

    def _towers(self, conv_cfg: Mapping | None, norm_cfg: Mapping | None) -> nn.ModuleList:
        """``num_ins`` towers of ``stacked_convs`` ConvModules; every level's i-th ConvModule
        holds level 0's i-th conv (shared weights) and its own norm layer."""
        towers = nn.ModuleList()
        for level in range(self.num_ins):
            tower = nn.ModuleList(
                ConvModule(self.in_channels if i == 0 else self.feat_channels,
                           self.feat_channels, 3, padding=1, conv_cfg=conv_cfg,
                           norm_cfg=norm_cfg)
                for i in range(self.stacked_convs))
            for i in range(self.stacked_convs if level > 0 else 0):
                tower[i].conv = towers[0][i].conv
            towers.append(tower)
        return towers

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
        """As :meth:`BaseDenseHead.forward`, after checking that there are no more levels than
        the head has norm layers for (``num_ins``)."""
        if len(feats) > self.num_ins:
            raise ValueError(f"RetinaSepBNHead got {len(feats)} feature maps but has norm layers "
                             f"for num_ins={self.num_ins} levels; set model.bbox_head.num_ins "
                             f"to the neck's num_outs")
        return super().forward(feats)

    def forward_single(self, x: torch.Tensor,
                       level: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Level ``level``: ``(B, in_channels, H, W)`` -> scores ``(B, A*C, H, W)`` (logits) and
        deltas ``(B, A*4, H, W)``, through that level's towers."""
        cls_feat = reg_feat = x
        for conv in self.cls_convs[level]:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs[level]:
            reg_feat = conv(reg_feat)
        return self.retina_cls(cls_feat), self.retina_reg(reg_feat)
