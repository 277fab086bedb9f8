"""FPG: Feature Pyramid Grids (Chen et al., 2020) as MMDetection 2.28 builds it
(``type='FPG'``).

The backbone levels go through 1x1 lateral convs (plus extra levels by a stride-2 conv or a
subsampling max-pool) into a first pyramid "pathway"; ``stack_times`` more pathways follow,
each bottom-up (``'bu'``) or top-down (``'td'``). Level ``l`` of a new pathway sums whichever
transitions exist for it:

- ``same``: along the new pathway, from the level just built (``same_up_trans`` going up,
  ``same_down_trans`` going down);
- ``lateral``: from level ``l`` of the previous pathway (``across_lateral_trans``);
- ``across_down`` / ``across_up``: from the previous pathway's coarser / finer neighbour;
- ``across_skip``: from level ``l`` of the first pathway.

``skip_inds[l]`` lists the pathways in which level ``l`` is not rebuilt (it is carried over).
Each output level is an ``output_trans`` of the last pathway's map. Transitions are configured
as ``dict(type='conv' | 'interpolation_conv' | 'last_conv' | 'identity', **ConvModule args)``.
Parameter names follow MMDetection's, so its checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError, did_you_mean
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, frozen
from detlab.registry import MODELS

FPG_INIT = (frozen(type="Caffe2Xavier", layer="Conv2d"),
            frozen(type="Constant", layer=["_BatchNorm", "_InstanceNorm", "GroupNorm",
                                           "LayerNorm"], val=1.0))


class UpInterpolationConv(nn.Module):
    """Resize up by ``scale_factor`` (``mode``, ``align_corners``), then a ConvModule with
    ``kernel_size`` and same padding (other keys go to the ConvModule)."""

    def __init__(self, in_channels: int, out_channels: int, scale_factor: float = 2,
                 mode: str = "nearest", align_corners: bool | None = None,
                 kernel_size: int = 3, **kwargs: Any) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.scale_factor, self.mode, self.align_corners = scale_factor, mode, align_corners
        self.conv = ConvModule(in_channels, out_channels, kernel_size,
                               padding=(kernel_size - 1) // 2, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode,
                          align_corners=self.align_corners)
        return self.conv(x)


class LastConv(nn.Module):
    """An output transition: a ConvModule (``kernel_size``, same padding) on the last of a
    level's ``num_inputs`` pathway maps."""

    def __init__(self, in_channels: int, out_channels: int, num_inputs: int,
                 kernel_size: int = 3, **kwargs: Any) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_inputs = num_inputs
        self.conv_out = ConvModule(in_channels, out_channels, kernel_size,
                                   padding=(kernel_size - 1) // 2, **kwargs)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != self.num_inputs:
            raise ValueError(f"FPG output transition expects {self.num_inputs} pathway maps, "
                             f"got {len(inputs)}")
        return self.conv_out(inputs[-1])


def _conv(in_channels: int, out_channels: int, **kwargs: Any) -> ConvModule:
    return ConvModule(in_channels, out_channels, **kwargs)


def _identity(in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    if in_channels != out_channels or kwargs:
        raise ConfigError(f"FPG transition type='identity' takes no arguments and needs equal "
                          f"channels, got {in_channels} -> {out_channels}, {kwargs!r}")
    return nn.Identity()


TRANSITIONS = {"conv": _conv, "interpolation_conv": UpInterpolationConv,
               "last_conv": LastConv, "identity": _identity}


@MODELS.register_module()
class FPG(nn.Module):
    """Feature Pyramid Grids (see the module docstring).

    Args:
        in_channels: the backbone's channels per level (a list).
        out_channels: channels of every output level.
        num_outs: number of output levels (extra ones above the backbone's).
        stack_times: number of pathways after the first.
        paths: ``'bu'`` or ``'td'`` for each of them.
        inter_channels: channels of the pathways' levels: None (``out_channels``), one int, or
            one per output level.
        same_down_trans, same_up_trans, across_lateral_trans, across_down_trans,
        across_up_trans, across_skip_trans, output_trans: transition configs (None: absent).
        start_level, end_level: the backbone levels used (``end_level`` inclusive, -1: last).
        add_extra_convs: extra levels by a stride-2 3x3 conv (True) or a stride-2 max-pool.
        norm_cfg: kept for MMDetection's signature (the transitions take their own).
        skip_inds: per output level, the pathway indices that carry the level over unchanged
            (None: none skipped).
        init_cfg: Caffe2Xavier for every conv, norm weights 1 (MMDetection's default).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int,
                 stack_times: int, paths: Sequence[str],
                 inter_channels: int | Sequence[int] | None = None,
                 same_down_trans: Mapping | None = None,
                 same_up_trans: Mapping | None = frozen(type="conv", kernel_size=3, stride=2,
                                                        padding=1),
                 across_lateral_trans: Mapping | None = frozen(type="conv", kernel_size=1),
                 across_down_trans: Mapping | None = frozen(type="conv", kernel_size=3),
                 across_up_trans: Mapping | None = None,
                 across_skip_trans: Mapping | None = frozen(type="identity"),
                 output_trans: Mapping = frozen(type="last_conv", kernel_size=3),
                 start_level: int = 0, end_level: int = -1, add_extra_convs: bool = False,
                 norm_cfg: Mapping | None = None,
                 skip_inds: Sequence[Sequence[int]] | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = FPG_INIT) -> None:
        super().__init__()
        if not isinstance(in_channels, (list, tuple)):
            raise ConfigError(f"FPG: in_channels must be a list (one entry per backbone level), "
                              f"got {in_channels!r}")
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.num_ins, self.num_outs = len(in_channels), num_outs
        if inter_channels is None:
            inter_channels = [out_channels] * num_outs
        elif isinstance(inter_channels, int):
            inter_channels = [inter_channels] * num_outs
        elif len(inter_channels) != num_outs:
            raise ConfigError(f"FPG: inter_channels needs one entry per output level "
                              f"(num_outs={num_outs}), got {inter_channels!r}")
        self.inter_channels = list(inter_channels)
        paths = list(paths)
        if len(paths) != stack_times or any(p not in ("bu", "td") for p in paths):
            raise ConfigError(f"FPG: paths must list 'bu' or 'td' once per stack "
                              f"(stack_times={stack_times}), got {paths!r}")
        self.stack_times, self.paths = stack_times, paths
        if skip_inds is None:
            skip_inds = [()] * num_outs
        if len(skip_inds) < num_outs:
            raise ConfigError(f"FPG: skip_inds needs one tuple per output level "
                              f"(num_outs={num_outs}), got {skip_inds!r}")
        self.skip_inds = [tuple(s) for s in skip_inds]
        if end_level in (-1, self.num_ins - 1):
            self.backbone_end_level = self.num_ins
            if num_outs < self.num_ins - start_level:
                raise ConfigError(f"FPG: num_outs={num_outs} is fewer than the backbone levels "
                                  f"from start_level={start_level}")
        else:
            self.backbone_end_level = end_level + 1
            if end_level >= self.num_ins or num_outs != end_level - start_level + 1:
                raise ConfigError(f"FPG: end_level={end_level} must index in_channels and "
                                  f"num_outs must be end_level - start_level + 1")
        self.start_level, self.end_level = start_level, end_level
        self.add_extra_convs = add_extra_convs
        ch = self.inter_channels

        self.lateral_convs = nn.ModuleList(
            nn.Conv2d(self.in_channels[i], ch[i - start_level], 1)
            for i in range(start_level, self.backbone_end_level))
        self.extra_downsamples = nn.ModuleList()
        first_extra = self.backbone_end_level - start_level
        for level in range(first_extra, num_outs):
            self.extra_downsamples.append(
                nn.Conv2d(ch[level - 1], ch[level], 3, stride=2, padding=1)
                if add_extra_convs else nn.MaxPool2d(1, stride=2))

        def build(cfg, key, c_in, c_out, **extra):
            return self._build_transition(cfg, key, c_in, c_out, **extra)

        self.fpn_transitions = nn.ModuleList()
        for stack in range(stack_times):
            stage = nn.ModuleList()
            for i in range(num_outs):
                trans = nn.ModuleDict()
                if stack not in self.skip_inds[i]:
                    # the order and the None entries are MMDetection's (state_dict keys)
                    trans["same_up"] = None if i == 0 else build(
                        same_up_trans, "same_up_trans", ch[i - 1], ch[i])
                    trans["same_down"] = None if i == num_outs - 1 else build(
                        same_down_trans, "same_down_trans", ch[i + 1], ch[i])
                    trans["across_lateral"] = build(across_lateral_trans,
                                                    "across_lateral_trans", ch[i], ch[i])
                    trans["across_down"] = None if i == num_outs - 1 else build(
                        across_down_trans, "across_down_trans", ch[i + 1], ch[i])
                    trans["across_up"] = None if i == 0 else build(
                        across_up_trans, "across_up_trans", ch[i - 1], ch[i])
                    trans["across_skip"] = build(across_skip_trans, "across_skip_trans",
                                                 ch[i - 1], ch[i])
                stage.append(trans)
            self.fpn_transitions.append(stage)
        self.output_transition = nn.ModuleList(
            build(output_trans, "output_trans", ch[i], out_channels,
                  num_inputs=stack_times + 1) for i in range(num_outs))
        self.relu = nn.ReLU(inplace=True)
        self.init_cfg = init_cfg
        initialize(self, init_cfg, load_pretrained=False)

    @staticmethod
    def _build_transition(cfg: Mapping | None, key: str, in_channels: int, out_channels: int,
                          **extra: Any) -> nn.Module | None:
        if cfg is None:
            return None
        args = dict(cfg)
        kind = args.pop("type", None)
        if kind not in TRANSITIONS:
            raise ConfigError(f"FPG {key}: type {kind!r} is not a transition."
                              f"{did_you_mean(str(kind), TRANSITIONS)} Choose one of "
                              f"{', '.join(TRANSITIONS)}.")
        try:
            return TRANSITIONS[kind](in_channels, out_channels, **args, **extra)
        except TypeError as err:
            raise ConfigError(f"FPG {key}={dict(cfg)!r}: {err}") from err

    def init_weights(self) -> None:
        """Re-apply ``init_cfg`` (Caffe2Xavier convs, unit norm weights)."""
        initialize(self, self.init_cfg, load_pretrained=False)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Backbone maps ``(B, in_channels[i], H_i, W_i)`` -> ``num_outs`` maps
        ``(B, out_channels, H_l, W_l)``, finest first."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPG: expected {len(self.in_channels)} backbone maps "
                             f"(in_channels={self.in_channels}), got {len(inputs)}")
        feats = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for down in self.extra_downsamples:
            feats.append(down(feats[-1]))
        pathways = [feats]
        for stack, direction in enumerate(self.paths):
            previous, built = pathways[-1], []
            order = range(self.num_outs - 1, -1, -1) if direction == "td" \
                else range(self.num_outs)
            for level in order:
                if stack in self.skip_inds[level]:
                    # MMDetection carries over the previous pathway's map at the position in
                    # build order (which is the level itself only for bottom-up paths)
                    built.append(previous[len(built)])
                    continue
                trans = self.fpn_transitions[stack][level]
                same = trans["same_down" if direction == "td" else "same_up"]
                parts = []
                if same is not None:
                    parts.append(same(built[-1]))
                if trans["across_lateral"] is not None:
                    parts.append(trans["across_lateral"](previous[level]))
                if level > 0 and trans["across_up"] is not None:
                    parts.append(trans["across_up"](previous[level - 1]))
                if level < self.num_outs - 1 and trans["across_down"] is not None:
                    parts.append(trans["across_down"](previous[level + 1]))
                if trans["across_skip"] is not None:
                    parts.append(trans["across_skip"](pathways[0][level]))
                total = parts[0]
                for part in parts[1:]:
                    total = total + part
                built.append(total)
            pathways.append(built[::-1] if direction == "td" else built)
        return tuple(out([p[level] for p in pathways])
                     for level, out in enumerate(self.output_transition))
