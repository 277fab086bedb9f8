"""The base of anchor-based dense heads: anchors, target assignment, loss and post-processing
with MMDetection 2.x's rules (``AnchorHead`` + ``BaseDenseHead``, version >= 2.18).

A subclass builds its layers and defines ``forward_single``; everything else is here, in
separate steps: :meth:`AnchorHead.forward` (raw maps), :meth:`AnchorHead.get_targets`
(assignment), :meth:`AnchorHead.loss_by_targets` (loss) and :meth:`AnchorHead.predict`
(post-processing into :class:`~detlab.structures.DetResult`).

Shapes: ``B`` images, ``A`` anchors of all levels of one image, ``C`` classification outputs.
Raw maps are per level ``(B, A_l * C, H_l, W_l)`` and ``(B, A_l * 4, H_l, W_l)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.ops import batched_nms, nms

from detlab.config import ConfigError, did_you_mean
from detlab.models.anchors import anchor_inside_flags
from detlab.models.assigners import PseudoSampler
from detlab.models.heads.postprocess import (
    boxes_to_original,
    filter_scores_and_topk,
    levels_to_rows,
    result_meta,
)
from detlab.models.utils import thaw
from detlab.registry import MODELS
from detlab.structures import DetResult

TRAIN_CFG_KEYS = ("assigner", "sampler", "allowed_border", "pos_weight", "debug")
TEST_CFG_KEYS = ("nms_pre", "min_bbox_size", "score_thr", "nms", "max_per_img")
# split_thr is accepted from MMDetection configs; torchvision's batched_nms picks its own strategy
NMS_KEYS = ("type", "iou_threshold", "class_agnostic", "split_thr")
# losses that weigh easy negatives down themselves, so every anchor is used (no sampling)
UNSAMPLED_LOSSES = ("FocalLoss", "GHMC", "QualityFocalLoss")

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
    """

    labels: torch.Tensor
    label_weights: torch.Tensor
    bbox_targets: torch.Tensor
    bbox_weights: torch.Tensor
    num_pos: list[int]
    num_neg: list[int]
    avg_factor: float


def _check_keys(cfg: Mapping | None, allowed: Sequence[str], where: str) -> dict[str, Any]:
    if cfg is None:
        return {}
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where} must be a dict, got {cfg!r}")
    for key in cfg:
        if key not in allowed:
            raise ConfigError(f"{where} has no key {key!r}.{did_you_mean(key, allowed)} It "
                              f"accepts: {', '.join(allowed)}.")
    return thaw(cfg)


def _check_test_cfg(cfg: Mapping | None) -> dict[str, Any]:
    cfg = _check_keys(cfg, TEST_CFG_KEYS, "test_cfg (model.test_cfg)")
    if "nms" in cfg:
        nms_cfg = _check_keys(cfg["nms"], NMS_KEYS, "test_cfg.nms (model.test_cfg.nms)")
        if nms_cfg.get("type", "nms") != "nms" or "iou_threshold" not in nms_cfg:
            raise ConfigError(f"model.test_cfg.nms must be dict(type='nms', iou_threshold=...) "
                              f"(detlab runs torchvision's NMS), got {nms_cfg!r}")
    return cfg


