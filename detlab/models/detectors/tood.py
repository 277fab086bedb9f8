"""TOOD (Feng et al., 2021): a single-stage detector with a task-aligned head, trained with ATSS
assignment for its first epochs and task-aligned assignment after them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class TOOD(SingleStageDetector):
    """TOOD: backbone (e.g. ResNet), neck (FPN) and
    :class:`~detlab.models.heads.tood_head.TOODHead`.

    Arguments as :class:`SingleStageDetector`. ``SetEpochInfoHook`` (``custom_hooks``) tells it
    the epoch through :meth:`set_epoch`.
    """

    def __init__(self, backbone: Mapping | nn.Module, neck: Mapping | nn.Module | None,
                 bbox_head: Mapping | nn.Module, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None, pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(backbone=backbone, neck=neck, bbox_head=bbox_head, train_cfg=train_cfg,
                         test_cfg=test_cfg, pretrained=pretrained, init_cfg=init_cfg)

    def set_epoch(self, epoch: int) -> None:
        """The 0-based training epoch, handed to the head (it picks the assignment)."""
        self.bbox_head.set_epoch(epoch)
