"""FreeAnchor's head (Zhang et al., 2019): RetinaNet's layers, trained by maximum likelihood
over bags of anchors instead of a fixed IoU assignment.

Each object gets a bag of the ``pre_anchor_topk`` anchors that overlap it most. The positive
term asks that some anchor of the bag both classify the object and regress onto it: with
``P_cls`` the anchor's probability of the object's class and ``P_loc = exp(-loss_bbox)`` its
localization probability, the bag's probability is the *mean-max* of ``P_cls * P_loc``
(a mean weighted by ``1 / (1 - p)``, close to the max when one anchor is good, close to the mean
while all are poor) and the term is ``alpha * -log(bag)``. The negative term is a focal loss
(``gamma``, weight ``1 - alpha``) on every anchor and class, against the probability
``P_cls * (1 - P_box)``, where ``P_box`` -- how likely the anchor's *predicted* box is to
cover an object of that class -- rises linearly from 0 at IoU ``bbox_thr`` to 1 at the object's
best-overlapping prediction.

The parameters are exactly RetinaHead's (MMDetection checkpoints of RetinaNet's layers load
as they are); only the loss differs. ``train_cfg`` is accepted for the config's sake: the loss
never runs the assigner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.assigners.iou import bbox_overlaps
from detlab.models.heads.postprocess import levels_to_rows
from detlab.models.heads.retina_head import (
    DELTA_CODER,
    FOCAL,
    L1,
    RETINA_ANCHORS,
    RETINA_INIT,
    RetinaHead,
)
from detlab.registry import MODELS

EPS = 1e-12

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor]]


@MODELS.register_module()
class FreeAnchorRetinaHead(RetinaHead):
    """RetinaNet's head with FreeAnchor's bag losses.

    Args:
        num_classes, in_channels, stacked_convs, conv_cfg, norm_cfg, feat_channels,
        anchor_generator, bbox_coder, reg_decoded_bbox, loss_cls, loss_bbox, train_cfg,
        test_cfg, init_cfg: as :class:`RetinaHead`. ``loss_cls`` is unused by the loss (the
            bag losses are built in) but keeps the head's sigmoid classifier; ``loss_bbox``
            must accept ``reduction_override='none'`` (its per-anchor values make ``P_loc``).
        pre_anchor_topk: anchors in each object's bag (by IoU with the object).
        bbox_thr: IoU of a predicted box with an object below which the box is not a likely
            positive (the saturated linear function's start; usually the NMS IoU threshold).
        gamma: focusing exponent of the negative term.
        alpha: weight of the positive term (the negative one has ``1 - alpha``).

    Losses: ``loss_positive_bag`` (MMDetection's ``positive_bag_loss``) and
    ``loss_negative_bag`` (``negative_bag_loss``), named with detlab's leading ``loss`` so the
    trainer sums them.
    """

    def __init__(self, num_classes: int, in_channels: int, stacked_convs: int = 4,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = None,
                 pre_anchor_topk: int = 50, bbox_thr: float = 0.6, gamma: float = 2.0,
                 alpha: float = 0.5, feat_channels: int = 256,
                 anchor_generator: Mapping | Any = RETINA_ANCHORS,
                 bbox_coder: Mapping | Any = DELTA_CODER, reg_decoded_bbox: bool = False,
                 loss_cls: Mapping | nn.Module = FOCAL, loss_bbox: Mapping | nn.Module = L1,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = RETINA_INIT) -> None:
        if int(pre_anchor_topk) < 1:
            raise ConfigError(f"FreeAnchorRetinaHead.pre_anchor_topk must be at least 1, got "
                              f"{pre_anchor_topk!r}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"FreeAnchorRetinaHead.alpha weighs the positive term against the "
                              f"negative one and must be in [0, 1], got {alpha!r}")
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         stacked_convs=stacked_convs, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                         feat_channels=feat_channels, anchor_generator=anchor_generator,
                         bbox_coder=bbox_coder, reg_decoded_bbox=reg_decoded_bbox,
                         loss_cls=loss_cls, loss_bbox=loss_bbox, train_cfg=train_cfg,
                         test_cfg=test_cfg, init_cfg=init_cfg)
        if not self.use_sigmoid_cls:
            raise ConfigError("FreeAnchorRetinaHead needs sigmoid class scores: give it "
                              "loss_cls with use_sigmoid=True (e.g. FocalLoss)")
        self.pre_anchor_topk = int(pre_anchor_topk)
        self.bbox_thr, self.gamma, self.alpha = float(bbox_thr), float(gamma), float(alpha)

    # ---- loss ----------------------------------------------------------------------------------

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_positive_bag`` (summed over objects, divided by their number, at least 1) and
        ``loss_negative_bag`` (summed over anchors and classes, divided by the number of bag
        members, at least 1), over every anchor of the batch's maps (valid or not, inside the
        image or not, as MMDetection's loss takes them)."""
        cls_scores, bbox_preds = raw[0], raw[1]
        priors = self.get_priors(cls_scores, metas)
        anchors = priors.priors
        cls_rows = levels_to_rows(cls_scores, self.cls_out_channels)  # (B, A, C)
        reg_rows = levels_to_rows(bbox_preds, 4)  # (B, A, 4)
        gts = self.ground_truths(targets, metas, len(cls_rows), anchors.device)
        cls_prob = cls_rows.sigmoid()
        box_prob, positive, num_pos = [], [], 0
        for i, gt in enumerate(gts):
            box_prob.append(self.image_box_prob(anchors, reg_rows[i], gt.boxes, gt.labels))
            positive.append(self.positive_bag_loss(
                *self.bag_probabilities(anchors, cls_prob[i], reg_rows[i], gt.boxes,
                                        gt.labels)))
            num_pos += len(gt.boxes)
        positive_loss = torch.cat(positive).sum() / max(1, num_pos)
        negative_loss = self.negative_bag_loss(cls_prob, torch.stack(box_prob)).sum() / max(
            1, num_pos * self.pre_anchor_topk)
        if num_pos == 0:  # keep the regression branch in the graph
            positive_loss = reg_rows.sum() * 0
        return dict(loss_positive_bag=positive_loss, loss_negative_bag=negative_loss)

    @torch.no_grad()
    def image_box_prob(self, anchors: torch.Tensor, reg_rows: torch.Tensor,
                       gt_boxes: torch.Tensor, gt_labels: torch.Tensor) -> torch.Tensor:
        """``P{a_j in A+}`` of one image, ``(A, C)`` and detached: for each anchor and class,
        the highest over that class's objects of the saturated linear function of the IoU of
        the anchor's predicted box with the object (0 at ``bbox_thr`` and below, 1 at the
        object's best prediction); 0 for classes without objects."""
        num_anchors = anchors.shape[0]
        out = reg_rows.new_zeros((self.cls_out_channels, num_anchors))
        if len(gt_boxes) == 0:
            return out.t()
        pred_boxes = self.bbox_coder.decode(anchors, reg_rows)
        iou = bbox_overlaps(gt_boxes, pred_boxes)  # (n, A)
        low = self.bbox_thr
        high = iou.max(dim=1, keepdim=True).values.clamp(min=low + EPS)
        object_box_prob = ((iou - low) / (high - low)).clamp(min=0, max=1)
        index = gt_labels[:, None].expand(-1, num_anchors)
        out.scatter_reduce_(0, index, object_box_prob.to(out.dtype), reduce="amax",
                            include_self=True)
        return out.t()

    def bag_probabilities(self, anchors: torch.Tensor, cls_prob: torch.Tensor,
                          reg_rows: torch.Tensor, gt_boxes: torch.Tensor,
                          gt_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each object's bag (its ``pre_anchor_topk`` anchors of highest IoU) in one image:
        ``(n, k)`` probabilities of the object's class and ``(n, k)`` localization
        probabilities ``exp(-loss_bbox)`` of the anchors' deltas against the object's."""
        if len(anchors) < self.pre_anchor_topk:
            raise ConfigError(f"FreeAnchorRetinaHead.pre_anchor_topk={self.pre_anchor_topk} "
                              f"exceeds the {len(anchors)} anchors of the feature maps; lower "
                              f"it or use larger images")
        overlaps = bbox_overlaps(gt_boxes, anchors)
        matched = overlaps.topk(self.pre_anchor_topk, dim=1, sorted=False).indices  # (n, k)
        matched_cls_prob = cls_prob[matched].gather(
            2, gt_labels.view(-1, 1, 1).expand(-1, self.pre_anchor_topk, 1)).squeeze(2)
        matched_anchors = anchors[matched]
        deltas = self.bbox_coder.encode(matched_anchors,
                                        gt_boxes[:, None].expand_as(matched_anchors))
        loss_bbox = self.loss_bbox(reg_rows[matched], deltas,
                                   reduction_override="none").sum(-1)
        return matched_cls_prob, torch.exp(-loss_bbox)

    def positive_bag_loss(self, matched_cls_prob: torch.Tensor,
                          matched_box_prob: torch.Tensor) -> torch.Tensor:
        """``alpha * -log(mean-max(P_cls * P_loc))`` per object: ``(n, k)`` -> ``(n,)``."""
        matched_prob = matched_cls_prob * matched_box_prob
        weight = 1 / torch.clamp(1 - matched_prob, EPS, None)
        weight = weight / weight.sum(dim=1, keepdim=True)
        bag_prob = (weight * matched_prob).sum(dim=1)
        return self.alpha * F.binary_cross_entropy(bag_prob, torch.ones_like(bag_prob),
                                                   reduction="none")

    def negative_bag_loss(self, cls_prob: torch.Tensor, box_prob: torch.Tensor) -> torch.Tensor:
        """``(1 - alpha) * FL(P_cls * (1 - P_box))`` against 0, per anchor and class (the
        probability clamped away from 0 and 1 so its log stays finite)."""
        prob = (cls_prob * (1 - box_prob)).clamp(min=EPS, max=1 - EPS)
        loss = prob ** self.gamma * F.binary_cross_entropy(prob, torch.zeros_like(prob),
                                                           reduction="none")
        return (1 - self.alpha) * loss
