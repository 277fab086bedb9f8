"""Double-Head R-CNN's box head (Wu et al., 2020; MMDetection 2.28's ``DoubleConvFCBBoxHead``):
fully connected layers classify, convolutions regress."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.roi_heads.bbox_heads.bbox_head import BBoxHead
from detlab.models.utils import ConvModule, build_norm_layer, thaw
from detlab.registry import MODELS

BN = dict(type="BN")
DOUBLE_HEAD_INIT = dict(type="Normal", override=[
    dict(type="Normal", name="fc_cls", std=0.01),
    dict(type="Normal", name="fc_reg", std=0.001),
    dict(type="Xavier", name="fc_branch", distribution="uniform")])


class BasicResBlock(nn.Module):
    """A 3x3 then 1x1 conv with a 1x1 projection shortcut (MMDetection's ``BasicResBlock``;
    its first conv is 3x3, unlike ResNet's BasicBlock)."""

    def __init__(self, in_channels: int, out_channels: int, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping = BN) -> None:
        super().__init__()
        self.conv1 = ConvModule(in_channels, in_channels, 3, padding=1, bias=False,
                                conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.conv2 = ConvModule(in_channels, out_channels, 1, bias=False, conv_cfg=conv_cfg,
                                norm_cfg=norm_cfg, act_cfg=None)
        self.conv_identity = ConvModule(in_channels, out_channels, 1, conv_cfg=conv_cfg,
                                        norm_cfg=norm_cfg, act_cfg=None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.conv_identity(x))


@MODELS.register_module()
class DoubleConvFCBBoxHead(BBoxHead):
    """Classification from fcs on the RoI features, regression from convs (a
    :class:`BasicResBlock` to ``conv_out_channels``, ``num_convs`` ResNet bottlenecks, average
    pooling) on the (enlarged) regression RoI features: ``forward(x_cls, x_reg)``.

    Args:
        num_convs: bottlenecks of the regression branch (> 0).
        num_fcs: fcs of the classification branch (> 0).
        conv_out_channels, fc_out_channels: the branches' widths.
        conv_cfg: the convs' layer (only the default, None, for the bottlenecks).
        norm_cfg: the convs' norm layers.
        init_cfg: default: fc_cls Normal 0.01, fc_reg Normal 0.001, fc_branch Xavier.
        **kwargs: :class:`BBoxHead`'s arguments (``with_avg_pool`` defaults to True).
    """

    def __init__(self, num_convs: int = 0, num_fcs: int = 0, conv_out_channels: int = 1024,
                 fc_out_channels: int = 1024, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping = BN,
                 init_cfg: Mapping | Sequence[Mapping] | None = DOUBLE_HEAD_INIT,
                 **kwargs: Any) -> None:
        kwargs.setdefault("with_avg_pool", True)
        super().__init__(init_cfg=init_cfg, **kwargs)
        if not self.with_avg_pool:
            raise ConfigError("DoubleConvFCBBoxHead needs with_avg_pool=True (its conv branch "
                              "is averaged)")
        if num_convs <= 0 or num_fcs <= 0:
            raise ConfigError(f"DoubleConvFCBBoxHead needs num_convs > 0 and num_fcs > 0, got "
                              f"num_convs={num_convs}, num_fcs={num_fcs}")
        if conv_cfg is not None:
            raise ConfigError("DoubleConvFCBBoxHead supports conv_cfg=None only (plain convs "
                              "in its bottlenecks)")
        self.num_convs, self.num_fcs = num_convs, num_fcs
        self.conv_out_channels, self.fc_out_channels = conv_out_channels, fc_out_channels
        self.conv_cfg, self.norm_cfg = conv_cfg, thaw(norm_cfg)
        self.res_block = BasicResBlock(self.in_channels, conv_out_channels, conv_cfg, norm_cfg)
        def norm_layer(channels: int) -> nn.Module:
            return build_norm_layer(norm_cfg, channels)[1]

        self.conv_branch = nn.ModuleList(
            Bottleneck(conv_out_channels, conv_out_channels // 4, norm_layer=norm_layer)
            for _ in range(num_convs))
        self.fc_branch = nn.ModuleList(
            nn.Linear(self.in_channels * self.roi_feat_area if i == 0 else fc_out_channels,
                      fc_out_channels) for i in range(num_fcs))
        self.fc_reg = nn.Linear(conv_out_channels,
                                4 if self.reg_class_agnostic else 4 * self.num_classes)
        self.fc_cls = nn.Linear(fc_out_channels, self.num_classes + 1)
        self.relu = nn.ReLU(inplace=True)
        initialize(self, self.init_cfg, load_pretrained=False)

    def forward(self, x_cls: torch.Tensor, x_reg: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, in_channels, h, w)`` classification and regression RoI features -> class
        logits and box deltas."""
        x_conv = self.res_block(x_reg)
        for conv in self.conv_branch:
            x_conv = conv(x_conv)
        bbox_pred = self.fc_reg(self.avg_pool(x_conv).flatten(1))
        x_fc = x_cls.flatten(1)
        for fc in self.fc_branch:
            x_fc = self.relu(fc(x_fc))
        return self.fc_cls(x_fc), bbox_pred
