"""Balanced Feature Pyramid (Libra R-CNN, Pang et al., 2019) with MMDetection 2.28's arguments.

Libra R-CNN puts it after an FPN (``neck=[dict(type='FPN', ...), dict(type='BFP', ...)]``, the
two necks run one after the other): every level is resized to one middle level and averaged,
the average is refined (a non-local block or a 3x3 conv), and the refined map is resized back
and added to every level, so that each level gets the same share of the others' information.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, frozen, thaw
from detlab.registry import MODELS

REFINE_TYPES = (None, "conv", "non_local")
XAVIER_CONV = frozen(type="Xavier", layer="Conv2d", distribution="uniform")


def _resize(x: torch.Tensor, size: Sequence[int], shrink: bool) -> torch.Tensor:
    """``x`` brought to ``size``: by adaptive max pooling when it shrinks, else by nearest
    upsampling (MMDetection's choice by level: finer than the refine level pool, coarser
    upsample)."""
    if shrink:
        return F.adaptive_max_pool2d(x, output_size=tuple(size))
    return F.interpolate(x, size=tuple(size), mode="nearest")


@MODELS.register_module()
class BFP(nn.Module):
    """Balanced Feature Pyramid: gather every level at ``refine_level``'s size, average,
    refine, then scatter the result back to each level as a residual.

    Args:
        in_channels: channels of every input level (all the same, an FPN's ``out_channels``).
        num_levels: number of input levels (an FPN's ``num_outs``).
        refine_level: the level whose size the levels are gathered at (0: the finest).
        refine_type: None (average only), ``'conv'`` (a 3x3 ConvModule with ReLU) or
            ``'non_local'`` (mmcv's ``NonLocal2d``, embedded Gaussian, ``reduction=1``,
            unscaled), named ``refine`` in the state_dict.
        conv_cfg, norm_cfg: of the refine layer.
        init_cfg: weight initialization (Xavier-uniform on the convs, as MMDetection).
    """

    def __init__(self, in_channels: int, num_levels: int, refine_level: int = 2,
                 refine_type: str | None = None, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = XAVIER_CONV) -> None:
        super().__init__()
        if refine_type not in REFINE_TYPES:
            raise ConfigError(f"BFP refine_type must be one of {REFINE_TYPES}, got "
                              f"{refine_type!r} (model.neck)")
        if not 0 <= refine_level < num_levels:
            raise ConfigError(f"BFP refine_level={refine_level} must index one of its "
                              f"num_levels={num_levels} input levels (0 .. {num_levels - 1})")
        self.in_channels, self.num_levels = in_channels, num_levels
        self.refine_level, self.refine_type = refine_level, refine_type
        self.conv_cfg, self.norm_cfg = thaw(conv_cfg), thaw(norm_cfg)
        self.init_cfg = thaw(init_cfg)
        if refine_type == "conv":
            self.refine = ConvModule(in_channels, in_channels, 3, padding=1,
                                     conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        elif refine_type == "non_local":
            from detlab.models.plugins import NonLocal2d  # the plugin layers, on demand

            self.refine = NonLocal2d(in_channels, reduction=1, use_scale=False,
                                     conv_cfg=thaw(conv_cfg), norm_cfg=thaw(norm_cfg))
        initialize(self, self.init_cfg, load_pretrained=False)
        self._init_refine()

    @property
    def out_channels(self) -> int:
        """Channels of every output level (those of the input)."""
        return self.in_channels

    @property
    def num_outs(self) -> int:
        """Number of output levels (those of the input)."""
        return self.num_levels

    def init_weights(self) -> None:
        """Apply ``init_cfg`` (Xavier-uniform convs), then the refine layer's own."""
        initialize(self, self.init_cfg)
        self._init_refine()

    def _init_refine(self) -> None:
        """The refine layer's own initialization, after the Xavier one (as mmcv's
        ``BaseModule`` runs the children's ``init_weights`` last)."""
        if callable(getattr(getattr(self, "refine", None), "init_weights", None)):
            self.refine.init_weights()

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """``num_levels`` maps ``(B, C, H_l, W_l)`` -> as many maps of the same shapes."""
        if len(inputs) != self.num_levels:
            raise ValueError(f"BFP got {len(inputs)} feature maps but was built with "
                             f"num_levels={self.num_levels}; set model.neck's BFP num_levels "
                             f"to the previous neck's num_outs")
        size = inputs[self.refine_level].shape[2:]
        gathered = [_resize(x, size, shrink=i < self.refine_level)
                    for i, x in enumerate(inputs)]
        balanced = sum(gathered) / len(gathered)
        if self.refine_type is not None:
            balanced = self.refine(balanced)
        # finer levels than the refine level upsample the balanced map, coarser ones pool it
        return tuple(x + _resize(balanced, x.shape[2:], shrink=i >= self.refine_level)
                     for i, x in enumerate(inputs))
