"""NAS-FCOS's searched feature pyramid (Wang et al., 2020), as MMDetection 2.28 builds it.

Three backbone levels (C3, C4, C5 with the default ``start_level=1``) are reduced by 1x1
``adapt_convs`` (conv, BatchNorm, ReLU) to ``f0, f1, f2``; seven concatenation cells, named
``c<i><j>[_k]`` after the two features they read (``f_i`` and ``f_j``), each add a feature
``f3 .. f9`` in this order::

    f3 = c22_1(f2, f2)   f4 = c22_2(f2, f2)   f5 = c32(f3, f2)   f6 = c02(f0, f2)
    f7 = c42(f4, f2)     f8 = c36(f3, f6)     f9 = c61(f6, f1)

A cell convolves its inputs (a 3x3 ConvModule of ``conv_cfg`` / ``norm_cfg``, on the first
input always, on the second unless the name is ``c32`` or ``c02``), resizes both to the larger
size, concatenates them and runs BatchNorm, ReLU and a grouped 1x1 conv (``groups =
out_channels``). The outputs P3, P4, P5 are ``f9``, ``f8``, ``f7`` each plus ``f5`` resized
bilinearly to it, then resized bilinearly to the size of backbone inputs 1, 2, 3 (C3, C4, C5
of a ResNet); levels beyond come from
stride-2 3x3 convs, ReLU before all but the first.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.necks.merge_cells import ConcatCell
from detlab.models.utils import ConvModule, thaw
from detlab.registry import MODELS

# cell name -> (input-1 conv, input-2 conv); the digits of the name index the features read
CELLS = (("c22_1", True, True), ("c22_2", True, True), ("c32", True, False),
         ("c02", True, False), ("c42", True, True), ("c36", True, True), ("c61", True, True))
OUTPUT_FEATURES = (9, 8, 7)  # P3, P4, P5 before the fusion with f5
SIZE_INPUTS = (1, 2, 3)  # the backbone maps whose sizes P3, P4, P5 take (fixed, as MMDetection)
FUSED_FEATURE = 5


def caffe2_xavier_init(module: nn.Module) -> None:
    """mmcv's ``caffe2_xavier_init``: He-uniform, fan-in, ``a=1``; bias 0."""
    nn.init.kaiming_uniform_(module.weight, a=1, mode="fan_in", nonlinearity="leaky_relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


@MODELS.register_module()
class NASFCOS_FPN(nn.Module):  # noqa: N801 -- MMDetection's registered name
    """NAS-FCOS's feature pyramid (see the module docstring).

    Args:
        in_channels: channels of each backbone output.
        out_channels: channels of every feature and output level.
        num_outs: output levels (3 from the cells, the rest from extra stride-2 convs).
        start_level: first backbone level used (the paper omits C2).
        end_level: last backbone level used (inclusive); -1 is the last one.
        add_extra_convs: accepted for MMDetection's configs; the extra levels are always
            convs, as in MMDetection.
        conv_cfg, norm_cfg: of the cells' input convs (MMDetection's config: DCNv2 with 2
            offset groups, BatchNorm).
        init_cfg: must be None (MMDetection refuses it too: the neck has its own init).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int,
                 start_level: int = 1, end_level: int = -1, add_extra_convs: bool = False,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = None,
                 init_cfg: Mapping | None = None) -> None:
        super().__init__()
        if init_cfg is not None:
            raise ConfigError("NASFCOS_FPN initializes its own convs: remove neck.init_cfg "
                              "(MMDetection does not allow it either)")
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.num_ins, self.num_outs = len(in_channels), num_outs
        self.start_level, self.end_level = start_level, end_level
        self.add_extra_convs = add_extra_convs
        self.conv_cfg, self.norm_cfg = thaw(conv_cfg), thaw(norm_cfg)
        self.backbone_end_level = self._end_level()
        if self.backbone_end_level - start_level != 3:
            raise ConfigError(f"NASFCOS_FPN's cells read exactly three backbone levels; "
                              f"neck.start_level={start_level} and end_level={end_level} of "
                              f"{self.num_ins} inputs give {self.backbone_end_level - start_level}")
        self.adapt_convs = nn.ModuleList(
            ConvModule(in_channels[i], out_channels, 1, stride=1, padding=0, bias=False,
                       norm_cfg=dict(type="BN"), act_cfg=dict(type="ReLU"), inplace=False)
            for i in range(start_level, self.backbone_end_level))
        self.fpn = nn.ModuleDict({name: self._cell(first, second)
                                  for name, first, second in CELLS})
        extra_levels = num_outs - self.backbone_end_level + start_level
        self.extra_downsamples = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, stride=2, padding=1,
                       act_cfg=None if i == 0 else dict(type="ReLU"), inplace=False,
                       order=("act", "norm", "conv"))
            for i in range(extra_levels))
        self.init_weights()

    def _end_level(self) -> int:
        """The backbone level after the last one used, checked as MMDetection checks it."""
        if self.end_level in (-1, self.num_ins - 1):
            if self.num_outs < self.num_ins - self.start_level:
                raise ConfigError(f"neck.num_outs ({self.num_outs}) must cover the backbone "
                                  f"levels used ({self.num_ins - self.start_level})")
            return self.num_ins
        if self.end_level >= self.num_ins \
                or self.num_outs != self.end_level - self.start_level + 1:
            raise ConfigError(f"neck.end_level={self.end_level} must be below the "
                              f"{self.num_ins} inputs, and num_outs must then be "
                              f"end_level - start_level + 1 (no extra levels)")
        return self.end_level + 1

    def _cell(self, with_input1_conv: bool, with_input2_conv: bool) -> ConcatCell:
        channels = self.out_channels
        return ConcatCell(channels, channels, with_out_conv=True,
                          out_conv_cfg=dict(kernel_size=1, padding=0, bias=False,
                                            groups=channels),
                          out_norm_cfg=dict(type="BN"), out_conv_order=("norm", "act", "conv"),
                          with_input1_conv=with_input1_conv, with_input2_conv=with_input2_conv,
                          input_conv_cfg=copy.deepcopy(self.conv_cfg),
                          input_norm_cfg=copy.deepcopy(self.norm_cfg), upsample_mode="nearest")

    def init_weights(self) -> None:
        """MMDetection's: Caffe2-Xavier for the plain convs of ``adapt_convs`` and
        ``extra_downsamples``; the cells keep their ConvModules' own init (MMDetection's
        check for the cells' output convs looks for an attribute they do not have)."""
        for part in (self.adapt_convs, self.extra_downsamples):
            for module in part.modules():
                if isinstance(module, nn.Conv2d):
                    caffe2_xavier_init(module)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Backbone maps -> ``num_outs`` maps of ``out_channels``, finest first."""
        feats = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.adapt_convs)]
        for name, cell in self.fpn.items():
            feats.append(cell(feats[int(name[1])], feats[int(name[2])]))
        outs = []
        for index, level in zip(OUTPUT_FEATURES, SIZE_INPUTS, strict=True):
            fused = feats[index] + F.interpolate(feats[FUSED_FEATURE],
                                                 size=feats[index].shape[2:],
                                                 mode="bilinear", align_corners=False)
            outs.append(F.interpolate(fused, size=inputs[level].shape[2:], mode="bilinear",
                                      align_corners=False))
        for conv in self.extra_downsamples:
            outs.append(conv(outs[-1]))
        return tuple(outs)
