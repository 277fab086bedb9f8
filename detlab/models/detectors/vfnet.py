"""VarifocalNet (Zhang et al., 2021): a single-stage detector whose head scores each point by
the IoU its refined box is expected to reach."""

from __future__ import annotations

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class VFNet(SingleStageDetector):
    """VFNet: backbone (ResNet), neck (FPN) and
    :class:`~detlab.models.heads.vfnet_head.VFNetHead`.

    Arguments as :class:`SingleStageDetector` (MMDetection's).
    """
