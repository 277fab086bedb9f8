"""NAS-FPN's merging cells (mmcv's ``SumCell``, ``ConcatCell``, ``GlobalPoolingCell``).

A cell takes two feature maps, optionally convolves each, resizes both to an output size
(nearest upsampling, or max-pooling by the integer ratio after zero-padding to a multiple),
merges them (sum, concatenation, or global-pooling attention) and optionally runs an output
ConvModule -- by default ReLU, then a 3x3 conv with bias, then the norm (mmcv's order).
Parameter names are mmcv's (``out_conv.conv``, ``out_conv.bn``, ``input1_conv`` ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.utils import ConvModule, frozen

OUT_CONV = frozen(groups=1, kernel_size=3, padding=1, bias=True)
UPSAMPLE_MODES = ("nearest", "bilinear")


def resize_like_mmcv(x: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """``x (B, C, h, w)`` resized to ``size (H, W)`` as mmcv's merge cells do.

    mmcv compares the sizes as tuples, lexicographically: ``(h, w) < (H, W)`` (e.g. a smaller
    height) upsamples with ``F.interpolate(mode)``; otherwise ``x`` is zero-padded (split evenly,
    the odd pixel on the bottom / right) to a multiple of the size and max-pooled by the ratio.
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    if tuple(x.shape[-2:]) < size:
        return F.interpolate(x, size=size, mode=mode)
    h, w = x.shape[-2:]
    if h % size[0] or w % size[1]:
        pad_h = math.ceil(h / size[0]) * size[0] - h
        pad_w = math.ceil(w / size[1]) * size[1] - w
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    kernel = (x.shape[-2] // size[0], x.shape[-1] // size[1])
    return F.max_pool2d(x, kernel_size=kernel, stride=kernel)


class MergeCell(nn.Module):
    """Two maps -> one (mmcv's ``BaseMergeCell``); subclasses define :meth:`merge` and, when
    the merged map is wider than one input, ``fused_inputs`` (concatenation: 2).

    Args:
        in_channels: channels of each input (the output conv reads ``fused_inputs`` times as
            many); None for a cell without convs.
        out_channels: channels of the output conv, and of the input convs.
        with_out_conv: run ``out_conv`` on the merged map.
        out_conv_cfg: the output ConvModule's ``groups``, ``kernel_size``, ``padding``, ``bias``.
        out_norm_cfg: its norm layer (None: none).
        out_conv_order: its order of ``'act'``, ``'conv'``, ``'norm'``.
        with_input1_conv, with_input2_conv: a 3x3 ConvModule on each input first.
        input_conv_cfg, input_norm_cfg: the input convs' conv and norm configs.
        upsample_mode: ``'nearest'`` or ``'bilinear'``.
    """

    fused_inputs = 1

    def __init__(self, in_channels: int | None = None, out_channels: int | None = None,
                 with_out_conv: bool = True, out_conv_cfg: Mapping = OUT_CONV,
                 out_norm_cfg: Mapping | None = None,
                 out_conv_order: tuple[str, str, str] = ("act", "conv", "norm"),
                 with_input1_conv: bool = False, with_input2_conv: bool = False,
                 input_conv_cfg: Mapping | None = None, input_norm_cfg: Mapping | None = None,
                 upsample_mode: str = "nearest") -> None:
        super().__init__()
        name = type(self).__name__
        if upsample_mode not in UPSAMPLE_MODES:
            raise ConfigError(f"{name} upsample_mode must be one of {UPSAMPLE_MODES}, got "
                              f"{upsample_mode!r}")
        if with_out_conv and (in_channels is None or out_channels is None) or \
                (with_input1_conv or with_input2_conv) and out_channels is None:
            raise ConfigError(f"{name} with convs needs in_channels and out_channels")
        self.with_out_conv, self.upsample_mode = with_out_conv, upsample_mode
        self.with_input1_conv, self.with_input2_conv = with_input1_conv, with_input2_conv
        if with_out_conv:
            self.out_conv = ConvModule(in_channels * self.fused_inputs, out_channels,
                                       **out_conv_cfg, norm_cfg=out_norm_cfg,
                                       order=out_conv_order)
        self.input1_conv = self._input_conv(out_channels, input_conv_cfg, input_norm_cfg) \
            if with_input1_conv else nn.Sequential()
        self.input2_conv = self._input_conv(out_channels, input_conv_cfg, input_norm_cfg) \
            if with_input2_conv else nn.Sequential()

    @staticmethod
    def _input_conv(channels: int, conv_cfg: Mapping | None,
                    norm_cfg: Mapping | None) -> ConvModule:
        return ConvModule(channels, channels, 3, padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                          bias=True)

    def merge(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """The cell's binary operation on two maps of the same size."""
        raise NotImplementedError(f"{type(self).__name__} must define merge")

    def forward(self, x1: torch.Tensor, x2: torch.Tensor,
                out_size: Sequence[int] | None = None) -> torch.Tensor:
        """``x1``, ``x2`` ``(B, C, ., .)`` -> ``(B, C_out, *out_size)`` (default: the larger of
        the two sizes, compared as tuples)."""
        if x1.shape[:2] != x2.shape[:2]:
            raise ValueError(f"{type(self).__name__}: inputs of shapes {tuple(x1.shape)} and "
                             f"{tuple(x2.shape)} differ in batch or channels")
        if out_size is None:
            out_size = max(tuple(x1.shape[-2:]), tuple(x2.shape[-2:]))
        x1 = resize_like_mmcv(self.input1_conv(x1), out_size, self.upsample_mode)
        x2 = resize_like_mmcv(self.input2_conv(x2), out_size, self.upsample_mode)
        x = self.merge(x1, x2)
        return self.out_conv(x) if self.with_out_conv else x


class SumCell(MergeCell):
    """``x1 + x2``."""

    def merge(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return x1 + x2


class ConcatCell(MergeCell):
    """``cat([x1, x2], dim=1)`` (the output conv reads ``2 * in_channels``)."""

    fused_inputs = 2

    def merge(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return torch.cat([x1, x2], dim=1)


class GlobalPoolingCell(MergeCell):
    """``x2 + sigmoid(global_avg_pool(x2)) * x1``: ``x2``'s channel attention gates ``x1``."""

    def merge(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return x2 + F.adaptive_avg_pool2d(x2, 1).sigmoid() * x1
