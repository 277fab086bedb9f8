"""FoveaBox (Kong et al., 2019): a single-stage anchor-free detector with
:class:`~detlab.models.heads.FoveaHead`."""

from __future__ import annotations

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class FOVEA(SingleStageDetector):
    """FoveaBox: backbone (e.g. ResNet), neck (FPN) and :class:`~detlab.models.FoveaHead`.

    Arguments as :class:`SingleStageDetector` (MMDetection's).
    """
