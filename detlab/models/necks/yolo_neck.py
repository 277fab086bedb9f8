"""YOLOv3's neck (MMDetection 2.28's ``YOLOV3Neck``, its parameter names): a simplified FPN.

The coarsest input goes through a detection block (``detect1``: five conv blocks, 1x1 to
``out_channels[0]``, 3x3 to twice that, alternating); each next level reduces the previous
output by a 1x1 conv (``conv1`` ...), upsamples it twice (nearest), concatenates the next finer
input and runs its own detection block (``detect2`` ...). Outputs go coarsest first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.backbones.darknet import DARKNET_BN, LEAKY_RELU
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, thaw
from detlab.registry import MODELS


class DetectionBlock(nn.Module):
    """Conv blocks 1x1 n, 3x3 2n, 1x1 n, 3x3 2n, 1x1 n (``conv1`` ... ``conv5``)."""

    def __init__(self, in_channels: int, out_channels: int, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping = DARKNET_BN, act_cfg: Mapping = LEAKY_RELU) -> None:
        super().__init__()
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        double = out_channels * 2
        self.conv1 = ConvModule(in_channels, out_channels, 1, **common)
        self.conv2 = ConvModule(out_channels, double, 3, padding=1, **common)
        self.conv3 = ConvModule(double, out_channels, 1, **common)
        self.conv4 = ConvModule(out_channels, double, 3, padding=1, **common)
        self.conv5 = ConvModule(double, out_channels, 1, **common)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``."""
        return self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))


@MODELS.register_module()
class YOLOV3Neck(nn.Module):
    """Args:
        num_scales: levels in and out.
        in_channels: input channels, coarsest level first (the backbone's outputs reversed).
        out_channels: output channels, coarsest level first.
        conv_cfg, norm_cfg, act_cfg: of every conv block.
        init_cfg: weight initialization (None: the conv blocks' own).
    """

    def __init__(self, num_scales: int, in_channels: Sequence[int],
                 out_channels: Sequence[int], conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping = DARKNET_BN, act_cfg: Mapping = LEAKY_RELU,
                 init_cfg: Mapping | None = None) -> None:
        super().__init__()
        if not num_scales == len(in_channels) == len(out_channels):
            raise ConfigError(f"YOLOV3Neck needs num_scales ({num_scales}) in_channels and "
                              f"out_channels, got {list(in_channels)} and {list(out_channels)}")
        self.num_scales = num_scales
        self.in_channels, self.out_channels = list(in_channels), list(out_channels)
        self.init_cfg = thaw(init_cfg)
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.detect1 = DetectionBlock(in_channels[0], out_channels[0], **common)
        for i in range(1, num_scales):
            c_in, c_out = in_channels[i], out_channels[i]
            self.add_module(f"conv{i}", ConvModule(out_channels[i - 1], c_out, 1, **common))
            self.add_module(f"detect{i + 1}", DetectionBlock(c_in + c_out, c_out, **common))
        if self.init_cfg is not None:
            initialize(self, self.init_cfg, load_pretrained=False)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Backbone maps, finest first -> ``num_scales`` maps, coarsest first."""
        if len(feats) != self.num_scales:
            raise ValueError(f"YOLOV3Neck expects {self.num_scales} maps, got {len(feats)}")
        out = self.detect1(feats[-1])
        outs = [out]
        for i, x in enumerate(reversed(feats[:-1])):
            up = F.interpolate(getattr(self, f"conv{i + 1}")(out), scale_factor=2)
            out = getattr(self, f"detect{i + 2}")(torch.cat((up, x), 1))
            outs.append(out)
        return tuple(outs)
