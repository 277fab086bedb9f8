"""FCOS (Tian et al., 2019): a single-stage detector with an anchor-free head that regresses
the distances from each point to the sides of its box."""

from __future__ import annotations

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class FCOS(SingleStageDetector):
    """FCOS: backbone (e.g. a caffe-style ResNet), neck (FPN) and
    :class:`~detlab.models.heads.fcos_head.FCOSHead`.

    Arguments as :class:`SingleStageDetector` (MMDetection's).
    """
