"""The base of anchor-free dense heads (MMDetection 2.x's ``AnchorFreeHead``: FCOS, FoveaBox,
RepPoints ...): one point per feature-map cell, two conv towers and two predictors.

Parameter names are MMDetection's (``cls_convs.N.conv``, ``reg_convs.N.gn``, ``conv_cls``,
``conv_reg``), so a subclass that adds its own layers under MMDetection's names (FCOS's
``conv_centerness``, ``scales``) loads MMDetection's checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.heads.base_dense_head import BaseDenseHead
from detlab.models.utils import ConvModule, frozen, thaw

FOCAL = frozen(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)
IOU = frozen(type="IoULoss", loss_weight=1.0)
DISTANCE_CODER = frozen(type="DistancePointBBoxCoder")
# normal(0, 0.01) convs; the classifier's bias starts every score at the 0.01 prior
ANCHOR_FREE_INIT = frozen(type="Normal", layer="Conv2d", std=0.01,
                          override=frozen(type="Normal", name="conv_cls", std=0.01,
                                          bias_prob=0.01))
# predictor names of MMDetection's early checkpoints (fcos_cls ...) -> today's
_LEGACY_SUFFIXES = (("cls", "conv_cls"), ("reg", "conv_reg"), ("centerness", "conv_centerness"))


class AnchorFreeHead(BaseDenseHead):
    """Shared layers of anchor-free dense heads (not a head by itself: a subclass adds its
    targets and ``loss``, and its extra layers and ``forward_single`` if it has any).

    Args:
        num_classes: object classes (background excluded).
        in_channels: channels of the input feature maps.
        feat_channels: channels of the tower convs.
        stacked_convs: 3x3 conv layers in each tower (``cls_convs``, ``reg_convs``).
        strides: stride of each level; the priors are ``MlvlPointGenerator(strides,
            offset=0.5)``'s points (cell centers).
        dcn_on_last_conv: make the last conv of each tower a deformable conv (DCNv2).
        conv_bias: bias of the tower convs: ``'auto'`` (only without a norm layer) or a bool.
        loss_cls: classification loss (default: focal loss, gamma 2, alpha 0.25).
        loss_bbox: regression loss (default: IoU loss).
        bbox_coder: box coder (default: distances from the point, ``DistancePointBBoxCoder``).
        conv_cfg, norm_cfg: of the tower convs (e.g. ``norm_cfg=dict(type='GN', num_groups=32,
            requires_grad=True)``).
        train_cfg, test_cfg: see :class:`BaseDenseHead`.
        init_cfg: weight initialization (default: normal std 0.01, classifier bias prior 0.01).
    """

    _version = 1  # checkpoints without it use the legacy predictor names (see _load_from...)

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int = 256,
                 stacked_convs: int = 4, strides: Sequence[int] = (4, 8, 16, 32, 64),
                 dcn_on_last_conv: bool = False, conv_bias: bool | str = "auto",
                 loss_cls: Mapping | nn.Module = FOCAL, loss_bbox: Mapping | nn.Module = IOU,
                 bbox_coder: Mapping | Any = DISTANCE_CODER, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = None, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = ANCHOR_FREE_INIT) -> None:
        points = dict(type="MlvlPointGenerator", strides=list(strides), offset=0.5)
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         prior_generator=points, bbox_coder=bbox_coder, loss_cls=loss_cls,
                         loss_bbox=loss_bbox, train_cfg=train_cfg, test_cfg=test_cfg,
                         init_cfg=init_cfg)
        if conv_bias != "auto" and not isinstance(conv_bias, bool):
            raise ConfigError(f"bbox_head.conv_bias must be 'auto' or a bool, got {conv_bias!r}")
        self.feat_channels, self.stacked_convs = feat_channels, stacked_convs
        self.strides, self.dcn_on_last_conv, self.conv_bias = strides, dcn_on_last_conv, \
            conv_bias
        self.conv_cfg, self.norm_cfg = thaw(conv_cfg), thaw(norm_cfg)
        self.cls_convs = self._tower()
        self.reg_convs = self._tower()
        # MMDetection sizes the predictors by feat_channels even without tower convs
        self.conv_cls = nn.Conv2d(feat_channels, self.cls_out_channels, 3, padding=1)
        self.conv_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)

    def _tower(self) -> nn.ModuleList:
        """``stacked_convs`` 3x3 ConvModules; with ``dcn_on_last_conv`` the last one is a
        modulated deformable conv (``conv_cfg=dict(type='DCNv2')``, whatever ``conv_cfg`` says,
        as MMDetection builds it)."""
        layers = nn.ModuleList()
        for i in range(self.stacked_convs):
            last = i == self.stacked_convs - 1
            deformable = self.dcn_on_last_conv and last
            conv_cfg = dict(type="DCNv2") if deformable else self.conv_cfg
            layers.append(ConvModule(self.in_channels if i == 0 else self.feat_channels,
                                     self.feat_channels, 3, stride=1, padding=1,
                                     conv_cfg=conv_cfg, norm_cfg=self.norm_cfg,
                                     bias=self.conv_bias))
        return layers

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One level through both towers and predictors: ``(B, in_channels, H, W)`` -> class
        logits ``(B, C, H, W)``, box outputs ``(B, 4, H, W)``, and the towers' last features
        ``(B, feat_channels, H, W)`` (for subclasses' extra branches, e.g. centerness)."""
        cls_feat = reg_feat = x
        for layer in self.cls_convs:
            cls_feat = layer(cls_feat)
        for layer in self.reg_convs:
            reg_feat = layer(reg_feat)
        return self.conv_cls(cls_feat), self.conv_reg(reg_feat), cls_feat, reg_feat

    def forward_single(self, x: torch.Tensor,
                       level: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """One level: class logits ``(B, C, H, W)`` and box outputs ``(B, 4, H, W)``."""
        cls_score, bbox_pred, _, _ = self.forward_features(x)
        return cls_score, bbox_pred

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict,
                              strict: bool, missing_keys: list, unexpected_keys: list,
                              error_msgs: list) -> None:
        """Checkpoints saved before MMDetection versioned this head name the predictors after
        the method (``fcos_cls``, ``fcos_reg``, ``fcos_centerness``): rename them."""
        if local_metadata.get("version") is None:
            for key in [k for k in state_dict if k.startswith(prefix)]:
                name, _, rest = key[len(prefix):].partition(".")
                for suffix, new in _LEGACY_SUFFIXES:
                    if rest and name.endswith(suffix) and name != new:
                        state_dict[f"{prefix}{new}.{rest}"] = state_dict.pop(key)
                        break
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
