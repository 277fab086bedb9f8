"""Shared heads: layers between the RoI extractor and the box / mask heads of a two-stage
detector without FPN (MMDetection 2.28's ``ResLayer`` shared head: ResNet's last stage run on
each RoI's pooled features, as in the C4 Faster R-CNN)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from detlab.config import ConfigError
from detlab.models.backbones.resnet import ARCH_SETTINGS, BN, make_res_layer
from detlab.models.init import initialize
from detlab.models.utils import batchnorms_to_eval, thaw
from detlab.registry import MODELS

RES_LAYER_INIT = [dict(type="Kaiming", layer="Conv2d"),
                  dict(type="Constant", val=1, layer=["_BatchNorm", "GroupNorm"])]


@MODELS.register_module()
class ResLayer(nn.Module):
    """ResNet's stage ``stage`` (0-based; 3 is ``layer4``) as a shared head, registered as
    ``layer{stage + 1}`` so that a ResNet checkpoint's stage loads into it.

    Args:
        depth: ResNet depth (18 ... 152) whose stage is built.
        stage: which stage (0-3).
        stride, dilation: of the stage's first block.
        style: ``'pytorch'`` or ``'caffe'`` (where the stride sits, as in the backbone).
        norm_cfg: the norm layers (``requires_grad=False`` freezes their affine parameters).
        norm_eval: keep BatchNorm layers in eval mode while training.
        with_cp: gradient checkpointing of the blocks.
        dcn: deformable conv of the Bottlenecks' 3x3 conv, as ResNet's ``dcn``.
        pretrained: deprecated spelling of ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        init_cfg: default Kaiming convs and norm weights 1 (MMDetection's).
    """

    def __init__(self, depth: int, stage: int = 3, stride: int = 2, dilation: int = 1,
                 style: str = "pytorch", norm_cfg: Mapping = BN, norm_eval: bool = True,
                 with_cp: bool = False, dcn: Mapping | None = None, pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__()
        if depth not in ARCH_SETTINGS:
            raise ConfigError(f"roi_head.shared_head ResLayer depth must be one of "
                              f"{sorted(ARCH_SETTINGS)}, got {depth!r}")
        if not 0 <= stage <= 3:
            raise ConfigError(f"roi_head.shared_head ResLayer stage must be 0-3, got {stage!r}")
        if init_cfg and pretrained:
            raise ConfigError("roi_head.shared_head: set init_cfg or pretrained, not both")
        if pretrained is not None:
            warnings.warn("ResLayer(pretrained=...) is deprecated, use init_cfg=dict("
                          "type='Pretrained', checkpoint=...)", DeprecationWarning, stacklevel=2)
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        self.stage, self.norm_eval, self.with_cp = stage, norm_eval, with_cp
        block, stage_blocks = ARCH_SETTINGS[depth]
        planes = 64 * 2 ** stage
        inplanes = 64 * 2 ** (stage - 1) * block.expansion
        self.add_module(f"layer{stage + 1}",
                        make_res_layer(block, inplanes, planes, stage_blocks[stage], stride,
                                       dilation, style, norm_cfg, dcn))
        self.out_channels = planes * block.expansion
        self.init_cfg = thaw(RES_LAYER_INIT if init_cfg is None else init_cfg)
        initialize(self, self.init_cfg, load_pretrained=False)

    def init_weights(self) -> None:
        """Apply ``init_cfg`` (loading a checkpoint when it says ``Pretrained``)."""
        initialize(self, self.init_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(K, C, h, w)`` pooled RoI features -> the stage's output."""
        for block in getattr(self, f"layer{self.stage + 1}"):
            x = checkpoint(block, x, use_reentrant=False) if self.with_cp and self.training \
                else block(x)
        return x

    def train(self, mode: bool = True) -> ResLayer:
        """Switch mode; with ``norm_eval`` the BatchNorm layers stay in eval mode."""
        super().train(mode)
        if mode and self.norm_eval:
            batchnorms_to_eval(self)
        return self
