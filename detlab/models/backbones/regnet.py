"""RegNetX backbones (Radosavovic et al., 2020) with MMDetection 2.28's arguments and names.

A RegNet is a ResNeXt-style network whose stage widths and depths come from a few numbers
(``arch``): block ``j`` gets the width ``w0 + wa * j``, snapped to the nearest ``w0 * wm**k``
and to a multiple of 8; runs of equal widths form the stages. Each stage is made of
Bottlenecks of expansion 1 (output width = stage width) whose 3x3 convs have groups of
``group_w`` channels. The stem is one stride-2 3x3 conv to ``stem_channels`` (no max-pool).

Parameter names are MMDetection's (``conv1``, ``bn1``, ``layer1.0.conv1`` ...,
``layer1.0.downsample.0``), so the ``open-mmlab://regnetx_*`` weights (converted from
pycls by ``regnet2mmdet``) and MMDetection's RegNet checkpoints load by name.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from detlab.config import ConfigError
from detlab.models.backbones.resnet import BN, ResNet, add_block_plugins, check_plugins
from detlab.models.utils import build_conv_layer, build_norm_layer, thaw
from detlab.registry import MODELS

# MMDetection's named RegNetX designs (pycls' RegNetX-400MF ... 12GF)
ARCH_SETTINGS: dict[str, dict[str, float]] = {
    "regnetx_400mf": dict(w0=24, wa=24.48, wm=2.54, group_w=16, depth=22, bot_mul=1.0),
    "regnetx_800mf": dict(w0=56, wa=35.73, wm=2.28, group_w=16, depth=16, bot_mul=1.0),
    "regnetx_1.6gf": dict(w0=80, wa=34.01, wm=2.25, group_w=24, depth=18, bot_mul=1.0),
    "regnetx_3.2gf": dict(w0=88, wa=26.31, wm=2.25, group_w=48, depth=25, bot_mul=1.0),
    "regnetx_4.0gf": dict(w0=96, wa=38.65, wm=2.43, group_w=40, depth=23, bot_mul=1.0),
    "regnetx_6.4gf": dict(w0=184, wa=60.83, wm=2.07, group_w=56, depth=17, bot_mul=1.0),
    "regnetx_8.0gf": dict(w0=80, wa=49.56, wm=2.88, group_w=120, depth=23, bot_mul=1.0),
    "regnetx_12gf": dict(w0=168, wa=73.36, wm=2.37, group_w=112, depth=19, bot_mul=1.0),
}
ARCH_KEYS = ("w0", "wa", "wm", "group_w", "depth", "bot_mul")


def regnet_widths(w0: float, wa: float, wm: float, depth: int,
                  divisor: int = 8) -> list[int]:
    """Per-block widths of the quantized linear rule ``w0 + wa * j`` (``j < depth``): each is
    moved to the nearest ``w0 * wm**k`` (in log space) and rounded to a multiple of
    ``divisor`` -- pycls' (and MMDetection's) ``generate_regnet``."""
    if wa < 0 or w0 <= 0 or wm <= 1 or w0 % divisor:
        raise ConfigError(f"backbone.arch: RegNet needs wa >= 0, wm > 1 and w0 > 0 a multiple "
                          f"of {divisor}; got w0={w0}, wa={wa}, wm={wm}")
    linear = np.arange(depth) * wa + w0
    powers = np.round(np.log(linear / w0) / np.log(wm))
    widths = np.round(w0 * np.power(wm, powers) / divisor) * divisor
    return widths.astype(int).tolist()


def regnet_stages(arch: Mapping[str, float]) -> tuple[list[int], list[int], list[int]]:
    """``(stage widths, blocks per stage, group widths)`` of a RegNet ``arch``.

    Runs of equal block widths are the stages; then each stage's bottleneck width
    ``width * bot_mul`` is rounded to a multiple of its group width (the group width itself
    is capped by the bottleneck width), and the stage width follows."""
    widths = regnet_widths(arch["w0"], arch["wa"], arch["wm"], int(arch["depth"]))
    starts = [j for j, w in enumerate(widths) if j == 0 or w != widths[j - 1]]
    stage_widths = [widths[j] for j in starts]
    stage_blocks = np.diff(starts + [len(widths)]).tolist()
    bot_mul = arch["bot_mul"]
    bottleneck = [int(w * bot_mul) for w in stage_widths]
    group_widths = [min(arch["group_w"], b) for b in bottleneck]
    bottleneck = [int(round(b / g) * g) for b, g in zip(bottleneck, group_widths, strict=True)]
    stage_widths = [int(b / bot_mul) for b in bottleneck]
    return stage_widths, stage_blocks, group_widths


class RegNetBottleneck(Bottleneck):
    """A Bottleneck of expansion 1 whose width is given: 1x1 conv ``inplanes -> width``, 3x3
    conv in ``groups`` groups, 1x1 conv ``width -> planes`` (norms ``bn1`` ... ``bn3``).

    torchvision's forward (and :func:`add_block_plugins`) serve it unchanged; ``'caffe'``
    style puts the stride on the first 1x1 conv, ``'pytorch'`` on the 3x3 one."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, width: int, groups: int, stride: int,
                 dilation: int, style: str, norm_cfg: Mapping, conv_cfg: Mapping | None,
                 dcn: Mapping | None, downsample: nn.Module | None) -> None:
        nn.Module.__init__(self)
        stride1, stride2 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = build_conv_layer(conv_cfg, inplanes, width, kernel_size=1, stride=stride1,
                                      bias=False)
        self.bn1 = build_norm_layer(norm_cfg, width)[1]
        conv2_cfg = conv_cfg
        if dcn is not None:
            dcn = dict(dcn)
            if not dcn.pop("fallback_on_stride", False):
                conv2_cfg = dcn
        self.conv2 = build_conv_layer(conv2_cfg, width, width, kernel_size=3, stride=stride2,
                                      padding=dilation, dilation=dilation, groups=groups,
                                      bias=False)
        self.bn2 = build_norm_layer(norm_cfg, width)[1]
        self.conv3 = build_conv_layer(conv_cfg, width, planes, kernel_size=1, bias=False)
        self.bn3 = build_norm_layer(norm_cfg, planes)[1]
        self.relu = nn.ReLU(inplace=True)
        self.downsample, self.stride = downsample, stride


