"""SCNet (Vu et al., 2021; MMDetection 2.28's ``SCNet``): a Cascade R-CNN whose RoI head is an
:class:`~detlab.models.roi_heads.scnet_roi_head.SCNetRoIHead` -- three box stages, one mask
head fed with relayed box features, semantic and global-context features. Its batch needs
``masks`` and, with the semantic branch (the zoo's), ``semantic_seg`` maps in its targets, as
Hybrid Task Cascade's.
"""

from __future__ import annotations

from detlab.models.detectors.htc import HybridTaskCascade
from detlab.models.roi_heads.scnet_roi_head import SCNetRoIHead  # noqa: F401  (registers)
from detlab.registry import MODELS


@MODELS.register_module()
class SCNet(HybridTaskCascade):
    """MMDetection's ``SCNet`` (a ``HybridTaskCascade`` there too): arguments as
    :class:`~detlab.models.detectors.cascade_rcnn.CascadeRCNN`."""
