"""The region proposal network as a detector of its own (MMDetection 2.28's ``RPN``): a backbone,
an optional neck and an ``rpn_head``; its results are proposals, class-agnostic boxes with an
objectness score, evaluated by their recall (``proposal_fast`` / ``proposal``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.ops import nms

from detlab.config import ConfigError
from detlab.models.detectors.single_stage import (
    FeatureStrideWarning,
    SingleStageDetector,
    _outside_stacklevel,
    _pretrained_arg,
    feature_stride_mismatch,
)
from detlab.models.heads.postprocess import boxes_to_original
from detlab.models.heads.rpn_head import proposal_results
from detlab.models.utils import thaw
from detlab.registry import MODELS
from detlab.structures import Batch, DetResult


def stage_cfg(cfg: Mapping | None, key: str, where: str) -> Any:
    """``cfg[key]`` of a two-level ``train_cfg`` / ``test_cfg`` (``rpn``, ``rcnn`` ...), None
    without ``cfg``; fails, saying how the config should look, when ``cfg`` is flat."""
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where} must be a dict with {key}=dict(...), got {cfg!r}")
    if key not in cfg:
        raise ConfigError(f"{where} has no {key!r}: the settings of the proposal stage go in "
                          f"{where}.{key}=dict(...); it has {sorted(cfg)}")
    return cfg[key]


def _as_rpn_keys(message: str) -> str:
    """A single-stage check's message about ``model.bbox_head`` as one about the RPN's
    ``model.rpn_head``."""
    return message.replace("model.bbox_head", "model.rpn_head")


@MODELS.register_module()
class RPN(SingleStageDetector):
    """Region proposal network.

    Args:
        backbone: config or module.
        neck: config or module (or None).
        rpn_head: config or module (an ``RPNHead``, a ``GARPNHead``, or a ``CascadeRPNHead``
            whose ``train_cfg.rpn`` is a list, one per stage); gets ``train_cfg.rpn`` and
            ``test_cfg.rpn``. It offers ``loss_by_feats(feats, targets, metas)`` and
            ``proposals(feats, metas)``.
        train_cfg: ``dict(rpn=dict(assigner=..., sampler=..., allowed_border, pos_weight,
            debug))``, or None for a model that only predicts.
        test_cfg: ``dict(rpn=dict(nms_pre, max_per_img, nms, min_bbox_size))``.
        pretrained: deprecated: a checkpoint for the backbone (use the backbone's init_cfg).
        init_cfg: initialization of the whole detector.

    ``predict`` returns each image's proposals as a :class:`DetResult` of class 0 (boxes in
    original-image pixels, objectness scores, best first).
    """

    # the tester saves its results as proposal files (one (n, 5) array per image), which a
    # Fast R-CNN reads as its proposal_file
    returns_proposals = True

    def __init__(self, backbone: Mapping | nn.Module,
                 neck: Mapping | Sequence[Mapping] | nn.Module | None = None,
                 rpn_head: Mapping | nn.Module | None = None, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None, pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        nn.Module.__init__(self)
        self.backbone = MODELS.build(backbone, **_pretrained_arg(backbone, pretrained))
        self.neck = MODELS.build(neck) if neck is not None else None
        if rpn_head is None:
            raise ConfigError("RPN needs an rpn_head (model.rpn_head), e.g. "
                              "dict(type='RPNHead', in_channels=256)")
        self.rpn_head = MODELS.build(
            rpn_head, train_cfg=stage_cfg(train_cfg, "rpn", "model.train_cfg"),
            test_cfg=stage_cfg(test_cfg, "rpn", "model.test_cfg"))
        self.train_cfg, self.test_cfg, self.init_cfg = thaw(train_cfg), thaw(test_cfg), \
            thaw(init_cfg)
        try:
            self._check_channels()
        except ConfigError as err:  # the single-stage check names the head bbox_head
            raise ConfigError(_as_rpn_keys(str(err))) from None
        self._strides_checked = False

    @property
    def bbox_head(self) -> nn.Module:
        """The ``rpn_head`` (the name the single-stage machinery reads)."""
        return self.rpn_head

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The feature maps of ``images``; the first call also compares the head's strides with
        the maps (see :class:`FeatureStrideWarning`)."""
        feats = self.extract_feat(images)
        if not self._strides_checked:
            self._strides_checked = True
            problem = feature_stride_mismatch(self.rpn_head, self.neck, images, feats)
            if problem is not None:
                warnings.warn(_as_rpn_keys(problem), FeatureStrideWarning,
                              stacklevel=_outside_stacklevel())
        return feats

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The head's losses of a training batch (``loss_rpn_cls`` and ``loss_rpn_bbox`` for an
        ``RPNHead``); labels are not read."""
        return self.rpn_head.loss_by_feats(self._features(batch.images), batch.targets,
                                           batch.metas)

    @torch.no_grad()
    def predict(self, batch: Batch, rescale: bool = True) -> list[DetResult]:
        """Each image's proposals (``test_cfg.rpn``) as detections of class 0, in
        original-image pixels with ``rescale``."""
        proposals = self.rpn_head.proposals(self._features(batch.images), batch.metas)
        return self._named(proposal_results(proposals, batch.metas, rescale))

    @torch.no_grad()
    def predict_aug(self, batches: Sequence[Batch]) -> list[DetResult]:
        """Test-time augmentation (the tester's entry; ``batches``: the same images under each
        augmentation, e.g. ``MultiScaleFlipAug``'s scales and flips), as MMDetection's
        ``merge_aug_proposals``: each augmentation's proposals mapped back to the original image,
        joined, NMS at ``test_cfg.rpn.nms.iou_threshold`` over all of them, the best
        ``max_per_img``."""
        cfg = self.rpn_head.test_cfg
        per_aug = [self.rpn_head.proposals(self._features(b.images), b.metas) for b in batches]
        merged = []
        for i in range(len(batches[0].metas)):
            metas = [b.metas[i] for b in batches]
            rows = torch.cat([torch.cat([boxes_to_original(p[i][:, :4], m), p[i][:, 4:]], 1)
                              for p, m in zip(per_aug, metas, strict=True)])
            rows = rows[nms(rows[:, :4].contiguous(), rows[:, 4].contiguous(),
                            float(cfg["nms"]["iou_threshold"]))]
            order = rows[:, 4].sort(descending=True)[1][:cfg.get("max_per_img", len(rows))]
            merged.append(rows[order])
        # already in original-image pixels: the metas only name the images
        return self._named(proposal_results(merged, batches[0].metas, rescale=False))

    def _named(self, results: list[DetResult]) -> list[DetResult]:
        classes = tuple(self.CLASSES) if self.CLASSES is not None else None
        for result in results:
            result.class_names = classes
        return results
