"""PAA (Kim & Lee, 2020): a single-stage detector whose anchors are assigned probabilistically,
by a Gaussian mixture fitted to their losses."""

from __future__ import annotations

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class PAA(SingleStageDetector):
    """PAA: backbone (e.g. ResNet), neck (FPN) and
    :class:`~detlab.models.heads.paa_head.PAAHead`.

    Arguments as :class:`SingleStageDetector` (MMDetection's).
    """
