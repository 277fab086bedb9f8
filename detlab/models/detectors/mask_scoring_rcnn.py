"""Mask Scoring R-CNN (Huang et al., 2019): Mask R-CNN whose RoI head
(:class:`~detlab.models.roi_heads.mask_scoring_roi_head.MaskScoringRoIHead`) also predicts the
IoU of each mask with its ground truth; a detection's mask score is its class score times that
IoU (``DetResult.mask_scores``).

As MMDetection's, the detector is a :class:`TwoStageDetector`; the config adds
``roi_head.mask_iou_head`` and ``train_cfg.rcnn.mask_thr_binary``.
"""

from __future__ import annotations

from detlab.models.detectors.two_stage import ProposingTwoStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class MaskScoringRCNN(ProposingTwoStageDetector):
    """MMDetection's ``MaskScoringRCNN``. Arguments as :class:`TwoStageDetector`
    (``rpn_head`` and ``roi_head`` required)."""
