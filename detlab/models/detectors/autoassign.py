"""AutoAssign (Zhu et al., 2020): a single-stage detector whose FCOS-like head learns which
points of each object are positive instead of following a fixed assignment rule."""

from __future__ import annotations

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class AutoAssign(SingleStageDetector):
    """AutoAssign: backbone (a caffe-style ResNet in MMDetection's config), neck (FPN) and
    :class:`~detlab.models.heads.autoassign_head.AutoAssignHead`.

    Arguments as :class:`SingleStageDetector` (MMDetection's).
    """
