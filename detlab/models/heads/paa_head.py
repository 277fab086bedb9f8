"""PAA's head (Kim & Lee, 2020): ATSS's layers, with the centerness branch predicting the IoU of
the decoded box, and the probabilistic anchor assignment.

Assignment: the anchors first assigned by ``train_cfg.assigner`` (the zoo's: MaxIoU at 0.1) are
candidates; each candidate's score is its classification plus box loss. Per object, the
``topk`` lowest-scoring candidates of each level are fitted with a two-component Gaussian
mixture (scikit-learn's ``GaussianMixture``, started at the lowest and highest score, of
``covariance_type``); the candidates of the low component up to its most likely one stay
positive, the others become negatives.

Loss: focal classification over the non-ignored anchors divided by the positives (at least one
per image), a GIoU-type loss of the decoded boxes weighted by their IoU with the target and
divided by the sum of those IoUs, and a binary cross-entropy of the IoU branch against that IoU
divided by the positives (``loss_iou``).

Prediction: per level the ``nms_pre`` anchors of the highest ``sqrt(score * iou)``, every
(anchor, class) of that score above ``score_thr`` into class-wise NMS, then, with
``score_voting``, each kept box replaced by the mean of its class's candidates weighted by their
score and their IoU with it.

scikit-learn is needed by the loss only (``pip install scikit-learn``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.assigners.iou import bbox_overlaps
from detlab.models.heads.anchor_head import AnchorTargets
from detlab.models.heads.atss_head import (
    ANCHORS,
    ATSS_INIT,
    DELTA_CODER,
    SIGMOID_CE,
    SMOOTH_L1,
    ATSSHead,
)
from detlab.models.heads.fcos_head import GN_32, SIGMOID_BCE
from detlab.models.heads.nms import multiclass_nms
from detlab.models.heads.postprocess import boxes_to_original, levels_to_rows, result_meta
from detlab.registry import MODELS
from detlab.structures import DetResult

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]


class PAAAssignment(NamedTuple):
    """Targets after PAA's reassignment: ``(A, 4)`` anchors, ``(B, A)`` labels (``C`` for
    negatives) and label weights, ``(B, A, 4)`` box targets and weights, and the number of
    positives of the batch."""

    anchors: torch.Tensor
    labels: torch.Tensor
    label_weights: torch.Tensor
    bbox_targets: torch.Tensor
    bbox_weights: torch.Tensor
    num_pos: int

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
EPS = 1e-12


def aligned_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(N,)`` IoU of the row-aligned ``(N, 4)`` xyxy boxes."""
    lt = torch.max(boxes1[:, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    union = torch.max(area1 + area2 - overlap, overlap.new_tensor([eps]))
    return overlap / union


def fit_two_gaussians(losses: np.ndarray, covariance_type: str) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 1)`` sorted candidate losses -> each one's component (0: the one started at the
    lowest loss) and its log-likelihood under the mixture. Needs scikit-learn."""
    try:
        from sklearn.mixture import GaussianMixture
    except ImportError as error:
        raise ImportError("PAAHead's probabilistic anchor assignment fits a Gaussian mixture "
                          "with scikit-learn, which is not installed: pip install scikit-learn"
                          ) from error
    precisions = {"full": np.ones((2, 1, 1)), "tied": np.ones((1, 1)),
                  "diag": np.ones((2, 1)), "spherical": np.ones(2)}[covariance_type]
    gmm = GaussianMixture(2, weights_init=np.array([0.5, 0.5]),
                          means_init=np.array([losses.min(), losses.max()]).reshape(2, 1),
                          precisions_init=precisions, covariance_type=covariance_type)
    gmm.fit(losses)
    return gmm.predict(losses), gmm.score_samples(losses)


@MODELS.register_module()
class PAAHead(ATSSHead):
    """PAA head: :class:`ATSSHead`'s layers (``atss_centerness`` predicts the IoU).

    Args:
        topk: candidates per level and object fitted by the mixture.
        score_voting: refine the kept boxes by score voting at test time.
        covariance_type: the mixture's covariance: ``'full'``, ``'tied'``, ``'diag'`` or
            ``'spherical'``.
        Others as :class:`ATSSHead` (``loss_centerness`` is the IoU branch's loss).
    """

    def __init__(self, num_classes: int, in_channels: int, topk: int = 9,
                 score_voting: bool = True, covariance_type: str = "diag",
                 pred_kernel_size: int = 3, stacked_convs: int = 4,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = GN_32,
                 feat_channels: int = 256, anchor_generator: Mapping | Any = ANCHORS,
                 bbox_coder: Mapping | Any = DELTA_CODER, reg_decoded_bbox: bool = True,
                 loss_cls: Mapping | nn.Module = SIGMOID_CE,
                 loss_bbox: Mapping | nn.Module = SMOOTH_L1,
                 loss_centerness: Mapping | nn.Module = SIGMOID_BCE,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = ATSS_INIT) -> None:
        if covariance_type not in COVARIANCE_TYPES:
            raise ConfigError(f"PAAHead covariance_type must be one of "
                              f"{', '.join(COVARIANCE_TYPES)}, got {covariance_type!r}")
        if int(topk) < 1:
            raise ConfigError(f"PAAHead topk must be at least 1, got {topk!r}")
        self.topk, self.with_score_voting = int(topk), bool(score_voting)
        self.covariance_type = covariance_type
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         pred_kernel_size=pred_kernel_size, stacked_convs=stacked_convs,
                         conv_cfg=conv_cfg, norm_cfg=norm_cfg, feat_channels=feat_channels,
                         anchor_generator=anchor_generator, bbox_coder=bbox_coder,
                         reg_decoded_bbox=reg_decoded_bbox, loss_cls=loss_cls,
                         loss_bbox=loss_bbox, loss_centerness=loss_centerness,
                         train_cfg=train_cfg, test_cfg=test_cfg, init_cfg=init_cfg)

    # ---- loss ----------------------------------------------------------------------------------

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls``, ``loss_bbox`` and ``loss_iou`` of the raw outputs against the ground
        truth (one target dict and one meta dict per image)."""
        a = self.reassigned_targets(raw, targets, metas)
        cls_scores, bbox_preds, iou_preds = raw
        cls_rows = levels_to_rows(cls_scores, self.cls_out_channels).float()  # (B, A, C)
        reg_rows = levels_to_rows(bbox_preds, 4).float()  # (B, A, 4)
        iou_rows = levels_to_rows(iou_preds, 1).float()  # (B, A, 1)
        return self.paa_losses(cls_rows, reg_rows, iou_rows, a.anchors, a.labels,
                               a.label_weights, a.bbox_targets, a.num_pos)

    def reassigned_targets(self, raw: RawOutputs, targets: Sequence[Mapping],
                           metas: Sequence[Mapping]) -> PAAAssignment:
        """The targets after the probabilistic reassignment of the first-assigned anchors by
        the losses of these raw outputs (the anchors the mixture drops become negatives)."""
        cls_scores, bbox_preds, _ = raw
        priors = self.get_priors(cls_scores, metas)
        t = self.get_targets(priors, targets, metas)
        cls_rows = levels_to_rows(cls_scores, self.cls_out_channels).float()  # (B, A, C)
        reg_rows = levels_to_rows(bbox_preds, 4).float()  # (B, A, 4)
        anchors = priors.priors
        labels, label_weights, bbox_weights = t.labels.clone(), t.label_weights.clone(), \
            t.bbox_weights.clone()
        num_pos = 0
        for i in range(len(cls_rows)):
            positive = (labels[i] >= 0) & (labels[i] < self.num_classes)
            pos_inds = torch.nonzero(positive).squeeze(1)
            if pos_inds.numel() == 0:
                continue
            sample = t.sampling_results[i]
            pos_losses = self.candidate_losses(cls_rows[i], reg_rows[i], anchors, t, i, pos_inds)
            with torch.no_grad():
                kept = self.paa_reassign(pos_losses.detach(), pos_inds,
                                         sample.pos_assigned_gt_inds, priors.num_level)
            dropped = pos_inds[(pos_inds[:, None] != kept[None]).all(1)]
            labels[i, dropped] = self.num_classes
            bbox_weights[i, dropped] = 0
            num_pos += len(kept)
        return PAAAssignment(anchors, labels, label_weights, t.bbox_targets, bbox_weights,
                             num_pos)

    def candidate_losses(self, cls_rows: torch.Tensor, reg_rows: torch.Tensor,
                         anchors: torch.Tensor, t: AnchorTargets, image: int,
                         pos_inds: torch.Tensor) -> torch.Tensor:
        """``(P,)`` classification plus box loss of one image's first-assigned anchors."""
        decoded = self.decode_boxes(anchors[pos_inds], reg_rows[pos_inds])
        loss_cls = self.loss_cls(cls_rows[pos_inds], t.labels[image, pos_inds],
                                 t.label_weights[image, pos_inds], avg_factor=1.0,
                                 reduction_override="none")
        loss_bbox = self.loss_bbox(decoded, t.bbox_targets[image, pos_inds],
                                   t.bbox_weights[image, pos_inds], avg_factor=1.0,
                                   reduction_override="none")
        return loss_bbox + loss_cls.sum(-1)

    def paa_reassign(self, pos_losses: torch.Tensor, pos_inds: torch.Tensor,
                     pos_gt_inds: torch.Tensor, num_level: Sequence[int]) -> torch.Tensor:
        """The anchors (indices among all) that stay positive after the mixture fits, from the
        first-assigned anchors ``pos_inds``, their losses and their objects."""
        bounds = np.cumsum([0, *num_level])
        level_masks = [(pos_inds >= bounds[k]) & (pos_inds < bounds[k + 1])
                       for k in range(len(num_level))]
        kept = [pos_inds.new_zeros(0)]
        for gt in range(int(pos_gt_inds.max()) + 1):
            inds, losses = [], []
            for mask in level_masks:
                chosen = mask & (pos_gt_inds == gt)
                value, order = pos_losses[chosen].topk(min(int(chosen.sum()), self.topk),
                                                       largest=False)
                inds.append(pos_inds[chosen][order])
                losses.append(value)
            inds, losses = torch.cat(inds), torch.cat(losses)
            if len(inds) < 2:  # a mixture of two needs two samples
                continue
            losses, order = losses.sort()
            inds = inds[order]
            component, likelihood = fit_two_gaussians(
                losses.view(-1, 1).cpu().numpy(), self.covariance_type)
            low = torch.from_numpy(component).to(inds.device) == 0
            if low.any():
                best = int(torch.from_numpy(likelihood).to(inds.device)[low].topk(1)[1])
                kept.append(inds[low][:best + 1])
        return torch.cat(kept)

    def paa_losses(self, cls_rows: torch.Tensor, reg_rows: torch.Tensor, iou_rows: torch.Tensor,
                   anchors: torch.Tensor, labels: torch.Tensor, label_weights: torch.Tensor,
                   bbox_targets: torch.Tensor, num_pos: int) -> dict[str, torch.Tensor]:
        """The batch's losses after the reassignment (``num_pos`` positives in all)."""
        num_images = len(cls_rows)
        labels = labels.reshape(-1)
        loss_cls = self.loss_cls(cls_rows.reshape(-1, self.cls_out_channels), labels,
                                 label_weights.reshape(-1),
                                 avg_factor=max(num_pos, num_images))
        reg, ious = reg_rows.reshape(-1, 4), iou_rows.reshape(-1, 1)
        if num_pos == 0:
            return dict(loss_cls=loss_cls, loss_bbox=reg.sum() * 0, loss_iou=ious.sum() * 0)
        pos = torch.nonzero((labels >= 0) & (labels < self.num_classes)).squeeze(1)
        pos_anchors = anchors.repeat(num_images, 1)[pos]
        decoded = self.decode_boxes(pos_anchors, reg[pos])
        pos_targets = bbox_targets.reshape(-1, 4)[pos]
        iou_target = aligned_iou(decoded.detach(), pos_targets)
        loss_iou = self.loss_centerness(ious[pos], iou_target.unsqueeze(-1), avg_factor=num_pos)
        loss_bbox = self.loss_bbox(decoded, pos_targets, iou_target.clamp(min=EPS),
                                   avg_factor=iou_target.sum())
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_iou=loss_iou)

    # ---- prediction ----------------------------------------------------------------------------

    def predict(self, raw: RawOutputs, metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Each image's detections (see the module's docstring)."""
        cfg = self.test_cfg
        if not cfg or "nms" not in cfg:
            raise ConfigError("PAAHead was built without test_cfg; give the model a test_cfg "
                              "(nms_pre, score_thr, nms, max_per_img)")
        cls_scores, bbox_preds, iou_preds = raw
        if len(metas) != cls_scores[0].shape[0]:
            raise ValueError(f"predict got {cls_scores[0].shape[0]} images but {len(metas)} "
                             f"metas")
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        priors = self.prior_generator.grid_priors(sizes, dtype=torch.float32,
                                                  device=cls_scores[0].device)
        return [self.predict_image([c[i] for c in cls_scores], [b[i] for b in bbox_preds],
                                   [f[i] for f in iou_preds], priors, meta, rescale)
                for i, meta in enumerate(metas)]

    def predict_image(self, cls_scores: Sequence[torch.Tensor],
                      bbox_preds: Sequence[torch.Tensor], iou_preds: Sequence[torch.Tensor],
                      priors: Sequence[torch.Tensor], meta: Mapping,
                      rescale: bool) -> DetResult:
        cfg = self.test_cfg
        nms_pre = cfg.get("nms_pre", -1)
        all_boxes, all_scores = [], []
        for cls_score, bbox_pred, iou_pred, level_priors in zip(
                cls_scores, bbox_preds, iou_preds, priors, strict=True):
            num = level_priors.shape[0]
            scores = cls_score.float().permute(1, 2, 0).reshape(num, -1).sigmoid()
            deltas = bbox_pred.float().permute(1, 2, 0).reshape(num, 4)
            iou = iou_pred.float().permute(1, 2, 0).reshape(-1).sigmoid()
            if 0 < nms_pre < num:
                best = (scores * iou[:, None]).sqrt().max(dim=1)[0]
                keep = best.topk(nms_pre)[1]
                level_priors, deltas, scores, iou = (level_priors[keep], deltas[keep],
                                                     scores[keep], iou[keep])
            all_boxes.append(self.decode_boxes(level_priors, deltas, meta["img_shape"]))
            all_scores.append((scores * iou[:, None]).sqrt())
        boxes, scores = torch.cat(all_boxes), torch.cat(all_scores)
        if rescale:
            boxes = boxes_to_original(boxes, meta)
        score_thr = cfg.get("score_thr", 0.0)
        pairs = torch.nonzero(scores > score_thr)
        cand_boxes, cand_labels = boxes[pairs[:, 0]], pairs[:, 1]
        cand_scores = scores[pairs[:, 0], pairs[:, 1]]
        keep, kept_scores = multiclass_nms(cand_boxes, cand_scores, cand_labels, cfg["nms"],
                                           cfg.get("max_per_img"))
        det_boxes, det_labels = cand_boxes[keep], cand_labels[keep]
        if self.with_score_voting and len(keep) > 0:
            det_boxes, kept_scores, det_labels = score_voting(
                det_boxes, kept_scores, det_labels, cand_boxes, cand_scores, cand_labels,
                self.cls_out_channels)
        return DetResult(det_boxes, kept_scores, det_labels, meta=result_meta(meta))


def score_voting(det_boxes: torch.Tensor, det_scores: torch.Tensor, det_labels: torch.Tensor,
                 cand_boxes: torch.Tensor, cand_scores: torch.Tensor, cand_labels: torch.Tensor,
                 num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each kept box -> the mean of its class's candidates overlapping it (IoU above 0.01),
    weighted by ``score * exp(-(1 - IoU)^2 / 0.025)``; scores kept, detections grouped by
    class (ascending), in their order within a class."""
    boxes, scores, labels = [], [], []
    for cls in range(num_classes):
        cand = cand_labels == cls
        if not cand.any():
            continue
        dets = det_labels == cls
        c_boxes, c_scores = cand_boxes[cand], cand_scores[cand]
        ious = bbox_overlaps(det_boxes[dets], c_boxes)
        for row, score in zip(ious, det_scores[dets], strict=True):
            near = row > 0.01
            weights = (torch.exp(-(1 - row[near]) ** 2 / 0.025) * c_scores[near])[:, None]
            boxes.append((weights * c_boxes[near]).sum(0) / weights.sum(0))
            scores.append(score)
            labels.append(cls)
    return torch.stack(boxes), torch.stack(scores), det_labels.new_tensor(labels)
