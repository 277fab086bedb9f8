"""RepPoints (Yang et al., 2019): a single-stage detector of point sets with
:class:`~detlab.models.heads.RepPointsHead`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class RepPointsDetector(SingleStageDetector):
    """RepPoints: backbone (e.g. ResNet), neck (FPN) and
    :class:`~detlab.models.heads.RepPointsHead`.

    Arguments as :class:`SingleStageDetector`.
    """

    def __init__(self, backbone: Mapping | nn.Module, neck: Mapping | nn.Module | None,
                 bbox_head: Mapping | nn.Module, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None, pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(backbone=backbone, neck=neck, bbox_head=bbox_head, train_cfg=train_cfg,
                         test_cfg=test_cfg, pretrained=pretrained, init_cfg=init_cfg)
