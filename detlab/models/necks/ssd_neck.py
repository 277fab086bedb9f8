"""SSD's extra levels (MMDetection 2.x's ``SSDNeck``): the backbone's maps pass through (the
first one L2-normalized with a learned per-channel scale), and each extra level is a 1x1 conv
halving the channels then a 3x3 conv (``level_strides`` / ``level_paddings``) on the previous
level."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.utils import RELU, ConvModule, frozen, thaw
from detlab.registry import MODELS

SSD_NECK_INIT = (frozen(type="Xavier", distribution="uniform", layer="Conv2d"),
                 frozen(type="Constant", val=1, layer="BatchNorm2d"))


class L2Norm(nn.Module):
    """Each location's channel vector divided by its L2 norm, times a learned per-channel
    ``weight`` (initialized to ``scale`` by the neck's ``init_cfg``); computed in float32."""

    def __init__(self, n_dims: int, scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.n_dims, self.scale, self.eps = n_dims, scale, eps
        self.weight = nn.Parameter(torch.full((n_dims,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n_dims, H, W)`` -> the same shape."""
        x32 = x.float()
        norm = x32.pow(2).sum(1, keepdim=True).sqrt() + self.eps
        return (self.weight.float()[None, :, None, None] * x32 / norm).type_as(x)


class DepthwiseSeparableConvModule(nn.Module):
    """A depthwise conv (``groups = in_channels``) then a 1x1 pointwise conv, each a
    :class:`ConvModule` with the norm and activation (mmcv's module of that name, its
    ``depthwise_conv`` / ``pointwise_conv`` names)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, norm_cfg: Mapping | None = None,
                 act_cfg: Mapping | None = RELU, **kwargs) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(in_channels, in_channels, kernel_size, stride=stride,
                                         padding=padding, dilation=dilation, groups=in_channels,
                                         norm_cfg=norm_cfg, act_cfg=act_cfg, **kwargs)
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1, norm_cfg=norm_cfg,
                                         act_cfg=act_cfg, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H', W')``."""
        return self.pointwise_conv(self.depthwise_conv(x))


@MODELS.register_module()
class SSDNeck(nn.Module):
    """Extra levels of SSD.

    Args:
        in_channels: channels of the backbone's maps.
        out_channels: channels of every output level: ``in_channels`` then one per extra
            level.
        level_strides, level_paddings: of each extra level's 3x3 conv.
        l2_norm_scale: initial scale of the L2 norm of the first map; None or 0: no L2 norm.
        last_kernel_size: kernel of the last extra level's second conv.
        use_depthwise: the second conv of each extra level depthwise separable.
        conv_cfg, norm_cfg, act_cfg: of the extra convs.
        init_cfg: weight initialization (default: Xavier uniform convs; the L2 norm's weight at
            ``l2_norm_scale``).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int],
                 level_strides: Sequence[int], level_paddings: Sequence[int],
                 l2_norm_scale: float | None = 20.0, last_kernel_size: int = 3,
                 use_depthwise: bool = False, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = None, act_cfg: Mapping | None = RELU,
                 init_cfg: Mapping | Sequence[Mapping] | None = SSD_NECK_INIT) -> None:
        super().__init__()
        in_channels, out_channels = list(in_channels), list(out_channels)
        extra = out_channels[len(in_channels):]
        if len(extra) == 0 or out_channels[:len(in_channels)] != in_channels:
            raise ConfigError(f"SSDNeck out_channels={out_channels} must start with in_channels="
                              f"{in_channels} and add at least one extra level")
        if not len(extra) == len(level_strides) == len(level_paddings):
            raise ConfigError(f"SSDNeck needs one level_strides and level_paddings entry per "
                              f"extra level ({len(extra)}), got {list(level_strides)} and "
                              f"{list(level_paddings)}")
        cfgs = [init_cfg] if isinstance(init_cfg, Mapping) else list(init_cfg or [])
        self.init_cfg = thaw(cfgs)
        if l2_norm_scale:
            self.l2_norm = L2Norm(in_channels[0], l2_norm_scale)
            self.init_cfg.append(dict(type="Constant", val=self.l2_norm.scale,
                                      override=dict(name="l2_norm")))
        second = DepthwiseSeparableConvModule if use_depthwise else ConvModule
        self.extra_layers = nn.ModuleList()
        for i, (channels, stride, padding) in enumerate(zip(extra, level_strides,
                                                            level_paddings, strict=True)):
            kernel = last_kernel_size if i == len(extra) - 1 else 3
            previous = out_channels[len(in_channels) - 1 + i]
            self.extra_layers.append(nn.Sequential(
                ConvModule(previous, channels // 2, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                           act_cfg=act_cfg),
                second(channels // 2, channels, kernel, stride=stride, padding=padding,
                       conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)))
        initialize(self, self.init_cfg, load_pretrained=False)

    def init_weights(self) -> None:
        """Apply ``init_cfg``."""
        initialize(self, self.init_cfg)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The backbone's maps -> those maps (the first L2-normalized) and the extra levels."""
        outs = list(inputs)
        if hasattr(self, "l2_norm"):
            outs[0] = self.l2_norm(outs[0])
        feat = outs[-1]
        for layer in self.extra_layers:
            feat = layer(feat)
            outs.append(feat)
        return tuple(outs)
