"""RetinaNet (Lin et al., 2017): a single-stage detector with a focal-loss anchor head."""

from __future__ import annotations

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class RetinaNet(SingleStageDetector):
    """RetinaNet: backbone (e.g. ResNet), neck (FPN) and :class:`~detlab.models.RetinaHead`.

    Arguments as :class:`SingleStageDetector` (MMDetection's).
    """
