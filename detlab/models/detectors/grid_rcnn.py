"""Grid R-CNN (Lu et al., 2019): a two-stage detector whose RoI head
(:class:`~detlab.models.roi_heads.grid_roi_head.GridRoIHead`) classifies the proposals and
places their boxes by grid points instead of regressing offsets. As MMDetection's, the
detector is a :class:`TwoStageDetector`; the config sets ``roi_head.grid_roi_extractor``,
``roi_head.grid_head`` and ``train_cfg.rcnn.pos_radius`` / ``max_num_grid``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from detlab.models.detectors.two_stage import TwoStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class GridRCNN(TwoStageDetector):
    """MMDetection's ``GridRCNN``. Arguments as :class:`TwoStageDetector` (``rpn_head`` and
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
