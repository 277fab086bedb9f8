"""ATSS (Zhang et al., 2020): a single-stage detector whose anchors are assigned by adaptive
training sample selection."""

from __future__ import annotations

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class ATSS(SingleStageDetector):
    """ATSS: backbone (e.g. ResNet), neck (FPN) and
    :class:`~detlab.models.heads.atss_head.ATSSHead`.

    Arguments as :class:`SingleStageDetector` (MMDetection's).
    """
