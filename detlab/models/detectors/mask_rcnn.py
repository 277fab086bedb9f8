"""Mask R-CNN (He et al., 2017): Faster R-CNN with a mask branch in its RoI head.

Nothing differs from :class:`~detlab.models.detectors.two_stage.TwoStageDetector` but the
config: ``roi_head`` (a ``StandardRoIHead``) gets ``mask_roi_extractor`` (RoIAlign to 14 x 14)
and ``mask_head`` (``FCNMaskHead``, 28 x 28 masks); ``train_cfg.rcnn.mask_size`` is the side of
the mask targets and ``test_cfg.rcnn.mask_thr_binary`` the probability threshold of the pasted
masks. The batch's targets need ``masks`` (``LoadAnnotations(with_mask=True)`` and
``'gt_masks'`` in ``Collect``), and each ``DetResult`` it predicts has ``masks`` of the original
image's size -- what ``evaluation = dict(metric=['bbox', 'segm'])`` scores.
"""

from __future__ import annotations

from detlab.models.detectors.two_stage import ProposingTwoStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class MaskRCNN(ProposingTwoStageDetector):
    """MMDetection's ``MaskRCNN``: a two-stage detector whose RoI head segments too. Arguments
    as :class:`TwoStageDetector` (``rpn_head`` and ``roi_head`` required)."""
