"""Deformable convolutions with mmcv 1.x's parameter names, computed by
``torchvision.ops.deform_conv2d`` (no compiled extension of detlab's own).

- :class:`DeformConv2d` (DCN v1): ``weight`` only, no bias; the offsets are an input.
- :class:`ModulatedDeformConv2d` (DCN v2): ``weight`` and an optional ``bias``; offsets and a
  mask are inputs.
- :class:`DeformConv2dPack` (``conv_cfg=dict(type='DCN')``) and
  :class:`ModulatedDeformConv2dPack` (``dict(type='DCNv2')``) predict their own offsets (and the
  mask) from the input with a plain 3x3-like conv named ``conv_offset``, zero-initialized, so a
  fresh Pack computes what a plain convolution with the same weight does (DCN v2: times
  ``sigmoid(0) = 0.5``, the mask of a zero ``conv_offset``).

Offsets are laid out as mmcv and torchvision both lay them out: for each offset group, one
``(dy, dx)`` pair per kernel position, row-major over the kernel. DCN v2's ``conv_offset``
predicts ``3 * deform_groups * kh * kw`` channels: the first two thirds are the offsets, the
last third the mask logits.

The class names are mmcv's, which is what ``paramwise_cfg.dcn_offset_lr_mult`` in
:mod:`detlab.engine.optim` recognizes.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

from detlab.config import ConfigError

IntPair = int | tuple[int, int]


def _check_channels(name: str, in_channels: int, out_channels: int, groups: int,
                    deform_groups: int) -> None:
    if in_channels % groups or out_channels % groups:
        raise ConfigError(f"{name}: groups={groups} must divide in_channels={in_channels} and "
                          f"out_channels={out_channels}")
    if deform_groups < 1 or in_channels % deform_groups:
        raise ConfigError(f"{name}: deform_groups={deform_groups} must divide "
                          f"in_channels={in_channels}")


def _deform_groups(name: str, deform_groups: int, deformable_groups: int | None) -> int:
    """``deform_groups``, or mmcv's deprecated spelling ``deformable_groups`` (older zoo
    configs use it)."""
    if deformable_groups is None:
        return deform_groups
    if deform_groups != 1:
        raise ConfigError(f"{name}: set deform_groups or its deprecated spelling "
                          f"deformable_groups, not both")
    warnings.warn(f"{name}: deformable_groups is deprecated, use deform_groups",
                  DeprecationWarning, stacklevel=4)
    return deformable_groups


class DeformConv2d(nn.Module):
    """Deformable convolution v1 (mmcv's ``DeformConv2d``): ``forward(x, offset)``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as Conv2d.
        deform_groups: offset groups (the input channels split into this many groups, each
            sampled at its own offsets); ``deformable_groups`` is mmcv's deprecated spelling.
        bias: must be False (mmcv's DCN v1 has no bias).
        im2col_step: accepted for mmcv's signature; it does not change the result.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 groups: int = 1, deform_groups: int = 1, bias: bool = False,
                 im2col_step: int = 32, deformable_groups: int | None = None) -> None:
        super().__init__()
        deform_groups = _deform_groups(type(self).__name__, deform_groups, deformable_groups)
        if bias:
            raise ConfigError(f"{type(self).__name__} (DCN) has no bias, got bias={bias!r}; "
                              f"use DCNv2 for a biased deformable conv or a norm layer after it")
        _check_channels(type(self).__name__, in_channels, out_channels, groups, deform_groups)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.groups, self.deform_groups, self.im2col_step = groups, deform_groups, im2col_step
        # attributes code written for nn.Conv2d looks at
        self.transposed, self.output_padding = False, (0,)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-uniform weight (mmcv's init of DCN v1)."""
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """``x (B, in_channels, H, W)`` sampled at ``offset (B, 2 * deform_groups * kh * kw,
        H', W')`` -> ``(B, out_channels, H', W')``."""
        return deform_conv2d(x, offset.to(x.dtype), self.weight, None, stride=self.stride,
                             padding=self.padding, dilation=self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, deform_groups={self.deform_groups}, bias=False")


class DeformConv2dPack(DeformConv2d):
    """DCN v1 that predicts its offsets from its input with ``conv_offset`` (same kernel,
    stride, padding and dilation; ``2 * deform_groups * kh * kw`` channels, with bias; zero at
    construction). ``conv_cfg=dict(type='DCN', deform_groups=1)``."""

    _version = 2  # mmcv's state_dict version of the Packs

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        kh, kw = self.kernel_size
        self.conv_offset = nn.Conv2d(self.in_channels, self.deform_groups * 2 * kh * kw,
                                     kernel_size=self.kernel_size, stride=self.stride,
                                     padding=self.padding, dilation=self.dilation, bias=True)
        self.init_offset()

    def init_offset(self) -> None:
        """Zero offsets: the layer starts as a plain convolution."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H', W')``."""
        return super().forward(x, self.conv_offset(x))


class ModulatedDeformConv2d(nn.Module):
    """Modulated deformable convolution, DCN v2 (mmcv's ``ModulatedDeformConv2d``):
    ``forward(x, offset, mask)``; every sampled value is multiplied by its mask entry.

    Args: as :class:`DeformConv2d`, and ``bias`` (default True) gives it a bias.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                 groups: int = 1, deform_groups: int = 1, bias: bool = True,
                 deformable_groups: int | None = None) -> None:
        super().__init__()
        deform_groups = _deform_groups(type(self).__name__, deform_groups, deformable_groups)
        if not isinstance(bias, bool):
            raise ConfigError(f"{type(self).__name__}: bias must be a bool, got {bias!r}")
        _check_channels(type(self).__name__, in_channels, out_channels, groups, deform_groups)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.groups, self.deform_groups = groups, deform_groups
        self.transposed, self.output_padding = False, (0,)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        ModulatedDeformConv2d.init_weights(self)

    def init_weights(self) -> None:
        """mmcv's init: weight uniform in ``+-1 / sqrt(in_channels * kh * kw)``, bias 0."""
        stdv = 1.0 / math.sqrt(self.in_channels * math.prod(self.kernel_size))
        nn.init.uniform_(self.weight, -stdv, stdv)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, offset: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """``x (B, in_channels, H, W)``, ``offset (B, 2 * deform_groups * kh * kw, H', W')``,
        ``mask (B, deform_groups * kh * kw, H', W')`` -> ``(B, out_channels, H', W')``."""
        return deform_conv2d(x, offset.to(x.dtype), self.weight, self.bias, stride=self.stride,
                             padding=self.padding, dilation=self.dilation,
                             mask=mask.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, deform_groups={self.deform_groups}, "
                f"bias={self.bias is not None}")


class ModulatedDeformConv2dPack(ModulatedDeformConv2d):
    """DCN v2 that predicts offsets and mask from its input with ``conv_offset``
    (``3 * deform_groups * kh * kw`` channels: offsets, then mask logits through a sigmoid;
    zero at construction, so the mask starts at 0.5). ``conv_cfg=dict(type='DCNv2',
    deform_groups=1)``."""

    _version = 2  # mmcv's state_dict version of the Packs

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        kh, kw = self.kernel_size
        self.conv_offset = nn.Conv2d(self.in_channels, self.deform_groups * 3 * kh * kw,
                                     kernel_size=self.kernel_size, stride=self.stride,
                                     padding=self.padding, dilation=self.dilation, bias=True)
        self.init_weights()

    def init_weights(self) -> None:
        """The weight and bias as :class:`ModulatedDeformConv2d`, ``conv_offset`` zero."""
        super().init_weights()
        if hasattr(self, "conv_offset"):
            nn.init.zeros_(self.conv_offset.weight)
            nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H', W')``."""
        out = self.conv_offset(x)
        dy_dx_1, dy_dx_2, mask = torch.chunk(out, 3, dim=1)
        return super().forward(x, torch.cat((dy_dx_1, dy_dx_2), dim=1), torch.sigmoid(mask))


__all__ = ["DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2d",
           "ModulatedDeformConv2dPack"]
