"""MobileNetV2 (Sandler et al., 2018) with MMDetection 2.x's arguments and parameter names.

A stride-2 3x3 stem conv (``conv1``), seven stages of inverted residual blocks (``layer1`` ...
``layer7``) and a 1x1 conv to 1280 channels (``conv2``). Each block (:class:`InvertedResidual`)
expands its input by a 1x1 conv (``expand_conv``, absent when the expansion ratio is 1),
filters it by a 3x3 depthwise conv (``depthwise_conv``) and projects it back by a 1x1 conv
without activation (``linear_conv``), adding its input when the stride is 1 and the channels
agree. ``widen_factor`` scales every width, rounded to a multiple of 8 as torchvision and
MMDetection round them, so that torchvision's ``mobilenet_v2`` has the same layers in the same
order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.backbones.mobile_blocks import InvertedResidual, make_divisible
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, FrozenStagesMixin, freeze, frozen, thaw
from detlab.registry import MODELS

MOBILENET_BN = frozen(type="BN")
RELU6 = frozen(type="ReLU6")
MOBILENET_INIT = (frozen(type="Kaiming", layer="Conv2d"),
                  frozen(type="Constant", val=1, layer=["_BatchNorm", "GroupNorm"]))

# per stage: expansion ratio, output channels (before widen_factor), blocks, first stride
ARCH_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))


@MODELS.register_module()
class MobileNetV2(FrozenStagesMixin, nn.Module):
    """MobileNetV2 as MMDetection 2.28 builds it.

    Args:
        widen_factor: width multiplier of every layer (rounded to multiples of 8; ``conv2``
            keeps 1280 channels unless the factor is above 1).
        out_indices: outputs among ``layer1`` ... ``layer7`` (0 ... 6) and ``conv2`` (7).
        frozen_stages: -1: nothing frozen; ``n >= 0``: ``conv1``'s parameters frozen (its
            BatchNorm still updates its statistics in training, as in MMDetection) and
            ``layer1`` ... ``layer<n>`` frozen and in eval mode.
        conv_cfg, norm_cfg, act_cfg: of every conv block (the projections have no activation).
        norm_eval: keep BatchNorm layers in eval mode while training.
        with_cp: recompute each block in the backward pass (gradient checkpointing) to save
            memory.
        pretrained: a checkpoint path (MMDetection's deprecated spelling of a ``Pretrained``
            ``init_cfg``).
        init_cfg: weight initialization (default: Kaiming convs, norms at 1).
    """

    def __init__(self, widen_factor: float = 1.0, out_indices: Sequence[int] = (1, 2, 4, 7),
                 frozen_stages: int = -1, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = MOBILENET_BN, act_cfg: Mapping | None = RELU6,
                 norm_eval: bool = False, with_cp: bool = False, pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__()
        if init_cfg is not None and pretrained is not None:
            raise ConfigError("MobileNetV2 takes init_cfg or pretrained, not both; drop "
                              "pretrained and use init_cfg=dict(type='Pretrained', "
                              "checkpoint=...)")
        if pretrained is not None and not isinstance(pretrained, str):
            raise ConfigError(f"MobileNetV2 pretrained must be a checkpoint path or None, got "
                              f"{pretrained!r}")
        num_layers = len(ARCH_SETTINGS) + 1
        if not set(out_indices) <= set(range(num_layers)):
            raise ConfigError(f"MobileNetV2 out_indices={tuple(out_indices)} must lie in "
                              f"0..{num_layers - 1} (layer1..layer7, then 7 for conv2)")
        if frozen_stages not in range(-1, num_layers):
            raise ConfigError(f"MobileNetV2 frozen_stages must be in -1..{num_layers - 1}, got "
                              f"{frozen_stages}")
        if not widen_factor > 0:
            raise ConfigError(f"MobileNetV2 widen_factor must be positive, got {widen_factor}")
        self.widen_factor, self.out_indices = widen_factor, tuple(out_indices)
        self.frozen_stages, self.norm_eval, self.with_cp = frozen_stages, norm_eval, with_cp
        if pretrained is not None:
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        self.init_cfg = thaw(init_cfg if init_cfg is not None else list(MOBILENET_INIT))
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        channels = make_divisible(32 * widen_factor, 8)
        self.conv1 = ConvModule(3, channels, 3, stride=2, padding=1, **common)
        self.layers: list[str] = []
        widths = []
        for i, (expand_ratio, width, blocks, stride) in enumerate(ARCH_SETTINGS):
            out = make_divisible(width * widen_factor, 8)
            stage = nn.Sequential()
            for j in range(blocks):
                stage.append(InvertedResidual(
                    channels, out, mid_channels=int(round(channels * expand_ratio)),
                    stride=stride if j == 0 else 1, with_expand_conv=expand_ratio != 1,
                    with_cp=with_cp, **common))
                channels = out
            self.add_module(f"layer{i + 1}", stage)
            self.layers.append(f"layer{i + 1}")
            widths.append(out)
        self.out_channel = int(1280 * widen_factor) if widen_factor > 1.0 else 1280
        self.conv2 = ConvModule(channels, self.out_channel, 1, **common)
        self.layers.append("conv2")
        widths.append(self.out_channel)
        self.out_channels = [widths[i] for i in self.out_indices]
        initialize(self, self.init_cfg, load_pretrained=False)
        self._freeze_stages()

    def init_weights(self) -> None:
        """Apply ``init_cfg``."""
        initialize(self, self.init_cfg)

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:
            # MMDetection stops conv1's gradients but leaves it in training mode
            for param in self.conv1.parameters():
                param.requires_grad = False
        freeze(getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, 3, H, W)`` -> the maps of ``out_indices``."""
        x = self.conv1(x)
        outs = []
        for i, name in enumerate(self.layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
