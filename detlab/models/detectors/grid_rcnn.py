"""Grid R-CNN (Lu et al., 2019): a two-stage detector whose RoI head
(:class:`~detlab.models.roi_heads.grid_roi_head.GridRoIHead`) classifies the proposals and
places their boxes by grid points instead of regressing offsets. As MMDetection's, the
detector is a :class:`TwoStageDetector`; the config sets ``roi_head.grid_roi_extractor``,
``roi_head.grid_head`` and ``train_cfg.rcnn.pos_radius`` / ``max_num_grid``.
"""

from __future__ import annotations

from detlab.models.detectors.two_stage import ProposingTwoStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class GridRCNN(ProposingTwoStageDetector):
    """MMDetection's ``GridRCNN``. Arguments as :class:`TwoStageDetector` (``rpn_head`` and
    ``roi_head`` required)."""
