"""ResNet backbone with MMDetection 2.x's arguments, built from torchvision's residual blocks.

Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1`` ...; no ``fc``), so
``torchvision://resnet50`` weights and MMDetection checkpoints (``backbone.*``) load by name.
Norm layers follow ``norm_cfg`` but keep torchvision's attribute names (``bn1`` even for GN);
the state_dict names them as MMDetection does (``gn1``, ``layer1.0.gn2`` ... with GN), so that
MMDetection's GN checkpoints load strictly.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.resnet import BasicBlock, Bottleneck

from detlab.config import ConfigError
from detlab.models.init import default_resnet_init, initialize, is_pretrained
from detlab.models.ops.deform_conv import DeformConv2dPack, ModulatedDeformConv2dPack
from detlab.models.plugins import build_plugin_layer
from detlab.models.utils import (
    FrozenStagesMixin,
    build_conv_layer,
    build_norm_layer,
    freeze,
    frozen,
    thaw,
)
from detlab.registry import MODELS

ARCH_SETTINGS: dict[int, tuple[type[nn.Module], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
BN = frozen(type="BN", requires_grad=True)


def _norm(norm_cfg: Mapping, num_features: int) -> nn.Module:
    return build_norm_layer(norm_cfg, num_features)[1]


def rename_norm_keys(state_dict: dict, prefix: str, old: str, new: str) -> None:
    """Rename, in place and in order, the norm layers ``<old><i>`` (``bn1``, ``bn2``, ``bn3``)
    of the keys under ``prefix`` to ``<new><i>``."""
    pattern = re.compile(rf"(^|\.){old}(\d)\.")
    for key in [k for k in state_dict if k.startswith(prefix)]:
        value = state_dict.pop(key)
        state_dict[prefix + pattern.sub(rf"\g<1>{new}\g<2>.", key[len(prefix):])] = value


PLUGIN_POSITIONS = ("after_conv1", "after_conv2", "after_conv3")


class PluginBottleneck(Bottleneck):
    """torchvision's Bottleneck with MMDetection's plugin slots: the modules named in
    ``plugin_names[position]`` run, in order, after conv1 + norm + ReLU (``after_conv1``),
    conv2 + norm + ReLU (``after_conv2``) and conv3 + norm (``after_conv3``, before the
    residual sum). The plugins are attributes of the block under mmcv's names
    (``context_block``, ``gen_attention_block`` ...), so the state_dict is MMDetection's."""

    plugin_names: dict[str, list[str]]

    def _plugins(self, x: torch.Tensor, position: str) -> torch.Tensor:
        for name in self.plugin_names[position]:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._plugins(self.relu(self.bn1(self.conv1(x))), "after_conv1")
        out = self._plugins(self.relu(self.bn2(self.conv2(out))), "after_conv2")
        out = self._plugins(self.bn3(self.conv3(out)), "after_conv3")
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def add_block_plugins(layer: Bottleneck, plugins: Sequence[Mapping]) -> PluginBottleneck:
    """Turn ``layer`` into a :class:`PluginBottleneck` holding ``plugins`` (each
    ``dict(cfg=dict(type=...), position='after_conv1' | 'after_conv2' | 'after_conv3')``; a
    ``postfix`` key in ``cfg`` tells apart two plugins of one type). A plugin after conv1 /
    conv2 sees the block's inner width, after conv3 its output width."""
    layer.__class__ = PluginBottleneck
    layer.plugin_names = {position: [] for position in PLUGIN_POSITIONS}
    channels = dict(after_conv1=layer.conv1.out_channels, after_conv2=layer.conv2.out_channels,
                    after_conv3=layer.conv3.out_channels)
    for plugin in plugins:
        cfg = dict(plugin["cfg"])
        postfix = cfg.pop("postfix", "")
        name, module = build_plugin_layer(cfg, "backbone.plugins[].cfg", postfix,
                                          in_channels=channels[plugin["position"]])
        if hasattr(layer, name):
            raise ConfigError(f"backbone.plugins: two plugins named {name!r} in one block; give "
                              f"each of them a distinct cfg postfix (e.g. postfix=1)")
        layer.add_module(name, module)
        layer.plugin_names[plugin["position"]].append(name)
    return layer


