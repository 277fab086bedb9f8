"""FPN_CARAFE: an FPN whose top-down path upsamples with a chosen layer -- CARAFE by
default -- as MMDetection 2.28 builds it (``type='FPN_CARAFE'``).

Unlike :class:`~detlab.models.necks.fpn.FPN`, the extra levels are part of the top-down path:
each extra level is a stride-2 ConvModule "lateral" (the first on the last backbone map, the
next ones on the previous extra lateral), and every level, extras included, is upsampled by
its own upsampler and added to the level below (cropped to its size) before the 3x3 output
convs. Parameter names follow MMDetection's, so its checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.ops.carafe import CARAFEPack
from detlab.models.utils import ConvModule, frozen
from detlab.registry import MODELS

CARAFE_UPSAMPLE = frozen(type="carafe", up_kernel=5, up_group=1, encoder_kernel=3,
                         encoder_dilation=1)
UPSAMPLE_TYPES = ("nearest", "bilinear", "deconv", "pixel_shuffle", "carafe", None)
ORDERS = (("conv", "norm", "act"), ("act", "conv", "norm"))


class PixelShufflePack(nn.Module):
    """mmcv's ``pixel_shuffle`` upsampler: a conv to ``out_channels * s^2`` channels
    (``upsample_kernel``, same padding), then ``pixel_shuffle(s)``."""

    def __init__(self, in_channels: int, out_channels: int, scale_factor: int,
                 upsample_kernel: int) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.upsample_conv = nn.Conv2d(in_channels, out_channels * scale_factor ** 2,
                                       upsample_kernel, padding=(upsample_kernel - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.upsample_conv(x), self.scale_factor)


@MODELS.register_module()
class FPN_CARAFE(nn.Module):  # noqa: N801 (MMDetection's name)
    """FPN with a configurable top-down upsampler (see the module docstring).

    Args:
        in_channels: the backbone's channels per level (a list).
        out_channels: channels of every output level.
        num_outs: number of output levels.
        start_level, end_level: the backbone levels used (``end_level`` inclusive, -1: last).
        norm_cfg, act_cfg, order: the ConvModules' (order ``('conv', 'norm', 'act')`` or
            ``('act', 'conv', 'norm')``); convs have a bias when there is no norm.
        upsample_cfg: ``dict(type='carafe', up_kernel, up_group, encoder_kernel,
            encoder_dilation, compressed_channels)``, ``'nearest'`` / ``'bilinear'`` (x2
            interpolation), ``'deconv'`` / ``'pixel_shuffle'`` (with ``upsample_kernel``), or
            type None (no upsampling: levels must already match).
        init_cfg: must be None (as in MMDetection, :meth:`init_weights` is fixed).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int,
                 start_level: int = 0, end_level: int = -1, norm_cfg: Mapping | None = None,
                 act_cfg: Mapping | None = None,
                 order: Sequence[str] = ("conv", "norm", "act"),
                 upsample_cfg: Mapping = CARAFE_UPSAMPLE,
                 init_cfg: Mapping | None = None) -> None:
        super().__init__()
        if init_cfg is not None:
            raise ConfigError("FPN_CARAFE: init_cfg must not be set (its init_weights is "
                              "fixed, as in MMDetection); remove neck init_cfg")
        if not isinstance(in_channels, (list, tuple)):
            raise ConfigError(f"FPN_CARAFE: in_channels must be a list, got {in_channels!r}")
        order = tuple(order)
        if order not in ORDERS:
            raise ConfigError(f"FPN_CARAFE: order must be one of {ORDERS}, got {order!r}")
        self.upsample_cfg = dict(upsample_cfg)
        self.upsample = self.upsample_cfg.get("type")
        if self.upsample not in UPSAMPLE_TYPES:
            raise ConfigError(f"FPN_CARAFE: upsample_cfg type {self.upsample!r} is not one of "
                              f"{UPSAMPLE_TYPES}")
        if self.upsample in ("deconv", "pixel_shuffle"):
            kernel = self.upsample_cfg.pop("upsample_kernel", 0)
            if not kernel or kernel <= 0:
                raise ConfigError(f"FPN_CARAFE: upsample_cfg type={self.upsample!r} needs "
                                  f"upsample_kernel > 0")
            self.upsample_kernel = kernel
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.num_ins, self.num_outs = len(in_channels), num_outs
        self.norm_cfg, self.act_cfg, self.order = norm_cfg, act_cfg, order
        self.with_bias = norm_cfg is None
        if end_level in (-1, self.num_ins - 1):
            self.backbone_end_level = self.num_ins
            if num_outs < self.num_ins - start_level:
                raise ConfigError(f"FPN_CARAFE: num_outs={num_outs} is fewer than the backbone "
                                  f"levels from start_level={start_level}")
        else:
            self.backbone_end_level = end_level + 1
            if end_level >= self.num_ins or num_outs != end_level - start_level + 1:
                raise ConfigError(f"FPN_CARAFE: end_level={end_level} must index in_channels "
                                  f"and num_outs must be end_level - start_level + 1")
        self.start_level, self.end_level = start_level, end_level
        self.relu = nn.ReLU(inplace=False)

        def conv(c_in, kernel, stride=1):
            return ConvModule(c_in, out_channels, kernel, stride=stride,
                              padding=(kernel - 1) // 2, norm_cfg=norm_cfg, bias=self.with_bias,
                              act_cfg=act_cfg, inplace=False, order=order)

        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        self.upsample_modules = nn.ModuleList()
        for i in range(start_level, self.backbone_end_level):
            if i != self.backbone_end_level - 1 and self.upsample is not None:
                self.upsample_modules.append(self._upsampler())
            self.lateral_convs.append(conv(self.in_channels[i], 1))
            self.fpn_convs.append(conv(out_channels, 3))
        for i in range(num_outs - self.backbone_end_level + start_level):
            c_in = self.in_channels[self.backbone_end_level - 1] if i == 0 else out_channels
            if self.upsample is not None:
                self.upsample_modules.append(self._upsampler())
            self.fpn_convs.append(conv(out_channels, 3))
            self.lateral_convs.append(conv(c_in, 3, stride=2))
        self.init_weights()

    def _upsampler(self) -> nn.Module:
        channels = self.out_channels
        if self.upsample == "carafe":
            args = {k: v for k, v in self.upsample_cfg.items() if k != "type"}
            try:
                return CARAFEPack(channels, 2, **args)
            except TypeError as err:
                raise ConfigError(f"FPN_CARAFE upsample_cfg={self.upsample_cfg!r}: {err}") \
                    from err
        if self.upsample == "deconv":
            pad = (self.upsample_kernel - 1) // 2
            return nn.ConvTranspose2d(channels, channels, self.upsample_kernel, stride=2,
                                      padding=pad, output_padding=pad)
        if self.upsample == "pixel_shuffle":
            return PixelShufflePack(channels, channels, 2, self.upsample_kernel)
        return nn.Upsample(scale_factor=2, mode=self.upsample,
                           align_corners=None if self.upsample == "nearest" else False)

    def init_weights(self) -> None:
        """MMDetection's: every conv and deconv Xavier-uniform with zero bias, then each
        CARAFE upsampler's own init."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, CARAFEPack):
                module.init_weights()

    @staticmethod
    def _add_cropped(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a + b``, ``b`` cropped to ``a``'s size (an upsampled odd-sized level is larger)."""
        if a.shape[2:] == b.shape[2:]:
            return a + b
        if b.shape[2] < a.shape[2] or b.shape[3] < a.shape[3]:
            raise ValueError(f"FPN_CARAFE: an upsampled level {tuple(b.shape[2:])} is smaller "
                             f"than the level below {tuple(a.shape[2:])}")
        return a + b[:, :, :a.shape[2], :a.shape[3]]

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Backbone maps ``(B, in_channels[i], H_i, W_i)`` -> ``num_outs`` maps
        ``(B, out_channels, H_l, W_l)``, finest first."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN_CARAFE: expected {len(self.in_channels)} backbone maps "
                             f"(in_channels={self.in_channels}), got {len(inputs)}")
        laterals: list[torch.Tensor] = []
        first_extra = self.backbone_end_level - self.start_level
        for i, conv in enumerate(self.lateral_convs):
            # MMDetection feeds the first extra lateral the last backbone map (the index is
            # clamped), the later ones the previous lateral
            source = inputs[min(i + self.start_level, len(inputs) - 1)] if i <= first_extra \
                else laterals[-1]
            laterals.append(conv(source))
        for i in range(len(laterals) - 1, 0, -1):
            up = self.upsample_modules[i - 1](laterals[i]) if self.upsample is not None \
                else laterals[i]
            laterals[i - 1] = self._add_cropped(laterals[i - 1], up)
        return tuple(conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals,
                                                             strict=True))
