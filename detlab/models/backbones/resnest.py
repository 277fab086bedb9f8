"""ResNeSt backbone (Zhang et al., 2020) as MMDetection 2.28 builds it (``type='ResNeSt'``).

A ResNeSt Bottleneck's 3x3 conv is a split-attention conv (:class:`SplitAttentionConv2d`):
one grouped conv makes ``radix`` candidate maps of ``width`` channels; their sum, globally
pooled, goes through a small two-layer 1x1 MLP (``fc1`` / ``fc2``) whose output, a softmax
over the radix (:class:`RSoftmax`; a sigmoid when ``radix=1``), weighs the candidates per
channel. With ``avg_down_stride`` a strided block keeps its 3x3 conv at stride 1 and
average-pools after it (``avd_layer``).

MMDetection's ResNeSt is a ResNetV1d: the deep stem (``stem.0`` ... ``stem.7``) and shortcuts
that average-pool before a stride-1 1x1 conv. Parameter names are MMDetection's, so its
checkpoints and ``open-mmlab://resnest50`` load strictly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.backbones.res2net import DeepStemResNet, avg_down_shortcut
from detlab.models.backbones.resnet import BN, _norm
from detlab.models.utils import build_conv_layer
from detlab.registry import MODELS

RESNEST_ARCH: dict[int, tuple[int, ...]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}


class RSoftmax(nn.Module):
    """Softmax over the radix of ``(B, groups * radix * C')`` attention logits laid out
    group-major (sigmoid when ``radix == 1``); returns ``(B, radix * groups * C')``,
    radix-major, as the split conv's candidates are laid out."""

    def __init__(self, radix: int, groups: int) -> None:
        super().__init__()
        self.radix, self.groups = radix, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.size(0)
        if self.radix == 1:
            return torch.sigmoid(x)
        x = x.view(batch, self.groups, self.radix, -1).transpose(1, 2)
        return F.softmax(x, dim=1).reshape(batch, -1)


class SplitAttentionConv2d(nn.Module):
    """The split-attention 3x3 conv (see the module docstring): ``conv`` (``groups * radix``
    groups, ``channels * radix`` out) + ``bn0`` + ReLU, then the attention MLP ``fc1`` (to
    ``max(in_channels * radix // reduction_factor, 32)``) + ``bn1`` + ReLU + ``fc2``."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, radix: int = 2,
                 reduction_factor: int = 4, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping = BN) -> None:
        super().__init__()
        inter_channels = max(in_channels * radix // reduction_factor, 32)
        self.radix, self.groups, self.channels = radix, groups, channels
        self.conv = build_conv_layer(conv_cfg, in_channels, channels * radix, kernel_size,
                                     stride=stride, padding=padding, dilation=dilation,
                                     groups=groups * radix, bias=False)
        self.bn0 = _norm(norm_cfg, channels * radix)
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, inter_channels, 1, groups=groups)
        self.bn1 = _norm(norm_cfg, inter_channels)
        self.fc2 = nn.Conv2d(inter_channels, channels * radix, 1, groups=groups)
        self.rsoftmax = RSoftmax(radix, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn0(self.conv(x)))
        batch = x.size(0)
        if self.radix > 1:
            splits = x.view(batch, self.radix, -1, *x.shape[2:])
            gap = splits.sum(dim=1)
        else:
            gap = x
        gap = self.relu(self.bn1(self.fc1(F.adaptive_avg_pool2d(gap, 1))))
        atten = self.rsoftmax(self.fc2(gap)).view(batch, -1, 1, 1)
        if self.radix > 1:
            out = (atten.view(batch, self.radix, -1, 1, 1) * splits).sum(dim=1)
        else:
            out = atten * x
        return out.contiguous()


class ResNeStBottleneck(nn.Module):
    """ResNeSt's Bottleneck: ``conv1`` / ``bn1`` (1x1 to ``width``), ``conv2`` the
    :class:`SplitAttentionConv2d`, ``avd_layer`` (3x3 average pooling with the block's stride,
    when ``avg_down_stride`` and the block strides), ``conv3`` / ``bn3`` to ``planes * 4``.
    ``width`` is ``planes`` with ``groups=1``, else ``floor(planes * base_width /
    base_channels) * groups``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int,
                 downsample: nn.Module | None, groups: int, base_width: int,
                 base_channels: int, radix: int, reduction_factor: int, avg_down_stride: bool,
                 conv_cfg: Mapping | None, norm_cfg: Mapping) -> None:
        super().__init__()
        width = planes if groups == 1 else math.floor(planes * base_width / base_channels) * groups
        self.avg_down_stride = avg_down_stride and stride > 1
        self.conv1 = build_conv_layer(conv_cfg, inplanes, width, kernel_size=1, bias=False)
        self.bn1 = _norm(norm_cfg, width)
        self.conv2 = SplitAttentionConv2d(
            width, width, kernel_size=3, stride=1 if self.avg_down_stride else stride,
            padding=dilation, dilation=dilation, groups=groups, radix=radix,
            reduction_factor=reduction_factor, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        if self.avg_down_stride:
            self.avd_layer = nn.AvgPool2d(3, stride, padding=1)
        self.conv3 = build_conv_layer(conv_cfg, width, planes * self.expansion, kernel_size=1,
                                      bias=False)
        self.bn3 = _norm(norm_cfg, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.bn1(self.conv1(x))))
        if self.avg_down_stride:
            out = self.avd_layer(out)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


@MODELS.register_module()
class ResNeSt(DeepStemResNet):
    """ResNeSt-50/101/152/200 returning the outputs of the stages in ``out_indices``.

    Args:
        groups, base_width: the split convs' cardinality and width per group (``groups=1``:
            the block's width is ``planes``).
        radix: candidate maps per split conv (1: a sigmoid gate instead of a softmax).
        reduction_factor: the attention MLP's hidden width is ``max(width * radix //
            reduction_factor, 32)``.
        avg_down_stride: strided blocks average-pool after the split conv instead of striding
            it.
        depth: 50, 101, 152 or 200.
        style, deep_stem, avg_down: accepted and overridden, as in MMDetection (a ResNetV1d:
            the pytorch style, the deep stem and average-pooling shortcuts).
        in_channels, stem_channels, base_channels, num_stages, strides, dilations,
        out_indices, frozen_stages, conv_cfg, norm_cfg, norm_eval, with_cp,
        zero_init_residual, init_cfg, pretrained: as
            :class:`~detlab.models.backbones.resnet.ResNet`.
        dcn, plugins: not supported (no zoo config uses them with ResNeSt).
    """

    name = "ResNeSt"
    arch = RESNEST_ARCH

    def __init__(self, groups: int = 1, base_width: int = 4, radix: int = 2,
                 reduction_factor: int = 4, avg_down_stride: bool = True, *, depth: int,
                 in_channels: int = 3, stem_channels: int | None = None,
                 base_channels: int = 64, num_stages: int = 4,
                 strides: Sequence[int] = (1, 2, 2, 2), dilations: Sequence[int] = (1, 1, 1, 1),
                 out_indices: Sequence[int] = (0, 1, 2, 3), style: str = "pytorch",
                 deep_stem: bool = True, avg_down: bool = True, frozen_stages: int = -1,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping = BN,
                 norm_eval: bool = True, dcn: Mapping | None = None,
                 stage_with_dcn: Sequence[bool] = (False, False, False, False),
                 plugins: Sequence[Mapping] | None = None, with_cp: bool = False,
                 zero_init_residual: bool = True, pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        if dcn is not None or plugins:
            raise ConfigError("ResNeSt dcn= / plugins= are not supported; remove backbone.dcn "
                              "and backbone.plugins")
        if radix < 1 or groups < 1 or reduction_factor < 1:
            raise ConfigError(f"ResNeSt radix, groups and reduction_factor must be positive, "
                              f"got radix={radix}, groups={groups}, "
                              f"reduction_factor={reduction_factor}")
        self.groups, self.base_width, self.radix = groups, base_width, radix
        self.reduction_factor, self.avg_down_stride = reduction_factor, avg_down_stride
        super().__init__(depth, in_channels, stem_channels, base_channels, num_stages, strides,
                         dilations, out_indices, frozen_stages, conv_cfg, norm_cfg, norm_eval,
                         with_cp, zero_init_residual, init_cfg, pretrained)

    def _make_stage(self, index: int, inplanes: int, planes: int, num_blocks: int, stride: int,
                    dilation: int, base_channels: int, conv_cfg: Mapping | None,
                    norm_cfg: Mapping) -> nn.Sequential:
        """A stage; the first block's shortcut average-pools before its stride-1 1x1 conv,
        as MMDetection's ``ResLayer`` with ``avg_down``."""
        out_channels = planes * ResNeStBottleneck.expansion
        args = dict(groups=self.groups, base_width=self.base_width,
                    base_channels=base_channels, radix=self.radix,
                    reduction_factor=self.reduction_factor,
                    avg_down_stride=self.avg_down_stride, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        downsample = None
        if stride != 1 or inplanes != out_channels:
            downsample = avg_down_shortcut(conv_cfg, norm_cfg, inplanes, out_channels, stride)
        blocks = [ResNeStBottleneck(inplanes, planes, stride, dilation, downsample, **args)]
        blocks += [ResNeStBottleneck(out_channels, planes, 1, dilation, None, **args)
                   for _ in range(1, num_blocks)]
        return nn.Sequential(*blocks)