def check_plugins(plugins: Sequence[Mapping] | None, num_stages: int) -> list[dict] | None:
    """Validate ResNet ``plugins`` (MMDetection's format) and return plain dicts."""
    if plugins is None:
        return None
    checked = []
    for i, plugin in enumerate(plugins):
        where = f"backbone.plugins[{i}]"
        if not isinstance(plugin, Mapping) or "cfg" not in plugin or "position" not in plugin:
            raise ConfigError(f"{where} must be dict(cfg=dict(type=...), position=..., "
                              f"stages=...), got {plugin!r}")
        if plugin["position"] not in PLUGIN_POSITIONS:
            raise ConfigError(f"{where}.position must be one of {', '.join(PLUGIN_POSITIONS)}, "
                              f"got {plugin['position']!r}")
        stages = plugin.get("stages")
        if stages is not None and len(stages) != num_stages:
            raise ConfigError(f"{where}.stages {tuple(stages)} needs one bool per stage "
                              f"({num_stages}); leave it out to plug every stage")
        checked.append(thaw(dict(plugin)))
    return checked


def _conv(conv_cfg: Mapping | None, conv: nn.Conv2d) -> nn.Module:
    """``conv`` rebuilt as ``conv_cfg`` says (e.g. ConvWS), same geometry."""
    if conv_cfg is None:
        return conv
    return build_conv_layer(conv_cfg, conv.in_channels, conv.out_channels, conv.kernel_size,
                            stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                            groups=conv.groups, bias=conv.bias is not None)


def make_block(block: type[nn.Module], inplanes: int, planes: int, stride: int, dilation: int,
               style: str, norm_cfg: Mapping, downsample: nn.Module | None,
               dcn: Mapping | None = None, groups: int = 1, base_width: int = 64,
               conv_cfg: Mapping | None = None,
               plugins: Sequence[Mapping] | None = None) -> nn.Module:
    """One torchvision residual block with MMDetection's stride/dilation placement.

    Bottleneck, ``'pytorch'`` style: stride on the 3x3 conv (torchvision's own layout);
    ``'caffe'`` style: stride on the first 1x1 conv. BasicBlock: stride and dilation on conv1.
    ``dcn`` (Bottleneck only): the 3x3 ``conv2`` becomes the deformable conv it names, e.g.
    ``dict(type='DCN', deform_groups=1, fallback_on_stride=False)``; as in MMDetection,
    ``fallback_on_stride=True`` keeps a plain conv2 (whatever the block's stride).
    ``groups`` / ``base_width`` (Bottleneck only): the 3x3 conv has ``groups`` groups and the
    block's inner width is ``floor(planes * base_width / 64) * groups`` -- torchvision's (and
    MMDetection's ResNeXt) rule; ``groups=1, base_width=64`` is the plain ResNet block.
    ``conv_cfg``: the block's convs (e.g. ``dict(type='ConvWS')``); ``plugins`` (Bottleneck
    only): see :func:`add_block_plugins`.
    """
    norm_layer = partial(_norm, norm_cfg)
    if dcn is not None and conv_cfg is not None:
        raise ConfigError("ResNet: set conv_cfg or dcn, not both (MMDetection's Bottleneck "
                          "needs conv_cfg=None with a deformable conv2)")
    if block is Bottleneck:
        layer = Bottleneck(inplanes, planes, stride, downsample, groups=groups,
                           base_width=base_width, dilation=dilation, norm_layer=norm_layer)
        if style == "caffe" and stride != 1:
            layer.conv1.stride, layer.conv2.stride = (stride, stride), (1, 1)
        layer.conv1, layer.conv2, layer.conv3 = (_conv(conv_cfg, layer.conv1),
                                                 _conv(conv_cfg, layer.conv2),
                                                 _conv(conv_cfg, layer.conv3))
        if plugins:
            layer = add_block_plugins(layer, plugins)
        if dcn is not None:
            dcn = dict(dcn)
            if not dcn.pop("fallback_on_stride", False):
                conv2 = layer.conv2
                layer.conv2 = build_conv_layer(dcn, conv2.in_channels, conv2.out_channels,
                                               kernel_size=3, stride=conv2.stride,
                                               padding=dilation, dilation=dilation,
                                               groups=conv2.groups, bias=False)
        return layer
    if groups != 1 or base_width != 64:
        raise ConfigError("grouped / wider 3x3 convs (ResNeXt groups, base_width) need "
                          "Bottleneck blocks (depth 50, 101 or 152)")
    if dcn is not None:
        raise ConfigError("ResNet dcn= needs Bottleneck blocks (depth 50, 101 or 152); "
                          "MMDetection's BasicBlock (depth 18 / 34) has no deformable conv")
    if plugins:
        raise ConfigError("ResNet plugins= need Bottleneck blocks (depth 50, 101 or 152); "
                          "MMDetection's BasicBlock (depth 18 / 34) takes no plugins")
    layer = BasicBlock(inplanes, planes, stride, downsample, norm_layer=norm_layer)
    # torchvision's BasicBlock refuses dilation; MMDetection dilates its first conv only
    layer.conv1.dilation = layer.conv1.padding = (dilation, dilation)
    layer.conv1, layer.conv2 = _conv(conv_cfg, layer.conv1), _conv(conv_cfg, layer.conv2)
    return layer


