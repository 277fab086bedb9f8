"""YOLOX's path aggregation neck (MMDetection 2.28's ``YOLOXPAFPN``, its parameter names).

Top-down: the coarsest map reduced by a 1x1 conv (``reduce_layers``), upsampled, concatenated
with the next finer input and fused by a CSP layer (``top_down_blocks``). Bottom-up: each map
downsampled by a stride-2 conv (``downsamples``), concatenated with the top-down map of the
next coarser level and fused (``bottom_up_blocks``). Every level ends in a 1x1 conv to
``out_channels`` (``out_convs``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.backbones.csp_darknet import SWISH, YOLOX_BN, YOLOX_KAIMING, CSPLayer, conv_type
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, thaw
from detlab.registry import MODELS


@MODELS.register_module()
class YOLOXPAFPN(nn.Module):
    """Args:
        in_channels: channels of each input level (finest first).
        out_channels: channels of every output level.
        num_csp_blocks: bottlenecks per CSP layer.
        use_depthwise: depthwise-separable downsampling convs (and bottlenecks).
        upsample_cfg: ``nn.Upsample``'s arguments.
        conv_cfg, norm_cfg, act_cfg: of every conv block.
        init_cfg: weight initialization.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_csp_blocks: int = 3,
                 use_depthwise: bool = False,
                 upsample_cfg: Mapping = dict(scale_factor=2, mode="nearest"),  # noqa: B006
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping = YOLOX_BN,
                 act_cfg: Mapping = SWISH, init_cfg: Mapping | None = YOLOX_KAIMING) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ConfigError(f"YOLOXPAFPN needs at least two input levels, got in_channels="
                              f"{list(in_channels)}")
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.num_outs = len(in_channels)
        self.init_cfg = thaw(init_cfg)
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        csp = dict(num_blocks=num_csp_blocks, add_identity=False, use_depthwise=use_depthwise,
                   **common)
        self.upsample = nn.Upsample(**upsample_cfg)
        self.reduce_layers, self.top_down_blocks = nn.ModuleList(), nn.ModuleList()
        for idx in range(len(in_channels) - 1, 0, -1):
            self.reduce_layers.append(ConvModule(in_channels[idx], in_channels[idx - 1], 1,
                                                 **common))
            self.top_down_blocks.append(CSPLayer(in_channels[idx - 1] * 2, in_channels[idx - 1],
                                                 **csp))
        self.downsamples, self.bottom_up_blocks = nn.ModuleList(), nn.ModuleList()
        for idx in range(len(in_channels) - 1):
            self.downsamples.append(conv_type(use_depthwise)(
                in_channels[idx], in_channels[idx], 3, stride=2, padding=1, **common))
            self.bottom_up_blocks.append(CSPLayer(in_channels[idx] * 2, in_channels[idx + 1],
                                                  **csp))
        self.out_convs = nn.ModuleList(ConvModule(c, out_channels, 1, **common)
                                       for c in in_channels)
        initialize(self, self.init_cfg, load_pretrained=False)

    def init_weights(self) -> None:
        """Apply ``init_cfg``."""
        initialize(self, self.init_cfg)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """One map per input level -> one ``out_channels`` map per level."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"YOLOXPAFPN got {len(inputs)} maps, built for "
                             f"{len(self.in_channels)}")
        levels = len(self.in_channels)
        top_down = [inputs[-1]]
        for step, idx in enumerate(range(levels - 1, 0, -1)):
            coarse = self.reduce_layers[step](top_down[0])
            top_down[0] = coarse
            fused = self.top_down_blocks[step](torch.cat([self.upsample(coarse),
                                                          inputs[idx - 1]], 1))
            top_down.insert(0, fused)
        outs = [top_down[0]]
        for idx in range(levels - 1):
            down = self.downsamples[idx](outs[-1])
            outs.append(self.bottom_up_blocks[idx](torch.cat([down, top_down[idx + 1]], 1)))
        return tuple(conv(out) for conv, out in zip(self.out_convs, outs, strict=True))
