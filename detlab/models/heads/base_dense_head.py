"""The base of every dense head: the head contract, and the pieces every dense head shares.

- the contract: ``forward(feats) -> raw`` (a tuple of per-level map lists, e.g. ``(cls_scores,
  bbox_preds)`` or ``(cls_scores, bbox_preds, centernesses)``), ``loss(raw, targets, metas) ->
  dict`` and ``predict(raw, metas) -> list[DetResult]``;
- the ground truth of a batch unpacked from its ``targets`` dicts (:func:`unpack_targets`);
- the priors of a batch and their valid flags (:meth:`BaseDenseHead.get_priors`);
- ``train_cfg`` / ``test_cfg`` checked against the keys a head accepts, with did-you-mean;
- assignment and sampling of one image's priors (:meth:`BaseDenseHead.assign_per_image`), the
  assigner getting per-level counts and detached predictions through the assigner interface;
- ``predict`` through the one post-processing function
  (:func:`~detlab.models.heads.postprocess.dense_postprocess`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from detlab.config import ConfigError, did_you_mean
from detlab.models.assigners import PseudoSampler, SamplingResult
from detlab.models.heads.nms import check_nms_cfg
from detlab.models.heads.postprocess import dense_postprocess
from detlab.models.init import initialize
from detlab.models.utils import constant_init, thaw
from detlab.registry import MODELS
from detlab.structures import DetResult

TRAIN_CFG_KEYS = ("assigner", "sampler", "allowed_border", "pos_weight", "debug")
TEST_CFG_KEYS = ("nms_pre", "min_bbox_size", "score_thr", "nms", "max_per_img")
# classification losses that weigh easy negatives down themselves: MMDetection never samples
# for them, even when train_cfg names a sampler
UNSAMPLED_LOSSES = ("FocalLoss", "GHMC", "QualityFocalLoss")


def check_cfg_keys(cfg: Mapping | None, allowed: Sequence[str], where: str) -> dict[str, Any]:
    """``cfg`` (or ``{}``) as a plain dict, after checking that every key is in ``allowed``."""
    if cfg is None:
        return {}
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where} must be a dict, got {cfg!r}")
    for key in cfg:
        if key not in allowed:
            raise ConfigError(f"{where} has no key {key!r}.{did_you_mean(key, allowed)} It "
                              f"accepts: {', '.join(allowed)}.")
    return thaw(cfg)


def check_test_cfg(cfg: Mapping | None, allowed: Sequence[str] = TEST_CFG_KEYS
                   ) -> dict[str, Any]:
    """``test_cfg`` checked: its keys, and ``nms`` (``type='nms'`` or ``'soft_nms'``)."""
    cfg = check_cfg_keys(cfg, allowed, "test_cfg (model.test_cfg)")
    if "nms" in cfg:
        cfg["nms"] = check_nms_cfg(cfg["nms"], "model.test_cfg.nms")
    return cfg


def check_component(obj: Any, key: str, what: str, methods: Sequence[str]) -> None:
    """Fail, naming the config key, when ``obj`` (built from ``bbox_head.<key>``) lacks one of
    ``methods``."""
    usable = all(callable(getattr(obj, m, None)) for m in methods)
    if not usable or isinstance(obj, Mapping):
        raise ConfigError(f"bbox_head.{key} built a {type(obj).__name__}, which is not a {what} "
                          f"(it needs {', '.join(methods)})")


@dataclass
class GroundTruth:
    """One image's ground truth: ``boxes`` ``(G, 4)`` xyxy, ``labels`` ``(G,)`` int64 and
    ``boxes_ignore`` ``(K, 4)`` xyxy or None."""

    boxes: torch.Tensor
    labels: torch.Tensor
    boxes_ignore: torch.Tensor | None


def unpack_target(target: Mapping, meta: Mapping, num_classes: int,
                  device: torch.device) -> GroundTruth:
    """One ``targets`` dict (``boxes``, ``labels``, ``boxes_ignore``; missing ones empty) as a
    checked :class:`GroundTruth` on ``device``."""
    where = f"image {meta.get('img_id', '?')} ({meta.get('filename', 'no filename')})"
    boxes = target.get("boxes")
    boxes = torch.zeros((0, 4), device=device) if boxes is None \
        else boxes.to(device=device, dtype=torch.float32)
    labels = target.get("labels")
    labels = torch.zeros(0, dtype=torch.long, device=device) if labels is None \
        else labels.to(device).long()
    if boxes.dim() != 2 or boxes.shape[1] != 4 or labels.shape != boxes.shape[:1]:
        raise ValueError(f"{where}: targets need boxes (n, 4) and labels (n,), got boxes "
                         f"{tuple(boxes.shape)} and labels {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{where}: labels must be in 0..{num_classes - 1} "
                         f"(bbox_head.num_classes={num_classes}), got "
                         f"{sorted(set(labels.tolist()))}")
    ignore = target.get("boxes_ignore")
    ignore = ignore.to(device=device, dtype=torch.float32).reshape(-1, 4) \
        if ignore is not None and ignore.numel() else None
    return GroundTruth(boxes, labels, ignore)


def unpack_targets(targets: Sequence[Mapping], metas: Sequence[Mapping], num_images: int,
                   num_classes: int, device: torch.device) -> list[GroundTruth]:
    """The :class:`GroundTruth` of each image of a batch of ``num_images``."""
    if not len(targets) == len(metas) == num_images:
        raise ValueError(f"loss needs one target dict and one meta dict per image: got "
                         f"{num_images} images, {len(targets)} targets, {len(metas)} metas")
    return [unpack_target(t, m, num_classes, device) for t, m in zip(targets, metas, strict=True)]


@dataclass
class DensePriors:
    """The priors of a batch.

    Attributes:
        priors: ``(A, P)`` of all levels, level after level: xyxy anchors (``P = 4``) or points
            (``P = 2``, or 4 with strides).
        valid: ``(B, A)`` bool: the prior's grid cell lies in the image's ``pad_shape``.
        num_level: ``A_l`` of each level.
    """

    priors: torch.Tensor
    valid: torch.Tensor
    num_level: list[int]

    def per_level(self, values: torch.Tensor, dim: int = 0) -> list[torch.Tensor]:
        """Split ``values`` along its prior dimension ``dim`` (of size ``A``) into levels."""
        return list(values.split(self.num_level, dim=dim))


def pad_shape_of(meta: Mapping) -> Sequence[int]:
    """The padded size of an image: ``pad_shape``, else ``batch_input_shape``, else
    ``img_shape``."""
    for key in ("pad_shape", "batch_input_shape", "img_shape"):
        if meta.get(key) is not None:
            return meta[key]
    raise ValueError(f"image meta needs pad_shape (or img_shape) to place priors; it has "
                     f"{sorted(meta)}")


class BaseDenseHead(nn.Module):
    """The base of dense heads (not a head by itself: a subclass adds layers, ``forward_single``
    and ``loss``).

    Args:
        num_classes: object classes (background excluded).
        in_channels: channels of the input feature maps.
        prior_generator: anchor or point generator (config or object with ``grid_priors``,
            ``valid_flags``, ``num_base_priors``, ``num_levels``).
        bbox_coder: box coder (config or object with ``encode`` / ``decode``), or None for a
            head that decodes its boxes itself (it then overrides :meth:`decode_boxes`).
        loss_cls, loss_bbox: losses (config or module).
        train_cfg: checked against the class's ``train_cfg_keys``; ``assigner`` builds
            :attr:`assigner`, ``sampler`` :attr:`sampler` (MMDetection's rule: a sampler other
            than ``PseudoSampler``, and a classification loss other than focal-type ones).
        test_cfg: checked against the class's ``test_cfg_keys``; see :meth:`predict`.
        init_cfg: weight initialization, applied by :meth:`init_weights`.

    Attributes:
        use_sigmoid_cls, cls_out_channels: sigmoid scores (``num_classes`` outputs) or softmax
            (``num_classes + 1``, background last), from ``loss_cls.use_sigmoid``.
        num_base_priors: priors per location (the same on every level).
        sampling: whether the loss averages over sampled negatives too (see ``train_cfg``).
    """

    train_cfg_keys: ClassVar[tuple[str, ...]] = TRAIN_CFG_KEYS
    test_cfg_keys: ClassVar[tuple[str, ...]] = TEST_CFG_KEYS

    def __init__(self, num_classes: int, in_channels: int, prior_generator: Mapping | Any,
                 bbox_coder: Mapping | Any | None, loss_cls: Mapping | nn.Module,
                 loss_bbox: Mapping | nn.Module, train_cfg: Mapping | None,
                 test_cfg: Mapping | None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__()
        self.prior_generator = MODELS.build(prior_generator)
        self.bbox_coder = MODELS.build(bbox_coder) if bbox_coder is not None else None
        self.loss_cls, self.loss_bbox = MODELS.build(loss_cls), MODELS.build(loss_bbox)
        self._check_components(num_classes)
        self.num_classes, self.in_channels = num_classes, in_channels
        self.use_sigmoid_cls = bool(getattr(self.loss_cls, "use_sigmoid", False))
        self.cls_out_channels = num_classes if self.use_sigmoid_cls else num_classes + 1
        self.num_base_priors = self.prior_generator.num_base_priors[0]
        self.train_cfg = check_cfg_keys(train_cfg, self.train_cfg_keys,
                                        "train_cfg (model.train_cfg)")
        self.test_cfg = check_test_cfg(test_cfg, self.test_cfg_keys)
        self.init_cfg = thaw(init_cfg)
        self.assigner = MODELS.build(self.train_cfg["assigner"]) \
            if "assigner" in self.train_cfg else None
        self.sampling = self._samples(self.train_cfg.get("sampler"))
        self.sampler = MODELS.build(self.train_cfg["sampler"]) if self.sampling \
            else PseudoSampler()

    def _check_components(self, num_classes: int) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes <= 0:
            raise ConfigError(f"bbox_head num_classes must be a positive int (the number of "
                              f"object classes, background excluded), got {num_classes!r}")
        check_component(self.prior_generator, "anchor_generator",
                        "prior generator (anchor or point generator)",
                        ("grid_priors", "valid_flags"))
        if self.bbox_coder is not None:
            check_component(self.bbox_coder, "bbox_coder", "box coder", ("encode", "decode"))
        check_component(self.loss_cls, "loss_cls", "loss", ("__call__",))
        check_component(self.loss_bbox, "loss_bbox", "loss", ("__call__",))
        counts = set(self.prior_generator.num_base_priors)
        if len(counts) != 1:
            raise ConfigError(f"bbox_head's prior generator gives {sorted(counts)} priors per "
                              f"location on different levels; a head with shared convs needs "
                              f"the same number on every level")

    def _samples(self, sampler_cfg: Any) -> bool:
        if sampler_cfg is None:
            return False
        name = sampler_cfg.get("type") if isinstance(sampler_cfg, Mapping) \
            else type(sampler_cfg).__name__
        return str(name).split(".")[-1] != "PseudoSampler" \
            and type(self.loss_cls).__name__ not in UNSAMPLED_LOSSES

    def init_weights(self) -> None:
        """Apply ``init_cfg``; deformable convs' offset convs start at zero (MMDetection)."""
        initialize(self, self.init_cfg)
        for module in self.modules():
            if hasattr(module, "conv_offset"):
                constant_init(module.conv_offset, 0.0)

    # ---- forward -----------------------------------------------------------------------------

    def forward_single(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, ...]:
        """One level: ``(B, in_channels, H, W)`` -> the head's maps of that level (``level``
        indexes per-level modules such as scales)."""
        raise NotImplementedError(f"{type(self).__name__} must define forward_single")

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
        """Feature maps of every level -> a tuple of per-level map lists, one list per output of
        :meth:`forward_single` (e.g. ``(cls_scores, bbox_preds)``)."""
        levels = self.prior_generator.num_levels
        if len(feats) != levels:
            raise ValueError(f"{type(self).__name__} got {len(feats)} feature maps but its "
                             f"prior generator has {levels} levels; make the head's strides "
                             f"(bbox_head.anchor_generator.strides or bbox_head.strides) match "
                             f"neck.num_outs")
        outs = [self.forward_single(x, level) for level, x in enumerate(feats)]
        return tuple(list(maps) for maps in zip(*outs, strict=True))

    # ---- priors, ground truth, assignment ----------------------------------------------------

    def get_priors(self, maps: Sequence[torch.Tensor], metas: Sequence[Mapping]) -> DensePriors:
        """The priors of maps ``(B, ., H_l, W_l)`` of each level, and their valid flags for
        each image's ``pad_shape`` (priors over a batch's extra padding are invalid)."""
        sizes = [tuple(m.shape[-2:]) for m in maps]
        device = maps[0].device
        levels = self.prior_generator.grid_priors(sizes, dtype=torch.float32, device=device)
        flags = [torch.cat(self.prior_generator.valid_flags(sizes, pad_shape_of(meta), device))
                 for meta in metas]
        return DensePriors(torch.cat(levels), torch.stack(flags), [len(p) for p in levels])

    def ground_truths(self, targets: Sequence[Mapping], metas: Sequence[Mapping],
                      num_images: int, device: torch.device) -> list[GroundTruth]:
        """Each image's checked ground truth (see :func:`unpack_targets`)."""
        return unpack_targets(targets, metas, num_images, self.num_classes, device)

    def check_trainable(self) -> None:
        """Fail, saying what to add, when the head was built without an assigner."""
        if self.assigner is None:
            raise ConfigError(f"{type(self).__name__} has no assigner, so it cannot compute a "
                              f"loss: give the model a train_cfg with one, e.g. assigner=dict("
                              f"type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4)")

    def assign_per_image(self, priors: torch.Tensor, gt: GroundTruth, *,
                         num_level_priors: Sequence[int] | None = None,
                         pred_scores: torch.Tensor | None = None,
                         pred_bboxes: torch.Tensor | None = None) -> SamplingResult:
        """Assign one image's ``(N, P)`` priors with ``train_cfg.assigner`` (which gets the
        per-level counts and the ``(N, C)`` scores / ``(N, 4)`` xyxy boxes predicted for them),
        then sample with :attr:`sampler`."""
        self.check_trainable()
        labels = None if self.sampling else gt.labels
        assign = self.assigner.assign(priors, gt.boxes, gt.boxes_ignore, labels,
                                      num_level_priors=num_level_priors,
                                      pred_scores=pred_scores, pred_bboxes=pred_bboxes)
        return self.sampler.sample(assign, priors, gt.boxes)

    def decode_boxes(self, priors: torch.Tensor, bbox_preds: torch.Tensor,
                     max_shape: Sequence[int] | None = None) -> torch.Tensor:
        """``(..., P)`` priors and ``(..., K)`` box outputs -> ``(..., 4)`` xyxy boxes (clipped
        to ``max_shape``): the coder's ``decode``."""
        return self.bbox_coder.decode(priors, bbox_preds, max_shape=max_shape)

    # ---- loss and post-processing ------------------------------------------------------------

    def loss(self, raw: tuple[list[torch.Tensor], ...], targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """Losses of the raw outputs against the ground truth (one target dict and one meta
        dict per image); every key starts with ``loss``."""
        raise NotImplementedError(f"{type(self).__name__} must define loss")

    def predict(self, raw: tuple[list[torch.Tensor], ...], metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Detections of each image from ``raw = (cls_scores, bbox_preds[, score_factors])``;
        a head whose raw outputs hold anything else overrides this to pick them."""
        return self.predict_by_feat(*raw, metas=metas, rescale=rescale)

    def predict_by_feat(self, cls_scores: Sequence[torch.Tensor],
                        bbox_preds: Sequence[torch.Tensor],
                        score_factors: Sequence[torch.Tensor] | None = None, *,
                        metas: Sequence[Mapping], rescale: bool = True) -> list[DetResult]:
        """Per level ``(B, A*C, H, W)`` logits, ``(B, A*K, H, W)`` box outputs and optional
        ``(B, A, H, W)`` score-factor logits -> each image's detections, boxes in original-image
        pixels with ``rescale`` (un-flipped, divided by ``scale_factor``), else in input
        pixels. ``test_cfg``: ``nms_pre``, ``score_thr``, ``nms``, ``min_bbox_size``,
        ``max_per_img``."""
        if not self.test_cfg:
            raise ConfigError(f"{type(self).__name__} was built without test_cfg; give the model "
                              f"a test_cfg (nms_pre, score_thr, nms, max_per_img)")
        if len(metas) != cls_scores[0].shape[0]:
            raise ValueError(f"predict got {cls_scores[0].shape[0]} images but {len(metas)} "
                             f"metas")
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        priors = self.prior_generator.grid_priors(sizes, dtype=torch.float32,
                                                  device=cls_scores[0].device)
        return [dense_postprocess(
            [c[i] for c in cls_scores], [b[i] for b in bbox_preds], priors, meta, self.test_cfg,
            decode=self.decode_boxes, use_sigmoid=self.use_sigmoid_cls,
            score_factors=None if score_factors is None else [f[i] for f in score_factors],
            rescale=rescale) for i, meta in enumerate(metas)]
