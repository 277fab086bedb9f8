"""Hybrid Task Cascade's mask head (MMDetection 2.28's ``HTCMaskHead``): an
:class:`~detlab.models.roi_heads.mask_heads.FCNMaskHead` that can take the previous stage's
mask features (the *mask information flow*).

With ``with_conv_res`` the head has ``conv_res``, a 1x1 :class:`ConvModule` applied to the
previous stage's features before they are added to the RoI features; its convs' output is
returned as this stage's features for the next one.
"""

from __future__ import annotations

from typing import Any

import torch

from detlab.models.roi_heads.mask_heads.fcn_mask_head import FCNMaskHead
from detlab.models.utils import ConvModule
from detlab.registry import MODELS


@MODELS.register_module()
class HTCMaskHead(FCNMaskHead):
    """An FCN mask head with a residual input from the previous cascade stage.

    Args:
        with_conv_res: build ``conv_res`` (1x1, ``conv_out_channels`` in and out) to take the
            previous stage's features; False for the first stage of HTC.
        **kwargs: as :class:`FCNMaskHead`.
    """

    def __init__(self, with_conv_res: bool = True, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.with_conv_res = with_conv_res
        if with_conv_res:
            self.conv_res = ConvModule(self.conv_out_channels, self.conv_out_channels, 1,
                                       conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg)

    def forward(self, x: torch.Tensor, res_feat: torch.Tensor | None = None,
                return_logits: bool = True, return_feat: bool = True
                ) -> torch.Tensor | list[torch.Tensor]:
        """RoI features (plus the previous stage's ``res_feat``) -> ``[logits, feats]``, or
        the one asked for when the other is turned off (MMDetection's return convention).

        ``feats`` are the convs' output (``(N, conv_out_channels, h, w)``), the next stage's
        ``res_feat``; ``logits`` are :meth:`FCNMaskHead.forward`'s."""
        if res_feat is not None:
            if not self.with_conv_res:
                raise ValueError("HTCMaskHead got the previous stage's features but was built "
                                 "with with_conv_res=False (no conv_res to take them)")
            x = x + self.conv_res(res_feat)
        for conv in self.convs:
            x = conv(x)
        outs = []
        if return_logits:
            logits = x
            if self.upsample is not None:
                logits = self.upsample(logits)
                if self.upsample_method == "deconv":
                    logits = self.relu(logits)
            outs.append(self.conv_logits(logits))
        if return_feat:
            outs.append(x)
        return outs if len(outs) > 1 else outs[0]
