"""RepPoints (Yang et al., 2019): a single-stage detector of point sets with
:class:`~detlab.models.heads.RepPointsHead`."""

from __future__ import annotations

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class RepPointsDetector(SingleStageDetector):
    """RepPoints: backbone (e.g. ResNet), neck (FPN) and
    :class:`~detlab.models.heads.RepPointsHead`.

    Arguments as :class:`SingleStageDetector` (MMDetection's).
    """
