"""MMDetection's ``CoarseMaskHead`` (PointRend): a coarse mask per RoI and class from fully
connected layers -- the RoI features (``14 x 14``) downsampled by a stride-``downsample_factor``
conv (``downsample_conv``), ``num_fcs`` fcs with ReLU (``fcs.i``) and ``fc_logits`` to
``num_classes`` maps of ``7 x 7``. Targets, loss and pasting are :class:`FCNMaskHead`'s
(``train_cfg.rcnn.mask_size`` is 7); PointRend's point head refines the maps at test time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.roi_heads.mask_heads.fcn_mask_head import FCNMaskHead
from detlab.models.utils import ConvModule, frozen, thaw
from detlab.registry import MODELS

COARSE_INIT = frozen(type="Xavier", override=(frozen(name="fcs"),
                                              frozen(type="Constant", val=0.001,
                                                     name="fc_logits")))


@MODELS.register_module()
class CoarseMaskHead(FCNMaskHead):
    """An fc mask head that predicts small masks.

    Args:
        num_convs: 3x3 convs before the downsampling (0 in PointRend).
        num_fcs: fully connected layers (at least one).
        fc_out_channels: their width.
        downsample_factor: the stride (and kernel) of ``downsample_conv``; 1 for none.
        init_cfg: Xavier fcs and a constant 0.001 ``fc_logits``.
        **kwargs: :class:`FCNMaskHead`'s other arguments (``upsample_cfg`` is None here).
    """

    def __init__(self, num_convs: int = 0, num_fcs: int = 2, fc_out_channels: int = 1024,
                 downsample_factor: int = 2, init_cfg: Any = COARSE_INIT,
                 **kwargs: Any) -> None:
        if num_fcs < 1:
            raise ConfigError(f"mask_head.num_fcs of a CoarseMaskHead must be at least 1, got "
                              f"{num_fcs}")
        if downsample_factor < 1:
            raise ConfigError(f"mask_head.downsample_factor must be at least 1, got "
                              f"{downsample_factor}")
        if kwargs.pop("upsample_cfg", None) not in (None, {"type": None}):
            raise ConfigError("CoarseMaskHead does not upsample: remove mask_head.upsample_cfg")
        super().__init__(num_convs=num_convs, upsample_cfg=dict(type=None), **kwargs)
        self.init_cfg = thaw(init_cfg)
        self.num_fcs, self.fc_out_channels = num_fcs, fc_out_channels
        self.downsample_factor = downsample_factor
        del self.conv_logits
        self.downsample_conv = None
        if downsample_factor > 1:
            self.downsample_conv = ConvModule(
                self.conv_out_channels if num_convs > 0 else self.in_channels,
                self.conv_out_channels, kernel_size=downsample_factor,
                stride=downsample_factor, padding=0, conv_cfg=self.conv_cfg,
                norm_cfg=self.norm_cfg)
        self.output_size = (self.roi_feat_size[0] // downsample_factor,
                            self.roi_feat_size[1] // downsample_factor)
        self.output_area = self.output_size[0] * self.output_size[1]
        self.fcs = nn.ModuleList(
            nn.Linear(self.conv_out_channels * self.output_area if i == 0 else fc_out_channels,
                      fc_out_channels) for i in range(num_fcs))
        self.fc_logits = nn.Linear(fc_out_channels, self.num_classes * self.output_area)
        self.init_weights()

    def init_weights(self) -> None:
        """Apply ``init_cfg`` (once the layers exist; FCNMaskHead's own init is not used)."""
        if getattr(self, "fc_logits", None) is None:
            return
        initialize(self, self.init_cfg, load_pretrained=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """RoI features ``(N, in_channels, h, w)`` -> mask logits ``(N, num_classes,
        h / factor, w / factor)``."""
        for conv in self.convs:
            x = conv(x)
        if self.downsample_conv is not None:
            x = self.downsample_conv(x)
        x = x.flatten(1)
        for fc in self.fcs:
            x = self.relu(fc(x))
        return self.fc_logits(x).view(x.size(0), self.num_classes, *self.output_size)


