"""AutoAssign's head (Zhu et al., 2020): FCOS's layers, but no fixed rule for which points are
positive -- every point inside an object's box is weighed, differentiably, by how well it
already does and by a learned center prior.

Per image, for the points inside each ground-truth box (``G`` boxes, ``A`` points of all
levels, points at the cells' top-left corners):

- center prior: a Gaussian per class over the offset from the box's center in strides, with a
  learnable mean and sigma (:class:`CenterPrior`; zero outside the box; with ``force_topk`` a
  box no point lies in takes the ``topk`` points of highest prior);
- positive confidence: class probability times the implicit objectness times
  ``exp(-loss_bbox)`` of the point's box against the object, each point weighted by
  ``exp(3 * confidence)`` times its center prior; the loss is the binary cross-entropy of the
  weighted mean confidence against 1, per object (``pos_loss_weight``), over the objects;
- negative confidence: every point's joint score (class times objectness) is pushed to zero
  with a focal-like ``p^2 * BCE(p, 0)``, except that inside an object its own class is damped
  by ``1 - w``, ``w`` the normalized ``1 / (1 - IoU)`` of the point's best box (``neg_loss_weight``;
  divided by the sum of the center priors);
- center loss: objects per image over the sum of their priors (``center_loss_weight``).

Raw outputs, training and evaluation alike: per level ``(B, C, H, W)`` class logits,
``(B, 4, H, W)`` distances in pixels (``ReLU(scale * x) * stride``) and ``(B, 1, H, W)``
objectness logits from the regression tower, multiplied into the scores at test time as
FCOS's centerness is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detlab.dist import reduce_mean
from detlab.models.heads.anchor_free_head import ANCHOR_FREE_INIT, DISTANCE_CODER, FOCAL
from detlab.models.heads.base_dense_head import GroundTruth
from detlab.models.heads.fcos_head import GN_32, INF, SIGMOID_BCE, FCOSHead
from detlab.models.heads.postprocess import levels_to_rows
from detlab.models.init import bias_init_with_prob
from detlab.models.losses.box_iou_loss import aligned_bbox_overlaps
from detlab.models.utils import frozen
from detlab.registry import MODELS
from detlab.structures import DetResult

EPS = 1e-12
GIOU_5 = frozen(type="GIoULoss", loss_weight=5.0)

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]


class CenterPrior(nn.Module):
    """A learnable Gaussian per class over a point's offset from an object's center, in
    strides of the point's level (parameters ``mean`` and ``sigma``, ``(num_classes, 2)``).

    Args:
        force_topk: a box that no point lies inside takes the ``topk`` points of highest
            prior instead (tiny objects).
        topk: that number of points.
        num_classes: object classes.
    """

    def __init__(self, force_topk: bool = False, topk: int = 9, num_classes: int = 80) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(num_classes, 2))
        self.sigma = nn.Parameter(torch.ones(num_classes, 2))
        self.force_topk, self.topk = force_topk, topk

    def forward(self, points: torch.Tensor, strides: torch.Tensor, boxes: torch.Tensor,
                labels: torch.Tensor,
                inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, 2)`` points with their levels' ``(A,)`` strides, ``(G, 4)`` xyxy boxes, their
        ``(G,)`` labels and the ``(A, G)`` inside-box mask -> the ``(A, G)`` priors (zero
        outside the mask) and the mask (widened by ``force_topk``)."""
        inside = inside.clone()
        if len(labels) == 0:
            return boxes.new_zeros(len(points), 0), inside
        centers = torch.stack(((boxes[:, 0] + boxes[:, 2]) / 2,
                               (boxes[:, 1] + boxes[:, 3]) / 2), dim=1)  # (G, 2)
        offsets = (points[:, None, :] - centers[None]) / strides[:, None, None]  # (A, G, 2)
        distance = (offsets - self.mean[labels][None]) ** 2
        prior = torch.exp(-distance / (2 * self.sigma[labels][None] ** 2)).prod(dim=-1)
        if self.force_topk:
            empty = torch.nonzero(inside.sum(0) == 0).reshape(-1)
            if empty.numel():
                nearest = prior[:, empty].topk(self.topk, dim=0)[1]  # (topk, G_empty)
                inside[:, empty] = inside[:, empty].scatter(
                    0, nearest, torch.ones_like(nearest, dtype=torch.bool))
        return prior.masked_fill(~inside, 0), inside


