"""R-CNN box heads: per-RoI class scores and box deltas, their targets, loss and detections."""

from detlab.models.roi_heads.bbox_heads.bbox_head import BBoxHead
from detlab.models.roi_heads.bbox_heads.convfc_bbox_head import (
    ConvFCBBoxHead,
    Shared2FCBBoxHead,
    Shared4Conv1FCBBoxHead,
)
from detlab.models.roi_heads.bbox_heads.double_bbox_head import DoubleConvFCBBoxHead
from detlab.models.roi_heads.bbox_heads.sabl_head import SABLHead

__all__ = ["BBoxHead", "ConvFCBBoxHead", "DoubleConvFCBBoxHead", "Shared2FCBBoxHead",
           "Shared4Conv1FCBBoxHead", "SABLHead"]
