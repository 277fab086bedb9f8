"""YOLOF's neck (Chen et al., 2021, "You Only Look One-level Feature"), as MMDetection 2.28
builds it: one level in, one level out.

The backbone's last map goes through a 1x1 ``lateral_conv`` + ``lateral_norm`` and a 3x3
``fpn_conv`` + ``fpn_norm`` (no activation after either), then through residual blocks
(``dilated_encoder_blocks``) whose 3x3 convs are dilated by ``block_dilations``, so that the
one output level sees objects of every size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.utils import ConvModule, constant_init, frozen, kaiming_init
from detlab.registry import MODELS

BN = frozen(type="BN", requires_grad=True)


class DilatedBottleneck(nn.Module):
    """A residual block: 1x1 conv to ``mid_channels``, 3x3 conv dilated by ``dilation``, 1x1
    conv back to ``in_channels`` (each with BatchNorm and ReLU), plus the input. Its children
    are named ``conv1``..``conv3``, as MMDetection's ``Bottleneck`` of the dilated encoder."""

    def __init__(self, in_channels: int, mid_channels: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = ConvModule(in_channels, mid_channels, 1, norm_cfg=BN)
        self.conv2 = ConvModule(mid_channels, mid_channels, 3, padding=dilation,
                                dilation=dilation, norm_cfg=BN)
        self.conv3 = ConvModule(mid_channels, in_channels, 1, norm_cfg=BN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x))) + x


@MODELS.register_module()
class DilatedEncoder(nn.Module):
    """YOLOF's dilated encoder (see the module docstring).

    Args:
        in_channels: channels of the backbone's last map (the only one read).
        out_channels: channels of the output map.
        block_mid_channels: channels inside each residual block.
        num_residual_blocks: number of residual blocks.
        block_dilations: the dilation of each block's 3x3 conv (one per block).
    """

    def __init__(self, in_channels: int, out_channels: int, block_mid_channels: int,
                 num_residual_blocks: int, block_dilations: Sequence[int]) -> None:
        super().__init__()
        if len(block_dilations) != num_residual_blocks:
            raise ConfigError(f"DilatedEncoder needs one block_dilations entry per residual "
                              f"block: num_residual_blocks={num_residual_blocks} but "
                              f"block_dilations={list(block_dilations)} (model.neck)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.block_mid_channels = block_mid_channels
        self.num_residual_blocks = num_residual_blocks
        self.block_dilations = list(block_dilations)
        self.lateral_conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.lateral_norm = nn.BatchNorm2d(out_channels)
        self.fpn_conv = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.fpn_norm = nn.BatchNorm2d(out_channels)
        self.dilated_encoder_blocks = nn.Sequential(*(
            DilatedBottleneck(out_channels, block_mid_channels, d) for d in block_dilations))

    @property
    def num_outs(self) -> int:
        """One output level."""
        return 1

    def init_weights(self) -> None:
        """MMDetection's: Caffe2's Xavier (He uniform with a = 1, fan in) for the lateral and
        fpn convs, normal (std 0.01) for the blocks' convs, norms at weight 1 / bias 0."""
        for conv in (self.lateral_conv, self.fpn_conv):
            kaiming_init(conv, a=1, mode="fan_in", nonlinearity="leaky_relu",
                         distribution="uniform")
        for norm in (self.lateral_norm, self.fpn_norm):
            constant_init(norm, 1.0)
        for m in self.dilated_encoder_blocks.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                constant_init(m, 1.0)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor]:
        """The backbone's maps (only the last is read) -> one ``(B, out_channels, H, W)`` map."""
        x = self.fpn_norm(self.fpn_conv(self.lateral_norm(self.lateral_conv(feats[-1]))))
        return (self.dilated_encoder_blocks(x),)
