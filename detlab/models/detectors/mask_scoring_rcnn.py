"""Mask Scoring R-CNN (Huang et al., 2019): Mask R-CNN whose RoI head
(:class:`~detlab.models.roi_heads.mask_scoring_roi_head.MaskScoringRoIHead`) also predicts the
IoU of each mask with its ground truth; a detection's mask score is its class score times that
IoU (``DetResult.mask_scores``).

As MMDetection's, the detector is a :class:`TwoStageDetector`; the config adds
``roi_head.mask_iou_head`` and ``train_cfg.rcnn.mask_thr_binary``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from detlab.models.detectors.two_stage import TwoStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class MaskScoringRCNN(TwoStageDetector):
    """MMDetection's ``MaskScoringRCNN``. Arguments as :class:`TwoStageDetector`
    (``rpn_head`` and ``roi_head`` required)."""

    def __init__(self, backbone: Mapping | nn.Module, rpn_head: Mapping | nn.Module,
                 roi_head: Mapping | nn.Module, train_cfg: Mapping | None,
                 test_cfg: Mapping | None,
                 neck: Mapping | Sequence[Mapping] | nn.Module | None = None,
                 pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(backbone=backbone, neck=neck, rpn_head=rpn_head, roi_head=roi_head,
                         train_cfg=train_cfg, test_cfg=test_cfg, pretrained=pretrained,
                         init_cfg=init_cfg)
