"""The base of RoI heads: the second stage of a two-stage detector, which classifies and
refines the first stage's proposals (and, with a mask branch, segments them).

The contract (:class:`BaseRoIHead`):

- ``loss(feats, proposals, targets, metas) -> dict`` of losses, from the neck's feature maps,
  one ``(N, 4)`` or ``(N, 5)`` (with scores) xyxy proposal tensor per image (input pixels) and
  the batch's target and meta dicts;
- ``predict(feats, proposals, metas, rescale=True) -> list[DetResult]``.

MMDetection's pieces keep their names so that its subclasses' overrides read the same:
``bbox_roi_extractor``, ``bbox_head``, ``mask_roi_extractor``, ``mask_head``, ``shared_head``,
``with_bbox``, ``with_mask``, ``with_shared_head``, ``init_bbox_head``, ``init_mask_head``,
``init_assigner_sampler``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.heads.base_dense_head import check_cfg_keys
from detlab.models.heads.nms import check_nms_cfg
from detlab.models.heads.postprocess import result_meta
from detlab.models.init import initialize
from detlab.models.utils import thaw
from detlab.registry import MODELS
from detlab.structures import DetResult

RCNN_TRAIN_CFG_KEYS = ("assigner", "sampler", "pos_weight", "debug", "mask_size")
RCNN_TEST_CFG_KEYS = ("score_thr", "nms", "max_per_img", "mask_thr_binary")


class BaseRoIHead(nn.Module):
    """What every RoI head has: its box branch, an optional mask branch and shared head, and
    its ``train_cfg`` (``model.train_cfg.rcnn``) / ``test_cfg`` (``model.test_cfg.rcnn``).

    Args:
        bbox_roi_extractor, bbox_head: the box branch (configs or modules).
        mask_roi_extractor, mask_head: the mask branch (the mask extractor defaults to the box
            branch's, sharing its pooled features).
        shared_head: a module between the extractor and both heads (ResNet's C4 stage).
        train_cfg: ``assigner``, ``sampler``, ``pos_weight`` (and ``mask_size``), checked
            against ``train_cfg_keys``.
        test_cfg: ``score_thr``, ``nms``, ``max_per_img`` (and ``mask_thr_binary``), checked
            against ``test_cfg_keys``.
        pretrained: deprecated; a checkpoint for the shared head.
        init_cfg: weight initialization of the head itself.
    """

    train_cfg_keys: ClassVar[tuple[str, ...]] = RCNN_TRAIN_CFG_KEYS
    test_cfg_keys: ClassVar[tuple[str, ...]] = RCNN_TEST_CFG_KEYS

    def __init__(self, bbox_roi_extractor: Mapping | nn.Module | None = None,
                 bbox_head: Mapping | nn.Module | None = None,
                 mask_roi_extractor: Mapping | nn.Module | None = None,
                 mask_head: Mapping | nn.Module | None = None,
                 shared_head: Mapping | nn.Module | None = None,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__()
        self.train_cfg = check_cfg_keys(train_cfg, self.train_cfg_keys,
                                        "model.train_cfg.rcnn") if train_cfg is not None else None
        self.test_cfg = check_cfg_keys(test_cfg, self.test_cfg_keys, "model.test_cfg.rcnn") \
            if test_cfg is not None else None
        if self.test_cfg is not None and "nms" in self.test_cfg:
            self.test_cfg["nms"] = check_nms_cfg(self.test_cfg["nms"], "model.test_cfg.rcnn.nms")
        self.init_cfg = thaw(init_cfg)
        if shared_head is not None:
            shared = shared_head if isinstance(shared_head, nn.Module) else dict(shared_head)
            if pretrained and isinstance(shared, dict):
                shared["pretrained"] = pretrained
            self.shared_head = MODELS.build(shared)
        if bbox_head is not None:
            self.init_bbox_head(bbox_roi_extractor, bbox_head)
        if mask_head is not None:
            self.init_mask_head(mask_roi_extractor, mask_head)
        self.init_assigner_sampler()

    @property
    def with_bbox(self) -> bool:
        """Whether the head has a box branch."""
        return getattr(self, "bbox_head", None) is not None

    @property
    def with_mask(self) -> bool:
        """Whether the head has a mask branch."""
        return getattr(self, "mask_head", None) is not None

    @property
    def with_shared_head(self) -> bool:
        """Whether a shared head runs between the extractors and the heads."""
        return getattr(self, "shared_head", None) is not None

    def init_bbox_head(self, bbox_roi_extractor: Any, bbox_head: Any) -> None:
        """Build the box branch."""
        raise NotImplementedError(f"{type(self).__name__} must define init_bbox_head")

    def init_mask_head(self, mask_roi_extractor: Any, mask_head: Any) -> None:
        """Build the mask branch."""
        raise NotImplementedError(f"{type(self).__name__} must define init_mask_head")

    def init_assigner_sampler(self) -> None:
        """Build the assigner and sampler of ``train_cfg``."""
        raise NotImplementedError(f"{type(self).__name__} must define init_assigner_sampler")

    def init_weights(self) -> None:
        """Apply ``init_cfg``, then each part's own initialization."""
        initialize(self, self.init_cfg)
        for child in self.children():
            if callable(getattr(child, "init_weights", None)):
                child.init_weights()

    def loss(self, feats: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
             targets: Sequence[Mapping], metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """Losses of the proposals of each image against its ground truth."""
        raise NotImplementedError(f"{type(self).__name__} must define loss")

    def predict(self, feats: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
                metas: Sequence[Mapping], rescale: bool = True) -> list[DetResult]:
        """Detections of each image from its ``(N, 4+)`` proposals (input pixels): boxes in
        original-image pixels with ``rescale``; with a mask branch, their masks. A head
        provides ``simple_test_bboxes`` (and, with masks, ``predict_masks``)."""
        name = type(self).__name__
        if not self.with_bbox:
            raise ConfigError(f"{name}.predict needs a bbox_head (model.roi_head.bbox_head)")
        if self.test_cfg is None:
            raise ConfigError(f"{name}.predict needs test settings: give the model a "
                              "test_cfg.rcnn such as dict(score_thr=0.05, nms=dict(type='nms', "
                              "iou_threshold=0.5), max_per_img=100)")
        det_bboxes, det_labels = self.simple_test_bboxes(feats, metas, proposals, self.test_cfg,
                                                         rescale=rescale)
        results = [DetResult(boxes=d[:, :4], scores=d[:, 4], labels=lbl,
                             meta=result_meta(meta))
                   for d, lbl, meta in zip(det_bboxes, det_labels, metas, strict=True)]
        if self.with_mask:
            results = self.predict_masks(feats, metas, det_bboxes, det_labels, results,
                                         rescale=rescale)
        return results