@MODELS.register_module()
class RegNet(ResNet):
    """RegNetX backbone returning the outputs of the stages in ``out_indices``.

    Args:
        arch: a name (``'regnetx_400mf'``, ``'regnetx_800mf'``, ``'regnetx_1.6gf'``,
            ``'regnetx_3.2gf'``, ``'regnetx_4.0gf'``, ``'regnetx_6.4gf'``, ``'regnetx_8.0gf'``,
            ``'regnetx_12gf'``) or a dict ``dict(w0=, wa=, wm=, group_w=, depth=, bot_mul=)``:
            initial width, width slope, width quantization factor, group width, number of
            blocks and bottleneck ratio. The design must give 1-4 stages.
        in_channels: channels of the input image.
        stem_channels: output channels of the stem conv.
        base_channels: accepted for MMDetection's signature; a RegNet's widths come from
            ``arch``.
        strides, dilations: per stage (one entry per stage of the design).
        out_indices: stages whose outputs are returned (0-based).
        style: ``'pytorch'`` (stride on the 3x3 conv) or ``'caffe'`` (on the first 1x1 conv).
        deep_stem: accepted for MMDetection's signature; as there, a RegNet keeps its one-conv
            stem.
        avg_down: downsample shortcuts by average pooling then a stride-1 1x1 conv
            (``downsample.1`` / ``.2``) instead of a strided 1x1 conv.
        frozen_stages, norm_cfg, norm_eval, with_cp, dcn, stage_with_dcn, plugins, conv_cfg,
            zero_init_residual, init_cfg, pretrained: as :class:`ResNet`'s.
    """

    arch_settings = ARCH_SETTINGS

    def __init__(self, arch: str | Mapping[str, float], in_channels: int = 3,
                 stem_channels: int = 32, base_channels: int = 32,
                 strides: Sequence[int] = (2, 2, 2, 2), dilations: Sequence[int] = (1, 1, 1, 1),
                 out_indices: Sequence[int] = (0, 1, 2, 3), style: str = "pytorch",
                 deep_stem: bool = False, avg_down: bool = False, frozen_stages: int = -1,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping = BN,
                 norm_eval: bool = True, dcn: Mapping | None = None,
                 stage_with_dcn: Sequence[bool] = (False, False, False, False),
                 plugins: Sequence[Mapping] | None = None, with_cp: bool = False,
                 zero_init_residual: bool = True, pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        nn.Module.__init__(self)
        named = arch if isinstance(arch, str) else "arch dict"
        arch = self._arch(arch)
        stage_widths, stage_blocks, group_widths = regnet_stages(arch)
        num_stages = len(stage_widths)
        if not 1 <= num_stages <= 4:
            raise ConfigError(f"backbone.arch {arch} gives {num_stages} stages; a RegNet "
                              f"backbone has 1-4 (change depth / wa / wm)")
        try:  # ResNet's checks of the per-stage arguments, under this backbone's name
            self._check_args(50, num_stages, strides, dilations, out_indices, style,
                             frozen_stages)
        except ConfigError as error:
            raise ConfigError(f"backbone RegNet ({named}): "
                              + str(error).replace("ResNet ", "", 1)) from None
        if dcn is not None and len(stage_with_dcn) != num_stages:
            raise ConfigError(f"RegNet stage_with_dcn {tuple(stage_with_dcn)} needs one entry "
                              f"per stage ({num_stages})")
        self.init_cfg = self._init_cfg(init_cfg, pretrained)
        self.arch, self.num_stages, self.style = dict(arch), num_stages, style
        self.stage_widths, self.stage_blocks = stage_widths, stage_blocks
        self.group_widths = group_widths
        self.bottleneck_ratio = [arch["bot_mul"]] * num_stages
        self.depth = sum(stage_blocks)
        self.stem_channels, self.base_channels = stem_channels, base_channels
        self.out_indices = tuple(out_indices)
        self.frozen_stages, self.norm_eval, self.with_cp = frozen_stages, norm_eval, with_cp
        self.deep_stem, self.avg_down = deep_stem, avg_down
        self.zero_init_residual = zero_init_residual
        self.dcn, self.stage_with_dcn = thaw(dcn), tuple(stage_with_dcn)
        self.conv_cfg, self.plugins = thaw(conv_cfg), check_plugins(plugins, num_stages)

        self.conv1 = build_conv_layer(conv_cfg, in_channels, stem_channels, kernel_size=3,
                                      stride=2, padding=1, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, stem_channels)[1]
        self.relu = nn.ReLU(inplace=True)
        inplanes = stem_channels
        for i, num_blocks in enumerate(stage_blocks):
            width = int(round(stage_widths[i] * arch["bot_mul"]))
            groups = width // group_widths[i]
            stage_dcn = self.dcn if dcn is not None and self.stage_with_dcn[i] else None
            stage_plugins = [{k: v for k, v in p.items() if k != "stages"}
                             for p in self.plugins or ()
                             if p.get("stages") is None or p["stages"][i]]
            layer = self._make_stage(inplanes, stage_widths[i], num_blocks, strides[i],
                                     dilations[i], groups, group_widths[i], norm_cfg,
                                     stage_dcn, stage_plugins)
            self.add_module(f"layer{i + 1}", layer)
            inplanes = stage_widths[i]
        self.stage_channels = list(stage_widths)
        self.feat_dim = stage_widths[-1]
        self.out_channels = [self.stage_channels[i] for i in self.out_indices]
        self._norm_prefix = build_norm_layer(norm_cfg, stem_channels)[0]
        if self._norm_prefix != "bn":  # MMDetection's names (gn1 ...) in the state_dict
            self._register_state_dict_hook(self._state_dict_norm_names)
            self._register_load_state_dict_pre_hook(self._load_norm_names)
        self._default_init()
        self._freeze_stages()

    @classmethod
    def _arch(cls, arch: str | Mapping[str, float]) -> dict[str, float]:
        if isinstance(arch, str):
            if arch not in cls.arch_settings:
                raise ConfigError(f"backbone.arch {arch!r} is not a RegNet design; use one of "
                                  f"{', '.join(cls.arch_settings)} or a dict with "
                                  f"{', '.join(ARCH_KEYS)}")
            return dict(cls.arch_settings[arch])
        if not isinstance(arch, Mapping):
            raise ConfigError(f"backbone.arch must be a RegNet name or a dict with "
                              f"{', '.join(ARCH_KEYS)}; got {type(arch).__name__}")
        missing = [k for k in ARCH_KEYS if k not in arch]
        if missing:
            raise ConfigError(f"backbone.arch misses {', '.join(missing)}; a RegNet arch dict "
                              f"needs {', '.join(ARCH_KEYS)}")
        return dict(arch)

    @staticmethod
    def _init_cfg(init_cfg: Mapping | Sequence[Mapping] | None,
                  pretrained: str | None) -> object:
        if pretrained is None:
            return thaw(init_cfg)
        if init_cfg is not None:
            raise ConfigError("RegNet: set init_cfg or pretrained, not both (pretrained is "
                              "deprecated: use init_cfg=dict(type='Pretrained', "
                              "checkpoint=...))")
        warnings.warn("RegNet(pretrained=...) is deprecated, use init_cfg=dict("
                      "type='Pretrained', checkpoint=...)", DeprecationWarning, stacklevel=3)
        return dict(type="Pretrained", checkpoint=pretrained)

    def _make_stage(self, inplanes: int, planes: int, num_blocks: int, stride: int,
                    dilation: int, groups: int, group_width: int, norm_cfg: Mapping,
                    dcn: Mapping | None, plugins: Sequence[Mapping]) -> nn.Sequential:
        """One stage: the first block downsamples (and changes the width), the rest keep it.
        The block's inner width is ``floor(planes * group_width / planes) * groups``, as
        MMDetection's ResNeXt Bottleneck computes it (``planes`` with one group)."""
        width = planes if groups == 1 else math.floor(planes * (group_width / planes)) * groups
        downsample = None
        if stride != 1 or inplanes != planes:
            parts: list[nn.Module] = []
            if self.avg_down:
                parts.append(nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True,
                                          count_include_pad=False))
            parts += [build_conv_layer(self.conv_cfg, inplanes, planes, kernel_size=1,
                                       stride=1 if self.avg_down else stride, bias=False),
                      build_norm_layer(norm_cfg, planes)[1]]
            downsample = nn.Sequential(*parts)
        blocks = []
        for j in range(num_blocks):
            block = RegNetBottleneck(inplanes if j == 0 else planes, planes, width, groups,
                                     stride if j == 0 else 1, dilation, self.style, norm_cfg,
                                     self.conv_cfg, dcn, downsample if j == 0 else None)
            if plugins:
                block = add_block_plugins(block, plugins)
            blocks.append(block)
        return nn.Sequential(*blocks)

    def stem_forward(self, x: torch.Tensor) -> torch.Tensor:
        """RegNet's stem: one stride-2 conv, norm and ReLU, no max pool."""
        return self.relu(self.bn1(self.conv1(x)))
