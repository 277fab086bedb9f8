"""Guided-anchoring RPN (MMDetection 2.28's ``GARPNHead``): the region proposal network on
guided anchors -- a 3x3 conv (``rpn_conv``) and ReLU, then
:class:`~detlab.models.heads.guided_anchor_head.GuidedAnchorHead`'s location, shape, feature
adaption, objectness and box layers.

Losses ``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_anchor_shape`` and ``loss_anchor_loc``; every
ground-truth box is an object. Proposals follow MMDetection's ``GARPNHead._get_bboxes_single``,
which differs from ``RPNHead``'s: per level, the guided anchors of the locations kept
(location probability at least ``loc_filter_thr`` in eval mode, every location while
training), their best ``nms_pre`` by objectness, boxes decoded and clipped, ``min_bbox_size``,
NMS *within the level*, its best ``nms_post``; then over all levels either one more NMS
(``nms_across_levels``) or the best ``max_per_img`` by score. ``nms`` must be plain NMS; the
deprecated ``nms_thr`` / ``max_num`` keys are read as ``nms.iou_threshold`` / ``max_per_img``
with a warning, as MMDetection does.

It offers :class:`~detlab.models.heads.rpn_head.RPNHead`'s proposal interface
(``loss_by_feats``, ``loss_and_proposals``, ``proposals``, ``predict``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from detlab.config import ConfigError
from detlab.models.heads.base_dense_head import TEST_CFG_KEYS, GroundTruth, check_test_cfg
from detlab.models.heads.guided_anchor_head import GA_INIT, GuidedAnchorHead
from detlab.models.heads.postprocess import class_probabilities, map_to_rows
from detlab.models.heads.rpn_head import class_agnostic_truths, proposal_results
from detlab.registry import MODELS
from detlab.structures import DetResult

GA_RPN_TEST_CFG_KEYS = TEST_CFG_KEYS + ("nms_post", "nms_across_levels", "nms_thr", "max_num")


@MODELS.register_module()
class GARPNHead(GuidedAnchorHead):
    """Guided-anchoring region proposal head.

    Args:
        in_channels: channels of the input feature maps (also what the guided-anchoring
            layers read after ``rpn_conv``, as in MMDetection: keep ``feat_channels`` equal).
        init_cfg: weight initialization (default: normal std 0.01, the location bias at the
            0.01 prior).
        **kwargs: :class:`GuidedAnchorHead`'s other arguments (``feat_channels``, the anchor
            generators and coders, ``loc_filter_thr``, the four losses, ``train_cfg`` -- the
            detector's ``train_cfg.rpn`` -- and ``test_cfg`` -- its ``test_cfg.rpn``).
    """

    test_cfg_keys = GA_RPN_TEST_CFG_KEYS

    def __init__(self, in_channels: int,
                 init_cfg: Mapping | Sequence[Mapping] | None = GA_INIT, **kwargs: Any) -> None:
        if kwargs.pop("num_classes", 1) != 1:
            raise ConfigError("rpn_head.num_classes must be 1 (one class, 'object'); drop the "
                              "key")
        super().__init__(1, in_channels, init_cfg=init_cfg, **kwargs)

    def _build_layers(self) -> None:
        self.rpn_conv = nn.Conv2d(self.in_channels, self.feat_channels, 3, padding=1)
        super()._build_layers()

    def forward_single(self, x: torch.Tensor, level: int = 0) -> tuple[torch.Tensor, ...]:
        """One level: ``rpn_conv`` + ReLU, then the guided-anchoring outputs (objectness, box
        deltas, shape, location)."""
        return super().forward_single(F.relu(self.rpn_conv(x)), level)

    # ---- training ------------------------------------------------------------------------------

    def ground_truths(self, targets: Sequence[Mapping], metas: Sequence[Mapping],
                      num_images: int, device: torch.device) -> list[GroundTruth]:
        """Each image's boxes, all of class 0 (a target's ``labels`` are not read)."""
        return class_agnostic_truths(targets, metas, num_images, device)

    def loss(self, raw: tuple[list[torch.Tensor], ...], targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_anchor_shape`` and ``loss_anchor_loc``."""
        losses = super().loss(raw, targets, metas)
        return dict(loss_rpn_cls=losses["loss_cls"], loss_rpn_bbox=losses["loss_bbox"],
                    loss_anchor_shape=losses["loss_shape"], loss_anchor_loc=losses["loss_loc"])

    def loss_by_feats(self, feats: Sequence[torch.Tensor], targets: Sequence[Mapping],
                      metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """The losses of the feature maps of a training batch."""
        return self.loss(self(feats), targets, metas)

    def loss_and_proposals(self, feats: Sequence[torch.Tensor], batch_or_targets: Any,
                           metas: Sequence[Mapping], proposal_cfg: Mapping | None = None
                           ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """The losses and, from the same outputs, each image's ``(N, 5)`` proposals under
        ``proposal_cfg`` (None: ``test_cfg``)."""
        targets = getattr(batch_or_targets, "targets", batch_or_targets)
        raw = self(feats)
        return self.loss(raw, targets, metas), self.proposals_by_feat(raw, metas, proposal_cfg)

    # ---- proposals -----------------------------------------------------------------------------

    def proposals(self, feats: Sequence[torch.Tensor], metas: Sequence[Mapping],
                  cfg: Mapping | None = None) -> list[torch.Tensor]:
        """Each image's ``(N, 5)`` proposals (input pixels) under ``cfg`` (None:
        ``test_cfg``)."""
        return self.proposals_by_feat(self(feats), metas, cfg)

    def proposal_cfg(self, cfg: Mapping | None) -> dict[str, Any]:
        """``cfg`` (or ``test_cfg``) checked, the deprecated keys read as MMDetection reads
        them."""
        if cfg is None and not self.test_cfg:
            raise ConfigError("GARPNHead was built without test_cfg; give the model "
                              "test_cfg.rpn (nms_pre, nms_post, max_per_img, nms, min_bbox_size)")
        cfg = dict(self.test_cfg if cfg is None else check_test_cfg(cfg, self.test_cfg_keys))
        if "nms" not in cfg or "max_num" in cfg or "nms_thr" in cfg:
            warnings.warn("in rpn_proposal / test_cfg.rpn, nms_thr is now nms=dict("
                          "iou_threshold=...) and max_num is max_per_img", DeprecationWarning,
                          stacklevel=3)
        if "nms" not in cfg:
            if "nms_thr" not in cfg:
                raise ConfigError("GARPNHead's proposal settings need nms=dict(type='nms', "
                                  "iou_threshold=...)")
            cfg["nms"] = dict(type="nms", iou_threshold=cfg["nms_thr"])
        if "max_num" in cfg:
            if "max_per_img" in cfg and cfg["max_per_img"] != cfg["max_num"]:
                raise ConfigError(f"max_num={cfg['max_num']} and max_per_img="
                                  f"{cfg['max_per_img']} disagree; drop max_num")
            cfg["max_per_img"] = cfg["max_num"]
        if "nms_thr" in cfg and cfg["nms"].get("iou_threshold") != cfg["nms_thr"]:
            raise ConfigError(f"nms_thr={cfg['nms_thr']} and nms.iou_threshold="
                              f"{cfg['nms'].get('iou_threshold')} disagree; drop nms_thr")
        if cfg["nms"].get("type", "nms") != "nms":
            raise ConfigError("GARPNHead's proposals take plain NMS only (nms=dict(type='nms', "
                              f"...)), got {cfg['nms']}")
        for key in ("nms_pre", "nms_post", "max_per_img"):
            if key not in cfg:
                raise ConfigError(f"GARPNHead's proposal settings (test_cfg.rpn or "
                                  f"train_cfg.rpn_proposal) need {key}")
        return cfg

    @torch.no_grad()
    def proposals_by_feat(self, raw: tuple[list[torch.Tensor], ...], metas: Sequence[Mapping],
                          cfg: Mapping | None = None) -> list[torch.Tensor]:
        """The raw outputs ``(cls_scores, bbox_preds, shape_preds, loc_preds)`` -> each image's
        ``(N, 5)`` proposals in input pixels (see the module's docstring)."""
        cfg = self.proposal_cfg(cfg)
        cls_scores, bbox_preds, shape_preds, loc_preds = raw
        if len(metas) != cls_scores[0].shape[0]:
            raise ValueError(f"proposals got {cls_scores[0].shape[0]} images but {len(metas)} "
                             f"metas")
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        squares = self.prior_generator.grid_priors(sizes, dtype=torch.float32,
                                                   device=cls_scores[0].device)
        return [self._proposals_single([m[i].detach() for m in cls_scores],
                                       [m[i].detach() for m in bbox_preds],
                                       [m[i].detach() for m in shape_preds],
                                       [m[i].detach() for m in loc_preds], squares, meta, cfg)
                for i, meta in enumerate(metas)]

    def _proposals_single(self, cls_scores: Sequence[torch.Tensor],
                          bbox_preds: Sequence[torch.Tensor], shape_preds: Sequence[torch.Tensor],
                          loc_preds: Sequence[torch.Tensor], squares: Sequence[torch.Tensor],
                          meta: Mapping, cfg: Mapping) -> torch.Tensor:
        thr = 0.0 if self.training else self.loc_filter_thr
        iou = float(cfg["nms"]["iou_threshold"])
        found = []
        for cls, reg, shape, loc, prior in zip(cls_scores, bbox_preds, shape_preds, loc_preds,
                                               squares, strict=True):
            num = prior.shape[0]
            keep = (loc.sigmoid() >= thr).permute(1, 2, 0).expand(
                -1, -1, self.num_base_priors).reshape(-1)
            if not keep.any():
                continue
            anchors = self.guided_anchors(prior[keep], map_to_rows(shape.float(), num)[keep])
            scores = class_probabilities(map_to_rows(cls.float(), num),
                                         self.use_sigmoid_cls)[:, 0][keep]
            deltas = map_to_rows(reg.float(), num)[keep]
            if 0 < cfg["nms_pre"] < scores.shape[0]:
                top = scores.topk(cfg["nms_pre"])[1]
                anchors, deltas, scores = anchors[top], deltas[top], scores[top]
            boxes = self.bbox_coder.decode(anchors, deltas, max_shape=meta["img_shape"])
            min_size = cfg.get("min_bbox_size", 0)
            if min_size >= 0:
                wh = boxes[:, 2:] - boxes[:, :2]
                big = (wh[:, 0] > min_size) & (wh[:, 1] > min_size)
                boxes, scores = boxes[big], scores[big]
            kept = nms(boxes, scores, iou)[:cfg["nms_post"]]
            found.append(torch.cat([boxes[kept], scores[kept, None]], dim=1))
        if not found:
            return squares[0].new_zeros((0, 5))
        proposals = torch.cat(found)
        if cfg.get("nms_across_levels", False):
            return proposals[nms(proposals[:, :4], proposals[:, 4], iou)][:cfg["max_per_img"]]
        top = proposals[:, 4].topk(min(cfg["max_per_img"], len(proposals)))[1]
        return proposals[top]

    def predict(self, raw: tuple[list[torch.Tensor], ...], metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Each image's proposals as detections of class 0 (``test_cfg``), in original-image
        pixels with ``rescale``."""
        return proposal_results(self.proposals_by_feat(raw, metas), metas, rescale)
