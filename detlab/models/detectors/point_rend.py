"""PointRend (Kirillov et al., 2020): Mask R-CNN whose masks are predicted coarse (7 x 7) and
refined point by point (:class:`~detlab.models.roi_heads.point_rend_roi_head.PointRendRoIHead`).
As MMDetection's, the detector is a :class:`TwoStageDetector`.
"""

from __future__ import annotations

from detlab.models.detectors.two_stage import ProposingTwoStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class PointRend(ProposingTwoStageDetector):
    """MMDetection's ``PointRend``. Arguments as :class:`TwoStageDetector` (``rpn_head`` and
    ``roi_head`` required)."""
