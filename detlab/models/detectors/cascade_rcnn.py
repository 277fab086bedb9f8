"""Cascade R-CNN (Cai and Vasconcelos, 2018) and Cascade Mask R-CNN: a two-stage detector
whose RoI head is a :class:`~detlab.models.roi_heads.cascade_roi_head.CascadeRoIHead`
(MMDetection 2.28's ``CascadeRCNN``).

Nothing differs from :class:`~detlab.models.detectors.two_stage.TwoStageDetector` but the
config: ``roi_head`` has ``num_stages``, ``stage_loss_weights`` and one box head (and mask
head) per stage, and ``train_cfg.rcnn`` is a list with one assigner and sampler per stage (IoU
thresholds 0.5, 0.6, 0.7 in the zoo). Its losses are named per stage (``s0.loss_cls``,
``s1.loss_bbox`` ...); a Cascade Mask R-CNN's batch needs ``masks`` in its targets, as Mask
R-CNN's does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from detlab.models.detectors.two_stage import TwoStageDetector
from detlab.models.roi_heads.cascade_roi_head import CascadeRoIHead  # noqa: F401  (registers)
from detlab.registry import MODELS


@MODELS.register_module()
class CascadeRCNN(TwoStageDetector):
    """MMDetection's ``CascadeRCNN``: arguments as :class:`TwoStageDetector`, every one
    optional as in MMDetection (a config without ``rpn_head`` takes its proposals from the
    batch)."""

    def __init__(self, backbone: Mapping | nn.Module,
                 neck: Mapping | Sequence[Mapping] | nn.Module | None = None,
                 rpn_head: Mapping | nn.Module | None = None,
                 roi_head: Mapping | nn.Module | None = None,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(backbone=backbone, neck=neck, rpn_head=rpn_head, roi_head=roi_head,
                         train_cfg=train_cfg, test_cfg=test_cfg, pretrained=pretrained,
                         init_cfg=init_cfg)
