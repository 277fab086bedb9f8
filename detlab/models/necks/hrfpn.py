"""HRFPN, HRNet's feature pyramid (Wang et al., 2019), as MMDetection 2.28 builds it.

Every backbone branch is upsampled bilinearly to the first branch's resolution (by ``2**i``),
the maps are concatenated and a 1x1 ``reduction_conv`` brings them to ``out_channels``; the
pyramid is that map pooled (average or max) by ``2**i`` for ``i < num_outs``, each level then
through its own 3x3 ``fpn_convs[i]``. As in MMDetection, both convs are plain convs with a bias
(``norm_cfg`` is accepted and not used) and no activation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.necks.nasfcos_fpn import caffe2_xavier_init
from detlab.models.utils import ConvModule, thaw
from detlab.registry import MODELS


@MODELS.register_module()
class HRFPN(nn.Module):
    """HRNet's pyramid (see the module docstring).

    Args:
        in_channels: channels of each backbone branch (highest resolution first).
        out_channels: channels of every output level.
        num_outs: output levels; level ``i`` has stride ``2**i`` relative to the first branch
            (times ``stride``).
        pooling_type: ``'AVG'`` or ``'MAX'`` pooling for the coarser levels.
        conv_cfg: the convs' config.
        norm_cfg: accepted for MMDetection's configs; unused, as in MMDetection.
        with_cp: gradient checkpointing of the convs while training.
        stride: stride of the 3x3 ``fpn_convs``.
        init_cfg: None is MMDetection's default (Caffe2-Xavier convs, zero bias).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int = 5,
                 pooling_type: str = "AVG", conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = None, with_cp: bool = False, stride: int = 1,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__()
        if isinstance(in_channels, int) or not in_channels:
            raise ConfigError(f"neck.in_channels must list the channels of each backbone "
                              f"branch (e.g. [32, 64, 128, 256]), got {in_channels!r}")
        if pooling_type not in ("AVG", "MAX"):
            raise ConfigError(f"neck.pooling_type must be 'AVG' or 'MAX', got {pooling_type!r}")
        if num_outs < 1:
            raise ConfigError(f"neck.num_outs must be at least 1, got {num_outs}")
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.num_ins, self.num_outs = len(self.in_channels), num_outs
        self.pooling_type, self.with_cp = pooling_type, with_cp
        self.conv_cfg, self.norm_cfg = thaw(conv_cfg), thaw(norm_cfg)
        self.init_cfg = thaw(init_cfg)
        self.reduction_conv = ConvModule(sum(self.in_channels), out_channels, 1,
                                         conv_cfg=conv_cfg, act_cfg=None)
        self.fpn_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, stride=stride, padding=1,
                       conv_cfg=conv_cfg, act_cfg=None) for _ in range(num_outs))
        self.pooling = F.max_pool2d if pooling_type == "MAX" else F.avg_pool2d
        self.init_weights()

    def init_weights(self) -> None:
        """Caffe2-Xavier convs with zero bias, or ``init_cfg`` when given."""
        if self.init_cfg is not None:
            initialize(self, self.init_cfg)
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                caffe2_xavier_init(m)

    def _conv(self, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return checkpoint(conv, x, use_reentrant=False)
        return conv(x)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """One map per backbone branch -> ``num_outs`` maps of ``out_channels``."""
        if len(inputs) != self.num_ins:
            raise ValueError(f"HRFPN expects {self.num_ins} input maps (neck.in_channels), got "
                             f"{len(inputs)}")
        maps = [inputs[0]] + [F.interpolate(x, scale_factor=2**i, mode="bilinear")
                              for i, x in enumerate(inputs) if i > 0]
        out = self._conv(self.reduction_conv, torch.cat(maps, dim=1))
        levels = [out] + [self.pooling(out, kernel_size=2**i, stride=2**i)
                          for i in range(1, self.num_outs)]
        return tuple(self._conv(conv, level) for conv, level in zip(self.fpn_convs, levels,
                                                                     strict=True))
