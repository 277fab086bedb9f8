"""Feature Pyramid Network with MMDetection 2.x's arguments and behaviour."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, frozen, thaw
from detlab.registry import MODELS

EXTRA_CONV_SOURCES = ("on_input", "on_lateral", "on_output")
NEAREST = frozen(mode="nearest")
XAVIER_CONV = frozen(type="Xavier", layer="Conv2d", distribution="uniform")


def _extra_source(add_extra_convs: bool | str) -> str | None:
    """The input of the first extra conv (None: extra levels come from max-pooling)."""
    if isinstance(add_extra_convs, bool):
        return "on_input" if add_extra_convs else None
    if add_extra_convs in EXTRA_CONV_SOURCES:
        return add_extra_convs
    raise ConfigError(f"FPN add_extra_convs must be False, True (= 'on_input'), 'on_input', "
                      f"'on_lateral' or 'on_output'; got {add_extra_convs!r}")


@MODELS.register_module()
class FPN(nn.Module):
    """Feature Pyramid Network (Lin et al., 2017).

    Backbone levels ``start_level..end_level`` get a 1x1 lateral conv; each lateral adds the
    nearest-upsampled sum of the coarser ones, then a 3x3 conv makes the output. Levels beyond
    the backbone's (``num_outs`` more than the used inputs) come from stride-2 3x3 convs
    (``add_extra_convs``: on the last used input, its lateral or its output; ``True`` means
    ``'on_input'``) or, when ``add_extra_convs=False``, from 1x1 max-pooling with stride 2.

    Args:
        in_channels: channels of each backbone output.
        out_channels: channels of every output level.
        num_outs: number of output levels.
        start_level: first backbone level used.
        end_level: last backbone level used (inclusive); -1 is the last one. Extra levels are
            only allowed when it is the last.
        add_extra_convs: False, True, ``'on_input'``, ``'on_lateral'`` or ``'on_output'``.
        relu_before_extra_convs: apply ReLU before every extra conv but the first.
        no_norm_on_lateral: no norm layer in the lateral convs.
        conv_cfg, norm_cfg, act_cfg: of every conv (default: plain conv with bias, no
            activation).
        upsample_cfg: ``F.interpolate`` arguments; without ``scale_factor`` the coarser level is
            resized to the finer one's size.
        init_cfg: weight initialization (Xavier-uniform on the convs).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int,
                 start_level: int = 0, end_level: int = -1,
                 add_extra_convs: bool | str = False, relu_before_extra_convs: bool = False,
                 no_norm_on_lateral: bool = False, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = None, act_cfg: Mapping | None = None,
                 upsample_cfg: Mapping = NEAREST,
                 init_cfg: Mapping | Sequence[Mapping] | None = XAVIER_CONV) -> None:
        super().__init__()
        self.in_channels, self.out_channels = self._check_channels(in_channels), out_channels
        self.num_ins, self.num_outs = len(self.in_channels), num_outs
        self.start_level, self.end_level = start_level, end_level
        self.backbone_end_level = self._check_levels(start_level, end_level, num_outs)
        self.extra_source = _extra_source(add_extra_convs)
        self.add_extra_convs = self.extra_source or False
        self.relu_before_extra_convs = relu_before_extra_convs
        self.no_norm_on_lateral = no_norm_on_lateral
        self.upsample_cfg = thaw(upsample_cfg)
        self.init_cfg = thaw(init_cfg)
        conv_args = dict(conv_cfg=conv_cfg, act_cfg=act_cfg, inplace=False)
        lateral_norm = None if no_norm_on_lateral else norm_cfg
        used = range(start_level, self.backbone_end_level)
        self.lateral_convs = nn.ModuleList(
            ConvModule(self.in_channels[i], out_channels, 1, norm_cfg=lateral_norm, **conv_args)
            for i in used)
        self.fpn_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, **conv_args)
            for _ in used)
        extra_levels = num_outs - len(used)
        if self.extra_source is not None:
            for i in range(extra_levels):
                first_on_input = i == 0 and self.extra_source == "on_input"
                channels = self.in_channels[self.backbone_end_level - 1] if first_on_input \
                    else out_channels
                self.fpn_convs.append(ConvModule(channels, out_channels, 3, stride=2, padding=1,
                                                 norm_cfg=norm_cfg, **conv_args))
        initialize(self, init_cfg, load_pretrained=False)

    @staticmethod
    def _check_channels(in_channels: Sequence[int]) -> list[int]:
        if isinstance(in_channels, int) or not all(isinstance(c, int) for c in in_channels):
            raise ConfigError(f"FPN in_channels must be a list of ints (the channels of each "
                              f"backbone output), got {in_channels!r}")
        return list(in_channels)

    def _check_levels(self, start_level: int, end_level: int, num_outs: int) -> int:
        """The index after the last backbone level used; checks the level arguments."""
        if not 0 <= start_level < self.num_ins:
            raise ConfigError(f"FPN start_level={start_level} must index one of the "
                              f"{self.num_ins} in_channels")
        if end_level in (-1, self.num_ins - 1):
            if num_outs < self.num_ins - start_level:
                raise ConfigError(f"FPN num_outs={num_outs} is fewer than the backbone levels it "
                                  f"uses ({self.num_ins - start_level} from start_level="
                                  f"{start_level}); raise num_outs or start_level")
            return self.num_ins
        if not start_level <= end_level < self.num_ins:
            raise ConfigError(f"FPN end_level={end_level} must be -1 or a level index in "
                              f"[start_level={start_level}, {self.num_ins - 1}]")
        if num_outs != end_level - start_level + 1:
            raise ConfigError(f"FPN num_outs={num_outs} must equal end_level - start_level + 1 ="
                              f" {end_level - start_level + 1}: extra levels are only built "
                              f"when end_level is the last backbone level")
        return end_level + 1

    def init_weights(self) -> None:
        """Apply ``init_cfg`` (Xavier-uniform by default)."""
        initialize(self, self.init_cfg)

    def _check_inputs(self, inputs: Sequence[torch.Tensor]) -> None:
        if len(inputs) != self.num_ins:
            raise ValueError(f"FPN got {len(inputs)} feature maps but in_channels has "
                             f"{self.num_ins} entries ({self.in_channels}); make neck.in_channels "
                             f"match the backbone's out_indices")
        got = [int(x.shape[1]) for x in inputs]
        if got != self.in_channels:
            raise ValueError(f"FPN in_channels={self.in_channels} but the backbone gives "
                             f"{got} channels; set neck.in_channels={got}")

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Backbone maps ``(B, in_channels[i], H_i, W_i)`` -> ``num_outs`` maps
        ``(B, out_channels, H_l, W_l)``, finest first; each extra level halves the size."""
        self._check_inputs(inputs)
        laterals = [conv(inputs[i + self.start_level])
                    for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            if "scale_factor" in self.upsample_cfg:
                up = F.interpolate(laterals[i], **self.upsample_cfg)
            else:
                up = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                   **self.upsample_cfg)
            laterals[i - 1] = laterals[i - 1] + up
        outs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals, strict=False)]
        return tuple(outs + self._extra_levels(inputs, laterals, outs))

    def _extra_levels(self, inputs: Sequence[torch.Tensor], laterals: list[torch.Tensor],
                      outs: list[torch.Tensor]) -> list[torch.Tensor]:
        used = len(laterals)
        extra: list[torch.Tensor] = []
        if self.extra_source is None:
            for _ in range(self.num_outs - used):
                extra.append(F.max_pool2d((extra or outs)[-1], 1, stride=2))
            return extra
        if self.num_outs == used:
            return extra
        source = {"on_input": inputs[self.backbone_end_level - 1], "on_lateral": laterals[-1],
                  "on_output": outs[-1]}[self.extra_source]
        extra.append(self.fpn_convs[used](source))
        for conv in self.fpn_convs[used + 1:]:
            extra.append(conv(F.relu(extra[-1]) if self.relu_before_extra_convs else extra[-1]))
        return extra
