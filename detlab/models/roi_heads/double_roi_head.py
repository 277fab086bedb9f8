"""Double-Head R-CNN's RoI head (Wu et al., 2020; MMDetection 2.28's ``DoubleHeadRoIHead``):
the box head's regression branch reads RoIs enlarged by ``reg_roi_scale_factor``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from detlab.models.roi_heads.standard_roi_head import StandardRoIHead
from detlab.registry import MODELS


@MODELS.register_module()
class DoubleHeadRoIHead(StandardRoIHead):
    """A :class:`StandardRoIHead` whose ``_bbox_forward`` pools each RoI twice -- as it is for
    classification, enlarged by ``reg_roi_scale_factor`` about its center for regression --
    and gives both to a two-input box head (:class:`DoubleConvFCBBoxHead`).

    Args:
        reg_roi_scale_factor: the regression RoIs' enlargement (1.3 in the zoo).
        **kwargs: :class:`StandardRoIHead`'s arguments.
    """

    def __init__(self, reg_roi_scale_factor: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reg_roi_scale_factor = reg_roi_scale_factor

    def _bbox_forward(self, x: Sequence[torch.Tensor], rois: torch.Tensor) -> dict[str, Any]:
        """Both poolings of ``(K, 5)`` RoIs through the box head: ``dict(cls_score,
        bbox_pred, bbox_feats)`` (the classification features)."""
        extractor = self.bbox_roi_extractor
        cls_feats = extractor(x[:extractor.num_inputs], rois)
        reg_feats = extractor(x[:extractor.num_inputs], rois,
                              roi_scale_factor=self.reg_roi_scale_factor)
        if self.with_shared_head:
            cls_feats, reg_feats = self.shared_head(cls_feats), self.shared_head(reg_feats)
        cls_score, bbox_pred = self.bbox_head(cls_feats, reg_feats)
        return dict(cls_score=cls_score, bbox_pred=bbox_pred, bbox_feats=cls_feats)
