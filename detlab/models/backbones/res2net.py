"""Res2Net backbone (Gao et al., 2019) as MMDetection 2.28 builds it (``type='Res2Net'``).

A Res2Net Bottleneck (``Bottle2neck``) splits its 1x1 conv's output into ``scales`` groups of
``width`` channels; groups 1..scales-1 each go through their own 3x3 conv (``convs.i``, norm
``bns.i``), each one adding the previous group's result first (a hierarchy of receptive
fields inside one block); the last group passes through. The first block of a stage
(``stage`` type) does not add, and when it strides it average-pools the passed-through group.

As in MMDetection the stem is always the deep stem (three 3x3 convs, ``stem.0`` ...
``stem.7``) and the shortcut of every stage's first block average-pools before its 1x1 conv
(``downsample.1`` / ``downsample.2``), whatever ``deep_stem`` / ``avg_down`` / ``style`` say
-- MMDetection accepts those arguments and overrides them. Parameter names are MMDetection's,
so its checkpoints and ``open-mmlab://res2net101_v1d_26w_4s`` load strictly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.backbones.resnet import (
    BN,
    ResNet,
    _norm,
    avg_down_shortcut,
    build_deep_stem,
    run_stages,
)
from detlab.models.init import default_resnet_init, initialize, is_pretrained
from detlab.models.ops.deform_conv import DeformConv2dPack, ModulatedDeformConv2dPack
from detlab.models.utils import FrozenStagesMixin, build_conv_layer, build_norm_layer, freeze, thaw
from detlab.registry import MODELS

RES2NET_ARCH: dict[int, tuple[int, ...]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class Bottle2neck(nn.Module):
    """Res2Net's Bottleneck (see the module docstring): ``conv1`` / ``bn1`` to ``width *
    scales`` channels, ``scales - 1`` 3x3 convs ``convs`` / ``bns`` of ``width`` channels
    (deformable when ``dcn`` is given), ``conv3`` / ``bn3`` to ``planes * 4``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int,
                 downsample: nn.Module | None, scales: int, base_width: int,
                 base_channels: int, stage_type: str, norm_cfg: Mapping,
                 conv_cfg: Mapping | None, dcn: Mapping | None) -> None:
        super().__init__()
        width = int(math.floor(planes * (base_width / base_channels)))
        self.width, self.scales, self.stage_type = width, scales, stage_type
        self.stride = stride
        self.conv1 = build_conv_layer(conv_cfg, inplanes, width * scales, kernel_size=1,
                                      bias=False)
        self.bn1 = _norm(norm_cfg, width * scales)
        if stage_type == "stage" and stride != 1:
            self.pool = nn.AvgPool2d(kernel_size=3, stride=stride, padding=1)
        conv2_cfg = conv_cfg
        if dcn is not None:
            # MMDetection's Bottle2neck ignores fallback_on_stride (its parent class pops it
            # first), so every 3x3 conv of a dcn stage is deformable
            conv2_cfg = {k: v for k, v in dcn.items() if k != "fallback_on_stride"}
        self.convs = nn.ModuleList(
            build_conv_layer(conv2_cfg, width, width, kernel_size=3, stride=stride,
                             padding=dilation, dilation=dilation, bias=False)
            for _ in range(scales - 1))
        self.bns = nn.ModuleList(_norm(norm_cfg, width) for _ in range(scales - 1))
        self.conv3 = build_conv_layer(conv_cfg, width * scales, planes * self.expansion,
                                      kernel_size=1, bias=False)
        self.bn3 = _norm(norm_cfg, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        splits = torch.split(out, self.width, 1)
        sp = self.relu(self.bns[0](self.convs[0](splits[0].contiguous())))
        pieces = [sp]
        for i in range(1, self.scales - 1):
            sp = splits[i] if self.stage_type == "stage" else sp + splits[i]
            sp = self.relu(self.bns[i](self.convs[i](sp.contiguous())))
            pieces.append(sp)
        last = splits[self.scales - 1]
        if self.stage_type == "stage" and self.stride != 1:
            last = self.pool(last)
        out = self.bn3(self.conv3(torch.cat(pieces + [last], 1)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class DeepStemResNet(FrozenStagesMixin, nn.Module):
    """What MMDetection's Res2Net and ResNeSt share: the deep stem (``stem``), max pooling,
    ``layer1``... ``layerN`` built by :meth:`_make_stage`, frozen stages, ``norm_eval``,
    ``with_cp``, the ResNet init and ``init_cfg`` / ``pretrained``, and MMDetection's norm
    names in the state_dict (``gn1`` ... with GN). ``name`` prefixes the config errors."""

    name = "DeepStemResNet"
    arch: dict[int, tuple[int, ...]] = {}

    def __init__(self, depth: int, in_channels: int, stem_channels: int | None,
                 base_channels: int, num_stages: int, strides: Sequence[int],
                 dilations: Sequence[int], out_indices: Sequence[int], frozen_stages: int,
                 conv_cfg: Mapping | None, norm_cfg: Mapping, norm_eval: bool,
                 with_cp: bool, zero_init_residual: bool,
                 init_cfg: Mapping | Sequence[Mapping] | None,
                 pretrained: str | None) -> None:
        super().__init__()
        name = self.name
        if depth not in self.arch:
            raise ConfigError(f"{name} depth must be one of {sorted(self.arch)}, got {depth!r}")
        if not 1 <= num_stages <= 4:
            raise ConfigError(f"{name} num_stages must be 1-4, got {num_stages}")
        if len(strides) != num_stages or len(dilations) != num_stages:
            raise ConfigError(f"{name} strides {tuple(strides)} and dilations "
                              f"{tuple(dilations)} need one entry per stage ({num_stages})")
        if not out_indices or any(not 0 <= i < num_stages for i in out_indices):
            raise ConfigError(f"{name} out_indices {tuple(out_indices)} must be stage indices "
                              f"0..{num_stages - 1}")
        if not -1 <= frozen_stages <= num_stages:
            raise ConfigError(f"{name} frozen_stages must be -1..{num_stages}, got "
                              f"{frozen_stages}")
        if pretrained is not None:
            if init_cfg is not None:
                raise ConfigError(f"{name}: set init_cfg or pretrained, not both (pretrained is "
                                  f"deprecated: use init_cfg=dict(type='Pretrained', "
                                  f"checkpoint=...))")
            warnings.warn(f"{name}(pretrained=...) is deprecated, use init_cfg=dict("
                          f"type='Pretrained', checkpoint=...)", DeprecationWarning,
                          stacklevel=3)
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        stem_channels = base_channels if stem_channels is None else stem_channels
        self.depth, self.num_stages, self.out_indices = depth, num_stages, tuple(out_indices)
        self.style, self.deep_stem, self.avg_down = "pytorch", True, True
        self.frozen_stages, self.norm_eval, self.with_cp = frozen_stages, norm_eval, with_cp
        self.zero_init_residual, self.init_cfg = zero_init_residual, thaw(init_cfg)
        self.stem = build_deep_stem(conv_cfg, norm_cfg, in_channels, stem_channels)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes, self.stage_channels = stem_channels, []
        for i, num_blocks in enumerate(self.arch[depth][:num_stages]):
            planes = base_channels * 2**i
            stage = self._make_stage(i, inplanes, planes, num_blocks, strides[i], dilations[i],
                                     base_channels, conv_cfg, norm_cfg)
            self.add_module(f"layer{i + 1}", stage)
            inplanes = planes * 4
            self.stage_channels.append(inplanes)
        self.out_channels = [self.stage_channels[i] for i in self.out_indices]
        self._norm_prefix = build_norm_layer(norm_cfg, 64)[0]
        if self._norm_prefix != "bn":  # MMDetection's names (gn1 ...) in the state_dict
            self._register_state_dict_hook(self._state_dict_norm_names)
            self._register_load_state_dict_pre_hook(self._load_norm_names)
        self._default_init()
        self._freeze_stages()

    def _make_stage(self, index: int, inplanes: int, planes: int, num_blocks: int, stride: int,
                    dilation: int, base_channels: int, conv_cfg: Mapping | None,
                    norm_cfg: Mapping) -> nn.Sequential:
        raise NotImplementedError

    _state_dict_norm_names = ResNet._state_dict_norm_names
    _load_norm_names = ResNet._load_norm_names
    stages = ResNet.stages

    def _default_init(self) -> None:
        """He init, norm weight 1, deformable convs with zero offsets; with
        ``zero_init_residual`` every block's ``bn3`` starts at 0."""
        default_resnet_init(self)
        for m in self.modules():
            if isinstance(m, (DeformConv2dPack, ModulatedDeformConv2dPack)):
                nn.init.zeros_(m.conv_offset.weight)
                nn.init.zeros_(m.conv_offset.bias)
        if self.zero_init_residual:
            for stage in self.stages():
                for block in stage:
                    nn.init.constant_(block.bn3.weight, 0.0)
                    nn.init.constant_(block.bn3.bias, 0.0)

    def init_weights(self) -> None:
        """Apply ``init_cfg``: load pretrained weights, or the default He init when None."""
        if self.init_cfg is None:
            self._default_init()
        else:
            if is_pretrained(self.init_cfg):
                self._default_init()
            initialize(self, self.init_cfg)

    def _freeze_stages(self) -> None:
        frozen_modules = [self.stem] if self.frozen_stages >= 0 else []
        freeze(frozen_modules + list(self.stages()[:max(self.frozen_stages, 0)]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, in_channels, H, W)`` -> the ``out_indices`` stage outputs, stage ``i`` with
        ``stage_channels[i]`` channels at stride ``2**(i+2)`` (with the default strides)."""
        return run_stages(self, self.maxpool(self.stem(x)))


@MODELS.register_module()
class Res2Net(DeepStemResNet):
    """Res2Net-50/101/152 returning the outputs of the stages in ``out_indices``.

    Args:
        scales: groups each block's 3x3 stage is split into (2 or more).
        base_width: channels of a group per 64 ``planes`` (26 for ``r2_101`` -- 26w_4s).
        depth: 50, 101 or 152.
        style, deep_stem, avg_down: accepted and overridden, as in MMDetection (always the
            pytorch style, the deep stem and average-pooling shortcuts).
        in_channels, stem_channels, base_channels, num_stages, strides, dilations,
        out_indices, frozen_stages, norm_cfg, norm_eval, with_cp, dcn, stage_with_dcn,
        zero_init_residual, conv_cfg, init_cfg, pretrained: as
            :class:`~detlab.models.backbones.resnet.ResNet`; ``dcn`` makes every 3x3 conv of
            the stages ``stage_with_dcn`` marks deformable (``fallback_on_stride`` is ignored,
            as MMDetection's Res2Net ignores it).
        plugins: not supported (no zoo config uses them with Res2Net).
    """

    name = "Res2Net"
    arch = RES2NET_ARCH

    def __init__(self, scales: int = 4, base_width: int = 26, style: str = "pytorch",
                 deep_stem: bool = True, avg_down: bool = True,
                 pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None, *, depth: int,
                 in_channels: int = 3, stem_channels: int | None = None,
                 base_channels: int = 64, num_stages: int = 4,
                 strides: Sequence[int] = (1, 2, 2, 2), dilations: Sequence[int] = (1, 1, 1, 1),
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping = BN,
                 norm_eval: bool = True, dcn: Mapping | None = None,
                 stage_with_dcn: Sequence[bool] = (False, False, False, False),
                 plugins: Sequence[Mapping] | None = None, with_cp: bool = False,
                 zero_init_residual: bool = True) -> None:
        if scales < 2:
            raise ConfigError(f"Res2Net scales must be 2 or more (scales=1 is a plain ResNet: "
                              f"use type='ResNet'), got {scales!r}")
        if plugins:
            raise ConfigError("Res2Net plugins= are not supported; remove backbone.plugins or "
                              "use type='ResNet'")
        if dcn is not None and len(stage_with_dcn) != num_stages:
            raise ConfigError(f"Res2Net stage_with_dcn {tuple(stage_with_dcn)} needs one entry "
                              f"per stage ({num_stages})")
        self.scales, self.base_width = scales, base_width
        self.dcn, self.stage_with_dcn = thaw(dcn), tuple(stage_with_dcn)
        super().__init__(depth, in_channels, stem_channels, base_channels, num_stages, strides,
                         dilations, out_indices, frozen_stages, conv_cfg, norm_cfg, norm_eval,
                         with_cp, zero_init_residual, init_cfg, pretrained)

    def _make_stage(self, index: int, inplanes: int, planes: int, num_blocks: int, stride: int,
                    dilation: int, base_channels: int, conv_cfg: Mapping | None,
                    norm_cfg: Mapping) -> nn.Sequential:
        """A stage: the first block ``stage`` type with the average-pooling shortcut (even at
        stride 1, a 1x1 pooling, as in MMDetection), the others ``normal``."""
        out_channels = planes * Bottle2neck.expansion
        stage_dcn = self.dcn if self.dcn is not None and self.stage_with_dcn[index] else None
        blocks = []
        for j in range(num_blocks):
            first = j == 0
            downsample = None
            if first and (stride != 1 or inplanes != out_channels):
                downsample = avg_down_shortcut(conv_cfg, norm_cfg, inplanes, out_channels,
                                               stride)
            blocks.append(Bottle2neck(
                inplanes if first else out_channels, planes, stride if first else 1, dilation,
                downsample, self.scales, self.base_width, base_channels,
                "stage" if first else "normal", norm_cfg, conv_cfg, stage_dcn))
        return nn.Sequential(*blocks)