def inside_boxes(points: torch.Tensor,
                 boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, 2)`` points and ``(G, 4)`` xyxy boxes -> the ``(A, G)`` mask of points strictly
    inside each box and the ``(A, G, 4)`` (left, top, right, bottom) distances to its sides."""
    xs, ys = points[:, 0, None], points[:, 1, None]
    distances = torch.stack((xs - boxes[:, 0], ys - boxes[:, 1], boxes[:, 2] - xs,
                             boxes[:, 3] - ys), dim=-1)
    if len(boxes) == 0:
        return distances.new_zeros(distances.shape[:2], dtype=torch.bool), distances
    return distances.min(dim=-1)[0] > 0, distances


def negative_weights(joint: torch.Tensor, labels: torch.Tensor, ious: torch.Tensor,
                     inside: torch.Tensor) -> torch.Tensor:
    """``(A, C)`` weights of the negative loss: 1, except at each point inside a box, in the
    box's class, ``1 - w`` with ``w = 1 / (1 - IoU)`` min-max normalized over the box's
    points (``ious``, ``inside``: ``(A, G)``). Where a point lies in two boxes of one class,
    the later box's weight stays (MMDetection's write order)."""
    weights = torch.ones_like(joint)
    if len(labels) == 0:
        return weights
    gt_index, point_index = torch.nonzero(inside.t(), as_tuple=True)  # box-major order
    inverse = 1 / (1 - ious.t()[gt_index, point_index]).clamp(min=EPS)
    num_gts = len(labels)
    low = inverse.new_full((num_gts,), float("inf")).scatter_reduce(
        0, gt_index, inverse, reduce="amin")
    high = inverse.new_full((num_gts,), float("-inf")).scatter_reduce(
        0, gt_index, inverse, reduce="amax")
    normalized = (inverse - low[gt_index] + EPS) / (high[gt_index] - low[gt_index] + EPS)
    weights[point_index, labels[gt_index]] = 1 - normalized
    return weights


@MODELS.register_module()
class AutoAssignHead(FCOSHead):
    """AutoAssign head: FCOS's towers (biased convs with a norm layer, as MMDetection forces
    ``conv_bias=True``), ``conv_cls``, ``conv_reg``, ``conv_centerness`` (the objectness, on
    the regression tower), per-level ``scales`` and ``center_prior``.

    Args:
        num_classes, in_channels, feat_channels, stacked_convs, strides, dcn_on_last_conv,
        conv_cfg, norm_cfg, loss_cls, loss_centerness, bbox_coder, train_cfg, test_cfg,
        init_cfg: as :class:`FCOSHead` (``loss_cls`` and ``loss_centerness`` are built, as
            MMDetection builds them, but the losses are AutoAssign's own).
        loss_bbox: the per-point, per-object box loss whose ``exp(-loss)`` is the localization
            confidence (MMDetection's config: GIoU with ``loss_weight=5``).
        force_topk, topk: see :class:`CenterPrior`.
        pos_loss_weight, neg_loss_weight, center_loss_weight: multipliers of the three losses.
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int = 256,
                 stacked_convs: int = 4, strides: Sequence[int] = (4, 8, 16, 32, 64),
                 force_topk: bool = False, topk: int = 9, pos_loss_weight: float = 0.25,
                 neg_loss_weight: float = 0.75, center_loss_weight: float = 0.75,
                 dcn_on_last_conv: bool = False, loss_cls: Mapping | nn.Module = FOCAL,
                 loss_bbox: Mapping | nn.Module = GIOU_5,
                 loss_centerness: Mapping | nn.Module = SIGMOID_BCE,
                 bbox_coder: Mapping | Any = DISTANCE_CODER, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = GN_32, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = ANCHOR_FREE_INIT) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         feat_channels=feat_channels, stacked_convs=stacked_convs,
                         strides=strides, regress_ranges=[(-1, INF)] * len(strides),
                         dcn_on_last_conv=dcn_on_last_conv, conv_bias=True,
                         loss_cls=loss_cls, loss_bbox=loss_bbox,
                         loss_centerness=loss_centerness, bbox_coder=bbox_coder,
                         conv_cfg=conv_cfg, norm_cfg=norm_cfg, train_cfg=train_cfg,
                         test_cfg=test_cfg, init_cfg=init_cfg)
        self.center_prior = CenterPrior(force_topk=force_topk, topk=topk,
                                        num_classes=num_classes)
        self.pos_loss_weight, self.neg_loss_weight = pos_loss_weight, neg_loss_weight
        self.center_loss_weight = center_loss_weight
        # AutoAssign's points sit at the cells' top-left corners
        self.prior_generator = MODELS.build(dict(type="MlvlPointGenerator",
                                                 strides=list(strides), offset=0.0))
        self._init_predictors()

    def init_weights(self) -> None:
        """``init_cfg``, then MMDetection's own start of the predictors (see
        :meth:`_init_predictors`)."""
        super().init_weights()
        self._init_predictors()

    def _init_predictors(self) -> None:
        """Classifier: normal std 0.01, bias at the 0.02 prior; box branch: normal std 0.01,
        bias 4 (every point starts with a box of ``4 * scale * stride`` to each side)."""
        for conv, bias in ((self.conv_cls, bias_init_with_prob(0.02)), (self.conv_reg, 4.0)):
            nn.init.normal_(conv.weight, 0, 0.01)
            nn.init.constant_(conv.bias, bias)

    # ---- forward -------------------------------------------------------------------------------

    def forward_single(self, x: torch.Tensor,
                       level: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One level: class logits ``(B, C, H, W)``, distances in pixels ``(B, 4, H, W)``
        (float32) and objectness logits ``(B, 1, H, W)``."""
        cls_score, bbox_pred, _, reg_feat = self.forward_features(x)
        objectness = self.conv_centerness(reg_feat)
        bbox_pred = self.scales[level](bbox_pred).float().clamp(min=0) * self.strides[level]
        return cls_score, bbox_pred, objectness

    def predict(self, raw: RawOutputs, metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Detections of each image: boxes from the points and the pixel distances, class
        probabilities times the objectness (FCOS's post-processing)."""
        cls_scores, bbox_preds, objectnesses = raw
        return self.predict_by_feat(cls_scores, bbox_preds, objectnesses, metas=metas,
                                    rescale=rescale)

    # ---- loss ----------------------------------------------------------------------------------

    def box_quality_per_image(self, points: torch.Tensor, bbox_pred: torch.Tensor,
                              distances: torch.Tensor,
                              inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, G)`` box losses of each point's predicted box against every object, and
        ``(A, G)`` the IoU of the point's box with its best-matching object (no gradient),
        zero outside ``inside``. ``bbox_pred (A, 4)`` and ``distances (A, G, 4)`` in pixels."""
        num_points, num_gts = distances.shape[:2]
        rows = points[:, None, :].expand(num_points, num_gts, 2).reshape(-1, 2)
        preds = self.bbox_coder.decode(
            rows, bbox_pred[:, None, :].expand(num_points, num_gts, 4).reshape(-1, 4))
        boxes = self.bbox_coder.decode(rows, distances.reshape(-1, 4))
        with torch.no_grad():
            ious = aligned_bbox_overlaps(preds, boxes).reshape(num_points, num_gts)
            if num_gts:
                ious = ious.max(dim=-1, keepdim=True).values.repeat(1, num_gts)
            ious[~inside] = 0
        losses = self.loss_bbox(preds, boxes, weight=None, reduction_override="none")
        return losses.reshape(num_points, num_gts), ious

    def positive_loss_per_image(self, cls_prob: torch.Tensor, obj_prob: torch.Tensor,
                                box_losses: torch.Tensor, labels: torch.Tensor,
                                prior: torch.Tensor) -> torch.Tensor:
        """The summed BCE against 1 of each object's confidence (class x objectness x
        localization) averaged over its points with weights ``exp(3 * confidence) * prior``.
        ``cls_prob (A, C)``, ``obj_prob (A, 1)``, ``box_losses`` and ``prior`` ``(A, G)``."""
        confidence = (cls_prob * obj_prob)[:, labels] * torch.exp(-box_losses)  # (A, G)
        weights = torch.exp(confidence * 3) * prior
        weights = weights / weights.sum(0, keepdim=True).clamp(min=EPS)
        mean_confidence = (confidence * weights).sum(0)  # (G,)
        loss = F.binary_cross_entropy(mean_confidence, torch.ones_like(mean_confidence),
                                      reduction="none")
        return loss.sum() * self.pos_loss_weight

    def negative_loss_per_image(self, cls_prob: torch.Tensor, obj_prob: torch.Tensor,
                                labels: torch.Tensor, ious: torch.Tensor,
                                inside: torch.Tensor) -> torch.Tensor:
        """The summed ``p^2 * BCE(p, 0)`` of every point's weighted joint score ``p`` (see
        :func:`negative_weights`)."""
        joint = cls_prob * obj_prob  # (A, C)
        scores = joint * negative_weights(joint, labels, ious, inside)
        loss = scores ** 2 * F.binary_cross_entropy(scores, torch.zeros_like(scores),
                                                     reduction="none")
        return loss.sum() * self.neg_loss_weight

    def image_terms(self, points: torch.Tensor, strides: torch.Tensor, gt: GroundTruth,
                    cls_prob: torch.Tensor, obj_prob: torch.Tensor,
                    bbox_pred: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One image's positive and negative losses, its priors ``(A, G)`` and its mask."""
        inside, distances = inside_boxes(points, gt.boxes)
        prior, inside = self.center_prior(points, strides, gt.boxes, gt.labels, inside)
        box_losses, ious = self.box_quality_per_image(points, bbox_pred, distances, inside)
        positive = self.positive_loss_per_image(cls_prob, obj_prob, box_losses, gt.labels,
                                                prior)
        negative = self.negative_loss_per_image(cls_prob, obj_prob, gt.labels, ious, inside)
        return positive, negative, prior, inside

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_pos`` (over the objects, averaged over processes), ``loss_neg`` (over the
        sum of the center priors, averaged over processes) and ``loss_center`` (mean over
        the images). Ignored boxes are not looked at (nor are they by MMDetection)."""
        cls_scores, bbox_preds, objectnesses = raw
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        level_points = self.prior_generator.grid_priors(sizes, dtype=torch.float32,
                                                        device=cls_scores[0].device)
        points = torch.cat(level_points)
        strides = torch.cat([p.new_full((len(p),), float(s))
                             for p, s in zip(level_points, self.strides, strict=True)])
        gts = self.ground_truths(targets, metas, len(metas), points.device)
        cls_prob = levels_to_rows(cls_scores, self.cls_out_channels).float().sigmoid()
        obj_prob = levels_to_rows(objectnesses, 1).float().sigmoid()
        reg = levels_to_rows(bbox_preds, 4).float()
        terms = [self.image_terms(points, strides, gt, cls_prob[i], obj_prob[i], reg[i])
                 for i, gt in enumerate(gts)]
        positives, negatives, priors, insides = zip(*terms, strict=True)
        num_gts = sum(len(gt.labels) for gt in gts)
        pos_loss = sum(positives) / reduce_mean(reg.new_tensor(num_gts)).clamp_(min=1)
        neg_factor = sum(prior.detach().sum() for prior in priors)
        neg_loss = sum(negatives) / reduce_mean(neg_factor).clamp_(min=1)
        if num_gts == 0:  # zeros that reach every parameter (no process waits on a gradient)
            pos_loss = reg[0].sum() * 0
            center_loss = obj_prob[0].sum() * 0 + self.center_prior.mean.sum() * 0 \
                + self.center_prior.sigma.sum() * 0
        else:
            center_loss = torch.stack([
                len(gt.labels) / prior.sum().clamp(min=EPS) if inside.any() else prior.sum() * 0
                for gt, prior, inside in zip(gts, priors, insides, strict=True)]).mean()
            center_loss = center_loss * self.center_loss_weight
        return dict(loss_pos=pos_loss, loss_neg=neg_loss, loss_center=center_loss)
