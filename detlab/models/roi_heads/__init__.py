"""RoI heads: the second stage of two-stage detectors (Faster / Mask R-CNN ...).

- :class:`BaseRoIHead` -- the contract: ``loss(feats, proposals, targets, metas) -> dict``
  and ``predict(feats, proposals, metas, rescale) -> list[DetResult]``, where ``proposals``
  holds one ``(N, 4)`` or ``(N, 5)`` (with scores) xyxy tensor per image, in input pixels.
- :class:`StandardRoIHead` -- assignment and sampling of the proposals (``train_cfg.rcnn``),
  a RoI extractor and a box head (plus, optionally, a mask branch), MMDetection's overridable
  pieces (``_bbox_forward`` ...) kept.
- RoI extractors (:mod:`~detlab.models.roi_heads.roi_extractors`): ``SingleRoIExtractor``
  (RoIAlign / RoIPool from ``torchvision.ops``, FPN level mapping by ``finest_scale``) and
  ``GenericRoIExtractor`` (every level, summed or concatenated; GRoIE).
- Shared heads (:mod:`~detlab.models.roi_heads.shared_heads`): ``ResLayer`` (ResNet's last
  stage on the pooled RoIs, C4 models).
- Box heads (:mod:`~detlab.models.roi_heads.bbox_heads`): ``BBoxHead``, ``ConvFCBBoxHead``,
  ``Shared2FCBBoxHead``, ``Shared4Conv1FCBBoxHead``, ``DoubleConvFCBBoxHead``.
- :class:`DoubleHeadRoIHead` -- Double-Head R-CNN: ``_bbox_forward`` overridden to pool the
  regression RoIs enlarged (the way MMDetection's tutorial writes a new RoI head).
"""

from detlab.models.roi_heads.base_roi_head import BaseRoIHead
from detlab.models.roi_heads.bbox_heads import (
    BBoxHead,
    ConvFCBBoxHead,
    DoubleConvFCBBoxHead,
    Shared2FCBBoxHead,
    Shared4Conv1FCBBoxHead,
)
from detlab.models.roi_heads.double_roi_head import DoubleHeadRoIHead
from detlab.models.roi_heads.roi_extractors import (
    GenericRoIExtractor,
    SingleRoIExtractor,
    boxes_to_rois,
)
from detlab.models.roi_heads.shared_heads import ResLayer
from detlab.models.roi_heads.standard_roi_head import StandardRoIHead, mask_heads_available

__all__ = ["BBoxHead", "BaseRoIHead", "ConvFCBBoxHead", "DoubleConvFCBBoxHead",
           "DoubleHeadRoIHead", "GenericRoIExtractor", "ResLayer",
           "Shared2FCBBoxHead", "Shared4Conv1FCBBoxHead", "SingleRoIExtractor",
           "StandardRoIHead", "boxes_to_rois"]

if mask_heads_available():  # the mask branch's heads register themselves on import
    from detlab.models.roi_heads import mask_heads  # noqa: F401

from detlab.models.roi_heads.mask_scoring_roi_head import MaskScoringRoIHead  # noqa: E402

__all__ += ["MaskScoringRoIHead"]

from detlab.models.roi_heads.dynamic_roi_head import DynamicRoIHead  # noqa: E402
from detlab.models.roi_heads.pisa_roi_head import PISARoIHead  # noqa: E402

__all__ += ["DynamicRoIHead", "PISARoIHead"]

from detlab.models.roi_heads.grid_head import GridHead  # noqa: E402
from detlab.models.roi_heads.grid_roi_head import GridRoIHead  # noqa: E402

__all__ += ["GridHead", "GridRoIHead"]

from detlab.models.roi_heads.point_rend_roi_head import PointRendRoIHead  # noqa: E402
from detlab.models.roi_heads.point_sample import SimpleRoIAlign  # noqa: E402

__all__ += ["PointRendRoIHead", "SimpleRoIAlign"]

from detlab.models.roi_heads.htc_roi_head import HybridTaskCascadeRoIHead  # noqa: E402

__all__ += ["HybridTaskCascadeRoIHead"]

from detlab.models.roi_heads.trident_roi_head import TridentRoIHead  # noqa: E402

__all__ += ["TridentRoIHead"]

from detlab.models.roi_heads.scnet_roi_head import SCNetBBoxHead, SCNetRoIHead  # noqa: E402

__all__ += ["SCNetBBoxHead", "SCNetRoIHead"]
