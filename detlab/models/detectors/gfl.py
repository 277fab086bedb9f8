"""GFL (Li et al., 2020): a single-stage detector whose head learns joint class-and-quality
scores and box sides as distributions (generalized focal losses)."""

from __future__ import annotations

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class GFL(SingleStageDetector):
    """GFL: backbone (e.g. ResNet), neck (FPN) and :class:`~detlab.models.heads.GFLHead`.

    Arguments as :class:`SingleStageDetector` (MMDetection's).
    """
