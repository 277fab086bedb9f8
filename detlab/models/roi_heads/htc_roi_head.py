"""Hybrid Task Cascade's RoI head (Chen et al., 2019; MMDetection 2.28's
``HybridTaskCascadeRoIHead``): a :class:`CascadeRoIHead` whose box and mask branches are
interleaved, whose mask heads pass features from stage to stage, and whose RoI features are
enriched by a semantic segmentation branch.

What HTC adds to the cascade, each a config switch:

- ``interleaved`` (True): with a mask branch, stage ``i``'s box head regresses its sampled RoIs
  *before* its mask head trains, and the mask head is trained on those regressed boxes,
  assigned and sampled again (the same assigner and sampler). Those regressed boxes are the
  next stage's proposals. Without a mask branch an interleaved HTC does not refine its
  proposals between stages at all (as MMDetection's). ``interleaved=False`` trains each mask
  head on its box head's own samples and refines after it, as Cascade R-CNN does.
- ``mask_info_flow`` (True): mask head ``i`` (an :class:`HTCMaskHead`) adds the features of
  mask heads ``0 .. i-1``, run in turn on the same RoIs, through its ``conv_res``.
- ``semantic_head`` (:class:`FusedSemanticHead`) with ``semantic_roi_extractor``: the
  semantic features pooled for each RoI are added to its box features and / or mask features
  (``semantic_fusion``, ``('bbox', 'mask')``), average-pooled to their size when it differs;
  the head's loss is ``loss_semantic_seg`` on the targets' ``semantic_seg`` maps.

Testing: the box stages run as Cascade R-CNN's (with semantic fusion); the final detections'
mask features (the last stage's extractor, plus semantic features) go through every mask
head in turn, each taking the previous one's features, and their probabilities are averaged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from detlab.config import ConfigError
from detlab.models.heads.base_dense_head import unpack_targets
from detlab.models.roi_heads.cascade_roi_head import CascadeRoIHead, refine_bboxes
from detlab.registry import MODELS
from detlab.structures import DetResult

SEMANTIC_FUSIONS = ("bbox", "mask")


def _pool_to(feats: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``feats`` average-pooled to ``like``'s spatial size when it differs (also for none)."""
    size = tuple(like.shape[-2:])
    if tuple(feats.shape[-2:]) == size:
        return feats
    if feats.numel() == 0:
        return feats.new_zeros((*feats.shape[:2], *size))
    return F.adaptive_avg_pool2d(feats, size)


def refine_by_targets(head: torch.nn.Module, bbox_results: Mapping[str, Any],
                      sampling_results: Sequence[Any], metas: Sequence[Mapping]
                      ) -> list[torch.Tensor]:
    """A stage's sampled RoIs regressed by ``head`` with their target classes' deltas (the
    next proposals, ground truths added as proposals dropped), as HTC and SCNet refine.
    MMDetection moves negatives by the background's deltas, which only a class-agnostic
    regressor (the zoo's) has; a class-specific one moves them by their predicted class, as
    Cascade R-CNN does, instead of failing."""
    labels = bbox_results["bbox_targets"][0]
    if not head.reg_class_agnostic:
        cls_score = bbox_results["cls_score"]
        if head.custom_activation:
            cls_score = head.loss_cls.get_activation(cls_score)
        labels = torch.where(labels == head.num_classes, cls_score[:, :-1].argmax(1), labels)
    return refine_bboxes(head, bbox_results["rois"], labels, bbox_results["bbox_pred"],
                         [res.pos_is_gt for res in sampling_results], metas)


