"""Mask heads of two-stage detectors: per-RoI mask prediction, its targets and the pasting of
predicted masks into the image."""

from detlab.models.roi_heads.mask_heads.fcn_mask_head import (
    FCNMaskHead,
    mask_targets,
    paste_masks,
)

__all__ = ["FCNMaskHead", "mask_targets", "paste_masks"]

from detlab.models.roi_heads.mask_heads.maskiou_head import MaskIoUHead  # noqa: E402

__all__ += ["MaskIoUHead"]

from detlab.models.roi_heads.mask_heads.coarse_mask_head import CoarseMaskHead  # noqa: E402
from detlab.models.roi_heads.mask_heads.mask_point_head import MaskPointHead  # noqa: E402

__all__ += ["CoarseMaskHead", "MaskPointHead"]

from detlab.models.roi_heads.mask_heads.fused_semantic_head import (  # noqa: E402
    FusedSemanticHead,
)
from detlab.models.roi_heads.mask_heads.htc_mask_head import HTCMaskHead  # noqa: E402

__all__ += ["FusedSemanticHead", "HTCMaskHead"]

from detlab.models.roi_heads.mask_heads.scnet_heads import (  # noqa: E402
    FeatureRelayHead,
    GlobalContextHead,
    SCNetMaskHead,
    SCNetSemanticHead,
)

__all__ += ["FeatureRelayHead", "GlobalContextHead", "SCNetMaskHead", "SCNetSemanticHead"]
