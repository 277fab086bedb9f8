"""PISA's RetinaNet head (Cao et al., 2020, "Prime Sample Attention in Object Detection"):
RetinaNet's layers and targets, with the positives' classification weights set by ISR-P and a
classification-aware regression loss (``loss_carl``) added.

``train_cfg.isr`` (``k``, ``bias``) turns ISR-P on, ``train_cfg.carl`` (``k``, ``bias``) CARL;
without them the head trains as :class:`~detlab.models.heads.retina_head.RetinaHead`. See
:mod:`detlab.models.losses.pisa_loss` for both. As MMDetection 2.28's ``PISARetinaHead``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from detlab.models.heads.anchor_head import AnchorTargets
from detlab.models.heads.postprocess import levels_to_rows
from detlab.models.heads.retina_head import RetinaHead
from detlab.models.losses.pisa_loss import carl_loss, isr_p
from detlab.registry import MODELS

PISA_TRAIN_CFG_KEYS = ("isr", "carl")


def positives_objects(t: AnchorTargets) -> list[torch.Tensor | None]:
    """Per image, the object index of each positive anchor (in anchor order)."""
    return [None if s is None else s.pos_assigned_gt_inds for s in t.sampling_results]


def num_total_pos(t: AnchorTargets) -> float:
    """MMDetection's ``num_total_pos``: the positives of each image, at least one each."""
    return float(sum(max(n, 1) for n in t.num_pos))


@MODELS.register_module()
class PISARetinaHead(RetinaHead):
    """RetinaNet head with PISA's ISR-P and CARL. Arguments as
    :class:`~detlab.models.heads.retina_head.RetinaHead`; ``train_cfg`` also takes ``isr`` and
    ``carl`` (``dict(k=..., bias=...)`` each)."""

    train_cfg_keys: ClassVar[tuple[str, ...]] = (*RetinaHead.train_cfg_keys,
                                                 *PISA_TRAIN_CFG_KEYS)

    def loss(self, raw: tuple[list[torch.Tensor], list[torch.Tensor]],
             targets: Sequence[Mapping], metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls`` (ISR-P weights at the positives), ``loss_bbox`` and, with
        ``train_cfg.carl``, ``loss_carl``."""
        cls_scores, bbox_preds = raw[0], raw[1]
        priors = self.get_priors(cls_scores, metas)
        cls_rows = levels_to_rows(cls_scores, self.cls_out_channels)  # (B, A, C)
        reg_rows = levels_to_rows(bbox_preds, 4)  # (B, A, 4)
        t = self.get_targets(priors, targets, metas, cls_rows=cls_rows, reg_rows=reg_rows)
        cls, reg = cls_rows.reshape(-1, self.cls_out_channels), reg_rows.reshape(-1, 4)
        labels, bbox_targets = t.labels.reshape(-1), t.bbox_targets.reshape(-1, 4)
        isr = self.train_cfg.get("isr")
        if isr is not None:
            anchors = priors.priors.repeat(len(cls_rows), 1)
            weights = isr_p(cls, reg, labels, t.label_weights.reshape(-1), bbox_targets,
                            anchors, positives_objects(t), self.loss_cls, self.bbox_coder,
                            num_classes=self.num_classes, **isr)
            t = dataclasses.replace(t, label_weights=weights.view_as(t.label_weights))
        losses = self.loss_by_targets(cls_rows, reg_rows, priors.priors, t)
        carl = self.train_cfg.get("carl")
        if carl is not None:
            losses["loss_carl"] = carl_loss(cls, labels, reg, bbox_targets, self.loss_bbox,
                                            avg_factor=num_total_pos(t), sigmoid=True,
                                            num_classes=self.num_classes, **carl)
        return losses