@MODELS.register_module()
class HybridTaskCascadeRoIHead(CascadeRoIHead):
    """A cascade with interleaved box and mask branches, mask information flow and a semantic
    branch.

    Args:
        num_stages, stage_loss_weights: as :class:`CascadeRoIHead`.
        semantic_roi_extractor: the extractor pooling the semantic features for each RoI
            (``SingleRoIExtractor`` over ``featmap_strides=[8]`` in the zoo); needed with
            ``semantic_head``.
        semantic_head: the semantic segmentation branch (``FusedSemanticHead``), or None.
        semantic_fusion: where the semantic features are added: ``'bbox'`` and / or
            ``'mask'``.
        interleaved: train each mask head on its box head's regressed, resampled boxes.
        mask_info_flow: pass mask features from stage to stage (the mask heads must be
            ``HTCMaskHead``\\ s, all but the first with ``with_conv_res``).
        **kwargs: as :class:`CascadeRoIHead` (``bbox_roi_extractor``, ``bbox_head``,
            ``mask_roi_extractor``, ``mask_head``, ``train_cfg``, ``test_cfg`` ...).
    """

    def __init__(self, num_stages: int, stage_loss_weights: Sequence[float],
                 semantic_roi_extractor: Mapping | None = None,
                 semantic_head: Mapping | None = None,
                 semantic_fusion: Sequence[str] = SEMANTIC_FUSIONS, interleaved: bool = True,
                 mask_info_flow: bool = True, **kwargs: Any) -> None:
        super().__init__(num_stages, stage_loss_weights, **kwargs)
        unknown = [f for f in semantic_fusion if f not in SEMANTIC_FUSIONS]
        if unknown:
            raise ConfigError(f"model.roi_head.semantic_fusion has {unknown[0]!r}; it lists "
                              f"where semantic features are added: {SEMANTIC_FUSIONS}")
        if semantic_head is not None:
            if semantic_roi_extractor is None:
                raise ConfigError("model.roi_head.semantic_head needs a semantic_roi_extractor "
                                  "to pool its features per RoI, e.g. dict(type="
                                  "'SingleRoIExtractor', roi_layer=dict(type='RoIAlign', "
                                  "output_size=14, sampling_ratio=0), out_channels=256, "
                                  "featmap_strides=[8])")
            self.semantic_roi_extractor = MODELS.build(semantic_roi_extractor)
            self.semantic_head = MODELS.build(semantic_head)
        self.semantic_fusion = tuple(semantic_fusion)
        self.interleaved = interleaved
        self.mask_info_flow = mask_info_flow
        self._semantic_feat: torch.Tensor | None = None

    @property
    def with_semantic(self) -> bool:
        """Whether the head has a semantic segmentation branch."""
        return getattr(self, "semantic_head", None) is not None

    @contextmanager
    def _semantic(self, feats: Sequence[torch.Tensor]) -> Iterator[torch.Tensor | None]:
        """The semantic branch's ``(logits, features)`` of ``feats`` (``(None, None)`` without
        one), its features fused into the RoI features while the context is open."""
        logits, self._semantic_feat = self.semantic_head(feats) if self.with_semantic \
            else (None, None)
        try:
            yield logits
        finally:
            self._semantic_feat = None

    def _fuse(self, kind: str, feats: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """``kind`` (``'bbox'`` / ``'mask'``) RoI features plus their semantic features (when
        fused there and the semantic branch is running)."""
        if self._semantic_feat is None or kind not in self.semantic_fusion:
            return feats
        semantic = self.semantic_roi_extractor([self._semantic_feat], rois)
        return feats + _pool_to(semantic, feats)

    # ---- forward pieces ----------------------------------------------------------------------

    def _bbox_forward(self, stage: int, x: Sequence[torch.Tensor], rois: torch.Tensor
                      ) -> dict[str, Any]:
        """Stage ``stage``'s box branch on ``(K, 5)`` RoIs, semantic features added."""
        extractor = self.bbox_roi_extractor[stage]
        bbox_feats = self._fuse("bbox", extractor(x[:extractor.num_inputs], rois), rois)
        cls_score, bbox_pred = self.bbox_head[stage](bbox_feats)
        return dict(cls_score=cls_score, bbox_pred=bbox_pred, bbox_feats=bbox_feats)

    def _mask_feats(self, stage: int, x: Sequence[torch.Tensor], rois: torch.Tensor
                    ) -> torch.Tensor:
        extractor = self.mask_roi_extractor[stage]
        return self._fuse("mask", extractor(x[:extractor.num_inputs], rois), rois)

    def _mask_forward(self, stage: int, x: Sequence[torch.Tensor], rois: torch.Tensor
                      ) -> dict[str, Any]:
        """Stage ``stage``'s mask logits of ``(K, 5)`` RoIs (training's path): with
        ``mask_info_flow`` the earlier mask heads run first, each passing its features on."""
        mask_feats = self._mask_feats(stage, x, rois)
        if not self.mask_info_flow:
            return dict(mask_pred=self._logits(self.mask_head[stage](mask_feats)))
        last_feat = None
        for earlier in range(stage):
            last_feat = self.mask_head[earlier](mask_feats, last_feat, return_logits=False)
        return dict(mask_pred=self.mask_head[stage](mask_feats, last_feat, return_feat=False))

    @staticmethod
    def _logits(out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """The logits of a mask head's output (an HTCMaskHead also returns its features)."""
        return out if isinstance(out, torch.Tensor) else out[0]

    def _mask_probs(self, x: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """Test-time masks of ``(K, 5)`` RoIs: the last stage's extractor pools them once;
        every mask head's probabilities (each taking the previous one's features with
        ``mask_info_flow``) are averaged."""
        mask_feats = self._mask_feats(-1, x, rois)
        probs, last_feat = [], None
        for head in self.mask_head:
            if self.mask_info_flow:
                logits, last_feat = head(mask_feats, last_feat)
            else:
                logits = self._logits(head(mask_feats))
            probs.append(logits.sigmoid())
        return sum(probs) / float(self.num_stages)

    # ---- training ----------------------------------------------------------------------------

    def loss(self, feats: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
             targets: Sequence[Mapping], metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_semantic_seg`` (with a semantic branch) and every stage's losses, named
        ``s{i}.<name>`` and weighted by ``stage_loss_weights[i]``, as MMDetection's HTC trains
        (see the module docstring)."""
        if not self.bbox_assigner:
            raise ConfigError("HybridTaskCascadeRoIHead has no train_cfg, so it cannot compute "
                              "a loss: give the model a train_cfg.rcnn list of one dict per "
                              "stage")
        if len(proposals) != len(metas):
            raise ValueError(f"roi_head.loss got {len(proposals)} proposal sets for "
                             f"{len(metas)} images")
        device = feats[0].device
        gts = unpack_targets(targets, metas, len(metas), self.bbox_head[-1].num_classes, device)
        gt_boxes, gt_labels = [gt.boxes for gt in gts], [gt.labels for gt in gts]
        gt_masks = [t.get("masks") for t in targets] if self.with_mask else None
        proposals = [p.to(device) for p in proposals]
        losses: dict[str, torch.Tensor] = {}
        with self._semantic(feats) as semantic_logits:
            if semantic_logits is not None:
                seg = self.semantic_head.semantic_targets(targets).to(device)
                losses["loss_semantic_seg"] = self.semantic_head.loss(semantic_logits, seg)
            for stage in range(self.num_stages):
                self.current_stage = stage
                cfg, weight = self.train_cfg[stage], self.stage_loss_weights[stage]

                def sample(boxes, stage=stage):
                    return [self._assign_and_sample(stage, p, gt, feats, i)
                            for i, (p, gt) in enumerate(zip(boxes, gts, strict=True))]

                sampling_results = sample(proposals)
                bbox_results = self._bbox_forward_train(stage, feats, sampling_results,
                                                        gt_boxes, gt_labels, cfg)
                stage_losses = dict(bbox_results["loss_bbox"])
                if self.with_mask:
                    if self.interleaved:  # the mask head trains on the regressed boxes
                        with torch.no_grad():
                            proposals = self._refine(stage, bbox_results, sampling_results,
                                                     metas)
                            sampling_results = sample(proposals)
                    stage_losses.update(self._mask_forward_train(
                        stage, feats, sampling_results, gt_masks, cfg)["loss_mask"])
                if stage < self.num_stages - 1 and not self.interleaved:
                    with torch.no_grad():
                        proposals = self._refine(stage, bbox_results, sampling_results, metas)
                for name, value in stage_losses.items():
                    losses[f"s{stage}.{name}"] = value * weight if "loss" in name else value
        return losses

    def _refine(self, stage: int, bbox_results: Mapping[str, Any],
                sampling_results: Sequence[Any], metas: Sequence[Mapping]
                ) -> list[torch.Tensor]:
        return refine_by_targets(self.bbox_head[stage], bbox_results, sampling_results, metas)

    # ---- testing -----------------------------------------------------------------------------

    def predict(self, feats: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
                metas: Sequence[Mapping], rescale: bool = True) -> list[DetResult]:
        """As :meth:`CascadeRoIHead.predict`, with the semantic features fused."""
        with self._semantic(feats):
            return super().predict(feats, proposals, metas, rescale=rescale)