def build_deep_stem(conv_cfg: Mapping | None, norm_cfg: Mapping, in_channels: int,
                    stem_channels: int) -> nn.Sequential:
    """MMDetection's ``deep_stem`` (ResNetV1c/d, Res2Net, ResNeSt): three 3x3 convs (the first
    one stride 2) with norm + ReLU, ``stem_channels // 2`` wide but the last; keys
    ``stem.0`` / ``stem.1`` / ``stem.3`` / ``stem.4`` / ``stem.6`` / ``stem.7``."""
    half = stem_channels // 2
    layers: list[nn.Module] = []
    for c_in, c_out, stride in ((in_channels, half, 2), (half, half, 1),
                                (half, stem_channels, 1)):
        layers += [build_conv_layer(conv_cfg, c_in, c_out, kernel_size=3, stride=stride,
                                    padding=1, bias=False),
                   _norm(norm_cfg, c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def avg_down_shortcut(conv_cfg: Mapping | None, norm_cfg: Mapping, in_channels: int,
                      out_channels: int, stride: int) -> nn.Sequential:
    """The ``avg_down`` shortcut: ``stride`` x ``stride`` average pooling (ceil mode, padding
    not counted), then a stride-1 1x1 conv and a norm (``downsample.1`` / ``downsample.2``;
    a 1x1 pooling at stride 1, as in MMDetection)."""
    return nn.Sequential(
        nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True,
                     count_include_pad=False),
        build_conv_layer(conv_cfg, in_channels, out_channels, kernel_size=1, stride=1,
                         bias=False),
        _norm(norm_cfg, out_channels))


def make_res_layer(block: type[nn.Module], inplanes: int, planes: int, num_blocks: int,
                   stride: int, dilation: int, style: str, norm_cfg: Mapping,
                   dcn: Mapping | None = None, groups: int = 1,
                   base_width: int = 64, conv_cfg: Mapping | None = None,
                   plugins: Sequence[Mapping] | None = None,
                   avg_down: bool = False) -> nn.Sequential:
    """A stage of ``num_blocks`` blocks; the first one downsamples (1x1 conv + norm, torchvision's
    ``downsample.0`` / ``downsample.1``; with ``avg_down`` average pooling, then a stride-1
    conv: :func:`avg_down_shortcut`) when the stride or the channel count changes.
    ``groups`` / ``base_width`` / ``conv_cfg`` / ``plugins``: see :func:`make_block`."""
    out_channels = planes * block.expansion
    downsample = None
    if (stride != 1 or inplanes != out_channels) and avg_down:
        downsample = avg_down_shortcut(conv_cfg, norm_cfg, inplanes, out_channels, stride)
    elif stride != 1 or inplanes != out_channels:
        downsample = nn.Sequential(
            build_conv_layer(conv_cfg, inplanes, out_channels, kernel_size=1, stride=stride,
                             bias=False),
            _norm(norm_cfg, out_channels))
    width = dict(groups=groups, base_width=base_width, conv_cfg=conv_cfg, plugins=plugins)
    blocks = [make_block(block, inplanes, planes, stride, dilation, style, norm_cfg, downsample,
                         dcn, **width)]
    blocks += [make_block(block, out_channels, planes, 1, dilation, style, norm_cfg, None, dcn,
                          **width)
               for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


@MODELS.register_module()
class ResNet(FrozenStagesMixin, nn.Module):
    """ResNet-18/34/50/101/152 returning the outputs of the stages in ``out_indices``.

    Args:
        depth: 18, 34, 50, 101 or 152.
        in_channels: channels of the input image.
        num_stages: residual stages to build (1-4).
        strides, dilations: per stage.
        out_indices: stages whose outputs are returned (0-based).
        style: ``'pytorch'`` (stride on the 3x3 conv) or ``'caffe'`` (on the first 1x1 conv).
        frozen_stages: stages to freeze (no gradient, eval mode); 0 freezes the stem only,
            -1 nothing.
        norm_cfg: norm layers, e.g. ``dict(type='BN', requires_grad=True)`` or
            ``dict(type='GN', num_groups=32)``.
        norm_eval: keep BatchNorm layers in eval mode (frozen statistics) while training.
        with_cp: gradient checkpointing of the blocks (less memory, more compute).
        dcn: None, or the deformable conv of the Bottlenecks' 3x3 ``conv2`` in the stages
            ``stage_with_dcn`` marks, e.g. ``dict(type='DCN' | 'DCNv2', deform_groups=1,
            fallback_on_stride=False)`` (its ``conv_offset`` starts at zero).
        stage_with_dcn: one bool per stage, e.g. ``(False, True, True, True)``.
        zero_init_residual: zero the last norm of every block in the default init.
        init_cfg: ``dict(type='Pretrained', checkpoint='torchvision://resnet50')`` loads weights
            in :meth:`init_weights`; None is He init.
        pretrained: deprecated spelling of ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        groups, base_width: the Bottlenecks' grouped 3x3 convs and inner width
            ``floor(planes * base_width / 64) * groups`` (torchvision's ``groups`` /
            ``width_per_group``). MMDetection's ResNet has no such arguments: its configs reach
            them through ``type='ResNeXt'`` (:class:`ResNeXt`); the defaults are plain ResNet.
        conv_cfg: every conv's config (stem, blocks, downsample), e.g.
            ``dict(type='ConvWS')`` (weight standardization, the gn+ws configs); None is a
            plain conv.
        plugins: MMDetection's Bottleneck plugins, e.g. ``[dict(cfg=dict(type='ContextBlock',
            ratio=1. / 4), stages=(False, True, True, True), position='after_conv3')]``:
            ``cfg`` builds a registered plugin (``ContextBlock``, ``GeneralizedAttention``,
            ``NonLocal2d``; see :mod:`detlab.models.plugins`) with the block's channels;
            ``stages`` (one bool per stage, default all) picks the stages, ``position``
            the slot in each of their blocks (``after_conv1`` / ``2`` / ``3``).
        deep_stem: three 3x3 convs (``stem``, :func:`build_deep_stem`) instead of the 7x7
            ``conv1`` (ResNetV1d); ``stem_channels`` its width (default 64).
        avg_down: downsample the shortcuts by average pooling and a stride-1 conv (ResNetV1d).
    """

    def __init__(self, depth: int, in_channels: int = 3, num_stages: int = 4,
                 strides: Sequence[int] = (1, 2, 2, 2), dilations: Sequence[int] = (1, 1, 1, 1),
                 out_indices: Sequence[int] = (0, 1, 2, 3), style: str = "pytorch",
                 frozen_stages: int = -1,
                 norm_cfg: Mapping = BN,
                 norm_eval: bool = True, with_cp: bool = False,
                 dcn: Mapping | None = None,
                 stage_with_dcn: Sequence[bool] = (False, False, False, False),
                 zero_init_residual: bool = True,
                 init_cfg: Mapping | Sequence[Mapping] | None = None,
                 pretrained: str | None = None, *, groups: int = 1,
                 base_width: int = 64, conv_cfg: Mapping | None = None,
                 plugins: Sequence[Mapping] | None = None, deep_stem: bool = False,
                 avg_down: bool = False, stem_channels: int | None = None) -> None:
        super().__init__()
        self._check_args(depth, num_stages, strides, dilations, out_indices, style,
                         frozen_stages)
        if pretrained is not None:
            if init_cfg is not None:
                raise ConfigError("ResNet: set init_cfg or pretrained, not both (pretrained is "
                                  "deprecated: use init_cfg=dict(type='Pretrained', "
                                  "checkpoint=...))")
            warnings.warn("ResNet(pretrained=...) is deprecated, use init_cfg=dict("
                          "type='Pretrained', checkpoint=...)", DeprecationWarning, stacklevel=2)
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        self.depth, self.num_stages, self.style = depth, num_stages, style
        self.out_indices = tuple(out_indices)
        self.frozen_stages, self.norm_eval, self.with_cp = frozen_stages, norm_eval, with_cp
        self.deep_stem, self.avg_down = deep_stem, avg_down
        stem_channels = 64 if stem_channels is None else stem_channels
        self.zero_init_residual, self.init_cfg = zero_init_residual, thaw(init_cfg)
        self.dcn, self.stage_with_dcn = thaw(dcn), tuple(stage_with_dcn)
        if dcn is not None and len(self.stage_with_dcn) != num_stages:
            raise ConfigError(f"ResNet stage_with_dcn {self.stage_with_dcn} needs one entry per "
                              f"stage ({num_stages})")
        self.conv_cfg, self.plugins = thaw(conv_cfg), check_plugins(plugins, num_stages)
        block, stage_blocks = ARCH_SETTINGS[depth]
        if deep_stem:
            self.stem = build_deep_stem(conv_cfg, norm_cfg, in_channels, stem_channels)
        else:
            self.conv1 = build_conv_layer(conv_cfg, in_channels, stem_channels, kernel_size=7,
                                          stride=2, padding=3, bias=False)
            self.bn1 = _norm(norm_cfg, stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes, self.stage_channels = stem_channels, []
        for i in range(num_stages):
            planes = 64 * 2**i
            stage_dcn = self.dcn if dcn is not None and self.stage_with_dcn[i] else None
            stage_plugins = [{k: v for k, v in p.items() if k != "stages"}
                             for p in self.plugins or ()
                             if p.get("stages") is None or p["stages"][i]]
            layer = make_res_layer(block, inplanes, planes, stage_blocks[i], strides[i],
                                   dilations[i], style, norm_cfg, stage_dcn, groups=groups,
                                   base_width=base_width, conv_cfg=conv_cfg,
                                   plugins=stage_plugins, avg_down=avg_down)
            self.add_module(f"layer{i + 1}", layer)
            inplanes = planes * block.expansion
            self.stage_channels.append(inplanes)
        self.out_channels = [self.stage_channels[i] for i in self.out_indices]
        self._norm_prefix = build_norm_layer(norm_cfg, 64)[0]
        if self._norm_prefix != "bn":  # MMDetection's names (gn1 ...) in the state_dict
            self._register_state_dict_hook(self._state_dict_norm_names)
            self._register_load_state_dict_pre_hook(self._load_norm_names)
        self._default_init()
        self._freeze_stages()

    @staticmethod
    def _check_args(depth: int, num_stages: int, strides: Sequence[int],
                    dilations: Sequence[int], out_indices: Sequence[int], style: str,
                    frozen_stages: int) -> None:
        if depth not in ARCH_SETTINGS:
            raise ConfigError(f"ResNet depth must be one of {sorted(ARCH_SETTINGS)}, got {depth!r}")
        if not 1 <= num_stages <= 4:
            raise ConfigError(f"ResNet num_stages must be 1-4, got {num_stages}")
        if len(strides) != num_stages or len(dilations) != num_stages:
            raise ConfigError(f"ResNet strides {tuple(strides)} and dilations "
                              f"{tuple(dilations)} need one entry per stage ({num_stages})")
        if not out_indices or any(not 0 <= i < num_stages for i in out_indices):
            raise ConfigError(f"ResNet out_indices {tuple(out_indices)} must be stage indices "
                              f"0..{num_stages - 1}")
        if style not in ("pytorch", "caffe"):
            raise ConfigError(f"ResNet style must be 'pytorch' or 'caffe', got {style!r}")
        if not -1 <= frozen_stages <= num_stages:
            raise ConfigError(f"ResNet frozen_stages must be -1..{num_stages}, got "
                              f"{frozen_stages}")

    def stages(self) -> list[nn.Sequential]:
        """The residual stages, ``layer1`` first."""
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def _default_init(self) -> None:
        """He init, norm weight 1; with ``zero_init_residual`` each block's last norm is 0, so
        every residual branch starts as the identity. Deformable convs keep zero offsets
        (``conv_offset`` 0), so each starts as a plain conv -- as MMDetection's models start
        from a pretrained backbone."""
        default_resnet_init(self)
        for stage in self.stages():  # plugins re-run their own init, as in MMDetection
            for block in stage:
                for name in [n for names in getattr(block, "plugin_names", {}).values()
                             for n in names]:
                    if hasattr(getattr(block, name), "init_weights"):
                        getattr(block, name).init_weights()
        for m in self.modules():
            if isinstance(m, (DeformConv2dPack, ModulatedDeformConv2dPack)):
                nn.init.zeros_(m.conv_offset.weight)
                nn.init.zeros_(m.conv_offset.bias)
        if self.zero_init_residual:
            for stage in self.stages():
                for block in stage:
                    last = block.bn3 if isinstance(block, Bottleneck) else block.bn2
                    nn.init.constant_(last.weight, 0.0)
                    nn.init.constant_(last.bias, 0.0)

    def init_weights(self) -> None:
        """Apply ``init_cfg``: load pretrained weights, or the default He init when None."""
        if self.init_cfg is None:
            self._default_init()
        else:
            if is_pretrained(self.init_cfg):
                self._default_init()  # keys missing from the checkpoint keep a sane init
            initialize(self, self.init_cfg)

    def _state_dict_norm_names(self, module: nn.Module, state_dict: dict, prefix: str,
                               local_metadata: dict) -> None:
        rename_norm_keys(state_dict, prefix, "bn", self._norm_prefix)

    def _load_norm_names(self, state_dict: dict, prefix: str, *args: object) -> None:
        rename_norm_keys(state_dict, prefix, self._norm_prefix, "bn")

    @property
    def norm1(self) -> nn.Module:
        """The stem's norm layer under MMDetection's attribute name (its parameters stay under
        ``bn1``, as in MMDetection's checkpoints), for hooks written against MMDetection."""
        return self.bn1

    def _freeze_stages(self) -> None:
        stem = [self.stem] if self.deep_stem else [self.conv1, self.bn1]
        frozen_modules = stem if self.frozen_stages >= 0 else []
        freeze(frozen_modules + list(self.stages()[:max(self.frozen_stages, 0)]))

    def stem_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stem (conv1, norm, ReLU, or the deep stem) and the max pool: stride 4."""
        if self.deep_stem:
            return self.maxpool(self.stem(x))
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, in_channels, H, W)`` -> the ``out_indices`` stage outputs, stage ``i`` of shape
        ``(B, stage_channels[i], H / 2**(i+2), W / 2**(i+2))`` (with the default strides)."""
        return run_stages(self, self.stem_forward(x))


def run_stages(backbone: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A ResNet-like backbone's ``stages()`` on its stem's output ``x``: each block through
    ``torch.utils.checkpoint`` when it trains ``with_cp``; the outputs of ``out_indices``."""
    outs = []
    for i, stage in enumerate(backbone.stages()):
        for block in stage:
            if backbone.with_cp and backbone.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if i in backbone.out_indices:
            outs.append(x)
    return tuple(outs)


@MODELS.register_module()
class ResNeXt(ResNet):
    """ResNeXt-50/101/152 (MMDetection's ``ResNeXt``): a :class:`ResNet` whose Bottlenecks have
    ``groups`` grouped 3x3 convs of width ``floor(planes * base_width / 64) * groups``.

    ``ResNeXt(depth=101, groups=64, base_width=4)`` is MMDetection's ``x101_64x4d``; parameter
    names are ResNet's (torchvision's ``resnext50_32x4d`` weights load by name). With
    ``groups=1`` the blocks are plain ResNet Bottlenecks whatever ``base_width`` says, as in
    MMDetection. Every other argument is :class:`ResNet`'s (``style``, ``dcn`` /
    ``stage_with_dcn`` -- the deformable conv2 keeps the groups --, ``frozen_stages``,
    ``norm_eval``, ``init_cfg`` ...).
    """

    def __init__(self, depth: int, groups: int = 1, base_width: int = 4, in_channels: int = 3,
                 num_stages: int = 4, strides: Sequence[int] = (1, 2, 2, 2),
                 dilations: Sequence[int] = (1, 1, 1, 1),
                 out_indices: Sequence[int] = (0, 1, 2, 3), style: str = "pytorch",
                 frozen_stages: int = -1, norm_cfg: Mapping = BN, norm_eval: bool = True,
                 with_cp: bool = False, dcn: Mapping | None = None,
                 stage_with_dcn: Sequence[bool] = (False, False, False, False),
                 zero_init_residual: bool = True,
                 init_cfg: Mapping | Sequence[Mapping] | None = None,
                 pretrained: str | None = None, conv_cfg: Mapping | None = None,
                 plugins: Sequence[Mapping] | None = None) -> None:
        if depth not in (50, 101, 152):
            raise ConfigError(f"ResNeXt depth must be 50, 101 or 152 (Bottleneck depths), got "
                              f"{depth!r}; use type='ResNet' for depth 18 / 34")
        if groups < 1 or base_width < 1:
            raise ConfigError(f"ResNeXt groups and base_width must be positive, got "
                              f"groups={groups}, base_width={base_width}")
        super().__init__(depth, in_channels, num_stages, strides, dilations, out_indices, style,
                         frozen_stages, norm_cfg, norm_eval, with_cp, dcn, stage_with_dcn,
                         zero_init_residual, init_cfg, pretrained, groups=groups,
                         base_width=base_width if groups > 1 else 64, conv_cfg=conv_cfg,
                         plugins=plugins)
        self.groups, self.base_width = groups, base_width


def _without(cls: type, *fixed: str) -> inspect.Signature:
    """``cls``'s constructor signature without ``self`` and the ``fixed`` arguments: what a
    variant that sets them accepts (the registry's argument checks read it)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return inspect.Signature([p for p in params if p.name not in fixed])


@MODELS.register_module()
class ResNetV1d(ResNet):
    """ResNetV1d (MMDetection's, "Bag of Tricks"): the deep stem and average-pooled shortcuts."""

    def __init__(self, depth: int, **kwargs: Any) -> None:
        super().__init__(depth, deep_stem=True, avg_down=True, **kwargs)

    __signature__ = _without(ResNet, "deep_stem", "avg_down")
