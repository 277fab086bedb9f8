"""NAS-FPN (Ghiasi et al., 2019) as MMDetection 2.28 builds it: the searched pyramid of merging
cells, stacked ``stack_times`` times over five levels P3-P7."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.necks.merge_cells import GlobalPoolingCell, SumCell
from detlab.models.utils import ConvModule, frozen, thaw
from detlab.registry import MODELS

# mmcv's Caffe2Xavier (He-uniform, fan-in, a=1), spelled as the Kaiming initializer it is
CAFFE2_XAVIER_CONV = frozen(type="Kaiming", layer="Conv2d", a=1, mode="fan_in",
                            nonlinearity="leaky_relu", distribution="uniform")
NUM_LEVELS = 5  # the searched architecture merges exactly P3-P7


def _stage(channels: int, norm_cfg: Mapping | None) -> nn.ModuleDict:
    """One NAS-FPN stage: MMDetection's cells, named by the levels they read and write
    (``gp_64_4``: global pooling of P6 over P4, written at P4's size)."""
    def sum_cell() -> SumCell:
        return SumCell(in_channels=channels, out_channels=channels, out_norm_cfg=norm_cfg)

    def pooling_cell() -> GlobalPoolingCell:
        return GlobalPoolingCell(in_channels=channels, out_channels=channels,
                                 out_norm_cfg=norm_cfg)

    return nn.ModuleDict(dict(
        gp_64_4=pooling_cell(), sum_44_4=sum_cell(), sum_43_3=sum_cell(),
        sum_34_4=sum_cell(), gp_43_5=GlobalPoolingCell(with_out_conv=False),
        sum_55_5=sum_cell(), gp_54_7=GlobalPoolingCell(with_out_conv=False),
        sum_77_7=sum_cell(), gp_75_6=pooling_cell()))


@MODELS.register_module()
class NASFPN(nn.Module):
    """NAS-FPN neck.

    Backbone levels ``start_level..end_level`` get a 1x1 lateral ConvModule (no activation);
    the levels above them come from a 1x1 ConvModule then 2x2 max-pooling
    (``extra_downsamples``); the five levels then pass ``stack_times`` stages of merging cells.

    Args:
        in_channels: channels of each backbone output.
        out_channels: channels of every level.
        num_outs: output levels; the architecture needs 5 (P3-P7).
        stack_times: stages of merging cells.
        start_level, end_level: first and last (inclusive; -1 is the last) backbone level used,
            as in :class:`~detlab.models.necks.FPN`.
        add_extra_convs: accepted for configs that inherit FPN's keys; unused, as in
            MMDetection (the extra levels are always 1x1 conv + max-pooling).
        norm_cfg: norm of every ConvModule (laterals, extra levels, cells' output convs).
        init_cfg: default mmcv's ``Caffe2Xavier`` on the convs (its Kaiming spelling).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int,
                 stack_times: int, start_level: int = 0, end_level: int = -1,
                 add_extra_convs: bool | str = False, norm_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = CAFFE2_XAVIER_CONV) -> None:
        super().__init__()
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.num_ins, self.num_outs, self.stack_times = len(in_channels), num_outs, stack_times
        self.start_level, self.end_level = start_level, end_level
        self.add_extra_convs, self.init_cfg = add_extra_convs, thaw(init_cfg)
        self.backbone_end_level = self._check_levels(start_level, end_level, num_outs)
        self.lateral_convs = nn.ModuleList(
            ConvModule(self.in_channels[i], out_channels, 1, norm_cfg=norm_cfg, act_cfg=None)
            for i in range(start_level, self.backbone_end_level))
        extra_levels = num_outs - self.backbone_end_level + start_level
        self.extra_downsamples = nn.ModuleList(
            nn.Sequential(ConvModule(out_channels, out_channels, 1, norm_cfg=norm_cfg,
                                     act_cfg=None), nn.MaxPool2d(2, 2))
            for _ in range(extra_levels))
        self.fpn_stages = nn.ModuleList(_stage(out_channels, norm_cfg)
                                        for _ in range(stack_times))
        initialize(self, init_cfg, load_pretrained=False)

    def _check_levels(self, start_level: int, end_level: int, num_outs: int) -> int:
        """MMDetection's level rules; returns the end (exclusive) of the backbone levels used."""
        if num_outs != NUM_LEVELS:
            raise ConfigError(f"NASFPN num_outs must be {NUM_LEVELS} (its cells merge P3-P7), "
                              f"got {num_outs}")
        if not 0 <= start_level < self.num_ins:
            raise ConfigError(f"NASFPN start_level {start_level} must index in_channels "
                              f"(0..{self.num_ins - 1})")
        if end_level in (-1, self.num_ins - 1):
            if num_outs < self.num_ins - start_level:
                raise ConfigError(f"NASFPN num_outs ({num_outs}) must cover the backbone levels "
                                  f"from start_level {start_level} ({self.num_ins - start_level})")
            return self.num_ins
        if not start_level <= end_level < self.num_ins or \
                num_outs != end_level - start_level + 1:
            raise ConfigError(f"NASFPN end_level {end_level} must index in_channels and, when "
                              f"not the last, give exactly num_outs levels from start_level "
                              f"(num_outs={num_outs}, start_level={start_level})")
        return end_level + 1

    def init_weights(self) -> None:
        """Apply ``init_cfg`` (Caffe2Xavier on the convs by default)."""
        initialize(self, self.init_cfg)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Backbone maps (one per ``in_channels``) -> ``(P3, P4, P5, P6, P7)``, each
        ``(B, out_channels, H_l, W_l)``, P6 / P7 halving P5 / P6 (max-pooling, floor)."""
        if len(inputs) != self.num_ins:
            raise ValueError(f"NASFPN got {len(inputs)} feature maps, in_channels names "
                             f"{self.num_ins}")
        feats = [conv(inputs[self.start_level + i]) for i, conv in enumerate(self.lateral_convs)]
        for downsample in self.extra_downsamples:
            feats.append(downsample(feats[-1]))
        p3, p4, p5, p6, p7 = feats
        for stage in self.fpn_stages:
            p3, p4, p5, p6, p7 = self._stage_forward(stage, p3, p4, p5, p6, p7)
        return p3, p4, p5, p6, p7

    @staticmethod
    def _stage_forward(stage: nn.ModuleDict, p3: torch.Tensor, p4: torch.Tensor,
                       p5: torch.Tensor, p6: torch.Tensor, p7: torch.Tensor
                       ) -> tuple[torch.Tensor, ...]:
        """One stage of cells; each output keeps its level's size."""
        p4_1 = stage["gp_64_4"](p6, p4, out_size=p4.shape[-2:])
        p4_2 = stage["sum_44_4"](p4_1, p4, out_size=p4.shape[-2:])
        p3 = stage["sum_43_3"](p4_2, p3, out_size=p3.shape[-2:])
        p4 = stage["sum_34_4"](p3, p4_2, out_size=p4.shape[-2:])
        p5_gate = stage["gp_43_5"](p4, p3, out_size=p5.shape[-2:])
        p5 = stage["sum_55_5"](p5, p5_gate, out_size=p5.shape[-2:])
        p7_gate = stage["gp_54_7"](p5, p4_2, out_size=p7.shape[-2:])
        p7 = stage["sum_77_7"](p7, p7_gate, out_size=p7.shape[-2:])
        p6 = stage["gp_75_6"](p7, p5, out_size=p6.shape[-2:])
        return p3, p4, p5, p6, p7
