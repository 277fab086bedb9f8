"""CenterNet's neck for ResNet backbones (Zhou et al., 2019, "Objects as Points"), as
MMDetection 2.28 builds it: the backbone's last map upsampled to a stride-4 map.

Each stage is a 3x3 conv (a DCNv2 with ``use_dcn``, MMDetection's
``ModulatedDeformConv2dPack`` names ``conv.weight`` / ``conv.conv_offset``) + BN + ReLU, then a
stride-2 transposed conv + BN + ReLU doubling the size; the stages sit in one
``deconv_layers`` sequence (conv, upsample, conv, upsample ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, constant_init, frozen
from detlab.registry import MODELS

BN = frozen(type="BN")


class DeconvModule(ConvModule):
    """mmcv's ``ConvModule`` with ``conv_cfg=dict(type='deconv')``: a stride-2 transposed conv
    (no bias, as before a norm), BN and ReLU, under the names ``conv`` / ``bn`` /
    ``activate``."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(channels, channels, kernel_size, norm_cfg=BN)
        self.conv = nn.ConvTranspose2d(channels, channels, kernel_size, stride=2, padding=1,
                                       bias=False)


def bilinear_upsampling_(weight: torch.Tensor) -> None:
    """Fill a transposed conv's ``(C, C, k, k)`` weight as CenterNet's original code does: the
    bilinear kernel in the first filter's first channel copied to every filter's first
    channel (the other channels keep their values)."""
    size = weight.shape[2]
    f = math.ceil(size / 2)
    center = (2 * f - 1 - f % 2) / (2.0 * f)
    with torch.no_grad():
        for i in range(size):
            for j in range(weight.shape[3]):
                weight[0, 0, i, j] = (1 - math.fabs(i / f - center)) \
                    * (1 - math.fabs(j / f - center))
        weight[1:, 0] = weight[0, 0]


@MODELS.register_module()
class CTResNetNeck(nn.Module):
    """CenterNet's upsampling neck (see the module docstring).

    Args:
        in_channel: channels of the backbone's last map (the only one read).
        num_deconv_filters: channels of each stage.
        num_deconv_kernels: kernel size of each stage's transposed conv.
        use_dcn: the stages' 3x3 convs are DCNv2 (modulated deformable convs).
        init_cfg: accepted for MMDetection's configs (:meth:`init_weights` is the neck's own).
    """

    def __init__(self, in_channel: int, num_deconv_filters: Sequence[int],
                 num_deconv_kernels: Sequence[int], use_dcn: bool = True,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__()
        if len(num_deconv_filters) != len(num_deconv_kernels):
            raise ConfigError(f"CTResNetNeck needs one kernel size per stage: "
                              f"num_deconv_filters={list(num_deconv_filters)} but "
                              f"num_deconv_kernels={list(num_deconv_kernels)} (model.neck)")
        self.in_channel, self.use_dcn = in_channel, use_dcn
        self.num_deconv_filters = list(num_deconv_filters)
        self.init_cfg = init_cfg
        layers: list[nn.Module] = []
        channels = in_channel
        for filters, kernel in zip(num_deconv_filters, num_deconv_kernels, strict=True):
            layers.append(ConvModule(channels, filters, 3, padding=1, norm_cfg=BN,
                                     conv_cfg=dict(type="DCNv2") if use_dcn else None))
            layers.append(DeconvModule(filters, kernel))
            channels = filters
        self.deconv_layers = nn.Sequential(*layers)

    @property
    def out_channels(self) -> int:
        """Channels of the output map."""
        return self.num_deconv_filters[-1] if self.num_deconv_filters else self.in_channel

    @property
    def num_outs(self) -> int:
        """One output level."""
        return 1

    def init_weights(self) -> None:
        """MMDetection's: transposed convs reset, then the bilinear kernel
        (:func:`bilinear_upsampling_`); BN at weight 1 / bias 0; without DCN the 3x3 convs
        get PyTorch's default init; DCNv2 offsets start at zero."""
        initialize(self, self.init_cfg, load_pretrained=False)
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                m.reset_parameters()
                bilinear_upsampling_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                constant_init(m, 1.0)
            elif not self.use_dcn and isinstance(m, nn.Conv2d):
                m.reset_parameters()

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor]:
        """The backbone's maps (only the last is read) -> one upsampled map."""
        return (self.deconv_layers(feats[-1]),)
