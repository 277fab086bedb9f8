"""CSPDarknet (YOLOX's backbone) with MMDetection 2.x's arguments and parameter names.

A ``Focus`` stem (the image's four pixel phases stacked as channels, then a 3x3 conv) and four
stages (``arch='P5'``; five with ``'P6'``), each a stride-2 conv, an ``SPPBottleneck`` on the
last, and a ``CSPLayer``. ``widen_factor`` scales the channels and ``deepen_factor`` the number
of bottlenecks per CSP layer (rounded, at least one). The blocks (``DarknetBottleneck``,
``CSPLayer``, ``DepthwiseSeparableConvModule``) are shared with :class:`~detlab.models.necks.
YOLOXPAFPN`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, FrozenStagesMixin, freeze, frozen, thaw
from detlab.registry import MODELS

YOLOX_BN = frozen(type="BN", momentum=0.03, eps=0.001)
SWISH = frozen(type="Swish")
YOLOX_KAIMING = frozen(type="Kaiming", layer="Conv2d", a=math.sqrt(5), distribution="uniform",
                       mode="fan_in", nonlinearity="leaky_relu")


class DepthwiseSeparableConvModule(nn.Module):
    """A depthwise conv (``groups = in_channels``) then a 1x1 pointwise conv, each with its
    norm and activation (mmcv's module of the same name; ``depthwise_conv`` /
    ``pointwise_conv``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, norm_cfg: Mapping | None = None,
                 act_cfg: Mapping | None = None, **kwargs) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(in_channels, in_channels, kernel_size, stride=stride,
                                         padding=padding, dilation=dilation,
                                         groups=in_channels, norm_cfg=norm_cfg,
                                         act_cfg=act_cfg, **kwargs)
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1, norm_cfg=norm_cfg,
                                         act_cfg=act_cfg, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H', W')``."""
        return self.pointwise_conv(self.depthwise_conv(x))


def conv_type(use_depthwise: bool) -> type[nn.Module]:
    """The 3x3 conv block: depthwise-separable or a plain :class:`ConvModule`."""
    return DepthwiseSeparableConvModule if use_depthwise else ConvModule


class DarknetBottleneck(nn.Module):
    """A 1x1 conv to ``out_channels * expansion`` channels, a 3x3 conv back to
    ``out_channels``, and the input added when ``add_identity`` and the channels agree."""

    def __init__(self, in_channels: int, out_channels: int, expansion: float = 0.5,
                 add_identity: bool = True, use_depthwise: bool = False,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping = YOLOX_BN,
                 act_cfg: Mapping = SWISH) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvModule(in_channels, hidden, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                act_cfg=act_cfg)
        self.conv2 = conv_type(use_depthwise)(hidden, out_channels, 3, stride=1, padding=1,
                                              conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                              act_cfg=act_cfg)
        self.add_identity = add_identity and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``."""
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class CSPLayer(nn.Module):
    """Cross Stage Partial layer: a main branch (1x1 ``main_conv``, ``num_blocks``
    bottlenecks) and a shortcut branch (1x1 ``short_conv``), concatenated and fused by the
    1x1 ``final_conv``; both branches have ``out_channels * expand_ratio`` channels."""

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: float = 0.5,
                 num_blocks: int = 1, add_identity: bool = True, use_depthwise: bool = False,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping = YOLOX_BN,
                 act_cfg: Mapping = SWISH) -> None:
        super().__init__()
        mid = int(out_channels * expand_ratio)
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.main_conv = ConvModule(in_channels, mid, 1, **common)
        self.short_conv = ConvModule(in_channels, mid, 1, **common)
        self.final_conv = ConvModule(2 * mid, out_channels, 1, **common)
        self.blocks = nn.Sequential(*(DarknetBottleneck(mid, mid, 1.0, add_identity,
                                                        use_depthwise, **common)
                                      for _ in range(num_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``."""
        main = self.blocks(self.main_conv(x))
        return self.final_conv(torch.cat((main, self.short_conv(x)), dim=1))


class Focus(nn.Module):
    """Space to depth: the four pixel phases (top-left, bottom-left, top-right, bottom-right)
    stacked as channels, then one conv (``conv``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping = YOLOX_BN, act_cfg: Mapping = SWISH) -> None:
        super().__init__()
        self.conv = ConvModule(in_channels * 4, out_channels, kernel_size, stride,
                               padding=(kernel_size - 1) // 2, conv_cfg=conv_cfg,
                               norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, out_channels, H / 2, W / 2)``."""
        phases = (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2])
        return self.conv(torch.cat(phases, dim=1))


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling: a 1x1 conv halving the channels, max poolings (stride 1) of
    each of ``kernel_sizes`` concatenated with their input, and a 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_sizes: Sequence[int] = (5, 9, 13), conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping = YOLOX_BN, act_cfg: Mapping = SWISH) -> None:
        super().__init__()
        mid = in_channels // 2
        self.conv1 = ConvModule(in_channels, mid, 1, stride=1, conv_cfg=conv_cfg,
                                norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.poolings = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2)
                                      for k in kernel_sizes)
        self.conv2 = ConvModule(mid * (len(kernel_sizes) + 1), out_channels, 1,
                                conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``."""
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.poolings], dim=1))


