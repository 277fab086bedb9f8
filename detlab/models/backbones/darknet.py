"""Darknet-53 (YOLOv3's backbone) with MMDetection 2.x's arguments and parameter names.

A 3x3 stem conv to 32 channels (``conv1``) and five stages (``conv_res_block1`` ...
``conv_res_block5``), each a stride-2 3x3 conv (``conv``) doubling the channels followed by
residual blocks (``res0`` ...: a 1x1 conv halving the channels, a 3x3 conv restoring them, the
input added). Every conv block is conv, BatchNorm and LeakyReLU(0.1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, FrozenStagesMixin, freeze, frozen, thaw
from detlab.registry import MODELS

DARKNET_BN = frozen(type="BN", requires_grad=True)
LEAKY_RELU = frozen(type="LeakyReLU", negative_slope=0.1)
DARKNET_INIT = (frozen(type="Kaiming", layer="Conv2d"),
                frozen(type="Constant", val=1, layer=["_BatchNorm", "GroupNorm"]))


class ResBlock(nn.Module):
    """A 1x1 conv to half the channels (``conv1``), a 3x3 conv back (``conv2``), plus the
    input."""

    def __init__(self, in_channels: int, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping = DARKNET_BN, act_cfg: Mapping = LEAKY_RELU) -> None:
        super().__init__()
        if in_channels % 2:
            raise ConfigError(f"Darknet ResBlock needs an even number of channels, got "
                              f"{in_channels}")
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.conv1 = ConvModule(in_channels, in_channels // 2, 1, **common)
        self.conv2 = ConvModule(in_channels // 2, in_channels, 3, padding=1, **common)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        return self.conv2(self.conv1(x)) + x


# depth -> residual blocks per stage, (in, out) channels per stage
ARCH_SETTINGS = {
    53: ((1, 2, 8, 8, 4), ((32, 64), (64, 128), (128, 256), (256, 512), (512, 1024))),
}


@MODELS.register_module()
class Darknet(FrozenStagesMixin, nn.Module):
    """Darknet as MMDetection 2.28 builds it.

    Args:
        depth: only 53.
        out_indices: outputs among ``conv1`` (0) and the stages (1 ... 5).
        frozen_stages: the first ``frozen_stages`` of ``conv1``, ``conv_res_block1`` ... are
            frozen (as MMDetection counts them; -1 or 0: none).
        conv_cfg, norm_cfg, act_cfg: of every conv block.
        norm_eval: keep BatchNorm layers in eval mode while training.
        pretrained: a checkpoint path (MMDetection's deprecated spelling of a ``Pretrained``
            ``init_cfg``).
        init_cfg: weight initialization (default: Kaiming convs, norms at 1).
    """

    def __init__(self, depth: int = 53, out_indices: Sequence[int] = (3, 4, 5),
                 frozen_stages: int = -1, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping = DARKNET_BN, act_cfg: Mapping = LEAKY_RELU,
                 norm_eval: bool = True, pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__()
        if depth not in ARCH_SETTINGS:
            raise ConfigError(f"Darknet depth must be one of {sorted(ARCH_SETTINGS)}, got "
                              f"{depth!r}")
        if init_cfg is not None and pretrained is not None:
            raise ConfigError("Darknet takes init_cfg or pretrained, not both")
        blocks, channels = ARCH_SETTINGS[depth]
        if not set(out_indices) <= set(range(len(blocks) + 1)):
            raise ConfigError(f"Darknet out_indices={tuple(out_indices)} must lie in "
                              f"0..{len(blocks)} (0 is conv1)")
        if frozen_stages not in range(-1, len(blocks) + 2):
            raise ConfigError(f"Darknet frozen_stages must be in -1..{len(blocks) + 1}, got "
                              f"{frozen_stages}")
        self.depth, self.out_indices = depth, tuple(out_indices)
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        if pretrained is not None:
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        self.init_cfg = thaw(init_cfg if init_cfg is not None else list(DARKNET_INIT))
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.conv1 = ConvModule(3, 32, 3, padding=1, **common)
        self.cr_blocks = ["conv1"]
        for i, (repeats, (c_in, c_out)) in enumerate(zip(blocks, channels, strict=True)):
            stage = nn.Sequential()
            stage.add_module("conv", ConvModule(c_in, c_out, 3, stride=2, padding=1, **common))
            for j in range(repeats):
                stage.add_module(f"res{j}", ResBlock(c_out, **common))
            self.add_module(f"conv_res_block{i + 1}", stage)
            self.cr_blocks.append(f"conv_res_block{i + 1}")
        all_channels = [32] + [c_out for _, c_out in channels]
        self.out_channels = [all_channels[i] for i in self.out_indices]
        initialize(self, self.init_cfg, load_pretrained=False)
        self._freeze_stages()

    def init_weights(self) -> None:
        """Apply ``init_cfg``."""
        initialize(self, self.init_cfg)

    def _freeze_stages(self) -> None:
        freeze(getattr(self, name) for name in self.cr_blocks[:max(self.frozen_stages, 0)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, 3, H, W)`` -> the maps of ``out_indices``."""
        outs = []
        for i, name in enumerate(self.cr_blocks):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
