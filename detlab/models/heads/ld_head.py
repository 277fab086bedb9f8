"""LD's head (Zheng et al., 2022, "Localization Distillation for Dense Object Detection"): GFL's
head, trained with one more loss that pulls each positive's box-side distributions towards a
teacher's.

Layers, targets and GFL's three losses are :class:`~detlab.models.heads.gfl_head.GFLHead`'s
(MMDetection 2.28's ``LDHead``). ``loss_ld`` (by default a KL divergence at temperature ``T``,
``KnowledgeDistillationKLDivLoss``) compares, for every positive anchor and each of its four
sides, the student's ``reg_max + 1`` bin logits with the teacher's at the same anchor, weighted
by the student's best class score and divided by 4 -- not by the sum of those weights, as
MMDetection leaves it.

The teacher's distributions (its raw regression maps, the same shape as the student's) come
from :class:`~detlab.models.detectors.kd_one_stage.KnowledgeDistillationSingleStageDetector`,
which runs the teacher and passes them as ``soft_targets``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.heads.gfl_head import (
    DFL,
    DISTANCE_CODER,
    GFL_ANCHORS,
    GFL_INIT,
    GIOU,
    GN,
    QFL,
    GFLHead,
    RawOutputs,
)
from detlab.models.heads.postprocess import levels_to_rows
from detlab.models.utils import frozen
from detlab.registry import MODELS

LD_LOSS = frozen(type="KnowledgeDistillationKLDivLoss", loss_weight=0.25, T=10)


@MODELS.register_module()
class LDHead(GFLHead):
    """GFL head with a localization distillation loss.

    Args:
        loss_ld: the distillation loss of each side's bins (default: KL divergence at
            temperature 10, weight 0.25).
        Others as :class:`~detlab.models.heads.gfl_head.GFLHead`.
    """

    def __init__(self, num_classes: int, in_channels: int,
                 loss_ld: Mapping | nn.Module = LD_LOSS, stacked_convs: int = 4,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = GN,
                 feat_channels: int = 256, anchor_generator: Mapping | Any = GFL_ANCHORS,
                 bbox_coder: Mapping | Any = DISTANCE_CODER, reg_max: int = 16,
                 loss_cls: Mapping | nn.Module = QFL, loss_bbox: Mapping | nn.Module = GIOU,
                 loss_dfl: Mapping | nn.Module = DFL, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = GFL_INIT) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         stacked_convs=stacked_convs, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                         feat_channels=feat_channels, anchor_generator=anchor_generator,
                         bbox_coder=bbox_coder, reg_max=reg_max, loss_cls=loss_cls,
                         loss_bbox=loss_bbox, loss_dfl=loss_dfl, train_cfg=train_cfg,
                         test_cfg=test_cfg, init_cfg=init_cfg)
        self.loss_ld = MODELS.build(loss_ld)

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping], metas: Sequence[Mapping],
             soft_targets: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """GFL's ``loss_cls``, ``loss_bbox`` and ``loss_dfl``, and ``loss_ld`` against the
        teacher's per-level ``(B, 4 * (R + 1), H, W)`` distribution logits ``soft_targets``."""
        if soft_targets is None:
            raise ConfigError("LDHead learns from a teacher's box distributions: pass "
                              "soft_targets (the teacher's regression maps), or use it in a "
                              "KnowledgeDistillationSingleStageDetector (model.type) with "
                              "model.teacher_config, which does")
        bins = 4 * (self.reg_max + 1)
        shapes = [tuple(p.shape) for p in raw[1]]
        if [tuple(s.shape) for s in soft_targets] != shapes:
            raise ValueError(f"LDHead: the teacher's regression maps "
                             f"{[tuple(s.shape) for s in soft_targets]} are not the shape of the "
                             f"student's {shapes}; the teacher needs the same reg_max, strides "
                             f"and levels (model.teacher_config)")
        cls_rows, reg_rows, anchors, strides, t = self.loss_rows(raw, targets, metas)
        losses = self.loss_by_targets(cls_rows, reg_rows, anchors, strides, t)
        soft_rows = levels_to_rows(list(soft_targets), bins).float()
        losses["loss_ld"] = self.distillation_loss(cls_rows, reg_rows, soft_rows, t.labels)
        return losses

    def distillation_loss(self, cls_rows: torch.Tensor, reg_rows: torch.Tensor,
                          soft_rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``loss_ld`` of the positives (``labels`` ``(B, A)`` in ``0..C-1``): each side's bins
        of ``reg_rows`` against those of ``soft_rows`` (both ``(B, A, 4 * (R + 1))``),
        weighted by the best class score of ``cls_rows``, divided by 4."""
        labels = labels.reshape(-1)
        pos = ((labels >= 0) & (labels < self.num_classes)).nonzero().squeeze(1)
        reg = reg_rows.reshape(-1, 4 * (self.reg_max + 1))
        if pos.numel() == 0:
            return reg.sum() * 0
        weight = cls_rows.reshape(-1, self.cls_out_channels)[pos].detach().sigmoid().max(1)[0]
        soft = soft_rows.reshape(-1, 4 * (self.reg_max + 1))[pos]
        return self.loss_ld(reg[pos].reshape(-1, self.reg_max + 1),
                            soft.reshape(-1, self.reg_max + 1),
                            weight=weight[:, None].expand(-1, 4).reshape(-1), avg_factor=4.0)
