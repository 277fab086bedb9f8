"""Two-stage detectors: backbone -> neck -> RPN (proposals) -> RoI head (MMDetection 2.28's
``TwoStageDetector``, ``FasterRCNN`` and ``FastRCNN``), with detlab's detector contract:
``loss(batch) -> dict``, ``predict(batch) -> list[DetResult]``, ``forward(images)`` -> the
RPN's raw maps.

The configs route their settings as MMDetection's do: ``train_cfg.rpn`` / ``test_cfg.rpn`` go to
the RPN head, ``train_cfg.rcnn`` / ``test_cfg.rcnn`` to the RoI head, and ``train_cfg.
rpn_proposal`` (else ``test_cfg.rpn``) says which proposals training passes to the RoI head.

The RPN head's side of the contract (``rpn_head``): ``loss_and_proposals(feats, targets,
metas, proposal_cfg) -> (losses, proposals)`` and ``proposals(feats, metas, rpn_test_cfg) ->
proposals``, proposals being one ``(N, 5)`` tensor (x1 y1 x2 y2 score, input pixels) per image.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.detectors.single_stage import (
    FeatureStrideWarning,
    _check_images,
    _outside_stacklevel,
    _pretrained_arg,
    feature_stride_mismatch,
)
from detlab.models.init import initialize, is_pretrained
from detlab.models.necks.neck_sequence import build_neck
from detlab.models.roi_heads import StandardRoIHead  # noqa: F401  (registers the RoI heads)
from detlab.models.utils import thaw
from detlab.registry import MODELS
from detlab.structures import Batch, DetResult


def _section(cfg: Mapping | None, key: str) -> Any:
    return None if cfg is None else thaw(cfg.get(key))


@MODELS.register_module()
class TwoStageDetector(nn.Module):
    """A backbone, an optional neck, an optional RPN head and a RoI head.

    Args:
        backbone: config or module; returns a tuple of feature maps.
        neck: config or module (or None).
        rpn_head: the first stage (config; gets ``train_cfg.rpn`` and ``test_cfg.rpn``), or
            None when the proposals come with the data (Fast R-CNN).
        roi_head: the second stage (config; gets ``train_cfg.rcnn`` and ``test_cfg.rcnn``).
        train_cfg: ``dict(rpn=..., rpn_proposal=..., rcnn=...)``.
        test_cfg: ``dict(rpn=..., rcnn=...)``.
        pretrained: deprecated: a checkpoint for the backbone.
        init_cfg: initialization of the whole detector (``Pretrained`` loads a checkpoint).

    Attributes:
        CLASSES: names of the classes, copied into every DetResult.
    """

    CLASSES: tuple[str, ...] | None = None

    def __init__(self, backbone: Mapping | nn.Module,
                 neck: Mapping | Sequence[Mapping] | nn.Module | None = None,
                 rpn_head: Mapping | nn.Module | None = None,
                 roi_head: Mapping | nn.Module | None = None,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__()
        for name, cfg in (("train_cfg", train_cfg), ("test_cfg", test_cfg)):
            if cfg is not None and not isinstance(cfg, Mapping):
                raise ConfigError(f"model.{name} of a two-stage detector must be a dict with "
                                  f"rpn and rcnn sections, got {cfg!r}")
        self.backbone = MODELS.build(backbone, **_pretrained_arg(backbone, pretrained))
        self.neck = build_neck(neck)  # a list of necks runs them in order (Libra's BFP)
        self.train_cfg, self.test_cfg = thaw(train_cfg), thaw(test_cfg)
        self.init_cfg = thaw(init_cfg)
        self.rpn_head = None
        if rpn_head is not None:
            self.rpn_head = MODELS.build(rpn_head, train_cfg=_section(train_cfg, "rpn"),
                                         test_cfg=_section(test_cfg, "rpn"))
        self.roi_head = None
        if roi_head is not None:
            self.roi_head = MODELS.build(roi_head, train_cfg=_section(train_cfg, "rcnn"),
                                         test_cfg=_section(test_cfg, "rcnn"))
        self._strides_checked = False

    @property
    def with_neck(self) -> bool:
        """Whether the detector has a neck."""
        return self.neck is not None

    @property
    def with_rpn(self) -> bool:
        """Whether the detector makes its own proposals."""
        return self.rpn_head is not None

    @property
    def with_roi_head(self) -> bool:
        """Whether the detector has a second stage."""
        return self.roi_head is not None

    @property
    def with_bbox(self) -> bool:
        """Whether the RoI head has a box branch."""
        return self.roi_head is not None and self.roi_head.with_bbox

    @property
    def with_mask(self) -> bool:
        """Whether the RoI head has a mask branch."""
        return self.roi_head is not None and self.roi_head.with_mask

    def init_weights(self) -> None:
        """Initialize every part (a ``Pretrained`` init_cfg of the detector loads it whole)."""
        initialize(self, self.init_cfg)
        if is_pretrained(self.init_cfg):
            return
        for part in (self.backbone, self.neck, self.rpn_head, self.roi_head):
            if part is not None and callable(getattr(part, "init_weights", None)):
                part.init_weights()

    def extract_feat(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, 3, H, W)`` images -> the feature maps both stages read."""
        _check_images(images)
        feats = self.backbone(images)
        feats = tuple(self.neck(feats) if self.neck is not None else feats)
        if not self._strides_checked and self.rpn_head is not None:
            self._strides_checked = True
            problem = feature_stride_mismatch(self.rpn_head, self.neck, images, feats)
            if problem is not None:
                warnings.warn(problem.replace("model.bbox_head", "model.rpn_head"),
                              FeatureStrideWarning, stacklevel=_outside_stacklevel())
        return feats

    def forward(self, images: torch.Tensor) -> Any:
        """The RPN head's raw outputs (objectness and box maps per level) of ``(B, 3, H, W)``
        images; the RoI head needs proposals, see :meth:`predict`."""
        if self.rpn_head is None:
            raise RuntimeError(f"{type(self).__name__} has no rpn_head: its forward has no "
                               f"dense output; use predict(batch) with proposals")
        return self.rpn_head(self.extract_feat(images))

    def _given_proposals(self, batch: Batch) -> list[torch.Tensor]:
        """Each image's proposals from the batch (``targets[i]['proposals']`` or
        ``metas[i]['proposals']``, put there by ``LoadProposals``)."""
        proposals = []
        for target, meta in zip(batch.targets, batch.metas, strict=True):
            found = target.get("proposals") if target else None
            found = meta.get("proposals") if found is None else found
            if found is None:
                raise ValueError(f"{type(self).__name__} has no rpn_head, so each image needs "
                                 f"its proposals (the pipeline's LoadProposals, with "
                                 f"'proposals' in Collect's keys); image "
                                 f"{meta.get('img_id', '?')} has none")
            found = torch.as_tensor(found, dtype=torch.float32, device=batch.images.device)
            proposals.append(found.reshape(-1, found.shape[-1]) if found.dim() != 2 else found)
        return proposals

    def loss(self, batch: Batch, proposals: Sequence[torch.Tensor] | None = None
             ) -> dict[str, torch.Tensor]:
        """Losses of a training batch: the RPN's (``loss_rpn_cls``, ``loss_rpn_bbox``) and the
        RoI head's (``loss_cls``, ``loss_bbox`` ...); ``acc`` is logged, not optimized.
        ``proposals`` (one ``(N, 4+)`` tensor per image, input pixels) replace the RPN's, as
        MMDetection's ``proposals=`` does; without an RPN they default to the batch's."""
        if self.roi_head is None:
            raise ConfigError(f"{type(self).__name__} needs a roi_head (model.roi_head)")
        feats = self.extract_feat(batch.images)
        losses: dict[str, torch.Tensor] = {}
        if proposals is not None:
            proposals = [p.to(batch.images.device) for p in proposals]
        elif self.rpn_head is not None:
            train_cfg, test_cfg = self.train_cfg or {}, self.test_cfg or {}
            proposal_cfg = train_cfg.get("rpn_proposal", test_cfg.get("rpn"))
            rpn_losses, proposals = self.rpn_head.loss_and_proposals(
                feats, batch.targets, batch.metas, proposal_cfg)
            losses.update(rpn_losses)
        else:
            proposals = self._given_proposals(batch)
        losses.update(self.roi_head.loss(feats, proposals, batch.targets, batch.metas))
        return losses

    @torch.no_grad()
    def predict(self, batch: Batch, rescale: bool = True,
                proposals: Sequence[torch.Tensor] | None = None) -> list[DetResult]:
        """Detections of each image of ``batch`` (original-image pixels with ``rescale``),
        the detector's ``CLASSES`` as class names. ``proposals`` replace the RPN's (without an
        RPN they default to the batch's). Call ``model.eval()`` first."""
        if self.roi_head is None:
            raise ConfigError(f"{type(self).__name__} needs a roi_head (model.roi_head)")
        feats = self.extract_feat(batch.images)
        if proposals is not None:
            proposals = [p.to(batch.images.device) for p in proposals]
        elif self.rpn_head is not None:
            proposals = self.rpn_head.proposals(feats, batch.metas,
                                                (self.test_cfg or {}).get("rpn"))
        else:
            proposals = self._given_proposals(batch)
        results = self.roi_head.predict(feats, proposals, batch.metas, rescale=rescale)
        classes = tuple(self.CLASSES) if self.CLASSES is not None else None
        for result in results:
            result.class_names = classes
        return results


