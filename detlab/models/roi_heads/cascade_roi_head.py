"""Cascade R-CNN's RoI head (Cai and Vasconcelos, 2018; MMDetection 2.28's ``CascadeRoIHead``):
``num_stages`` box heads in a row, each trained on the boxes the previous one regressed, with
an IoU threshold that rises stage by stage (``train_cfg.rcnn`` is a list, one assigner and
sampler per stage).

Training (:meth:`CascadeRoIHead.loss`): stage ``i`` assigns and samples the current proposals,
computes its losses (logged as ``s{i}.loss_cls``, ``s{i}.acc``, ``s{i}.loss_bbox`` and, with
masks, ``s{i}.loss_mask``; the losses times ``stage_loss_weights[i]``), then regresses its
sampled RoIs by their class -- the ground-truth class for positives, the predicted one for
negatives -- into the next stage's proposals, the ground truths added as proposals dropped
(:func:`refine_bboxes`).

Testing (:meth:`CascadeRoIHead.predict`): the RoIs go through every stage, each regressing
them by its predicted class (:func:`regress_by_class`); the class logits of all stages are
averaged and the last stage's deltas decode the final boxes. With a mask branch, every stage's
mask head segments the final detections and their probabilities are averaged.

Each per-stage part (``bbox_roi_extractor``, ``bbox_head``, ``mask_roi_extractor``,
``mask_head``) is a list of ``num_stages`` configs or one config used for every stage; the
stages are ``nn.ModuleList`` entries (``bbox_head.0.shared_fcs.0.weight`` ...), as in
MMDetection's checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.assigners import SamplingResult
from detlab.models.heads.base_dense_head import GroundTruth, check_cfg_keys, unpack_targets
from detlab.models.init import initialize
from detlab.models.roi_heads.base_roi_head import BaseRoIHead
from detlab.models.roi_heads.roi_extractors import boxes_to_rois
from detlab.models.roi_heads.standard_roi_head import (
    _FLIP_DIMS,
    MASK_HEADS,
    _input_boxes,
    _paste_size,
    _scale_factor,
    mask_heads_available,
)
from detlab.registry import MODELS
from detlab.structures import DetResult

TRAIN_CFG_EXAMPLE = ("model.train_cfg.rcnn=[dict(assigner=dict(type='MaxIoUAssigner', "
                     "pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5, "
                     "match_low_quality=False, ignore_iof_thr=-1), sampler=dict(type="
                     "'RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1, "
                     "add_gt_as_proposals=True), pos_weight=-1, debug=False), ...] with IoU "
                     "thresholds 0.5, 0.6, 0.7")


def regress_by_class(bbox_head: nn.Module, rois: torch.Tensor, labels: torch.Tensor,
                     bbox_pred: torch.Tensor, meta: Mapping) -> torch.Tensor:
    """``(n, 4)`` boxes or ``(n, 5)`` RoIs moved by ``bbox_head``'s deltas of their ``labels``'
    class (its only deltas when ``reg_class_agnostic``), clipped to ``meta['img_shape']``; the
    same shape back (MMDetection's ``BBoxHead.regress_by_class``). A box head with its own
    ``regress_by_class`` method is used instead."""
    own = getattr(bbox_head, "regress_by_class", None)
    if callable(own):
        return own(rois, labels, bbox_pred, meta)
    if rois.shape[1] not in (4, 5):
        raise ValueError(f"regress_by_class takes (n, 4) boxes or (n, 5) RoIs, got "
                         f"{tuple(rois.shape)}")
    if not bbox_head.reg_class_agnostic:
        columns = labels[:, None] * 4 + torch.arange(4, device=labels.device)
        bbox_pred = torch.gather(bbox_pred, 1, columns)
    if bbox_pred.shape[1] != 4:
        raise ValueError(f"regress_by_class needs 4 deltas per box, got {bbox_pred.shape[1]}")
    boxes = bbox_head.bbox_coder.decode(rois[:, -4:], bbox_pred, max_shape=meta.get("img_shape"))
    return boxes if rois.shape[1] == 4 else torch.cat([rois[:, :1], boxes], dim=1)


def refine_bboxes(bbox_head: nn.Module, rois: torch.Tensor, labels: torch.Tensor,
                  bbox_pred: torch.Tensor, pos_is_gts: Sequence[torch.Tensor | None],
                  metas: Sequence[Mapping]) -> list[torch.Tensor]:
    """The next stage's proposals during training (MMDetection's ``BBoxHead.refine_bboxes``):
    each image's sampled ``(K, 5)`` RoIs regressed by ``labels`` (:func:`regress_by_class`),
    without the positives that were ground truths added as proposals (``pos_is_gts``, the
    sampled positives come first). A box head with its own ``refine_bboxes`` is used instead."""
    own = getattr(bbox_head, "refine_bboxes", None)
    if callable(own):
        return own(rois, labels, bbox_pred, pos_is_gts, metas)
    refined = []
    for index, meta in enumerate(metas):
        inds = torch.nonzero(rois[:, 0] == index).squeeze(1)
        boxes = regress_by_class(bbox_head, rois[inds, 1:], labels[inds], bbox_pred[inds], meta)
        keep = torch.ones(inds.numel(), dtype=torch.bool, device=rois.device)
        is_gt = pos_is_gts[index]
        if is_gt is not None and len(is_gt):
            keep[:len(is_gt)] = is_gt.to(rois.device) == 0
        refined.append(boxes[keep])
    return refined


class _StageView:
    """One stage of a cascade seen as a single-stage RoI head (``_bbox_forward(x, rois)`` and
    ``bbox_head``): the context an OHEM sampler of that stage ranks its RoIs with."""

    def __init__(self, head: CascadeRoIHead, stage: int) -> None:
        self.head, self.stage = head, stage

    @property
    def bbox_head(self) -> nn.Module:
        return self.head.bbox_head[self.stage]

    def _bbox_forward(self, x: Sequence[torch.Tensor], rois: torch.Tensor) -> dict[str, Any]:
        return self.head._bbox_forward(self.stage, x, rois)


def _per_stage(cfg: Any, num_stages: int, key: str) -> list[Any]:
    """``cfg`` for each stage: a list of ``num_stages`` entries, or one entry repeated."""
    if isinstance(cfg, (list, tuple)):
        if len(cfg) != num_stages:
            raise ConfigError(f"model.roi_head.{key} has {len(cfg)} entries but num_stages is "
                              f"{num_stages}: give one per stage, or a single dict for all")
        return list(cfg)
    return [cfg] * num_stages


@MODELS.register_module()
class CascadeRoIHead(BaseRoIHead):
    """A cascade of box heads (and mask heads), each refining the previous one's boxes.

    Args:
        num_stages: how many stages (3 in the zoo).
        stage_loss_weights: each stage's loss weight (``[1, 0.5, 0.25]`` in the zoo).
        bbox_roi_extractor, bbox_head: a list of one config per stage, or one for all.
        mask_roi_extractor, mask_head: the same for the mask branch (without
            ``mask_roi_extractor`` the box branch's extractors pool the masks' RoIs).
        shared_head: not supported (MMDetection dropped it from Cascade R-CNN): must be None.
        train_cfg: ``model.train_cfg.rcnn``, a list of ``num_stages`` dicts (``assigner``,
            ``sampler``, ``pos_weight``, ``mask_size`` ...).
        test_cfg: ``model.test_cfg.rcnn`` (``score_thr``, ``nms``, ``max_per_img``,
            ``mask_thr_binary``).
        pretrained, init_cfg: as :class:`BaseRoIHead`.
    """

    def __init__(self, num_stages: int, stage_loss_weights: Sequence[float],
                 bbox_roi_extractor: Mapping | Sequence[Mapping] | None = None,
                 bbox_head: Mapping | Sequence[Mapping] | None = None,
                 mask_roi_extractor: Mapping | Sequence[Mapping] | None = None,
                 mask_head: Mapping | Sequence[Mapping] | None = None,
                 shared_head: Mapping | None = None,
                 train_cfg: Sequence[Mapping] | None = None, test_cfg: Mapping | None = None,
                 pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
            raise ConfigError(f"model.roi_head.num_stages must be a positive int, got "
                              f"{num_stages!r}")
        if not isinstance(stage_loss_weights, (list, tuple)) or \
                len(stage_loss_weights) != num_stages:
            raise ConfigError(f"model.roi_head.stage_loss_weights must list one weight per "
                              f"stage ({num_stages}), got {stage_loss_weights!r}")
        if bbox_roi_extractor is None or bbox_head is None:
            raise ConfigError("model.roi_head (CascadeRoIHead) needs bbox_roi_extractor and "
                              "bbox_head (one config, or a list of one per stage)")
        if shared_head is not None:
            raise ConfigError("model.roi_head.shared_head is not supported by CascadeRoIHead "
                              "(nor by MMDetection 2.28's): remove it")
        stage_cfgs = self._check_train_cfg(train_cfg, num_stages)
        self.num_stages = num_stages
        self.stage_loss_weights = [float(w) for w in stage_loss_weights]
        super().__init__(bbox_roi_extractor=bbox_roi_extractor, bbox_head=bbox_head,
                         mask_roi_extractor=mask_roi_extractor, mask_head=mask_head,
                         train_cfg=None, test_cfg=test_cfg, pretrained=pretrained,
                         init_cfg=init_cfg)
        self.train_cfg = stage_cfgs
        self.init_assigner_sampler()

    def _check_train_cfg(self, train_cfg: Any, num_stages: int) -> list[dict] | None:
        """``train_cfg.rcnn`` as a checked list of one plain dict per stage."""
        if train_cfg is None:
            return None
        if not isinstance(train_cfg, (list, tuple)):
            raise ConfigError(f"model.train_cfg.rcnn of a CascadeRoIHead must be a list of "
                              f"{num_stages} dicts, one per stage, e.g. {TRAIN_CFG_EXAMPLE}")
        if len(train_cfg) != num_stages:
            raise ConfigError(f"model.train_cfg.rcnn has {len(train_cfg)} entries but "
                              f"model.roi_head.num_stages is {num_stages}: give one per stage")
        return [check_cfg_keys(cfg, self.train_cfg_keys, f"model.train_cfg.rcnn[{i}]")
                for i, cfg in enumerate(train_cfg)]

    # ---- building ----------------------------------------------------------------------------

    def init_bbox_head(self, bbox_roi_extractor: Any, bbox_head: Any) -> None:
        """One ``bbox_roi_extractor`` and one ``bbox_head`` per stage (``nn.ModuleList``)."""
        extractors = _per_stage(bbox_roi_extractor, self.num_stages, "bbox_roi_extractor")
        heads = _per_stage(bbox_head, self.num_stages, "bbox_head")
        self.bbox_roi_extractor = nn.ModuleList(MODELS.build(e) for e in extractors)
        self.bbox_head = nn.ModuleList(MODELS.build(h) for h in heads)

    def init_mask_head(self, mask_roi_extractor: Any, mask_head: Any) -> None:
        """One ``mask_head`` per stage, and one ``mask_roi_extractor`` per stage (the box
        branch's extractors when None)."""
        if not mask_heads_available():
            raise ConfigError("model.roi_head.mask_head: mask heads are not built yet in detlab "
                              f"({MASK_HEADS} does not exist); remove mask_roi_extractor and "
                              "mask_head from model.roi_head to train the box branch only")
        heads = _per_stage(mask_head, self.num_stages, "mask_head")
        self.mask_head = nn.ModuleList(MODELS.build(h) for h in heads)
        if mask_roi_extractor is not None:
            extractors = _per_stage(mask_roi_extractor, self.num_stages, "mask_roi_extractor")
            self.mask_roi_extractor = nn.ModuleList(MODELS.build(e) for e in extractors)
            self.share_roi_extractor = False
        else:
            self.mask_roi_extractor = self.bbox_roi_extractor
            self.share_roi_extractor = True

    def init_assigner_sampler(self) -> None:
        """One assigner and one sampler per stage (empty lists without ``train_cfg``); an OHEM
        sampler ranks with its own stage's box branch."""
        self.bbox_assigner: list[Any] = []
        self.bbox_sampler: list[Any] = []
        for stage, cfg in enumerate(self.train_cfg or []):
            for key in ("assigner", "sampler"):
                if key not in cfg:
                    raise ConfigError(f"model.train_cfg.rcnn[{stage}] needs {key}, e.g. "
                                      f"{TRAIN_CFG_EXAMPLE}")
            self.bbox_assigner.append(MODELS.build(cfg["assigner"]))
            sampler = cfg["sampler"]
            kind = sampler.get("type") if isinstance(sampler, Mapping) else None
            if getattr(MODELS.module_dict.get(kind), "needs_context", False):
                self.bbox_sampler.append(MODELS.build(sampler, context=_StageView(self, stage)))
            else:
                self.bbox_sampler.append(MODELS.build(sampler))

    def init_weights(self) -> None:
        """Apply ``init_cfg``, then each stage's extractor's and head's own initialization
        (the stages sit in ``nn.ModuleList``\\ s, which have none of their own)."""
        initialize(self, self.init_cfg)
        for child in self.children():
            for part in child if isinstance(child, nn.ModuleList) else [child]:
                if callable(getattr(part, "init_weights", None)):
                    part.init_weights()

    # ---- forward pieces ----------------------------------------------------------------------

    def _bbox_forward(self, stage: int, x: Sequence[torch.Tensor], rois: torch.Tensor
                      ) -> dict[str, Any]:
        """Stage ``stage``'s box branch on ``(K, 5)`` RoIs: ``dict(cls_score, bbox_pred,
        bbox_feats)``."""
        extractor = self.bbox_roi_extractor[stage]
        bbox_feats = extractor(x[:extractor.num_inputs], rois)
        cls_score, bbox_pred = self.bbox_head[stage](bbox_feats)
        return dict(cls_score=cls_score, bbox_pred=bbox_pred, bbox_feats=bbox_feats)

    def _bbox_forward_train(self, stage: int, x: Sequence[torch.Tensor],
                            sampling_results: Sequence[SamplingResult],
                            gt_bboxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor],
                            rcnn_train_cfg: Mapping) -> dict[str, Any]:
        """Stage ``stage``'s box branch on its sampled RoIs, its losses under ``loss_bbox``."""
        rois = boxes_to_rois([res.bboxes for res in sampling_results])
        bbox_results = self._bbox_forward(stage, x, rois)
        head = self.bbox_head[stage]
        bbox_targets = head.get_targets(sampling_results, gt_bboxes, gt_labels, rcnn_train_cfg)
        loss_bbox = head.loss(bbox_results["cls_score"], bbox_results["bbox_pred"], rois,
                              *bbox_targets)
        bbox_results.update(loss_bbox=loss_bbox, rois=rois, bbox_targets=bbox_targets)
        return bbox_results

    def _mask_forward(self, stage: int, x: Sequence[torch.Tensor], rois: torch.Tensor
                      ) -> dict[str, Any]:
        """Stage ``stage``'s mask head on ``(K, 5)`` RoIs: ``dict(mask_pred)`` (logits)."""
        extractor = self.mask_roi_extractor[stage]
        mask_feats = extractor(x[:extractor.num_inputs], rois)
        return dict(mask_pred=self.mask_head[stage](mask_feats))

    def _mask_forward_train(self, stage: int, x: Sequence[torch.Tensor],
                            sampling_results: Sequence[SamplingResult], gt_masks: Sequence[Any],
                            rcnn_train_cfg: Mapping, bbox_feats: torch.Tensor | None = None
                            ) -> dict[str, Any]:
        """Stage ``stage``'s mask head on its positive RoIs (pooled again, also when the
        extractor is shared), its loss under ``loss_mask``."""
        pos_rois = boxes_to_rois([res.pos_bboxes for res in sampling_results])
        mask_results = self._mask_forward(stage, x, pos_rois)
        head = self.mask_head[stage]
        mask_targets = head.get_targets(sampling_results, gt_masks, rcnn_train_cfg)
        pos_labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        mask_results.update(loss_mask=head.loss(mask_results["mask_pred"], mask_targets,
                                                pos_labels))
        return mask_results

    # ---- training ----------------------------------------------------------------------------

    def _assign_and_sample(self, stage: int, proposals: torch.Tensor, gt: GroundTruth,
                           feats: Sequence[torch.Tensor], index: int) -> SamplingResult:
        """One image's ``(N, 4+)`` proposals assigned and sampled by stage ``stage``."""
        assign = self.bbox_assigner[stage].assign(proposals[:, :4], gt.boxes, gt.boxes_ignore,
                                                  gt.labels)
        sampler = self.bbox_sampler[stage]
        if getattr(sampler, "needs_features", False):
            return sampler.sample(assign, proposals, gt.boxes, gt.labels,
                                  feats=[level[index][None] for level in feats])
        return sampler.sample(assign, proposals, gt.boxes, gt.labels)

    def loss(self, feats: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
             targets: Sequence[Mapping], metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """Every stage's losses, named ``s{i}.<name>`` and weighted by
        ``stage_loss_weights[i]`` (the accuracies ``s{i}.acc`` unweighted), from the feature
        maps, each image's ``(N, 4+)`` proposals (input pixels) and the batch's targets (with
        ``masks`` for a mask branch) and metas."""
        if not self.bbox_assigner:
            raise ConfigError("CascadeRoIHead has no train_cfg, so it cannot compute a loss: "
                              f"give the model a train_cfg.rcnn list, e.g. {TRAIN_CFG_EXAMPLE}")
        if len(proposals) != len(metas):
            raise ValueError(f"roi_head.loss got {len(proposals)} proposal sets for "
                             f"{len(metas)} images")
        device = feats[0].device
        gts = unpack_targets(targets, metas, len(metas), self.bbox_head[-1].num_classes, device)
        gt_masks = [t.get("masks") for t in targets] if self.with_mask else None
        proposals = [p.to(device) for p in proposals]
        losses: dict[str, torch.Tensor] = {}
        for stage in range(self.num_stages):
            self.current_stage = stage
            cfg, weight = self.train_cfg[stage], self.stage_loss_weights[stage]
            sampling_results = [self._assign_and_sample(stage, p, gt, feats, i)
                                for i, (p, gt) in enumerate(zip(proposals, gts, strict=True))]
            bbox_results = self._bbox_forward_train(stage, feats, sampling_results,
                                                    [gt.boxes for gt in gts],
                                                    [gt.labels for gt in gts], cfg)
            stage_losses = dict(bbox_results["loss_bbox"])
            if self.with_mask:
                stage_losses.update(self._mask_forward_train(
                    stage, feats, sampling_results, gt_masks, cfg,
                    bbox_results["bbox_feats"])["loss_mask"])
            for name, value in stage_losses.items():
                losses[f"s{stage}.{name}"] = value * weight if "loss" in name else value
            if stage < self.num_stages - 1:
                head = self.bbox_head[stage]
                with torch.no_grad():
                    cls_score = bbox_results["cls_score"]
                    if head.custom_activation:
                        cls_score = head.loss_cls.get_activation(cls_score)
                    if cls_score.numel() == 0:  # no RoI at all: nothing to refine
                        break
                    labels = bbox_results["bbox_targets"][0]
                    # negatives move as their predicted class says
                    labels = torch.where(labels == head.num_classes,
                                         cls_score[:, :-1].argmax(1), labels)
                    proposals = refine_bboxes(head, bbox_results["rois"], labels,
                                              bbox_results["bbox_pred"],
                                              [res.pos_is_gt for res in sampling_results],
                                              metas)
        return losses

    # ---- testing -----------------------------------------------------------------------------

    def simple_test_bboxes(self, x: Sequence[torch.Tensor], img_metas: Sequence[Mapping],
                           proposals: Sequence[torch.Tensor], rcnn_test_cfg: Mapping | None,
                           rescale: bool = False
                           ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each image's ``(k, 5)`` detections and ``(k,)`` labels: the RoIs through every
        stage, the stages' class logits averaged, the last stage's deltas decoding the boxes
        (with ``rcnn_test_cfg`` None, all decoded boxes and class probabilities instead)."""
        counts = [len(p) for p in proposals]
        rois = boxes_to_rois(proposals)
        if rois.shape[0] == 0:
            return ([rois.new_zeros((0, 5)) for _ in proposals],
                    [rois.new_zeros((0,), dtype=torch.long) for _ in proposals])
        stage_scores = []
        for stage in range(self.num_stages):
            bbox_results = self._bbox_forward(stage, x, rois)
            image_rois = rois.split(counts, 0)
            cls_scores = bbox_results["cls_score"].split(counts, 0)
            bbox_pred = bbox_results["bbox_pred"]
            bbox_preds = bbox_pred.split(counts, 0) if isinstance(bbox_pred, torch.Tensor) \
                else self.bbox_head[stage].bbox_pred_split(bbox_pred, counts)
            stage_scores.append(cls_scores)
            if stage < self.num_stages - 1:
                head = self.bbox_head[stage]
                refined = []
                for image, score, pred, meta in zip(image_rois, cls_scores, bbox_preds,
                                                    img_metas, strict=True):
                    if image.shape[0] == 0:
                        continue
                    if head.custom_activation:
                        score = head.loss_cls.get_activation(score)
                    refined.append(regress_by_class(head, image, score[:, :-1].argmax(1),
                                                    pred, meta))
                rois = torch.cat(refined)
        last = self.bbox_head[-1]
        det_bboxes, det_labels = [], []
        for index, meta in enumerate(img_metas):
            if image_rois[index].shape[0] == 0:
                det_bboxes.append(rois.new_zeros((0, 5)))
                det_labels.append(rois.new_zeros((0,), dtype=torch.long))
                continue
            cls_score = sum(scores[index] for scores in stage_scores) / float(self.num_stages)
            boxes, labels = last.get_bboxes(image_rois[index], cls_score, bbox_preds[index],
                                            meta, rescale=rescale, cfg=rcnn_test_cfg)
            det_bboxes.append(boxes)
            det_labels.append(labels)
        return det_bboxes, det_labels

    def _mask_probs(self, x: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """``(K, C, h, w)`` mask probabilities of ``(K, 5)`` RoIs: every stage's sigmoid,
        averaged (a subclass changes how the stages' masks are predicted here)."""
        stage_probs = [self._mask_forward(stage, x, rois)["mask_pred"].sigmoid()
                       for stage in range(self.num_stages)]
        return sum(stage_probs) / float(self.num_stages)

    def predict_masks(self, x: Sequence[torch.Tensor], metas: Sequence[Mapping],
                      det_bboxes: Sequence[torch.Tensor], det_labels: Sequence[torch.Tensor],
                      results: list[DetResult], rescale: bool = True) -> list[DetResult]:
        """Every stage's mask head on the final detections, their probabilities averaged, then
        pasted by the last mask head into the original image (``rescale``) or the input's
        size, into each DetResult's ``masks`` (a flipped input's masks mirrored back, as
        :meth:`StandardRoIHead.predict_masks` does)."""
        scales = [_scale_factor(meta, d.device) for meta, d in zip(metas, det_bboxes,
                                                                   strict=True)]
        boxes = [_input_boxes(d[:, :4], s, meta) if rescale else d[:, :4]
                 for d, s, meta in zip(det_bboxes, scales, metas, strict=True)]
        probs: Sequence[torch.Tensor | None] = [None] * len(boxes)
        if any(len(b) for b in boxes):
            probs = self._mask_probs(x, boxes_to_rois(boxes)).split([len(b) for b in boxes])
        # the last stage's mask head pastes (SCNet has a single one)
        last = self.mask_head[-1] if isinstance(self.mask_head, nn.ModuleList) \
            else self.mask_head
        out = []
        for result, prob, image_boxes, labels, scale, meta in zip(
                results, probs, boxes, det_labels, scales, metas, strict=True):
            if len(image_boxes) == 0:
                masks = torch.zeros((0, *_paste_size(meta, scale, rescale)), dtype=torch.bool,
                                    device=image_boxes.device)
            else:
                masks = _paste_probabilities(last, prob, image_boxes, labels, self.test_cfg,
                                             meta["ori_shape"][:2], scale, rescale)
                if rescale and meta.get("flip"):
                    masks = masks.flip(_FLIP_DIMS[meta.get("flip_direction") or "horizontal"])
            out.append(dataclasses.replace(result, masks=masks))
        return out


def _paste_probabilities(mask_head: nn.Module, probs: torch.Tensor, boxes: torch.Tensor,
                         labels: torch.Tensor, rcnn_test_cfg: Mapping, ori_shape: Sequence[int],
                         scale: torch.Tensor, rescale: bool) -> torch.Tensor:
    """``(N, C, h, w)`` mask probabilities (not logits: the stages' average) of detections
    in input pixels pasted as ``mask_head.predict_masks`` pastes its logits' sigmoid."""
    from detlab.models.roi_heads.mask_heads import paste_masks

    if rescale:
        img_h, img_w = int(ori_shape[0]), int(ori_shape[1])
        boxes = boxes / scale
    else:
        img_h, img_w = _paste_size(dict(ori_shape=ori_shape), scale, rescale=False)
    if not getattr(mask_head, "class_agnostic", False):
        probs = probs[torch.arange(len(probs), device=probs.device), labels][:, None]
    return paste_masks(probs, boxes, img_h, img_w, rcnn_test_cfg.get("mask_thr_binary", 0.5))
