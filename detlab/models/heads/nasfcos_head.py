"""NAS-FCOS's head (Wang et al., 2020): FCOS with searched towers.

Each tower (``cls_convs``, ``reg_convs``; the same layers, built once and copied) is
"dconv3x3, conv3x3, dconv3x3, conv1x1": modulated deformable 3x3 convs (DCNv2, 2 offset
groups, with bias) alternating with plain convs without bias, each followed by the head's
norm layer and ReLU. Targets, losses and detections are :class:`FCOSHead`'s.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from detlab.models.heads.anchor_free_head import DISTANCE_CODER, FOCAL, IOU
from detlab.models.heads.fcos_head import FCOS_RANGES, GN_32, SIGMOID_BCE, FCOSHead
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, frozen
from detlab.registry import MODELS

# (conv_cfg, kernel size, padding, bias) of each tower layer, in order
NAS_TOWER = ((frozen(type="DCNv2", deform_groups=2), 3, 1, True),
             (frozen(type="Conv"), 3, 1, False),
             (frozen(type="DCNv2", deform_groups=2), 3, 1, True),
             (frozen(type="Conv"), 1, 0, False))
# MMDetection's: Caffe2-Xavier for the convs, then normal std 0.01 predictors (the classifier's
# bias at the 0.01 prior); deformable convs' offset branches start at zero (BaseDenseHead)
NASFCOS_INIT = (frozen(type="Caffe2Xavier", layer=("ConvModule", "Conv2d")),
                frozen(type="Normal", std=0.01,
                       override=(frozen(name="conv_reg"), frozen(name="conv_centerness"),
                                 frozen(name="conv_cls", type="Normal", std=0.01,
                                        bias_prob=0.01))))


@MODELS.register_module()
class NASFCOSHead(FCOSHead):
    """NAS-FCOS head: :class:`FCOSHead` with the searched towers above (``stacked_convs`` is
    accepted for MMDetection's configs and does not change them).

    Args: as :class:`FCOSHead`; ``init_cfg`` None means MMDetection's default for this head.
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int = 256,
                 stacked_convs: int = 4, strides: Sequence[int] = (4, 8, 16, 32, 64),
                 regress_ranges: Sequence[Sequence[float]] = FCOS_RANGES,
                 center_sampling: bool = False, center_sample_radius: float = 1.5,
                 norm_on_bbox: bool = False, centerness_on_reg: bool = False,
                 loss_cls: Mapping | nn.Module = FOCAL, loss_bbox: Mapping | nn.Module = IOU,
                 loss_centerness: Mapping | nn.Module = SIGMOID_BCE,
                 bbox_coder: Mapping | Any = DISTANCE_CODER, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = GN_32, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        init_cfg = [dict(c) for c in NASFCOS_INIT] if init_cfg is None else init_cfg
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         feat_channels=feat_channels, stacked_convs=0, strides=strides,
                         regress_ranges=regress_ranges, center_sampling=center_sampling,
                         center_sample_radius=center_sample_radius, norm_on_bbox=norm_on_bbox,
                         centerness_on_reg=centerness_on_reg, loss_cls=loss_cls,
                         loss_bbox=loss_bbox, loss_centerness=loss_centerness,
                         bbox_coder=bbox_coder, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                         train_cfg=train_cfg, test_cfg=test_cfg, init_cfg=init_cfg)
        self.stacked_convs = stacked_convs
        self.cls_convs, self.reg_convs = nn.ModuleList(), nn.ModuleList()
        for i, (conv_cfg_i, kernel, padding, bias) in enumerate(NAS_TOWER):
            layer = ConvModule(in_channels if i == 0 else feat_channels, feat_channels, kernel,
                               stride=1, padding=padding, conv_cfg=dict(conv_cfg_i),
                               norm_cfg=self.norm_cfg, bias=bias)
            self.cls_convs.append(copy.deepcopy(layer))
            self.reg_convs.append(copy.deepcopy(layer))
        initialize(self, self.init_cfg, load_pretrained=False)
        for module in self.modules():
            if isinstance(getattr(module, "conv_offset", None), nn.Conv2d):
                nn.init.zeros_(module.conv_offset.weight)
                nn.init.zeros_(module.conv_offset.bias)
