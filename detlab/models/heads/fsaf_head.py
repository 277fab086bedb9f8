"""FSAF's head (Zhu et al., 2019): the anchor-free branch of feature selective anchor-free
modules, on RetinaNet's layers with one "anchor" per location (a square of the level's stride
standing for the grid cell).

Targets: ``train_cfg.assigner`` (the zoo's ``CenterRegionAssigner``) makes the locations whose
center lies in an object's core positives of it and ignores, for that object's class only, the
locations in its shadow around the core (per-class label weights). Box outputs are ReLU'd
distances to the box's top, bottom, left and right (``TBLRBBoxCoder``), trained on decoded boxes
(``reg_decoded_bbox=True``) with an element-wise IoU loss.

Online feature selection: every object is assigned on every level; the element-wise losses
(``loss_cls`` and ``loss_bbox`` both with ``reduction='none'``) are averaged per object and
level, and each object keeps only the level where that mean is smallest -- its positives
elsewhere lose their box loss and the classification loss of their own class. The summed losses
are divided by the positives left (by the negatives when there are none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.anchors import anchor_inside_flags
from detlab.models.heads.base_dense_head import DensePriors, GroundTruth
from detlab.models.heads.postprocess import levels_to_rows
from detlab.models.heads.retina_head import DELTA_CODER, FOCAL, L1, RETINA_ANCHORS, RetinaHead
from detlab.models.utils import frozen
from detlab.registry import MODELS

# RetinaNet's init plus a positive bias of the box convs, so that no first box has zero area
FSAF_INIT = frozen(type="Normal", layer="Conv2d", std=0.01,
                   override=(frozen(type="Normal", name="retina_cls", std=0.01, bias_prob=0.01),
                             frozen(type="Normal", name="retina_reg", std=0.01, bias=0.25)))
# the loss given to a level where an object has no positive, so that it is never selected
NO_POSITIVE_LOSS = 1e6

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor]]


def positive_recall(scores: torch.Tensor, labels: torch.Tensor,
                    thresh: float | None = None) -> torch.Tensor:
    """Percentage of ``(N, C)`` positives' probabilities whose best class is their ``(N,)``
    label (and above ``thresh``); 0 without positives (MMDetection's ``accuracy``)."""
    if scores.shape[0] == 0:
        return scores.new_tensor(0.0)
    best, best_label = scores.max(dim=1)
    correct = best_label == labels
    if thresh is not None:
        correct &= best > thresh
    return correct.float().sum() * (100.0 / scores.shape[0])


@MODELS.register_module()
class FSAFHead(RetinaHead):
    """FSAF's anchor-free head.

    Args:
        num_classes, in_channels, stacked_convs, conv_cfg, norm_cfg, feat_channels,
        anchor_generator, bbox_coder, reg_decoded_bbox: as :class:`RetinaHead` (the zoo's: one
            anchor per location with ``octave_base_scale=1``, ``TBLRBBoxCoder(normalizer=4)``,
            ``reg_decoded_bbox=True``).
        score_threshold: least probability of a positive counted as recalled in the logged
            ``pos_recall`` (None: any).
        loss_cls: classification loss with ``reduction='none'`` (the zoo's: focal loss).
        loss_bbox: box loss with ``reduction='none'`` (the zoo's: ``IoULoss``).
        train_cfg: ``assigner`` (the zoo's ``CenterRegionAssigner``), ``sampler``,
            ``allowed_border``, ``pos_weight``, ``debug``.
        test_cfg: ``nms_pre``, ``score_thr``, ``nms``, ``min_bbox_size``, ``max_per_img``.
        init_cfg: weight initialization (default: RetinaNet's, box conv bias 0.25).
    """

    def __init__(self, num_classes: int, in_channels: int, stacked_convs: int = 4,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = None,
                 feat_channels: int = 256, anchor_generator: Mapping | Any = RETINA_ANCHORS,
                 bbox_coder: Mapping | Any = DELTA_CODER, reg_decoded_bbox: bool = False,
                 loss_cls: Mapping | nn.Module = FOCAL, loss_bbox: Mapping | nn.Module = L1,
                 score_threshold: float | None = None, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         stacked_convs=stacked_convs, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                         feat_channels=feat_channels, anchor_generator=anchor_generator,
                         bbox_coder=bbox_coder, reg_decoded_bbox=reg_decoded_bbox,
                         loss_cls=loss_cls, loss_bbox=loss_bbox, train_cfg=train_cfg,
                         test_cfg=test_cfg,
                         init_cfg=FSAF_INIT if init_cfg is None else init_cfg)
        for key in ("loss_cls", "loss_bbox"):
            if getattr(getattr(self, key), "reduction", None) != "none":
                raise ConfigError(f"FSAFHead selects each object's level from element-wise "
                                  f"losses: set bbox_head.{key}.reduction='none'")
        self.score_threshold = score_threshold

    def forward_single(self, x: torch.Tensor,
                       level: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """RetinaNet's level outputs, the box distances through a ReLU (TBLR distances are never
        negative)."""
        cls_score, bbox_pred = super().forward_single(x, level)
        return cls_score, bbox_pred.relu()

    # ---- targets -------------------------------------------------------------------------------

    def fsaf_targets_per_image(self, anchors: torch.Tensor, valid: torch.Tensor,
                               gt: GroundTruth, meta: Mapping) -> tuple:
        """One image's targets of its ``(A, 4)`` anchors: labels ``(A,)``, per-class label
        weights ``(A, W)`` (``W``: the class outputs with sigmoid scores, else 1; zero for the
        classes that shadow a location), box targets and weights ``(A, 4)``, the ground-truth
        index of each positive ``(A,)`` (-1 elsewhere), and the positive and negative counts."""
        width = self.cls_out_channels if self.use_sigmoid_cls else 1
        gt_inds = torch.full((len(anchors),), -1, dtype=torch.long, device=anchors.device)
        inside = anchor_inside_flags(anchors, valid, meta["img_shape"],
                                     self.train_cfg.get("allowed_border", -1))
        idx = torch.nonzero(inside).squeeze(1)
        if idx.numel() == 0:
            labels, weights, bbox_targets, bbox_weights = self._empty_targets(anchors)
            return labels, weights[:, None].repeat(1, width), bbox_targets, bbox_weights, \
                gt_inds, 0, 0
        # the sampler needs the assignment's shadowed labels too, so the two steps run here
        assign = self.assigner.assign(anchors[idx], gt.boxes, gt.boxes_ignore,
                                      None if self.sampling else gt.labels)
        sample = self.sampler.sample(assign, anchors[idx], gt.boxes)
        labels, weights, bbox_targets, bbox_weights = self._fill_targets(anchors, idx, sample, gt)
        weights = weights[:, None].repeat(1, width)
        gt_inds[idx[sample.pos_inds]] = sample.pos_assigned_gt_inds
        shadowed = assign.get_extra_property("shadowed_labels")
        if shadowed is not None and shadowed.numel():
            if shadowed.dim() == 2:
                weights[idx[shadowed[:, 0]], shadowed[:, 1]] = 0
            else:
                weights[idx[shadowed]] = 0
        return labels, weights, bbox_targets, bbox_weights, gt_inds, len(sample.pos_inds), \
            len(sample.neg_inds)

    def fsaf_targets(self, priors: DensePriors, targets: Sequence[Mapping],
                     metas: Sequence[Mapping]) -> tuple:
        """The batch's targets stacked per image (see :meth:`fsaf_targets_per_image`), the
        ground-truth indices counted across the batch, and the negatives (at least 1 per
        image)."""
        self.check_trainable()
        num_images = len(priors.valid)
        gts = self.ground_truths(targets, metas, num_images, priors.priors.device)
        per_image = [self.fsaf_targets_per_image(priors.priors, priors.valid[i], gts[i], metas[i])
                     for i in range(num_images)]
        labels, weights, bbox_targets, bbox_weights, gt_inds, _, num_neg = zip(*per_image,
                                                                               strict=True)
        offset, batch_gt_inds = 0, []
        for inds, gt in zip(gt_inds, gts, strict=True):
            batch_gt_inds.append(torch.where(inds >= 0, inds + offset, inds))
            offset += len(gt.boxes)
        return (torch.stack(labels), torch.stack(weights), torch.stack(bbox_targets),
                torch.stack(bbox_weights), torch.stack(batch_gt_inds), offset,
                sum(max(n, 1) for n in num_neg))

    # ---- loss ----------------------------------------------------------------------------------

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls`` and ``loss_bbox`` of each object at its best level, with the logged
        ``num_pos`` (positives per image) and ``pos_recall``."""
        cls_scores = [c.float() for c in raw[0]]
        # no box of zero area
        bbox_preds = [b.float().clamp(min=1e-4) for b in raw[1]]
        priors = self.get_priors(cls_scores, metas)
        labels, label_weights, bbox_targets, bbox_weights, gt_inds, num_gts, num_neg = \
            self.fsaf_targets(priors, targets, metas)
        num_images, channels = len(labels), self.cls_out_channels
        cls_rows = levels_to_rows(cls_scores, channels)  # (B, A, C)
        reg_rows = levels_to_rows(bbox_preds, 4)  # (B, A, 4)
        # per-class weights (N, C) with sigmoid scores, one per location (N,) with softmax
        weights = label_weights.reshape(-1, channels) if self.use_sigmoid_cls \
            else label_weights.reshape(-1)
        cls_loss = self.loss_cls(cls_rows.reshape(-1, channels), labels.reshape(-1), weights)
        cls_loss = cls_loss.reshape(num_images, -1, *cls_loss.shape[1:])
        reg = reg_rows.reshape(-1, 4)
        if self.reg_decoded_bbox:
            reg = self.decode_boxes(priors.priors.repeat(num_images, 1), reg)
        reg_loss = self.loss_bbox(reg, bbox_targets.reshape(-1, 4), bbox_weights.reshape(-1, 4))
        reg_loss = reg_loss.reshape(num_images, -1, *reg_loss.shape[1:])

        def levels(values: torch.Tensor) -> list[torch.Tensor]:
            # per level, the batch's images one after the other (MMDetection's order)
            return [v.reshape(-1, *v.shape[2:]) for v in priors.per_level(values, dim=1)]

        level_cls, level_reg = levels(cls_loss), levels(reg_loss)
        level_gt_inds, level_labels = levels(gt_inds), levels(labels)
        best_level = self.select_levels(level_cls, level_reg, level_gt_inds, num_gts)
        losses_cls, losses_bbox, positives = [], [], []
        for level, (c, r, inds, lab) in enumerate(zip(level_cls, level_reg, level_gt_inds,
                                                      level_labels, strict=True)):
            kept = inds >= 0
            # positives of objects selected elsewhere lose their box loss and the
            # classification loss of their own class
            moved = torch.zeros_like(kept)
            if num_gts:
                moved = kept & (best_level[inds.clamp(min=0)] != level)
            kept = kept & ~moved
            cls_weight = torch.ones_like(c)
            if moved.any():
                if c.dim() == 2:
                    cls_weight[moved, lab[moved]] = 0
                else:
                    cls_weight[moved] = 0
            loc_weight = torch.ones_like(r)
            loc_weight[moved] = 0
            losses_cls.append((c * cls_weight).sum())
            losses_bbox.append((r * loc_weight).sum())
            positives.append(kept)
        num_pos = torch.cat(positives).sum().float()
        avg_factor = num_pos if num_pos > 0 else num_pos + float(num_neg)
        pos_recall = self.positive_recall(cls_scores, level_labels, positives)
        return dict(loss_cls=sum(loss / avg_factor for loss in losses_cls),
                    loss_bbox=sum(loss / avg_factor for loss in losses_bbox),
                    num_pos=num_pos / num_images, pos_recall=pos_recall)

    @torch.no_grad()
    def select_levels(self, level_cls: Sequence[torch.Tensor], level_reg: Sequence[torch.Tensor],
                      level_gt_inds: Sequence[torch.Tensor], num_gts: int) -> torch.Tensor:
        """``(G,)`` the level of each of the batch's ``G`` objects with the smallest mean loss
        (classification summed over classes plus box loss summed over coordinates) over its
        positives there; a level without positives of the object costs ``NO_POSITIVE_LOSS``."""
        means = []
        for c, r, inds in zip(level_cls, level_reg, level_gt_inds, strict=True):
            loss = (c.sum(dim=-1) if c.dim() == 2 else c) + (r.sum(dim=-1) if r.dim() == 2
                                                              else r)
            pos = inds >= 0
            sums = loss.new_zeros(num_gts).index_add_(0, inds[pos], loss[pos])
            counts = loss.new_zeros(num_gts).index_add_(0, inds[pos],
                                                        torch.ones_like(loss[pos]))
            means.append(torch.where(counts > 0, sums / counts.clamp(min=1),
                                     loss.new_tensor(NO_POSITIVE_LOSS)))
        if num_gts == 0:
            return torch.zeros(0, dtype=torch.long, device=level_cls[0].device)
        return torch.stack(means).min(dim=0)[1]

    @torch.no_grad()
    def positive_recall(self, cls_scores: Sequence[torch.Tensor],
                        level_labels: Sequence[torch.Tensor],
                        positives: Sequence[torch.Tensor]) -> torch.Tensor:
        """The logged ``pos_recall`` of the positives kept at their objects' levels."""
        scores = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, self.cls_out_channels)[pos]
                            for c, pos in zip(cls_scores, positives, strict=True)])
        labels = torch.cat([lab[pos] for lab, pos in zip(level_labels, positives, strict=True)])
        scores = scores.sigmoid() if self.use_sigmoid_cls else scores.softmax(dim=1)
        return positive_recall(scores, labels, self.score_threshold)
