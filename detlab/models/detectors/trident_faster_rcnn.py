"""TridentNet's detector (MMDetection 2.28's ``TridentFasterRCNN``): Faster R-CNN on a
:class:`~detlab.models.backbones.trident_resnet.TridentResNet`, whose feature maps hold every
image once per branch (branch-major); the metas and the ground truth are repeated to match,
for the RPN and the RoI head alike, and the RoI head merges an image's branches at test time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.detectors.two_stage import FasterRCNN
from detlab.registry import MODELS
from detlab.structures import Batch, DetResult


@MODELS.register_module()
class TridentFasterRCNN(FasterRCNN):
    """Arguments as :class:`FasterRCNN`; the backbone and the RoI head must agree on
    ``num_branch`` and ``test_branch_idx``."""

    def __init__(self, backbone: Mapping | nn.Module, rpn_head: Mapping | nn.Module,
                 roi_head: Mapping | nn.Module, train_cfg: Mapping | None,
                 test_cfg: Mapping | None,
                 neck: Mapping | Sequence[Mapping] | nn.Module | None = None,
                 pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(backbone=backbone, neck=neck, rpn_head=rpn_head, roi_head=roi_head,
                         train_cfg=train_cfg, test_cfg=test_cfg, pretrained=pretrained,
                         init_cfg=init_cfg)
        for key in ("num_branch", "test_branch_idx"):
            ours, theirs = getattr(self.backbone, key, None), getattr(self.roi_head, key, None)
            if ours is None or ours != theirs:
                raise ConfigError(f"TridentFasterRCNN needs model.backbone.{key} ({ours!r}) "
                                  f"and model.roi_head.{key} ({theirs!r}) equal (a "
                                  f"TridentResNet backbone and a TridentRoIHead)")
        self.num_branch = self.backbone.num_branch
        self.test_branch_idx = self.backbone.test_branch_idx

    def _branches(self) -> int:
        """Branches the backbone runs in the current mode."""
        return self.num_branch if self.backbone.training or self.test_branch_idx == -1 else 1

    @staticmethod
    def _repeat(batch: Batch, times: int) -> Batch:
        return Batch(batch.images, list(batch.targets) * times, list(batch.metas) * times)

    def loss(self, batch: Batch, proposals: Sequence[torch.Tensor] | None = None
             ) -> dict[str, torch.Tensor]:
        """Faster R-CNN's losses over every (branch, image) pair, each image's ground truth
        repeated once per branch."""
        times = self._branches()
        if proposals is not None:
            proposals = list(proposals) * times
        return super().loss(self._repeat(batch, times), proposals)

    @torch.no_grad()
    def predict(self, batch: Batch, rescale: bool = True,
                proposals: Sequence[torch.Tensor] | None = None) -> list[DetResult]:
        """Detections of each image: the test branch's (or all branches', merged)."""
        times = self._branches()
        if proposals is not None:
            proposals = list(proposals) * times
        return super().predict(self._repeat(batch, times), rescale, proposals)
