"""DyHead: Dynamic Head's attention blocks (Dai et al., 2021) used as a neck, as MMDetection 2.28
builds it (``type='DyHead'``, after an FPN in ``neck=[FPN, DyHead]``).

Each :class:`DyHeadBlock` refines every pyramid level with three attentions in turn:

- spatial: a DCN v2 (3x3) reads the level itself, the finer level (stride 2) and the coarser
  level (then resized bilinearly up), all three with the offsets and mask one plain conv predicts
  from the level itself (``spatial_conv_offset``: 18 offset channels, then 9 mask logits);
- scale: each of those maps is weighted by ``hsigmoid(relu(conv1x1(avgpool(map))))`` and the
  weighted maps are averaged;
- task: a dynamic ReLU (:class:`DyReLU`) whose two linear pieces per channel are predicted from
  the averaged map's global pool.

Parameter names follow MMDetection's, so its checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.ops.deform_conv import ModulatedDeformConv2d
from detlab.models.utils import ConvModule, build_activation_layer, build_norm_layer
from detlab.registry import MODELS

DYHEAD_GN = {"type": "GN", "num_groups": 16, "requires_grad": True}
HSIGMOID = {"type": "HSigmoid", "bias": 3.0, "divisor": 6.0}


class HSigmoid(nn.Module):
    """mmcv's hard sigmoid: ``clamp((x + bias) / divisor, min_value, max_value)``."""

    def __init__(self, bias: float = 3.0, divisor: float = 6.0, min_value: float = 0.0,
                 max_value: float = 1.0) -> None:
        super().__init__()
        if divisor == 0:
            raise ConfigError("act_cfg HSigmoid: divisor must not be 0")
        self.bias, self.divisor = bias, divisor
        self.min_value, self.max_value = min_value, max_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + self.bias) / self.divisor).clamp(self.min_value, self.max_value)


def _activation(cfg: Mapping) -> nn.Module:
    """``HSigmoid`` (which the shared activation builder does not know) or any other act_cfg."""
    if isinstance(cfg, Mapping) and cfg.get("type") == "HSigmoid":
        args = {k: v for k, v in cfg.items() if k != "type"}
        try:
            return HSigmoid(**args)
        except TypeError as err:
            raise ConfigError(f"act_cfg {dict(cfg)!r}: {err}") from err
    return build_activation_layer(cfg)


class _ConvAct(ConvModule):
    """A bias-carrying 1x1 ConvModule whose activation may be HSigmoid (names as mmcv's:
    ``conv`` and ``activate``)."""

    def __init__(self, in_channels: int, out_channels: int, act_cfg: Mapping) -> None:
        super().__init__(in_channels, out_channels, 1, act_cfg=None)
        self.with_activation = True
        self.activate = _activation(act_cfg)


