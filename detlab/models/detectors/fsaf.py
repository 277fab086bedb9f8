"""FSAF (Zhu et al., 2019): a single-stage detector whose objects each train the pyramid level
where their loss is smallest (feature selective anchor-free modules)."""

from __future__ import annotations

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class FSAF(SingleStageDetector):
    """FSAF: backbone (e.g. ResNet), neck (FPN) and
    :class:`~detlab.models.heads.fsaf_head.FSAFHead`.

    Arguments as :class:`SingleStageDetector` (MMDetection's).
    """
