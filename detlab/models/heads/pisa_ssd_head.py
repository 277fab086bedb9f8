"""PISA's SSD head (Cao et al., 2020, "Prime Sample Attention in Object Detection"): SSD's
layers, targets and hard negative mining, with the positives' classification weights set by
ISR-P (scored by a plain softmax cross-entropy) and a classification-aware regression loss
(``loss_carl``, smooth L1 with beta 1) added.

``train_cfg.isr`` / ``train_cfg.carl`` (``k``, ``bias`` each) turn them on. See
:mod:`detlab.models.losses.pisa_loss`. As MMDetection 2.28's ``PISASSDHead``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F

from detlab.models.heads.pisa_retinanet_head import (
    PISA_TRAIN_CFG_KEYS,
    num_total_pos,
    positives_objects,
)
from detlab.models.heads.postprocess import levels_to_rows
from detlab.models.heads.ssd_head import SSDHead
from detlab.models.losses import SmoothL1Loss
from detlab.models.losses.pisa_loss import carl_loss, isr_p
from detlab.registry import MODELS


def softmax_cross_entropy(pred: torch.Tensor, target: torch.Tensor,
                          reduction_override: str | None = None) -> torch.Tensor:
    """``(N,)`` softmax cross-entropy (how SSD's ISR-P scores its positives)."""
    return F.cross_entropy(pred, target, reduction=reduction_override or "mean")


@MODELS.register_module()
class PISASSDHead(SSDHead):
    """SSD head with PISA's ISR-P and CARL. Arguments as
    :class:`~detlab.models.heads.ssd_head.SSDHead`; ``train_cfg`` also takes ``isr`` and
    ``carl`` (``dict(k=..., bias=...)`` each)."""

    train_cfg_keys: ClassVar[tuple[str, ...]] = (*SSDHead.train_cfg_keys, *PISA_TRAIN_CFG_KEYS)

    def loss(self, raw: tuple[list[torch.Tensor], list[torch.Tensor]],
             targets: Sequence[Mapping], metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """SSD's ``loss_cls`` (ISR-P weights at the positives) and ``loss_bbox`` and, with
        ``train_cfg.carl``, ``loss_carl``."""
        cls_scores, bbox_preds = raw[0], raw[1]
        priors = self.get_priors(cls_scores, metas)
        t = self.get_targets(priors, targets, metas)
        cls_rows = levels_to_rows(cls_scores, self.cls_out_channels).float()
        reg_rows = levels_to_rows(bbox_preds, 4).float()
        cls, reg = cls_rows.reshape(-1, self.cls_out_channels), reg_rows.reshape(-1, 4)
        labels, bbox_targets = t.labels.reshape(-1), t.bbox_targets.reshape(-1, 4)
        isr = self.train_cfg.get("isr")
        if isr is not None:
            anchors = priors.priors.repeat(len(cls_rows), 1)
            weights = isr_p(cls, reg, labels, t.label_weights.reshape(-1), bbox_targets,
                            anchors, positives_objects(t), softmax_cross_entropy,
                            self.bbox_coder, num_classes=self.num_classes, **isr)
            t = dataclasses.replace(t, label_weights=weights.view_as(t.label_weights))
        losses = self.loss_by_targets(cls_rows, reg_rows, priors.priors, t)
        carl = self.train_cfg.get("carl")
        if carl is not None:
            losses["loss_carl"] = carl_loss(cls, labels, reg, bbox_targets,
                                            SmoothL1Loss(beta=1.0), avg_factor=num_total_pos(t),
                                            num_classes=self.num_classes, **carl)
        return losses