class DyReLU(nn.Module):
    """Task-aware attention: from the global pool of ``x``, two 1x1 convs (ReLU, then
    HSigmoid) predict per channel ``a1, b1, a2, b2`` (each shifted to ``[-0.5, 0.5]``); the
    output is ``max(x * (2 a1 + 1) + b1, x * 2 a2 + b2)``.

    Args:
        channels: input and output channels.
        ratio: squeeze ratio; the hidden width is ``int(channels / ratio)``.
        act_cfg: one config for both activations, or a pair.
    """

    def __init__(self, channels: int, ratio: int = 4,
                 act_cfg: Mapping | Sequence[Mapping] = ({"type": "ReLU"}, HSIGMOID)) -> None:
        super().__init__()
        pair = (act_cfg, act_cfg) if isinstance(act_cfg, Mapping) else tuple(act_cfg)
        if len(pair) != 2:
            raise ConfigError(f"DyReLU act_cfg must be one dict or two, got {act_cfg!r}")
        self.channels = channels
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = _ConvAct(channels, int(channels / ratio), pair[0])
        self.conv2 = _ConvAct(int(channels / ratio), channels * 4, pair[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coeffs = self.conv2(self.conv1(self.global_avgpool(x))) - 0.5
        a1, b1, a2, b2 = torch.split(coeffs, self.channels, dim=1)
        return torch.max(x * (a1 * 2.0 + 1.0) + b1, x * (a2 * 2.0) + b2)


def _as_output_grid(values: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Offsets (or a mask) ``(B, C, h, w)`` predicted on another level's grid, read as mmcv's
    compiled DCN v2 reads them for an output of ``height x width``: each image's values in
    memory order, the first ``C * height * width`` of them taken as ``(C, height, width)``.

    DyHead feeds the coarser level's conv the finer level's offsets; mmcv does not resize them
    but indexes their memory as if they had the output's size, and MMDetection's trained
    weights expect exactly that. Same-size offsets pass unchanged.
    """
    if values.shape[-2:] == (height, width):
        return values
    batch, channels = values.shape[:2]
    if values.shape[-2] * values.shape[-1] < height * width:
        raise ValueError(f"DyHead: offsets of size {tuple(values.shape[-2:])} cannot serve a "
                         f"larger output {height}x{width}; feed levels finest first")
    return values.reshape(batch, -1)[:, :channels * height * width].reshape(
        batch, channels, height, width)


class DyDCNv2(nn.Module):
    """A 3x3 modulated deformable conv whose offsets and mask are inputs (DyHead predicts
    them from another level), followed by a norm layer (then the conv has no bias)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 norm_cfg: Mapping | None = DYHEAD_GN) -> None:
        super().__init__()
        self.with_norm = norm_cfg is not None
        self.conv = ModulatedDeformConv2d(in_channels, out_channels, 3, stride=stride,
                                          padding=1, bias=not self.with_norm)
        if self.with_norm:
            self.norm = build_norm_layer(norm_cfg, out_channels)[1]

    def forward(self, x: torch.Tensor, offset: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        height, width = (
            (size + 2 * pad - (dil * (k - 1) + 1)) // s + 1
            for size, pad, dil, k, s in zip(x.shape[-2:], self.conv.padding, self.conv.dilation,
                                             self.conv.kernel_size, self.conv.stride,
                                             strict=True))
        offset = _as_output_grid(offset.contiguous(), height, width)
        mask = _as_output_grid(mask.contiguous(), height, width)
        x = self.conv(x.contiguous(), offset, mask)
        return self.norm(x) if self.with_norm else x


class DyHeadBlock(nn.Module):
    """One block of spatial-, scale- and task-aware attention over all levels (see the
    module docstring).

    Args:
        in_channels, out_channels: channels of the levels in and out.
        zero_init_offset: start ``spatial_conv_offset`` at zero (offsets 0, mask 0.5).
        act_cfg: the scale attention's last activation.
    """

    OFFSET_DIM = 2 * 3 * 3
    OFFSET_AND_MASK_DIM = 3 * 3 * 3

    def __init__(self, in_channels: int, out_channels: int, zero_init_offset: bool = True,
                 act_cfg: Mapping = HSIGMOID) -> None:
        super().__init__()
        self.zero_init_offset = zero_init_offset
        self.spatial_conv_high = DyDCNv2(in_channels, out_channels)
        self.spatial_conv_mid = DyDCNv2(in_channels, out_channels)
        self.spatial_conv_low = DyDCNv2(in_channels, out_channels, stride=2)
        self.spatial_conv_offset = nn.Conv2d(in_channels, self.OFFSET_AND_MASK_DIM, 3,
                                             padding=1)
        self.scale_attn_module = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(out_channels, 1, 1), nn.ReLU(inplace=True),
            _activation(act_cfg))
        self.task_attn_module = DyReLU(out_channels)
        self.init_weights()

    def init_weights(self) -> None:
        """Every plain conv ``N(0, 0.01)`` with bias 0 (the DCNs keep mmcv's own init);
        ``spatial_conv_offset`` zero when ``zero_init_offset``."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.zero_init_offset:
            nn.init.zeros_(self.spatial_conv_offset.weight)
            nn.init.zeros_(self.spatial_conv_offset.bias)

    def _weighted(self, feat: torch.Tensor) -> torch.Tensor:
        return feat * self.scale_attn_module(feat)

    def forward(self, x: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for level, feat in enumerate(x):
            offset_and_mask = self.spatial_conv_offset(feat)
            offset = offset_and_mask[:, :self.OFFSET_DIM]
            mask = offset_and_mask[:, self.OFFSET_DIM:].sigmoid()
            total = self._weighted(self.spatial_conv_mid(feat, offset, mask))
            count = 1
            if level > 0:
                total = total + self._weighted(self.spatial_conv_low(x[level - 1], offset, mask))
                count += 1
            if level < len(x) - 1:
                # MMDetection convolves the coarser level at its own size with this level's
                # offsets, then resizes the result up (not the other way round)
                high = F.interpolate(self.spatial_conv_high(x[level + 1], offset, mask),
                                     size=feat.shape[-2:], mode="bilinear", align_corners=True)
                total = total + self._weighted(high)
                count += 1
            outs.append(self.task_attn_module(total / count))
        return outs


@MODELS.register_module()
class DyHead(nn.Module):
    """``num_blocks`` :class:`DyHeadBlock` in sequence over the pyramid (levels keep their
    sizes; the first block maps ``in_channels`` to ``out_channels``).

    Args:
        in_channels: channels of every input level (one int).
        out_channels: channels of every output level.
        num_blocks: number of blocks (6 in the zoo).
        zero_init_offset: see :class:`DyHeadBlock`.
        init_cfg: must be None -- as in MMDetection, the blocks initialize themselves.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 6,
                 zero_init_offset: bool = True, init_cfg: Mapping | None = None) -> None:
        super().__init__()
        if init_cfg is not None:
            raise ConfigError("DyHead: init_cfg must not be set (the blocks initialize "
                              "themselves as MMDetection's do); remove neck init_cfg")
        if not isinstance(in_channels, int):
            raise ConfigError(f"DyHead: in_channels must be one int (every level has the same "
                              f"channels, e.g. the FPN's out_channels), got {in_channels!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_blocks, self.zero_init_offset = num_blocks, zero_init_offset
        self.dyhead_blocks = nn.Sequential(*(
            DyHeadBlock(in_channels if i == 0 else out_channels, out_channels,
                        zero_init_offset=zero_init_offset) for i in range(num_blocks)))

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Levels ``(B, in_channels, H_l, W_l)`` -> ``(B, out_channels, H_l, W_l)``."""
        if not isinstance(inputs, (tuple, list)):
            raise TypeError("DyHead takes the list of pyramid levels, not one tensor")
        return tuple(self.dyhead_blocks(list(inputs)))
