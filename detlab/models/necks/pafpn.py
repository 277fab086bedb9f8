"""PAFPN: the Path Aggregation Network's neck (Liu et al., 2018) as MMDetection 2.28 builds it
(``type='PAFPN'``) -- an :class:`~detlab.models.necks.fpn.FPN` followed by a bottom-up path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detlab.models.init import initialize
from detlab.models.necks.fpn import FPN, XAVIER_CONV
from detlab.models.utils import ConvModule
from detlab.registry import MODELS


@MODELS.register_module()
class PAFPN(FPN):
    """FPN plus a bottom-up path: after the FPN's 3x3 output convs, each level from the
    second on adds the previous (already augmented) level brought down by a stride-2 3x3 conv
    (``downsample_convs``), then goes through one more 3x3 conv (``pafpn_convs``); the finest
    level is the FPN's. Extra levels are built on the result as :class:`FPN` builds them.

    Arguments are :class:`FPN`'s, without ``upsample_cfg``: as in MMDetection, the top-down
    path always resizes nearest to the finer level's size. The bottom-up convs take
    ``conv_cfg`` / ``norm_cfg`` / ``act_cfg`` like the FPN's.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int,
                 start_level: int = 0, end_level: int = -1,
                 add_extra_convs: bool | str = False, relu_before_extra_convs: bool = False,
                 no_norm_on_lateral: bool = False, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = None, act_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = XAVIER_CONV) -> None:
        super().__init__(in_channels, out_channels, num_outs, start_level, end_level,
                         add_extra_convs, relu_before_extra_convs, no_norm_on_lateral,
                         conv_cfg, norm_cfg, act_cfg, init_cfg=init_cfg)
        conv_args = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False)
        bottom_up = range(start_level + 1, self.backbone_end_level)
        self.downsample_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, stride=2, padding=1, **conv_args)
            for _ in bottom_up)
        self.pafpn_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, padding=1, **conv_args)
            for _ in bottom_up)
        initialize(self, init_cfg, load_pretrained=False)  # the bottom-up convs too

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Backbone maps ``(B, in_channels[i], H_i, W_i)`` -> ``num_outs`` maps
        ``(B, out_channels, H_l, W_l)``, finest first."""
        self._check_inputs(inputs)
        laterals = [conv(inputs[i + self.start_level])
                    for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
        inter = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals, strict=False)]
        for i, down in enumerate(self.downsample_convs):
            inter[i + 1] = inter[i + 1] + down(inter[i])
        outs = [inter[0]] + [conv(x) for conv, x in zip(self.pafpn_convs, inter[1:], strict=True)]
        return tuple(outs + self._extra_levels(inputs, laterals, outs))