class ProposingTwoStageDetector(TwoStageDetector):
    """A two-stage detector with its own RPN: ``rpn_head`` and ``roi_head`` are required, as
    in MMDetection's ``FasterRCNN``, ``MaskRCNN`` ... (the base of those detectors)."""

    def __init__(self, backbone: Mapping | nn.Module, rpn_head: Mapping | nn.Module,
                 roi_head: Mapping | nn.Module, train_cfg: Mapping | None,
                 test_cfg: Mapping | None,
                 neck: Mapping | Sequence[Mapping] | nn.Module | None = None,
                 pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(backbone=backbone, neck=neck, rpn_head=rpn_head, roi_head=roi_head,
                         train_cfg=train_cfg, test_cfg=test_cfg, pretrained=pretrained,
                         init_cfg=init_cfg)


@MODELS.register_module()
class FasterRCNN(ProposingTwoStageDetector):
    """Faster R-CNN (Ren et al., 2015): an RPN and a RoI head on shared features. Arguments
    as :class:`TwoStageDetector` (``rpn_head`` and ``roi_head`` required)."""


@MODELS.register_module()
class FastRCNN(TwoStageDetector):
    """Fast R-CNN (Girshick, 2015): a RoI head on precomputed proposals (no RPN). Each image's
    proposals come with the batch (the pipeline's ``LoadProposals``, ``targets[i]['proposals']``
    or ``metas[i]['proposals']``) or through ``loss`` / ``predict``'s ``proposals``. Arguments
    as :class:`TwoStageDetector` without ``rpn_head``."""

    def __init__(self, backbone: Mapping | nn.Module, roi_head: Mapping | nn.Module,
                 train_cfg: Mapping | None, test_cfg: Mapping | None,
                 neck: Mapping | Sequence[Mapping] | nn.Module | None = None,
                 pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(backbone=backbone, neck=neck, roi_head=roi_head, train_cfg=train_cfg,
                         test_cfg=test_cfg, pretrained=pretrained, init_cfg=init_cfg)
