"""Dynamic R-CNN's RoI head (Zhang et al., 2020; MMDetection 2.28's ``DynamicRoIHead``): the
assigner's IoU threshold and the SmoothL1 loss's ``beta`` follow the training statistics.

Every ``update_iter_interval`` iterations the IoU threshold (positive, negative and low-quality
alike) becomes the mean, over those iterations, of each batch's mean ``iou_topk``-th largest
proposal IoU (at least ``initial_iou``), and ``beta`` the median of each batch's ``beta_topk *
images``-th smallest positive regression target (its mean absolute ``dx, dy``; at most
``initial_beta``). Settings: ``train_cfg.rcnn.dynamic_rcnn = dict(iou_topk, beta_topk,
update_iter_interval, initial_iou, initial_beta)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from detlab.config import ConfigError
from detlab.models.assigners import SamplingResult
from detlab.models.assigners.max_iou_assigner import _neg_range
from detlab.models.heads.base_dense_head import GroundTruth
from detlab.models.roi_heads.base_roi_head import RCNN_TRAIN_CFG_KEYS
from detlab.models.roi_heads.standard_roi_head import StandardRoIHead
from detlab.registry import MODELS

EPS = 1e-15
DYNAMIC_KEYS = ("iou_topk", "beta_topk", "update_iter_interval", "initial_iou", "initial_beta")


@MODELS.register_module()
class DynamicRoIHead(StandardRoIHead):
    """A :class:`StandardRoIHead` whose IoU threshold and SmoothL1 ``beta`` adapt during
    training (see the module docstring). The box head's ``loss_bbox`` must be SmoothL1Loss;
    arguments as :class:`StandardRoIHead`.

    Attributes:
        iou_history, beta_history: the statistics gathered since the last update.
    """

    train_cfg_keys: ClassVar[tuple[str, ...]] = (*RCNN_TRAIN_CFG_KEYS, "dynamic_rcnn")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if type(self.bbox_head.loss_bbox).__name__ != "SmoothL1Loss":
            raise ConfigError(f"DynamicRoIHead adapts SmoothL1Loss's beta: set "
                              f"roi_head.bbox_head.loss_bbox=dict(type='SmoothL1Loss', beta=1.0,"
                              f" loss_weight=1.0), not {type(self.bbox_head.loss_bbox).__name__}")
        if self.train_cfg:
            dynamic = self.train_cfg.get("dynamic_rcnn")
            missing = [k for k in DYNAMIC_KEYS if not isinstance(dynamic, Mapping)
                       or k not in dynamic]
            if missing:
                raise ConfigError(f"DynamicRoIHead needs model.train_cfg.rcnn.dynamic_rcnn with "
                                  f"{', '.join(DYNAMIC_KEYS)}; missing {', '.join(missing)}")
        self.iou_history: list[float] = []
        self.beta_history: list[float] = []
        self._batch_ious: list[float] = []

    def assign_and_sample(self, proposals: torch.Tensor, gt: GroundTruth,
                          feats: Sequence[torch.Tensor], index: int) -> SamplingResult:
        """As :meth:`StandardRoIHead.assign_and_sample`, noting the image's ``iou_topk``-th
        largest IoU (the ground truths added as proposals counted, at IoU 1)."""
        assign = self.bbox_assigner.assign(proposals[:, :4], gt.boxes, gt.boxes_ignore,
                                           gt.labels)
        overlaps = assign.max_overlaps
        if getattr(self.bbox_sampler, "add_gt_as_proposals", False) and len(gt.boxes):
            overlaps = torch.cat([overlaps.new_ones(len(gt.boxes)), overlaps])
        topk = min(self.train_cfg["dynamic_rcnn"]["iou_topk"], len(overlaps))
        self._batch_ious.append(torch.topk(overlaps, topk).values[-1].item())
        if getattr(self.bbox_sampler, "needs_features", False):
            return self.bbox_sampler.sample(assign, proposals, gt.boxes, gt.labels,
                                            feats=[level[index][None] for level in feats])
        return self.bbox_sampler.sample(assign, proposals, gt.boxes, gt.labels)

    def loss(self, feats: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
             targets: Sequence[Mapping], metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """:meth:`StandardRoIHead.loss`, then the statistics' bookkeeping (and an update every
        ``update_iter_interval`` calls)."""
        self._batch_ious = []
        losses = super().loss(feats, proposals, targets, metas)
        self.iou_history.append(float(np.mean(self._batch_ious)))
        if len(self.iou_history) % self.train_cfg["dynamic_rcnn"]["update_iter_interval"] == 0:
            self.update_hyperparameters()
        return losses

    def _bbox_forward_train(self, x: Sequence[torch.Tensor],
                            sampling_results: Sequence[SamplingResult],
                            gt_bboxes: Sequence[torch.Tensor], gt_labels: Sequence[torch.Tensor],
                            img_metas: Sequence[Mapping]) -> dict[str, Any]:
        """The box branch's losses, noting the ``beta_topk * images``-th smallest positive
        regression target (none noted without positives: MMDetection fails there)."""
        results = super()._bbox_forward_train(x, sampling_results, gt_bboxes, gt_labels,
                                              img_metas)
        _, _, bbox_targets, bbox_weights = results["bbox_targets"]
        pos = bbox_weights[:, 0].nonzero().squeeze(1)
        if len(pos):
            target = bbox_targets[pos, :2].abs().mean(dim=1)
            topk = min(self.train_cfg["dynamic_rcnn"]["beta_topk"] * len(img_metas), len(pos))
            self.beta_history.append(torch.kthvalue(target, topk).values.item())
        return results

    def update_hyperparameters(self) -> tuple[float, float]:
        """Set the assigner's IoU thresholds and the SmoothL1 beta from the statistics since
        the last update; -> ``(iou_thr, beta)``."""
        cfg = self.train_cfg["dynamic_rcnn"]
        iou_thr = max(cfg["initial_iou"], np.mean(self.iou_history))
        self.iou_history = []
        assigner = self.bbox_assigner
        assigner.pos_iou_thr = assigner.min_pos_iou = float(iou_thr)
        assigner.neg_iou_thr = float(iou_thr)
        assigner.neg_range = _neg_range(float(iou_thr))
        loss_bbox = self.bbox_head.loss_bbox
        if not self.beta_history or np.median(self.beta_history) < EPS:
            beta = loss_bbox.beta
        else:
            beta = min(cfg["initial_beta"], float(np.median(self.beta_history)))
        self.beta_history = []
        loss_bbox.beta = float(beta)
        return float(iou_thr), float(beta)
