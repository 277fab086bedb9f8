"""DDOD (Chen et al., 2021): a single-stage detector that disentangles the label assignment,
the features and the pyramid supervision of classification and box regression."""

from __future__ import annotations

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class DDOD(SingleStageDetector):
    """DDOD: backbone (e.g. ResNet), neck (FPN) and
    :class:`~detlab.models.heads.ddod_head.DDODHead`.

    Arguments as :class:`SingleStageDetector` (MMDetection's).
    """
