"""LAD's head (Nguyen et al., 2022, "Improving Object Detection by Label Assignment
Distillation"): PAA's head, trained on the labels a teacher's PAA assignment gives.

The teacher (a PAA head of the same anchors, :class:`~detlab.models.detectors.lad.LAD`) runs
:meth:`LADHead.label_assignment` on its own outputs: PAA's first assignment, the candidate
losses and the Gaussian-mixture reassignment (:class:`~detlab.models.heads.paa_head.PAAHead`).
The student's losses then follow MMDetection 2.28's ``LADHead.loss``, which differs from PAA's:
focal classification divided by the positives (at least one per image), and the box loss of the
decoded positives and the IoU branch's binary cross-entropy both divided by the number of
positives (PAA weights the box loss by the IoU instead).

Layers and prediction are PAA's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from detlab.models.heads.paa_head import PAAAssignment, PAAHead, RawOutputs, aligned_iou
from detlab.models.heads.postprocess import levels_to_rows
from detlab.registry import MODELS


@MODELS.register_module()
class LADHead(PAAHead):
    """PAA head trained on a teacher's label assignment. Arguments as
    :class:`~detlab.models.heads.paa_head.PAAHead`; ``test_cfg`` may also hold
    ``score_voting`` (the zoo's LAD configs do), which is ignored as MMDetection ignores it:
    ``bbox_head.score_voting`` decides."""

    test_cfg_keys: ClassVar[tuple[str, ...]] = (*PAAHead.test_cfg_keys, "score_voting")

    def label_assignment(self, raw: RawOutputs, targets: Sequence[Mapping],
                         metas: Sequence[Mapping]) -> PAAAssignment:
        """PAA's assignment by these raw outputs (the teacher's, in LAD), detached."""
        with torch.no_grad():
            return self.reassigned_targets(raw, targets, metas)

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping], metas: Sequence[Mapping],
             assignment: PAAAssignment | None = None) -> dict[str, torch.Tensor]:
        """``loss_cls``, ``loss_bbox`` and ``loss_iou`` of the raw outputs on the teacher's
        ``assignment`` (:meth:`label_assignment` of the teacher's head); without one, on the
        head's own assignment (the head is then its own teacher)."""
        if assignment is None:
            assignment = self.label_assignment(raw, targets, metas)
        cls_scores, bbox_preds, iou_preds = raw
        num_images = cls_scores[0].shape[0]
        cls = levels_to_rows(cls_scores, self.cls_out_channels).float().reshape(
            -1, self.cls_out_channels)
        reg = levels_to_rows(bbox_preds, 4).float().reshape(-1, 4)
        ious = levels_to_rows(iou_preds, 1).float().reshape(-1, 1)
        labels = assignment.labels.reshape(-1)
        num_pos = assignment.num_pos
        loss_cls = self.loss_cls(cls, labels, assignment.label_weights.reshape(-1),
                                 avg_factor=max(num_pos, num_images))
        if num_pos == 0:
            return dict(loss_cls=loss_cls, loss_bbox=reg.sum() * 0, loss_iou=ious.sum() * 0)
        pos = torch.nonzero((labels >= 0) & (labels < self.num_classes)).squeeze(1)
        pos_anchors = assignment.anchors.repeat(num_images, 1)[pos]
        decoded = self.decode_boxes(pos_anchors, reg[pos])
        pos_targets = assignment.bbox_targets.reshape(-1, 4)[pos]
        iou_target = aligned_iou(decoded.detach(), pos_targets)
        loss_iou = self.loss_centerness(ious[pos], iou_target.unsqueeze(-1), avg_factor=num_pos)
        loss_bbox = self.loss_bbox(decoded, pos_targets, avg_factor=num_pos)
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_iou=loss_iou)
