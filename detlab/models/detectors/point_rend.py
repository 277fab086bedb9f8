"""PointRend (Kirillov et al., 2020): Mask R-CNN whose masks are predicted coarse (7 x 7) and
refined point by point (:class:`~detlab.models.roi_heads.point_rend_roi_head.PointRendRoIHead`).
As MMDetection's, the detector is a :class:`TwoStageDetector`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from detlab.models.detectors.two_stage import TwoStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class PointRend(TwoStageDetector):
    """MMDetection's ``PointRend``. Arguments as :class:`TwoStageDetector` (``rpn_head`` and
    ``roi_head`` required)."""

    def __init__(self, backbone: Mapping | nn.Module, rpn_head: Mapping | nn.Module,
                 roi_head: Mapping | nn.Module, train_cfg: Mapping | None,
                 test_cfg: Mapping | None,
                 neck: Mapping | Sequence[Mapping] | nn.Module | None = None,
                 pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(backbone=backbone, neck=neck, rpn_head=rpn_head, roi_head=roi_head,
                         train_cfg=train_cfg, test_cfg=test_cfg, pretrained=pretrained,
                         init_cfg=init_cfg)