class AnchorHead(nn.Module):
    """Shared machinery of anchor-based dense heads (not a head by itself: subclasses add
    layers and ``forward_single``).

    Args:
        num_classes: object classes (background excluded).
        in_channels: channels of the input feature maps.
        feat_channels: channels of the hidden convs.
        anchor_generator: anchor generator (config or object with ``grid_priors``,
            ``valid_flags``, ``num_base_priors``, ``num_levels``).
        bbox_coder: box coder (config or object with ``encode`` / ``decode``).
        reg_decoded_bbox: regress decoded xyxy boxes (for IoU-type losses) instead of deltas.
        loss_cls, loss_bbox: losses (config or module).
        train_cfg: ``assigner``, ``sampler``, ``allowed_border``, ``pos_weight``, ``debug``.
        test_cfg: ``nms_pre``, ``score_thr``, ``nms``, ``min_bbox_size``, ``max_per_img``.
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int,
                 anchor_generator: Mapping | Any, bbox_coder: Mapping | Any,
                 reg_decoded_bbox: bool, loss_cls: Mapping | nn.Module,
                 loss_bbox: Mapping | nn.Module, train_cfg: Mapping | None,
                 test_cfg: Mapping | None) -> None:
        super().__init__()
        self.prior_generator = MODELS.build(anchor_generator)
        self.bbox_coder = MODELS.build(bbox_coder)
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_bbox = MODELS.build(loss_bbox)
        self._check_components(num_classes)
        self.num_classes, self.in_channels, self.feat_channels = num_classes, in_channels, \
            feat_channels
        self.reg_decoded_bbox = reg_decoded_bbox
        self.use_sigmoid_cls = bool(getattr(self.loss_cls, "use_sigmoid", False))
        self.cls_out_channels = num_classes if self.use_sigmoid_cls else num_classes + 1
        self.num_base_priors = self.prior_generator.num_base_priors[0]
        self.sampling = type(self.loss_cls).__name__ not in UNSAMPLED_LOSSES
        self.train_cfg = _check_keys(train_cfg, TRAIN_CFG_KEYS, "train_cfg (model.train_cfg)")
        self.test_cfg = _check_test_cfg(test_cfg)
        self.assigner = self.sampler = None
        if train_cfg is not None:
            if "assigner" not in self.train_cfg:
                raise ConfigError("model.train_cfg needs an assigner, e.g. assigner=dict("
                                  "type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4)")
            self.assigner = MODELS.build(self.train_cfg["assigner"])
            use_sampler = self.sampling and "sampler" in self.train_cfg
            self.sampler = MODELS.build(self.train_cfg["sampler"]) if use_sampler \
                else PseudoSampler()

    def _check_components(self, num_classes: int) -> None:
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ConfigError(f"bbox_head num_classes must be a positive int (the number of "
                              f"object classes, background excluded), got {num_classes!r}")
        needs = dict(anchor_generator=(self.prior_generator, ("grid_priors", "valid_flags")),
                     bbox_coder=(self.bbox_coder, ("encode", "decode")),
                     loss_cls=(self.loss_cls, ("__call__",)),
                     loss_bbox=(self.loss_bbox, ("__call__",)))
        for key, (obj, methods) in needs.items():
            usable = all(callable(getattr(obj, m, None)) for m in methods)
            if not usable or isinstance(obj, Mapping):
                raise ConfigError(f"bbox_head.{key} built a {type(obj).__name__}, which is not "
                                  f"a {key.replace('_', ' ')} (it needs {', '.join(methods)})")
        counts = set(self.prior_generator.num_base_priors)
        if len(counts) != 1:
            raise ConfigError(f"bbox_head.anchor_generator gives {sorted(counts)} anchors per "
                              f"location on different levels; a head with shared convs needs "
                              f"the same number on every level")

    @property
    def anchor_generator(self) -> Any:
        """MMDetection's older name of :attr:`prior_generator`."""
        return self.prior_generator

    # ---- forward -----------------------------------------------------------------------------

    def forward_single(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One level: ``(B, in_channels, H, W)`` -> ``(B, A*C, H, W)``, ``(B, A*4, H, W)``."""
        raise NotImplementedError(f"{type(self).__name__} must define forward_single")

    def forward(self, feats: Sequence[torch.Tensor]) -> RawOutputs:
        """Feature maps of every level -> (classification maps, regression maps), one per
        level."""
        if len(feats) != self.prior_generator.num_levels:
            raise ValueError(f"{type(self).__name__} got {len(feats)} feature maps but its "
                             f"anchor generator has {self.prior_generator.num_levels} levels; "
                             f"make bbox_head.anchor_generator.strides match neck.num_outs")
        outs = [self.forward_single(x) for x in feats]
        return [o[0] for o in outs], [o[1] for o in outs]

    # ---- anchors and targets -----------------------------------------------------------------

    def anchors_and_flags(self, cls_scores: Sequence[torch.Tensor],
                          metas: Sequence[Mapping]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, 4)`` xyxy anchors of all levels, and ``(B, A)`` bool: inside each image's
        padded area (``pad_shape``; anchors over the batch's extra padding are invalid)."""
        sizes = [tuple(s.shape[-2:]) for s in cls_scores]
        device = cls_scores[0].device
        anchors = torch.cat(self.prior_generator.grid_priors(sizes, device=device))
        flags = [torch.cat(self.prior_generator.valid_flags(sizes, _pad_shape(meta), device))
                 for meta in metas]
        return anchors, torch.stack(flags)

    def get_targets(self, anchors: torch.Tensor, valid_flags: torch.Tensor,
                    targets: Sequence[Mapping], metas: Sequence[Mapping]) -> AnchorTargets:
        """Assign the ``(A, 4)`` anchors of each image (``valid_flags`` ``(B, A)``) to its
        ``targets`` (``boxes`` ``(n, 4)`` xyxy, ``labels`` ``(n,)``, ``boxes_ignore``)."""
        if self.assigner is None:
            raise ConfigError(f"{type(self).__name__} was built without train_cfg, so it cannot "
                              f"compute a loss; give the model a train_cfg with an assigner")
        if not len(targets) == len(metas) == len(valid_flags):
            raise ValueError(f"loss needs one target dict and one meta dict per image: got "
                             f"{len(valid_flags)} images, {len(targets)} targets, "
                             f"{len(metas)} metas")
        per_image = [self._targets_single(anchors, valid_flags[i], targets[i], metas[i])
                     for i in range(len(metas))]
        labels, label_weights, bbox_targets, bbox_weights, num_pos, num_neg = \
            zip(*per_image, strict=True)
        avg_factor = sum(max(n, 1) for n in num_pos)
        if self.sampling:
            avg_factor += sum(max(n, 1) for n in num_neg)
        return AnchorTargets(torch.stack(labels), torch.stack(label_weights),
                             torch.stack(bbox_targets), torch.stack(bbox_weights),
                             list(num_pos), list(num_neg), float(avg_factor))

    def _targets_single(self, anchors: torch.Tensor, valid: torch.Tensor, target: Mapping,
                        meta: Mapping) -> tuple:
        """Targets of one image: labels ``(A,)``, label weights ``(A,)``, box targets and
        weights ``(A, 4)``, number of positives and of negatives."""
        gt_boxes, gt_labels, gt_ignore = self._unpack_target(target, meta, anchors)
        inside = anchor_inside_flags(anchors, valid, meta["img_shape"],
                                     self.train_cfg.get("allowed_border", -1))
        idx = torch.nonzero(inside).squeeze(1)
        num = anchors.shape[0]
        labels = torch.full((num,), self.num_classes, dtype=torch.long, device=anchors.device)
        label_weights = anchors.new_zeros(num)
        bbox_targets, bbox_weights = anchors.new_zeros((num, 4)), anchors.new_zeros((num, 4))
        if idx.numel() == 0:
            return labels, label_weights, bbox_targets, bbox_weights, 0, 0
        candidates = anchors[idx]
        assign = self.assigner.assign(candidates, gt_boxes, gt_ignore,
                                      None if self.sampling else gt_labels)
        sample = self.sampler.sample(assign, candidates, gt_boxes)
        pos, neg = idx[sample.pos_inds], idx[sample.neg_inds]
        if pos.numel() > 0:
            bbox_targets[pos] = sample.pos_gt_bboxes if self.reg_decoded_bbox \
                else self.bbox_coder.encode(sample.pos_bboxes, sample.pos_gt_bboxes)
            bbox_weights[pos] = 1.0
            labels[pos] = gt_labels[sample.pos_assigned_gt_inds]
            pos_weight = self.train_cfg.get("pos_weight", -1)
            label_weights[pos] = 1.0 if pos_weight <= 0 else float(pos_weight)
        label_weights[neg] = 1.0
        return labels, label_weights, bbox_targets, bbox_weights, pos.numel(), neg.numel()

    def _unpack_target(self, target: Mapping, meta: Mapping, anchors: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``boxes`` ``(n, 4)``, ``labels`` ``(n,)`` and ``boxes_ignore`` ``(k, 4)`` or None,
        checked, on the anchors' device."""
        where = f"image {meta.get('img_id', '?')} ({meta.get('filename', 'no filename')})"
        boxes = target.get("boxes")
        boxes = anchors.new_zeros((0, 4)) if boxes is None else boxes.to(anchors)
        labels = target.get("labels")
        labels = torch.zeros(0, dtype=torch.long, device=anchors.device) if labels is None \
            else labels.to(anchors.device).long()
        if boxes.dim() != 2 or boxes.shape[1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(f"{where}: targets need boxes (n, 4) and labels (n,), got boxes "
                             f"{tuple(boxes.shape)} and labels {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"{where}: labels must be in 0..{self.num_classes - 1} "
                             f"(bbox_head.num_classes={self.num_classes}), got "
                             f"{sorted(set(labels.tolist()))}")
        ignore = target.get("boxes_ignore")
        ignore = ignore.to(anchors).reshape(-1, 4) if ignore is not None and ignore.numel() \
            else None
        return boxes, labels, ignore

    # ---- loss ----------------------------------------------------------------------------------

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls`` and ``loss_bbox`` of the raw outputs against the ground truth (one
        target dict and one meta dict per image)."""
        anchors, valid = self.anchors_and_flags(raw[0], metas)
        return self.loss_by_targets(raw, anchors, self.get_targets(anchors, valid, targets,
                                                                   metas))

    def loss_by_targets(self, raw: RawOutputs, anchors: torch.Tensor,
                        t: AnchorTargets) -> dict[str, torch.Tensor]:
        """Classification over every non-ignored anchor, regression over positives, both
        divided by ``t.avg_factor``; computed over the whole batch at once."""
        cls_scores, bbox_preds = raw
        num_images = len(t.labels)
        cls = levels_to_rows(cls_scores, self.cls_out_channels).reshape(-1, self.cls_out_channels)
        reg = levels_to_rows(bbox_preds, 4).reshape(-1, 4)
        loss_cls = self.loss_cls(cls, t.labels.reshape(-1), t.label_weights.reshape(-1),
                                 avg_factor=t.avg_factor)
        if self.reg_decoded_bbox:
            reg = self.bbox_coder.decode(anchors.expand(num_images, -1, -1).reshape(-1, 4), reg)
        loss_bbox = self.loss_bbox(reg, t.bbox_targets.reshape(-1, 4),
                                   t.bbox_weights.reshape(-1, 4), avg_factor=t.avg_factor)
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox)

    # ---- post-processing ---------------------------------------------------------------------

    def predict(self, raw: RawOutputs, metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Detections of each image: boxes in original-image pixels with ``rescale`` (clipped
        to ``img_shape``, un-flipped, divided by ``scale_factor``), else in input pixels."""
        if not self.test_cfg:
            raise ConfigError(f"{type(self).__name__} was built without test_cfg; give the model "
                              f"a test_cfg (nms_pre, score_thr, nms, max_per_img)")
        cls_scores, bbox_preds = raw
        sizes = [tuple(s.shape[-2:]) for s in cls_scores]
        anchors = self.prior_generator.grid_priors(sizes, device=cls_scores[0].device)
        results = []
        for i, meta in enumerate(metas):
            boxes, scores, labels = self.predict_single(
                [c[i] for c in cls_scores], [b[i] for b in bbox_preds], anchors, meta)
            if rescale:
                boxes = boxes_to_original(boxes, meta)
            results.append(DetResult(boxes, scores, labels, meta=result_meta(meta)))
        return results

    def predict_single(self, cls_scores: Sequence[torch.Tensor],
                       bbox_preds: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor],
                       meta: Mapping) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One image: per level ``(A_l*C, H, W)`` scores, ``(A_l*4, H, W)`` deltas and
        ``(H*W*A_l, 4)`` anchors -> boxes ``(n, 4)`` xyxy in input pixels, scores ``(n,)``,
        labels ``(n,)`` after NMS."""
        found = [self._candidates_per_level(c, b, a, meta["img_shape"])
                 for c, b, a in zip(cls_scores, bbox_preds, anchors, strict=True)]
        boxes, scores, labels = (torch.cat(parts) for parts in zip(*found, strict=True))
        return self._nms(boxes, scores, labels)

    def _candidates_per_level(self, cls_score: torch.Tensor, bbox_pred: torch.Tensor,
                              anchors: torch.Tensor, img_shape: Sequence[int]
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``nms_pre`` best (anchor, class) pairs scoring above ``score_thr``, decoded."""
        logits = cls_score.permute(1, 2, 0).reshape(-1, self.cls_out_channels).float()
        scores = logits.sigmoid() if self.use_sigmoid_cls else logits.softmax(-1)[:, :-1]
        deltas = bbox_pred.permute(1, 2, 0).reshape(-1, 4).float()
        scores, labels, keep = filter_scores_and_topk(
            scores, self.test_cfg.get("score_thr", 0.0), self.test_cfg.get("nms_pre", -1))
        boxes = self.bbox_coder.decode(anchors[keep].float(), deltas[keep], max_shape=img_shape)
        return boxes, scores, labels

    def _nms(self, boxes: torch.Tensor, scores: torch.Tensor,
             labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-class NMS (class-agnostic with ``nms.class_agnostic``), best ``max_per_img``."""
        cfg = self.test_cfg
        min_size = cfg.get("min_bbox_size", 0)
        # 0 keeps every box, as MMDetection 2.x's dense heads do (3.x drops zero-width ones)
        if min_size > 0:
            wh = boxes[:, 2:] - boxes[:, :2]
            big_enough = (wh[:, 0] > min_size) & (wh[:, 1] > min_size)
            boxes, scores, labels = boxes[big_enough], scores[big_enough], labels[big_enough]
        nms_cfg = cfg.get("nms", {"iou_threshold": 0.5})
        if nms_cfg.get("class_agnostic", False):
            keep = nms(boxes, scores, nms_cfg["iou_threshold"])
        else:
            keep = batched_nms(boxes, scores, labels, nms_cfg["iou_threshold"])
        max_per_img = cfg.get("max_per_img", -1)
        if max_per_img > 0:
            keep = keep[:max_per_img]
        return boxes[keep], scores[keep], labels[keep]


def _pad_shape(meta: Mapping) -> Sequence[int]:
    for key in ("pad_shape", "batch_input_shape", "img_shape"):
        if meta.get(key) is not None:
            return meta[key]
    raise ValueError(f"image meta needs pad_shape (or img_shape) to place anchors; it has "
                     f"{sorted(meta)}")
