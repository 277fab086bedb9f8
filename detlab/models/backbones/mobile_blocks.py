"""The blocks of the mobile backbones (MobileNetV2, EfficientNet), as MMDetection 2.x names
their layers: the channel rounding of width multipliers (:func:`make_divisible`),
squeeze-and-excitation (:class:`SELayer`) and the inverted residual block
(:class:`InvertedResidual`) on a shortcut with stochastic depth (:class:`ResidualBlock`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from detlab.config import ConfigError
from detlab.models.utils import ConvModule, frozen

BN = frozen(type="BN")
RELU = frozen(type="ReLU")
SIGMOID = frozen(type="Sigmoid")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None,
                   min_ratio: float = 0.9) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``min_value``, default
    ``divisor``), one ``divisor`` more when rounding lost over ``1 - min_ratio`` of it -- the
    channel rounding of MobileNet's width multipliers."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < min_ratio * value else rounded


class SELayer(nn.Module):
    """Squeeze and excitation: the map's channel means through ``conv1`` (to
    ``int(channels / ratio)`` channels, first activation) and ``conv2`` (back, second
    activation, a sigmoid) scale its channels (MMDetection's ``SELayer``)."""

    def __init__(self, channels: int, ratio: float = 16, conv_cfg: Mapping | None = None,
                 act_cfg: Mapping | Sequence[Mapping] = (frozen(type="ReLU"), SIGMOID)
                 ) -> None:
        super().__init__()
        acts = (act_cfg, act_cfg) if isinstance(act_cfg, Mapping) else tuple(act_cfg)
        if len(acts) != 2:
            raise ConfigError(f"SELayer act_cfg must be one config or two, got {act_cfg!r}")
        squeezed = int(channels / ratio)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = ConvModule(channels, squeezed, 1, conv_cfg=conv_cfg, act_cfg=acts[0])
        self.conv2 = ConvModule(squeezed, channels, 1, conv_cfg=conv_cfg, act_cfg=acts[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``, each channel scaled by its weight."""
        return x * self.conv2(self.conv1(self.global_avgpool(x)))


class ResidualBlock(nn.Module):
    """What the mobile blocks share: the shortcut with stochastic depth and gradient
    checkpointing; subclasses define ``branch``."""

    def __init__(self, shortcut: bool, drop_path_rate: float, with_cp: bool) -> None:
        super().__init__()
        self.with_residual, self.with_cp = shortcut, with_cp
        # mmcv's DropPath: a whole sample's branch dropped, the kept ones scaled up
        self.drop_path = StochasticDepth(drop_path_rate, "row") if drop_path_rate > 0 \
            else nn.Identity()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        return x + self.drop_path(out) if self.with_residual else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H / stride, W / stride)``."""
        if self.with_cp and x.requires_grad:
            from torch.utils.checkpoint import checkpoint

            return checkpoint(self._inner, x, use_reentrant=False)
        return self._inner(x)


class InvertedResidual(ResidualBlock):
    """MobileNetV2's block with an optional SE layer: 1x1 ``expand_conv`` to ``mid_channels``
    (only ``with_expand_conv``), depthwise ``depthwise_conv`` with ``stride``, ``se``, 1x1
    ``linear_conv`` without activation; the input added when ``stride`` is 1 and the channels
    agree."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int,
                 kernel_size: int = 3, stride: int = 1, se_cfg: Mapping | None = None,
                 with_expand_conv: bool = True, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = BN, act_cfg: Mapping | None = RELU,
                 drop_path_rate: float = 0.0, with_cp: bool = False) -> None:
        super().__init__(stride == 1 and in_channels == out_channels, drop_path_rate, with_cp)
        if stride not in (1, 2):
            raise ConfigError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        if not with_expand_conv and mid_channels != in_channels:
            raise ConfigError(f"InvertedResidual without expand_conv needs mid_channels == "
                              f"in_channels, got {mid_channels} and {in_channels}")
        self.with_expand_conv, self.with_se = with_expand_conv, se_cfg is not None
        self.out_channels = out_channels
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        if with_expand_conv:
            self.expand_conv = ConvModule(in_channels, mid_channels, 1, act_cfg=act_cfg,
                                          **common)
        self.depthwise_conv = ConvModule(mid_channels, mid_channels, kernel_size, stride=stride,
                                         padding=kernel_size // 2, groups=mid_channels,
                                         act_cfg=act_cfg, **common)
        if self.with_se:
            self.se = SELayer(**se_cfg)
        self.linear_conv = ConvModule(mid_channels, out_channels, 1, act_cfg=None, **common)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand_conv(x) if self.with_expand_conv else x
        out = self.depthwise_conv(out)
        return self.linear_conv(self.se(out) if self.with_se else out)
