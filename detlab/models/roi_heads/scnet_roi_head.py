"""SCNet's RoI head (Vu et al., 2021; MMDetection 2.28's ``SCNetRoIHead``) and its box head
``SCNetBBoxHead``: a three-stage cascade of box heads followed by a single mask head, with
three feature enrichments.

- The semantic branch (``semantic_head``, an ``SCNetSemanticHead``, and
  ``semantic_roi_extractor``): its features pooled per RoI are added to the box and mask RoI
  features (average-pooled to their size), its loss ``loss_semantic_seg`` on the targets'
  ``semantic_seg`` maps, as HTC's.
- The global context (``glbctx_head``, a ``GlobalContextHead``): one pooled feature per image
  added to each of its RoIs' box and mask features; its loss ``loss_glbctx`` classifies which
  classes the image holds.
- The feature relay (``feat_relay_head``): the last box stage's shared fc features of a RoI,
  made a map, added to its mask features.

Training: the box stages train and refine as Cascade R-CNN's (the RoIs moved by their target
classes' deltas; the zoo's regressors are class-agnostic); the mask head trains once, on the
last stage's positives, its loss ``loss_mask`` weighted by the sum of
``stage_loss_weights``. Testing: the box stages as Cascade R-CNN's; the detections go once
more through the last box stage for their relayed features, then through the mask head.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from detlab.config import ConfigError
from detlab.models.heads.base_dense_head import unpack_targets
from detlab.models.roi_heads.bbox_heads.convfc_bbox_head import ConvFCBBoxHead
from detlab.models.roi_heads.cascade_roi_head import CascadeRoIHead
from detlab.models.roi_heads.htc_roi_head import _pool_to, refine_by_targets
from detlab.models.roi_heads.roi_extractors import boxes_to_rois
from detlab.registry import MODELS
from detlab.structures import DetResult


@MODELS.register_module()
class SCNetBBoxHead(ConvFCBBoxHead):
    """:class:`ConvFCBBoxHead` that can also return its shared features (``x_shared``, the
    input of the class and box branches), which SCNet relays to its mask head."""

    def forward(self, x: torch.Tensor, return_shared_feat: bool = False) -> tuple:
        """RoI features -> ``(cls_score, bbox_pred)``, plus the shared features with
        ``return_shared_feat``."""
        shared = self.shared_features(x)
        cls_score, bbox_pred = self.predict_from_shared(shared)
        return (cls_score, bbox_pred, shared) if return_shared_feat else (cls_score, bbox_pred)


@MODELS.register_module()
class SCNetRoIHead(CascadeRoIHead):
    """A cascade of box heads, one mask head, semantic, global-context and relayed features.

    Args:
        num_stages, stage_loss_weights: as :class:`CascadeRoIHead`.
        semantic_roi_extractor, semantic_head: the semantic branch (or None).
        feat_relay_head: the feature relay (``FeatureRelayHead``) or None.
        glbctx_head: the global context head (``GlobalContextHead``) or None.
        **kwargs: as :class:`CascadeRoIHead`; ``mask_roi_extractor`` and ``mask_head`` are
            one config each (one mask head after the last stage), both needed.
    """

    def __init__(self, num_stages: int, stage_loss_weights: Sequence[float],
                 semantic_roi_extractor: Mapping | None = None,
                 semantic_head: Mapping | None = None, feat_relay_head: Mapping | None = None,
                 glbctx_head: Mapping | None = None, **kwargs: Any) -> None:
        super().__init__(num_stages, stage_loss_weights, **kwargs)
        if not self.with_mask:
            raise ConfigError("model.roi_head (SCNetRoIHead) needs mask_roi_extractor and "
                              "mask_head: SCNet is an instance segmentation model")
        if semantic_head is not None:
            if semantic_roi_extractor is None:
                raise ConfigError("model.roi_head.semantic_head needs a semantic_roi_extractor "
                                  "to pool its features per RoI")
            self.semantic_roi_extractor = MODELS.build(semantic_roi_extractor)
            self.semantic_head = MODELS.build(semantic_head)
        if feat_relay_head is not None:
            self.feat_relay_head = MODELS.build(feat_relay_head)
        if glbctx_head is not None:
            self.glbctx_head = MODELS.build(glbctx_head)
        self._semantic_feat: torch.Tensor | None = None
        self._glbctx_feat: torch.Tensor | None = None

    def init_mask_head(self, mask_roi_extractor: Any, mask_head: Any) -> None:
        """One mask RoI extractor and one mask head (not one per stage)."""
        if mask_roi_extractor is None:
            raise ConfigError("model.roi_head.mask_roi_extractor is needed by SCNetRoIHead "
                              "(its mask head has its own extractor)")
        self.mask_roi_extractor = MODELS.build(mask_roi_extractor)
        self.mask_head = MODELS.build(mask_head)
        self.share_roi_extractor = False

    @property
    def with_semantic(self) -> bool:
        return getattr(self, "semantic_head", None) is not None

    @property
    def with_feat_relay(self) -> bool:
        return getattr(self, "feat_relay_head", None) is not None

    @property
    def with_glbctx(self) -> bool:
        return getattr(self, "glbctx_head", None) is not None

    @contextmanager
    def _context(self, feats: Sequence[torch.Tensor]
                 ) -> Iterator[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """The semantic logits and the global-context class logits of ``feats`` (None
        without those branches), their features fused into RoI features while open."""
        seg_logits = glbctx_logits = None
        if self.with_semantic:
            seg_logits, self._semantic_feat = self.semantic_head(feats)
        if self.with_glbctx:
            glbctx_logits, self._glbctx_feat = self.glbctx_head(feats)
        try:
            yield seg_logits, glbctx_logits
        finally:
            self._semantic_feat = self._glbctx_feat = None

    def _enrich(self, feats: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """RoI features plus their semantic features and their image's global context."""
        if self._semantic_feat is not None:
            semantic = self.semantic_roi_extractor([self._semantic_feat], rois)
            feats = feats + _pool_to(semantic, feats)
        if self._glbctx_feat is not None:
            feats = feats + self._glbctx_feat[rois[:, 0].long()]
        return feats

    # ---- forward pieces ----------------------------------------------------------------------

    def _bbox_forward(self, stage: int, x: Sequence[torch.Tensor], rois: torch.Tensor
                      ) -> dict[str, Any]:
        """Stage ``stage``'s box branch: ``dict(cls_score, bbox_pred, bbox_feats,
        relayed_feat)`` (the shared fc features)."""
        extractor = self.bbox_roi_extractor[stage]
        bbox_feats = self._enrich(extractor(x[:extractor.num_inputs], rois), rois)
        cls_score, bbox_pred, shared = self.bbox_head[stage](bbox_feats,
                                                             return_shared_feat=True)
        return dict(cls_score=cls_score, bbox_pred=bbox_pred, bbox_feats=bbox_feats,
                    relayed_feat=shared)

    def _mask_logits(self, x: Sequence[torch.Tensor], rois: torch.Tensor,
                     relayed: torch.Tensor | None) -> torch.Tensor:
        extractor = self.mask_roi_extractor
        mask_feats = self._enrich(extractor(x[:extractor.num_inputs], rois), rois)
        if self.with_feat_relay and relayed is not None:
            mask_feats = mask_feats + relayed
        return self.mask_head(mask_feats)

    def _mask_probs(self, x: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """Test-time mask probabilities of the detections' ``(K, 5)`` RoIs: the last box
        stage's relayed features, then the mask head."""
        relayed = None
        if self.with_feat_relay:
            relayed = self.feat_relay_head(self._bbox_forward(-1, x, rois)["relayed_feat"])
        return self._mask_logits(x, rois, relayed).sigmoid()

    # ---- training ----------------------------------------------------------------------------

    def loss(self, feats: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
             targets: Sequence[Mapping], metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_semantic_seg``, ``loss_glbctx``, every stage's box losses (``s{i}.``,
        weighted) and ``loss_mask`` (see the module docstring)."""
        if not self.bbox_assigner:
            raise ConfigError("SCNetRoIHead has no train_cfg, so it cannot compute a loss: "
                              "give the model a train_cfg.rcnn list of one dict per stage")
        if len(proposals) != len(metas):
            raise ValueError(f"roi_head.loss got {len(proposals)} proposal sets for "
                             f"{len(metas)} images")
        device = feats[0].device
        gts = unpack_targets(targets, metas, len(metas), self.bbox_head[-1].num_classes, device)
        gt_labels = [gt.labels for gt in gts]
        proposals = [p.to(device) for p in proposals]
        losses: dict[str, torch.Tensor] = {}
        with self._context(feats) as (seg_logits, glbctx_logits):
            if seg_logits is not None:
                seg = self.semantic_head.semantic_targets(targets).to(device)
                losses["loss_semantic_seg"] = self.semantic_head.loss(seg_logits, seg)
            if glbctx_logits is not None:
                losses["loss_glbctx"] = self.glbctx_head.loss(glbctx_logits, gt_labels)
            for stage in range(self.num_stages):
                self.current_stage = stage
                cfg, weight = self.train_cfg[stage], self.stage_loss_weights[stage]
                sampling_results = [self._assign_and_sample(stage, p, gt, feats, i)
                                    for i, (p, gt) in enumerate(zip(proposals, gts,
                                                                    strict=True))]
                bbox_results = self._bbox_forward_train(stage, feats, sampling_results,
                                                        [gt.boxes for gt in gts], gt_labels,
                                                        cfg)
                for name, value in bbox_results["loss_bbox"].items():
                    losses[f"s{stage}.{name}"] = value * weight if "loss" in name else value
                if stage < self.num_stages - 1:
                    with torch.no_grad():
                        proposals = refine_by_targets(self.bbox_head[stage], bbox_results,
                                                      sampling_results, metas)
            relayed = None
            if self.with_feat_relay:
                pos = torch.cat([torch.arange(len(res.pos_bboxes)) + start for res, start in
                                 zip(sampling_results, _starts(sampling_results),
                                     strict=True)]).to(device)
                relayed = self.feat_relay_head(bbox_results["relayed_feat"][pos])
            pos_rois = boxes_to_rois([res.pos_bboxes for res in sampling_results])
            mask_pred = self._mask_logits(feats, pos_rois, relayed)
            gt_masks = [t.get("masks") for t in targets]
            mask_targets = self.mask_head.get_targets(sampling_results, gt_masks, cfg)
            pos_labels = torch.cat([res.pos_gt_labels for res in sampling_results])
            loss_mask = self.mask_head.loss(mask_pred, mask_targets, pos_labels)["loss_mask"]
            losses["loss_mask"] = sum(self.stage_loss_weights) * loss_mask
        return losses

    # ---- testing -----------------------------------------------------------------------------

    def predict(self, feats: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
                metas: Sequence[Mapping], rescale: bool = True) -> list[DetResult]:
        """As :meth:`CascadeRoIHead.predict`, with the semantic and global-context features
        fused and the mask head's single prediction."""
        with self._context(feats):
            return super().predict(feats, proposals, metas, rescale=rescale)


def _starts(sampling_results: Sequence[Any]) -> list[int]:
    """Where each image's sampled RoIs start in the batch's RoIs."""
    starts, start = [], 0
    for res in sampling_results:
        starts.append(start)
        start += len(res.bboxes)
    return starts