# per stage: in channels, out channels, bottlenecks, add_identity, SPP
ARCH_SETTINGS = {
    "P5": ((64, 128, 3, True, False), (128, 256, 9, True, False), (256, 512, 9, True, False),
           (512, 1024, 3, False, True)),
    "P6": ((64, 128, 3, True, False), (128, 256, 9, True, False), (256, 512, 9, True, False),
           (512, 768, 3, True, False), (768, 1024, 3, False, True)),
}


@MODELS.register_module()
class CSPDarknet(FrozenStagesMixin, nn.Module):
    """CSPDarknet as MMDetection 2.28 builds it (modules ``stem``, ``stage1`` ...).

    Args:
        arch: ``'P5'`` (four stages) or ``'P6'`` (five).
        deepen_factor: bottlenecks per CSP layer, relative to the arch's.
        widen_factor: channels, relative to the arch's.
        out_indices: outputs among ``stem`` (0) and the stages (1 ...).
        frozen_stages: the stem and stages up to this index are frozen (-1: none).
        use_depthwise: depthwise-separable 3x3 convs.
        arch_ovewrite: a stage table replacing the arch's (MMDetection's spelling).
        spp_kernal_sizes: the SPP's pooling sizes (MMDetection's spelling).
        conv_cfg, norm_cfg, act_cfg: of every conv block.
        norm_eval: keep BatchNorm layers in eval mode while training.
        init_cfg: weight initialization.
    """

    def __init__(self, arch: str = "P5", deepen_factor: float = 1.0, widen_factor: float = 1.0,
                 out_indices: Sequence[int] = (2, 3, 4), frozen_stages: int = -1,
                 use_depthwise: bool = False, arch_ovewrite: Sequence | None = None,
                 spp_kernal_sizes: Sequence[int] = (5, 9, 13), conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping = YOLOX_BN, act_cfg: Mapping = SWISH,
                 norm_eval: bool = False, init_cfg: Mapping | None = YOLOX_KAIMING) -> None:
        super().__init__()
        if arch not in ARCH_SETTINGS:
            raise ConfigError(f"CSPDarknet arch must be one of {sorted(ARCH_SETTINGS)}, got "
                              f"{arch!r}")
        setting = arch_ovewrite or ARCH_SETTINGS[arch]
        if not set(out_indices) <= set(range(len(setting) + 1)):
            raise ConfigError(f"CSPDarknet out_indices={tuple(out_indices)} must lie in "
                              f"0..{len(setting)} (0 is the stem)")
        if frozen_stages not in range(-1, len(setting) + 1):
            raise ConfigError(f"CSPDarknet frozen_stages must be in -1..{len(setting)}, got "
                              f"{frozen_stages}")
        self.out_indices, self.frozen_stages = tuple(out_indices), frozen_stages
        self.use_depthwise, self.norm_eval = use_depthwise, norm_eval
        self.init_cfg = thaw(init_cfg)
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.stem = Focus(3, int(setting[0][0] * widen_factor), kernel_size=3, **common)
        self.layers = ["stem"]
        channels = [int(setting[0][0] * widen_factor)]
        for i, (c_in, c_out, blocks, add_identity, use_spp) in enumerate(setting):
            c_in, c_out = int(c_in * widen_factor), int(c_out * widen_factor)
            stage = [conv_type(use_depthwise)(c_in, c_out, 3, stride=2, padding=1, **common)]
            if use_spp:
                stage.append(SPPBottleneck(c_out, c_out, kernel_sizes=spp_kernal_sizes,
                                           **common))
            stage.append(CSPLayer(c_out, c_out, num_blocks=max(round(blocks * deepen_factor), 1),
                                  add_identity=add_identity, use_depthwise=use_depthwise,
                                  **common))
            self.add_module(f"stage{i + 1}", nn.Sequential(*stage))
            self.layers.append(f"stage{i + 1}")
            channels.append(c_out)
        self.out_channels = [channels[i] for i in self.out_indices]
        initialize(self, self.init_cfg, load_pretrained=False)
        self._freeze_stages()

    def init_weights(self) -> None:
        """Apply ``init_cfg`` (MMDetection's: Kaiming-uniform convs, a=sqrt(5), fan_in)."""
        initialize(self, self.init_cfg)

    def _freeze_stages(self) -> None:
        freeze(getattr(self, name) for name in self.layers[:self.frozen_stages + 1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, 3, H, W)`` -> the maps of ``out_indices``."""
        outs = []
        for i, name in enumerate(self.layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
