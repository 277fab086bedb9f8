"""ChannelMapper: bring every backbone map to the same channel count, as MMDetection 2.28's
``type='ChannelMapper'`` does (the neck of the DETR family's configs).

One ConvModule per input (``kernel_size``, same padding) maps it to ``out_channels``; with
``num_outs`` above the number of inputs, stride-2 3x3 ConvModules add coarser levels, the first
on the last backbone map, the next ones on the previous extra level. Parameter names follow
MMDetection's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.necks.fpn import XAVIER_CONV
from detlab.models.utils import RELU, ConvModule
from detlab.registry import MODELS


@MODELS.register_module()
class ChannelMapper(nn.Module):
    """Per-level channel mapping plus optional extra levels (see the module docstring).

    Args:
        in_channels: the backbone's channels per level (a list).
        out_channels: channels of every output level.
        kernel_size: of the mapping convs.
        conv_cfg, norm_cfg, act_cfg: the ConvModules' (ReLU by default).
        num_outs: output levels; None keeps one per input.
        init_cfg: Xavier-uniform convs by default (MMDetection's).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, kernel_size: int = 3,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = None,
                 act_cfg: Mapping | None = RELU, num_outs: int | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = XAVIER_CONV) -> None:
        super().__init__()
        if not isinstance(in_channels, (list, tuple)):
            raise ConfigError(f"ChannelMapper: in_channels must be a list (one entry per "
                              f"backbone level), got {in_channels!r}")
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.num_outs = len(in_channels) if num_outs is None else num_outs
        if self.num_outs < len(in_channels):
            raise ConfigError(f"ChannelMapper: num_outs={num_outs} is fewer than the "
                              f"{len(in_channels)} inputs; drop backbone levels with "
                              f"backbone.out_indices instead")
        conv_args = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.convs = nn.ModuleList(
            ConvModule(c, out_channels, kernel_size, padding=(kernel_size - 1) // 2,
                       **conv_args) for c in self.in_channels)
        self.extra_convs = None
        if self.num_outs > len(in_channels):
            self.extra_convs = nn.ModuleList(
                ConvModule(self.in_channels[-1] if i == 0 else out_channels, out_channels, 3,
                           stride=2, padding=1, **conv_args)
                for i in range(self.num_outs - len(in_channels)))
        self.init_cfg = init_cfg
        initialize(self, init_cfg, load_pretrained=False)

    def init_weights(self) -> None:
        """Re-apply ``init_cfg``."""
        initialize(self, self.init_cfg, load_pretrained=False)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Backbone maps ``(B, in_channels[i], H_i, W_i)`` -> ``num_outs`` maps
        ``(B, out_channels, H_l, W_l)``, finest first."""
        if len(inputs) != len(self.convs):
            raise ValueError(f"ChannelMapper: expected {len(self.convs)} backbone maps "
                             f"(in_channels={self.in_channels}), got {len(inputs)}")
        outs = [conv(x) for conv, x in zip(self.convs, inputs, strict=True)]
        for i, conv in enumerate(self.extra_convs or ()):
            outs.append(conv(inputs[-1] if i == 0 else outs[-1]))
        return tuple(outs)
