"""The base of anchor-based dense heads (MMDetection 2.x's ``AnchorHead``): anchors from
``anchor_generator``, targets through ``train_cfg.assigner`` and the sampler, and the
classification + box regression loss.

A subclass builds its layers and defines ``forward_single``; post-processing comes from
:class:`~detlab.models.heads.base_dense_head.BaseDenseHead`. The steps are separate:
:meth:`BaseDenseHead.get_priors` (anchors), :meth:`AnchorHead.get_targets` (assignment),
:meth:`AnchorHead.loss_by_targets` (loss) and :meth:`BaseDenseHead.predict`.

Shapes: ``B`` images, ``A`` anchors of all levels of one image, ``C`` classification outputs.
Raw maps are per level ``(B, A_l * C, H_l, W_l)`` and ``(B, A_l * 4, H_l, W_l)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.anchors import anchor_inside_flags
from detlab.models.assigners import SamplingResult
from detlab.models.heads.base_dense_head import BaseDenseHead, DensePriors, GroundTruth
from detlab.models.heads.postprocess import class_probabilities, levels_to_rows

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor]]


@dataclass
class AnchorTargets:
    """Training targets of a batch.

    Attributes:
        labels: ``(B, A)`` int64, ``num_classes`` for background.
        label_weights: ``(B, A)``; 0 for ignored and invalid anchors.
        bbox_targets: ``(B, A, 4)`` encoded deltas (decoded xyxy boxes with
            ``reg_decoded_bbox``); zero except at positives.
        bbox_weights: ``(B, A, 4)``; 1 at positives.
        num_pos, num_neg: per image.
        avg_factor: what the summed losses are divided by (MMDetection: the number of positives,
            at least 1 per image; plus negatives when sampling).
        sampling_results: per image, the sampled anchors (indices into the image's anchors
            inside the image), or None for an image without any.
    """

    labels: torch.Tensor
    label_weights: torch.Tensor
    bbox_targets: torch.Tensor
    bbox_weights: torch.Tensor
    num_pos: list[int]
    num_neg: list[int]
    avg_factor: float
    sampling_results: list[SamplingResult | None]


class AnchorHead(BaseDenseHead):
    """Shared machinery of anchor-based dense heads (not a head by itself: subclasses add
    layers and ``forward_single``).

    Args:
        num_classes: object classes (background excluded).
        in_channels: channels of the input feature maps.
        feat_channels: channels of the hidden convs.
        anchor_generator: anchor generator (config or object with ``grid_priors``,
            ``valid_flags``, ``num_base_priors``, ``num_levels``); kept as
            :attr:`prior_generator`.
        bbox_coder: box coder (config or object with ``encode`` / ``decode``).
        reg_decoded_bbox: regress decoded xyxy boxes (for IoU-type losses) instead of deltas.
        loss_cls, loss_bbox: losses (config or module).
        train_cfg: ``assigner``, ``sampler``, ``allowed_border``, ``pos_weight``, ``debug``.
        test_cfg: ``nms_pre``, ``score_thr``, ``nms``, ``min_bbox_size``, ``max_per_img``.
        init_cfg: weight initialization (see :meth:`BaseDenseHead.init_weights`).
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int,
                 anchor_generator: Mapping | Any, bbox_coder: Mapping | Any,
                 reg_decoded_bbox: bool, loss_cls: Mapping | nn.Module,
                 loss_bbox: Mapping | nn.Module, train_cfg: Mapping | None,
                 test_cfg: Mapping | None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         prior_generator=anchor_generator, bbox_coder=bbox_coder,
                         loss_cls=loss_cls, loss_bbox=loss_bbox, train_cfg=train_cfg,
                         test_cfg=test_cfg, init_cfg=init_cfg)
        self.feat_channels, self.reg_decoded_bbox = feat_channels, reg_decoded_bbox
        if train_cfg is not None and self.assigner is None:
            raise ConfigError("model.train_cfg needs an assigner, e.g. assigner=dict("
                              "type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4)")

    @property
    def anchor_generator(self) -> Any:
        """MMDetection's older name of :attr:`prior_generator`."""
        return self.prior_generator

    # ---- targets -----------------------------------------------------------------------------

    @torch.no_grad()
    def assigner_predictions(self, cls_rows: torch.Tensor, reg_rows: torch.Tensor,
                             anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the assigner may look at, detached: ``(N, C)`` class probabilities and
        ``(N, 4)`` xyxy boxes, from ``(N, C)`` logits, ``(N, 4)`` deltas and ``(N, 4)``
        anchors."""
        boxes = self.decode_boxes(anchors, reg_rows.float())
        return class_probabilities(cls_rows.float(), self.use_sigmoid_cls), boxes

    def get_targets(self, priors: DensePriors, targets: Sequence[Mapping],
                    metas: Sequence[Mapping], cls_rows: torch.Tensor | None = None,
                    reg_rows: torch.Tensor | None = None) -> AnchorTargets:
        """Assign the anchors of each image (valid in ``priors.valid``) to its ``targets``
        (``boxes`` ``(n, 4)`` xyxy, ``labels`` ``(n,)``, ``boxes_ignore``). With the
        ``(B, A, C)`` logits and ``(B, A, 4)`` deltas, the assigner also gets the predicted
        probabilities and boxes of the anchors it assigns (computed image by image)."""
        self.check_trainable()
        num_images = len(priors.valid)
        gts = self.ground_truths(targets, metas, num_images, priors.priors.device)
        per_image = [self.targets_per_image(
            priors.priors, priors.valid[i], priors.num_level, gts[i], metas[i],
            None if cls_rows is None else cls_rows[i],
            None if reg_rows is None else reg_rows[i]) for i in range(num_images)]
        labels, label_weights, bbox_targets, bbox_weights, samples = zip(*per_image, strict=True)
        num_pos = [0 if s is None else len(s.pos_inds) for s in samples]
        num_neg = [0 if s is None else len(s.neg_inds) for s in samples]
        avg_factor = sum(max(n, 1) for n in num_pos)
        if self.sampling:
            avg_factor += sum(max(n, 1) for n in num_neg)
        return AnchorTargets(torch.stack(labels), torch.stack(label_weights),
                             torch.stack(bbox_targets), torch.stack(bbox_weights), num_pos,
                             num_neg, float(avg_factor), list(samples))

    def targets_per_image(self, anchors: torch.Tensor, valid: torch.Tensor,
                          num_level: Sequence[int], gt: GroundTruth, meta: Mapping,
                          cls_rows: torch.Tensor | None = None,
                          reg_rows: torch.Tensor | None = None) -> tuple:
        """Targets of one image's ``(A, 4)`` anchors: labels ``(A,)``, label weights ``(A,)``,
        box targets and weights ``(A, 4)``, and the sampling result (None: no anchor inside the
        image). Only anchors inside the image (``allowed_border``) are assigned; the assigner
        gets their count per level and, from the image's ``(A, C)`` logits and ``(A, 4)``
        deltas, their predictions."""
        inside = anchor_inside_flags(anchors, valid, meta["img_shape"],
                                     self.train_cfg.get("allowed_border", -1))
        idx = torch.nonzero(inside).squeeze(1)
        if idx.numel() == 0:
            return (*self._empty_targets(anchors), None)
        level_counts = torch.stack([f.sum() for f in inside.split(list(num_level))]).tolist()
        scores = boxes = None
        if cls_rows is not None and reg_rows is not None:
            scores, boxes = self.assigner_predictions(cls_rows[idx], reg_rows[idx], anchors[idx])
        sample = self.assign_per_image(anchors[idx], gt, num_level_priors=level_counts,
                                       pred_scores=scores, pred_bboxes=boxes)
        return (*self._fill_targets(anchors, idx, sample, gt), sample)

    def _empty_targets(self, anchors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        num = anchors.shape[0]
        labels = torch.full((num,), self.num_classes, dtype=torch.long, device=anchors.device)
        return labels, anchors.new_zeros(num), anchors.new_zeros((num, 4)), \
            anchors.new_zeros((num, 4))

    def _fill_targets(self, anchors: torch.Tensor, idx: torch.Tensor, sample: SamplingResult,
                      gt: GroundTruth) -> tuple[torch.Tensor, ...]:
        """Labels, label weights, box targets and weights of all ``A`` anchors from the
        sampling result of the anchors ``idx`` inside the image."""
        labels, label_weights, bbox_targets, bbox_weights = self._empty_targets(anchors)
        pos, neg = idx[sample.pos_inds], idx[sample.neg_inds]
        if pos.numel() > 0:
            bbox_targets[pos] = sample.pos_gt_bboxes if self.reg_decoded_bbox \
                else self.bbox_coder.encode(sample.pos_bboxes, sample.pos_gt_bboxes)
            bbox_weights[pos] = 1.0
            labels[pos] = gt.labels[sample.pos_assigned_gt_inds]
            pos_weight = self.train_cfg.get("pos_weight", -1)
            label_weights[pos] = 1.0 if pos_weight <= 0 else float(pos_weight)
        label_weights[neg] = 1.0
        return labels, label_weights, bbox_targets, bbox_weights

    # ---- loss ----------------------------------------------------------------------------------

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls`` and ``loss_bbox`` of the raw outputs against the ground truth (one
        target dict and one meta dict per image)."""
        cls_scores, bbox_preds = raw[0], raw[1]
        priors = self.get_priors(cls_scores, metas)
        cls_rows = levels_to_rows(cls_scores, self.cls_out_channels)  # (B, A, C)
        reg_rows = levels_to_rows(bbox_preds, 4)  # (B, A, 4)
        t = self.get_targets(priors, targets, metas, cls_rows=cls_rows, reg_rows=reg_rows)
        return self.loss_by_targets(cls_rows, reg_rows, priors.priors, t)

    def loss_by_targets(self, cls_rows: torch.Tensor, reg_rows: torch.Tensor,
                        anchors: torch.Tensor, t: AnchorTargets) -> dict[str, torch.Tensor]:
        """Classification over every non-ignored anchor, regression over positives, both
        divided by ``t.avg_factor``, over the whole batch at once: ``(B, A, C)`` logits and
        ``(B, A, 4)`` deltas (:func:`levels_to_rows` of the raw maps), ``(A, 4)`` anchors."""
        cls = cls_rows.reshape(-1, self.cls_out_channels)
        reg = reg_rows.reshape(-1, 4)
        loss_cls = self.loss_cls(cls, t.labels.reshape(-1), t.label_weights.reshape(-1),
                                 avg_factor=t.avg_factor)
        if self.reg_decoded_bbox:
            reg = self.decode_boxes(anchors.expand(len(reg_rows), -1, -1).reshape(-1, 4), reg)
        loss_bbox = self.loss_bbox(reg, t.bbox_targets.reshape(-1, 4),
                                   t.bbox_weights.reshape(-1, 4), avg_factor=t.avg_factor)
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox)
