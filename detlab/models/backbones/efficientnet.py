"""EfficientNet (Tan & Le, 2019) with MMDetection 2.28's arguments and parameter names.

``layers.0`` is a stride-2 3x3 stem conv, ``layers.1`` ... the stages of blocks, and the last
layer a 1x1 conv to 1280 channels (times the width factor) -- built only when ``out_indices``
asks for it, and stages past the last index asked for are not built at all, as in MMDetection.
The ``b0`` ... ``b8`` archs stack :class:`InvertedResidual` blocks with squeeze-and-excitation
(:class:`SELayer`); the EdgeTPU archs ``es`` / ``em`` / ``el`` start with
:class:`EdgeResidual` blocks (a full conv instead of expansion + depthwise) and have no SE.
Every conv pads as TensorFlow's ``'same'`` (``Conv2dAdaptivePadding``) unless ``conv_cfg``
says otherwise, the activation is ``Swish`` and ``drop_path_rate`` drops residual branches
(stochastic depth), rising linearly over the blocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.backbones.mobile_blocks import (
    InvertedResidual,
    ResidualBlock,
    SELayer,
    make_divisible,
)
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, FrozenStagesMixin, freeze, frozen, thaw
from detlab.registry import MODELS

EFFICIENTNET_CONV = frozen(type="Conv2dAdaptivePadding")
EFFICIENTNET_BN = frozen(type="BN", eps=1e-3)
SWISH = frozen(type="Swish")
SIGMOID = frozen(type="Sigmoid")
EFFICIENTNET_INIT = (frozen(type="Kaiming", layer="Conv2d"),
                     frozen(type="Constant", layer=["_BatchNorm", "GroupNorm"], val=1))

# One row per block: kernel size, output channels, SE ratio (0: no SE), stride, expansion
# ratio, block type (-1: a plain conv, 0: InvertedResidual, 1: EdgeResidual); one list per
# stage, the stem first and the final 1x1 conv last.
BLOCKS_B = (
    ((3, 32, 0, 2, 0, -1),),
    ((3, 16, 4, 1, 1, 0),),
    ((3, 24, 4, 2, 6, 0), (3, 24, 4, 1, 6, 0)),
    ((5, 40, 4, 2, 6, 0), (5, 40, 4, 1, 6, 0)),
    ((3, 80, 4, 2, 6, 0), (3, 80, 4, 1, 6, 0), (3, 80, 4, 1, 6, 0),
     (5, 112, 4, 1, 6, 0), (5, 112, 4, 1, 6, 0), (5, 112, 4, 1, 6, 0)),
    ((5, 192, 4, 2, 6, 0), (5, 192, 4, 1, 6, 0), (5, 192, 4, 1, 6, 0), (5, 192, 4, 1, 6, 0),
     (3, 320, 4, 1, 6, 0)),
    ((1, 1280, 0, 1, 0, -1),),
)
BLOCKS_EDGE = (
    ((3, 32, 0, 2, 0, -1),),
    ((3, 24, 0, 1, 3, 1),),
    ((3, 32, 0, 2, 8, 1), (3, 32, 0, 1, 8, 1)),
    ((3, 48, 0, 2, 8, 1), (3, 48, 0, 1, 8, 1), (3, 48, 0, 1, 8, 1), (3, 48, 0, 1, 8, 1)),
    ((5, 96, 0, 2, 8, 0), (5, 96, 0, 1, 8, 0), (5, 96, 0, 1, 8, 0), (5, 96, 0, 1, 8, 0),
     (5, 96, 0, 1, 8, 0), (5, 144, 0, 1, 8, 0), (5, 144, 0, 1, 8, 0), (5, 144, 0, 1, 8, 0),
     (5, 144, 0, 1, 8, 0)),
    ((5, 192, 0, 2, 8, 0), (5, 192, 0, 1, 8, 0)),
    ((1, 1280, 0, 1, 0, -1),),
)
# arch -> (width factor, depth factor, the resolution it was trained at)
ARCH_SETTINGS = {
    "b0": (1.0, 1.0, 224), "b1": (1.0, 1.1, 240), "b2": (1.1, 1.2, 260),
    "b3": (1.2, 1.4, 300), "b4": (1.4, 1.8, 380), "b5": (1.6, 2.2, 456),
    "b6": (1.8, 2.6, 528), "b7": (2.0, 3.1, 600), "b8": (2.2, 3.6, 672),
    "es": (1.0, 1.0, 224), "em": (1.0, 1.1, 240), "el": (1.2, 1.4, 300),
}


def _runs(stage: list[list]) -> list[list[list]]:
    """A stage's blocks cut where the output channels change (b0's stage 4: 80s, 112s)."""
    runs = [[stage[0]]]
    for block in stage[1:]:
        if block[1] == runs[-1][-1][1]:
            runs[-1].append(block)
        else:
            runs.append([block])
    return runs


def scale_blocks(blocks: Sequence[Sequence[Sequence]], width: float,
                 depth: float) -> list[list[list]]:
    """The block table of an arch: every width times ``width`` (:func:`make_divisible`), every
    run of equal widths between the stem and the last conv ``ceil(depth * n)`` blocks long
    (cut, or continued with copies of its last block); a run that starts with stride 1 then
    joins the stage before it (MMDetection's ``model_scaling``)."""
    table = [[list(block) for block in stage] for stage in blocks]
    for stage in table:
        for block in stage:
            block[1] = make_divisible(block[1] * width, 8)
    runs = [run for stage in table[1:-1] for run in _runs(stage)]
    stages = [table[0]]
    for i, run in enumerate(runs):
        n = int(math.ceil(depth * len(run)))
        run = run[:n] + [list(run[-1]) for _ in range(n - len(run))]
        if i > 0 and run[0][3] == 1:
            stages[-1] = stages[-1] + run
        else:
            stages.append(run)
    return stages + [table[-1]]


class EdgeResidual(ResidualBlock):
    """EfficientNet-EdgeTPU's block: a full ``kernel_size`` conv to ``mid_channels``
    (``conv1``), ``se``, a 1x1 conv with ``stride`` and no activation (``conv2``); the input
    added when ``with_residual``, ``stride`` is 1 and the channels agree."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int,
                 kernel_size: int = 3, stride: int = 1, se_cfg: Mapping | None = None,
                 with_residual: bool = True, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = EFFICIENTNET_BN, act_cfg: Mapping | None = SWISH,
                 drop_path_rate: float = 0.0, with_cp: bool = False) -> None:
        super().__init__(stride == 1 and in_channels == out_channels and with_residual,
                         drop_path_rate, with_cp)
        if stride not in (1, 2):
            raise ConfigError(f"EdgeResidual stride must be 1 or 2, got {stride}")
        self.with_se, self.out_channels = se_cfg is not None, out_channels
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.conv1 = ConvModule(in_channels, mid_channels, kernel_size,
                                padding=kernel_size // 2, act_cfg=act_cfg, **common)
        if self.with_se:
            self.se = SELayer(**se_cfg)
        self.conv2 = ConvModule(mid_channels, out_channels, 1, stride=stride, act_cfg=None,
                                **common)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        return self.conv2(self.se(out) if self.with_se else out)


@MODELS.register_module()
class EfficientNet(FrozenStagesMixin, nn.Module):
    """EfficientNet as MMDetection 2.28 builds it (modules ``layers.0`` ... ``layers.6``).

    Args:
        arch: ``'b0'`` ... ``'b8'``, or the EdgeTPU ``'es'``, ``'em'``, ``'el'``.
        drop_path_rate: stochastic depth of the last block (0 for the first, linear between).
        out_indices: outputs among the stem (0), the stages (1 ... 5) and the last 1x1 conv
            (6); layers past the largest index are not built.
        frozen_stages: layers ``0 .. frozen_stages - 1`` frozen and in eval mode (0: none).
        conv_cfg, norm_cfg, act_cfg: of every conv (``act_cfg`` is also the SE layers' first
            activation).
        norm_eval: keep BatchNorm layers in eval mode while training.
        with_cp: recompute each block in the backward pass (gradient checkpointing).
        init_cfg: weight initialization (default: Kaiming convs, norms at 1).
    """

    def __init__(self, arch: str = "b0", drop_path_rate: float = 0.0,
                 out_indices: Sequence[int] = (6,), frozen_stages: int = 0,
                 conv_cfg: Mapping | None = EFFICIENTNET_CONV,
                 norm_cfg: Mapping | None = EFFICIENTNET_BN, act_cfg: Mapping | None = SWISH,
                 norm_eval: bool = False, with_cp: bool = False,
                 init_cfg: Mapping | Sequence[Mapping] | None = EFFICIENTNET_INIT) -> None:
        super().__init__()
        if arch not in ARCH_SETTINGS:
            raise ConfigError(f"EfficientNet arch must be one of {', '.join(ARCH_SETTINGS)}, "
                              f"got {arch!r} (model.backbone.arch)")
        blocks = BLOCKS_B if arch.startswith("b") else BLOCKS_EDGE
        if not out_indices or not set(out_indices) <= set(range(len(blocks))):
            raise ConfigError(f"EfficientNet out_indices={tuple(out_indices)} must lie in "
                              f"0..{len(blocks) - 1} (0 is the stem, {len(blocks) - 1} the "
                              f"last 1x1 conv) (model.backbone.out_indices)")
        if frozen_stages not in range(len(blocks) + 1):
            raise ConfigError(f"EfficientNet frozen_stages must be in 0..{len(blocks)}, got "
                              f"{frozen_stages} (model.backbone.frozen_stages)")
        self.arch, self.out_indices, self.frozen_stages = arch, tuple(out_indices), frozen_stages
        self.norm_eval, self.init_cfg = norm_eval, thaw(init_cfg)
        width, depth, _ = ARCH_SETTINGS[arch]
        table = scale_blocks(blocks, width, depth)
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        (k, stem_channels, _, stride, _, _), = table[0]
        channels = [make_divisible(stem_channels, 8)]
        self.layers = nn.ModuleList([ConvModule(3, channels[0], k, stride=stride,
                                                padding=k // 2, **common)])
        last = max(self.out_indices)
        num_blocks = sum(len(stage) for stage in table[1:-1])
        # on the CPU whatever the default device, so that a model builds on "meta" too
        rates = torch.linspace(0, drop_path_rate, num_blocks, device="cpu").tolist()
        for stage in table[1:-1][:last]:
            layer = self._stage(stage, channels[-1], rates[:len(stage)], with_cp, **common)
            rates = rates[len(stage):]
            self.layers.append(layer)
            channels.append(layer[-1].out_channels)
        if len(self.layers) < last + 1:  # the final 1x1 conv, only when an output needs it
            (k, final_channels, _, stride, _, _), = table[-1]
            self.layers.append(ConvModule(channels[-1], final_channels, k, stride=stride,
                                          padding=k // 2, **common))
            channels.append(final_channels)
        self.out_channels = [channels[i] for i in self.out_indices]
        initialize(self, self.init_cfg, load_pretrained=False)
        self._freeze_stages()

    @staticmethod
    def _stage(stage: Sequence[Sequence], in_channels: int, rates: Sequence[float],
               with_cp: bool, conv_cfg: Mapping | None, norm_cfg: Mapping | None,
               act_cfg: Mapping | None) -> nn.Sequential:
        """One stage's blocks from their table rows, starting from ``in_channels``."""
        layer = []
        for j, (k, out_channels, se_ratio, stride, expand, kind) in enumerate(stage):
            with_residual = True
            if kind == 1 and j > 0 and expand == 3:
                # an EdgeTPU stage continued past its first block: no shortcut, ratio 4
                with_residual, expand = False, 4
            mid = int(in_channels * expand)
            se_cfg = dict(channels=mid, ratio=expand * se_ratio, act_cfg=(act_cfg, SIGMOID)) \
                if se_ratio > 0 else None
            args = dict(in_channels=in_channels, out_channels=out_channels, mid_channels=mid,
                        kernel_size=k, stride=stride, se_cfg=se_cfg, conv_cfg=conv_cfg,
                        norm_cfg=norm_cfg, act_cfg=act_cfg, drop_path_rate=rates[j],
                        with_cp=with_cp)
            block = EdgeResidual(with_residual=with_residual, **args) if kind == 1 \
                else InvertedResidual(with_expand_conv=mid != in_channels, **args)
            layer.append(block)
            in_channels = out_channels
        return nn.Sequential(*layer)

    def init_weights(self) -> None:
        """Apply ``init_cfg`` (a ``Pretrained`` entry loads an ImageNet checkpoint)."""
        initialize(self, self.init_cfg)

    def _freeze_stages(self) -> None:
        freeze(self.layers[:self.frozen_stages])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, 3, H, W)`` -> the maps of ``out_indices``."""
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
