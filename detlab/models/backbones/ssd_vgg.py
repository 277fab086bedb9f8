"""SSD's VGG backbone (Liu et al., 2016) with MMDetection 2.x's arguments and parameter names.

The layers are one ``features`` sequence laid out as torchvision's VGG (3x3 convs with ReLUs, a
2x2 max-pool closing each stage), so ``features.<i>`` indices are the same in torchvision's
weights, MMDetection's ``vgg16_caffe`` and MMDetection's SSD checkpoints. SSD drops the last
stage's pool and appends a 3x3 stride-1 max-pool, a 3x3 conv dilated by 6 (512 -> 1024) and a
1x1 conv (1024 -> 1024), each conv followed by a ReLU (the former fc6 / fc7).
``out_feature_indices`` picks which layers of the sequence are returned (``(22, 34)``: the ReLU
after conv4_3 and the one after fc7).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.utils import frozen, thaw
from detlab.registry import MODELS

# convs per stage
VGG_STAGES: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
STAGE_CHANNELS = (64, 128, 256, 512, 512)
DEFAULT_INIT = (frozen(type="Kaiming", layer="Conv2d"),
                frozen(type="Constant", val=1, layer="BatchNorm2d"),
                frozen(type="Normal", std=0.01, layer="Linear"))


def vgg_features(depth: int, with_last_pool: bool, ceil_mode: bool) -> list[nn.Module]:
    """The convolutional layers of a VGG of ``depth`` without batch norm: per stage, 3x3 conv +
    ReLU pairs then a 2x2 max-pool (the last one only with ``with_last_pool``)."""
    layers: list[nn.Module] = []
    channels = 3
    for stage, (blocks, width) in enumerate(zip(VGG_STAGES[depth], STAGE_CHANNELS,
                                                strict=True)):
        for _ in range(blocks):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        if with_last_pool or stage < len(STAGE_CHANNELS) - 1:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=ceil_mode))
    return layers


@MODELS.register_module()
class SSDVGG(nn.Module):
    """VGG backbone of SSD.

    Args:
        depth: 11, 13, 16 or 19.
        with_last_pool: keep the max-pool closing the last stage.
        ceil_mode: the stage pools round their output size up.
        out_indices: stages of the plain VGG (kept for MMDetection's configs; the outputs are
            chosen by ``out_feature_indices``).
        out_feature_indices: indices into ``features`` of the layers whose outputs are
            returned, in order.
        pretrained: deprecated spelling of ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        init_cfg: weight initialization (default: He init of the convs).
        input_size, l2_norm_scale: deprecated and ignored (the L2 norm is the neck's).
    """

    def __init__(self, depth: int, with_last_pool: bool = False, ceil_mode: bool = True,
                 out_indices: Sequence[int] = (3, 4),
                 out_feature_indices: Sequence[int] = (22, 34), pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None,
                 input_size: int | None = None, l2_norm_scale: float | None = None) -> None:
        super().__init__()
        if depth not in VGG_STAGES:
            raise ConfigError(f"SSDVGG depth must be one of {sorted(VGG_STAGES)}, got {depth!r}")
        if init_cfg is not None and pretrained is not None:
            raise ConfigError("SSDVGG takes init_cfg or pretrained, not both")
        if pretrained is not None and not isinstance(pretrained, str):
            raise ConfigError(f"SSDVGG pretrained must be a checkpoint path or None, got "
                              f"{pretrained!r}")
        if input_size is not None or l2_norm_scale is not None:
            warnings.warn("SSDVGG input_size and l2_norm_scale are deprecated and ignored (the "
                          "L2 norm is SSDNeck's l2_norm_scale)", DeprecationWarning,
                          stacklevel=2)
        self.depth, self.out_indices = depth, tuple(out_indices)
        layers = vgg_features(depth, with_last_pool, ceil_mode)
        layers += [nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
                   nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),
                   nn.ReLU(inplace=True), nn.Conv2d(1024, 1024, kernel_size=1),
                   nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.out_feature_indices = tuple(out_feature_indices)
        bad = [i for i in self.out_feature_indices if not 0 <= i < len(self.features)]
        if bad:
            raise ConfigError(f"SSDVGG out_feature_indices {bad} are outside its "
                              f"{len(self.features)} layers")
        if init_cfg is None and pretrained is not None:
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        self.init_cfg = thaw(init_cfg) if init_cfg is not None else thaw(list(DEFAULT_INIT))
        initialize(self, self.init_cfg, load_pretrained=False)

    def init_weights(self) -> None:
        """Apply ``init_cfg`` (loading pretrained weights where it says so)."""
        initialize(self, self.init_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``(B, 3, H, W)`` -> the outputs of the layers ``out_feature_indices`` (one tensor
        when there is one index)."""
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.out_feature_indices:
                outs.append(x)
        return outs[0] if len(outs) == 1 else tuple(outs)
