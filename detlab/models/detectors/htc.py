"""Hybrid Task Cascade (Chen et al., 2019; MMDetection 2.28's ``HybridTaskCascade``): a
Cascade Mask R-CNN whose RoI head is a
:class:`~detlab.models.roi_heads.htc_roi_head.HybridTaskCascadeRoIHead` -- interleaved box and
mask branches, mask information flow and, in the full model, a semantic segmentation branch
trained on the batch's ``semantic_seg`` maps (``LoadAnnotations(with_seg=True)`` and
``SegRescale(scale_factor=1 / 8)`` in the train pipeline; ``htc_without_semantic`` configs do
without). Its losses are Cascade R-CNN's plus ``loss_semantic_seg``.
"""

from __future__ import annotations

from detlab.models.detectors.cascade_rcnn import CascadeRCNN
from detlab.models.roi_heads.htc_roi_head import HybridTaskCascadeRoIHead  # noqa: F401
from detlab.registry import MODELS


@MODELS.register_module()
class HybridTaskCascade(CascadeRCNN):
    """MMDetection's ``HybridTaskCascade``: arguments as
    :class:`~detlab.models.detectors.cascade_rcnn.CascadeRCNN`."""

    @property
    def with_semantic(self) -> bool:
        """Whether the RoI head has a semantic segmentation branch."""
        return bool(getattr(self.roi_head, "with_semantic", False))
