"""AutoAssign (Zhu et al., 2020): a single-stage detector whose FCOS-like head learns which
points of each object are positive instead of following a fixed assignment rule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class AutoAssign(SingleStageDetector):
    """AutoAssign: backbone (a caffe-style ResNet in MMDetection's config), neck (FPN) and
    :class:`~detlab.models.heads.autoassign_head.AutoAssignHead`.

    Arguments as :class:`SingleStageDetector`.
    """

    def __init__(self, backbone: Mapping | nn.Module, neck: Mapping | nn.Module | None,
                 bbox_head: Mapping | nn.Module, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None, pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(backbone=backbone, neck=neck, bbox_head=bbox_head, train_cfg=train_cfg,
                         test_cfg=test_cfg, pretrained=pretrained, init_cfg=init_cfg)
