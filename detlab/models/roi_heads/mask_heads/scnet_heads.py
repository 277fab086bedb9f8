"""SCNet's (Vu et al., 2021) mask-side heads, as MMDetection 2.28 builds them:
``SCNetMaskHead`` and ``SCNetSemanticHead`` (an FCN mask head and HTC's fused semantic head
whose convs are residual blocks), ``GlobalContextHead`` (an image-level multi-label classifier
whose pooled features are added to every RoI's features) and ``FeatureRelayHead`` (the box
head's shared fc features of a RoI turned into a feature map the mask head adds).

The residual blocks are :class:`SimplifiedBasicBlock`\\ s (two 3x3 convs, norm optional --
with biases without it --, no ReLU after the sum), ``num_convs // 2`` of them in an
``nn.Sequential`` named ``convs`` (``convs.0.conv1.weight`` ...) as MMDetection's ``ResLayer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.roi_heads.mask_heads.fcn_mask_head import FCNMaskHead
from detlab.models.roi_heads.mask_heads.fused_semantic_head import FusedSemanticHead
from detlab.models.utils import ConvModule, build_conv_layer, build_norm_layer, frozen, thaw
from detlab.registry import MODELS


class SimplifiedBasicBlock(nn.Module):
    """A ResNet basic block with an optional norm and without the last ReLU (SCNet's)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = None, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.with_norm = norm_cfg is not None
        self.conv1 = build_conv_layer(conv_cfg, inplanes, planes, 3, padding=1,
                                      bias=not self.with_norm)
        if self.with_norm:
            self.norm1_name, norm1 = build_norm_layer(norm_cfg, planes, postfix=1)
            self.add_module(self.norm1_name, norm1)
        self.conv2 = build_conv_layer(conv_cfg, planes, planes, 3, padding=1,
                                      bias=not self.with_norm)
        if self.with_norm:
            self.norm2_name, norm2 = build_norm_layer(norm_cfg, planes, postfix=2)
            self.add_module(self.norm2_name, norm2)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if self.with_norm:
            out = getattr(self, self.norm1_name)(out)
        out = self.relu(out)
        out = self.conv2(out)
        if self.with_norm:
            out = getattr(self, self.norm2_name)(out)
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


def simplified_res_layer(in_channels: int, out_channels: int, num_blocks: int,
                         conv_cfg: Mapping | None, norm_cfg: Mapping | None,
                         key: str) -> nn.Sequential:
    """``num_blocks`` :class:`SimplifiedBasicBlock`\\ s, the first taking ``in_channels``
    (through a 1x1 conv and norm as shortcut when they differ, as MMDetection's ResLayer)."""
    downsample = None
    if in_channels != out_channels:
        if norm_cfg is None:
            raise ConfigError(f"{key}: residual convs from {in_channels} to {out_channels} "
                              "channels need a norm_cfg for their shortcut (as MMDetection's "
                              "ResLayer); make in_channels equal conv_out_channels")
        downsample = nn.Sequential(
            build_conv_layer(conv_cfg, in_channels, out_channels, 1, bias=False),
            build_norm_layer(norm_cfg, out_channels)[1])
    blocks = [SimplifiedBasicBlock(in_channels, out_channels, conv_cfg, norm_cfg, downsample)]
    blocks += [SimplifiedBasicBlock(out_channels, out_channels, conv_cfg, norm_cfg)
               for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


@MODELS.register_module()
class SCNetMaskHead(FCNMaskHead):
    """:class:`FCNMaskHead` whose ``num_convs`` convs are ``num_convs // 2`` residual blocks
    (``conv_to_res``). Other arguments: FCNMaskHead's."""

    def __init__(self, conv_to_res: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv_to_res = conv_to_res
        if conv_to_res:
            if self.conv_kernel_size != 3:
                raise ConfigError("mask_head.conv_kernel_size must be 3 with conv_to_res=True "
                                  "(SCNetMaskHead's residual blocks are 3x3)")
            self.num_res_blocks = self.num_convs // 2
            self.convs = simplified_res_layer(self.in_channels, self.conv_out_channels,
                                              self.num_res_blocks, self.conv_cfg,
                                              self.norm_cfg, "mask_head")


@MODELS.register_module()
class SCNetSemanticHead(FusedSemanticHead):
    """:class:`FusedSemanticHead` whose convs are ``num_convs // 2`` residual blocks
    (``conv_to_res``). Other arguments: FusedSemanticHead's."""

    def __init__(self, conv_to_res: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv_to_res = conv_to_res
        if conv_to_res:
            self.num_convs = self.num_convs // 2
            self.convs = simplified_res_layer(self.in_channels, self.conv_out_channels,
                                              self.num_convs, self.conv_cfg, self.norm_cfg,
                                              "semantic_head")


@MODELS.register_module()
class GlobalContextHead(nn.Module):
    """The image's global context: convs over the coarsest level, average-pooled to a
    ``(N, conv_out_channels, 1, 1)`` feature (added to RoI features) and classified by ``fc``
    into which classes the image holds (a multi-label BCE loss, ``loss_glbctx``).

    Args:
        num_convs: 3x3 convs (``num_convs // 2`` residual blocks with ``conv_to_res``).
        in_channels, conv_out_channels: channels in and of the convs.
        num_classes: object classes.
        loss_weight: weight of the BCE loss (3.0 in the zoo).
        conv_cfg, norm_cfg: of the convs.
        conv_to_res: residual blocks instead of plain convs.
        init_cfg: initialization (``fc`` normal with std 0.01 by default).
    """

    def __init__(self, num_convs: int = 4, in_channels: int = 256,
                 conv_out_channels: int = 256, num_classes: int = 80, loss_weight: float = 1.0,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = None,
                 conv_to_res: bool = False,
                 init_cfg: Mapping | Sequence[Mapping] | None = frozen(
                     type="Normal", std=0.01, override=dict(name="fc"))) -> None:
        super().__init__()
        self.in_channels, self.conv_out_channels = in_channels, conv_out_channels
        self.num_classes, self.loss_weight = num_classes, loss_weight
        self.conv_cfg, self.norm_cfg, self.conv_to_res = conv_cfg, norm_cfg, conv_to_res
        self.init_cfg = thaw(init_cfg) if init_cfg is not None else None
        if conv_to_res:
            self.num_convs = num_convs // 2
            self.convs = simplified_res_layer(in_channels, conv_out_channels, self.num_convs,
                                              conv_cfg, norm_cfg, "glbctx_head")
        else:
            self.num_convs = num_convs
            self.convs = nn.ModuleList(
                ConvModule(in_channels if i == 0 else conv_out_channels, conv_out_channels, 3,
                           padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
                for i in range(num_convs))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(conv_out_channels, num_classes)
        self.criterion = nn.BCEWithLogitsLoss()

    def init_weights(self) -> None:
        initialize(self, self.init_cfg)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature levels -> ``(class logits (N, num_classes), context (N, C, 1, 1))`` from
        the last (coarsest) level."""
        x = feats[-1]
        for conv in self.convs:
            x = conv(x)
        x = self.pool(x)
        return self.fc(x.flatten(1)), x

    def loss(self, pred: torch.Tensor, labels: Sequence[torch.Tensor]) -> torch.Tensor:
        """BCE of the logits against each image's set of ground-truth classes."""
        targets = pred.new_zeros(pred.shape)
        for i, label in enumerate(labels):
            targets[i, label.unique()] = 1.0
        return self.loss_weight * self.criterion(pred, targets)


@MODELS.register_module()
class FeatureRelayHead(nn.Module):
    """The box head's shared features ``(K, in_channels)`` -> ``(K, out_conv_channels,
    roi_feat_size * scale_factor, ...)`` maps for the mask head: an fc to
    ``roi_feat_size ** 2 * out_conv_channels`` values, reshaped, upsampled (bilinear,
    ``align_corners=True``). None for no RoI (as MMDetection's).

    Args:
        in_channels: the box head's fc width.
        out_conv_channels: channels of the relayed maps (the mask features').
        roi_feat_size: the box RoIs' side.
        scale_factor: upsampling to the mask RoIs' side.
        init_cfg: initialization (He init of the fc by default).
    """

    def __init__(self, in_channels: int = 1024, out_conv_channels: int = 256,
                 roi_feat_size: int = 7, scale_factor: int = 2,
                 init_cfg: Mapping | Sequence[Mapping] | None = frozen(
                     type="Kaiming", layer="Linear")) -> None:
        super().__init__()
        if not isinstance(roi_feat_size, int):
            raise ConfigError(f"feat_relay_head.roi_feat_size must be an int, got "
                              f"{roi_feat_size!r}")
        self.in_channels, self.out_conv_channels = in_channels, out_conv_channels
        self.roi_feat_size, self.scale_factor = roi_feat_size, scale_factor
        self.out_channels = roi_feat_size ** 2 * out_conv_channels
        self.init_cfg = thaw(init_cfg) if init_cfg is not None else None
        self.fc = nn.Linear(in_channels, self.out_channels)
        self.upsample = nn.Upsample(scale_factor=scale_factor, mode="bilinear",
                                    align_corners=True)

    def init_weights(self) -> None:
        initialize(self, self.init_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        if x.shape[0] == 0:
            return None
        x = self.fc(x).reshape(x.shape[0], self.out_conv_channels, self.roi_feat_size,
                               self.roi_feat_size)
        return self.upsample(x)
