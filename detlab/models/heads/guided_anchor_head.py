"""Guided Anchoring (Wang et al., 2019; MMDetection 2.x's ``GuidedAnchorHead`` and
``GARetinaHead``): anchors whose locations and shapes the head predicts.

At every location a head predicts, besides class scores and box deltas, how likely an object's
center lies there (``loc_pred``, one logit) and the shape of the anchor it should use
(``shape_pred``: ``(dw, dh)`` applied to the location's square, the *guided anchor*). The
features for classification and regression are adapted to that shape by a deformable conv
whose offsets come from the shape prediction (:class:`FeatureAdaption`). At test time only
locations scoring ``loc_filter_thr`` or more are kept (a masked conv in MMDetection; here the
conv of every location, zeroed elsewhere -- the same outputs).

Training has three kinds of boxes: the ``approxs`` (RetinaNet's anchors of several scales and
ratios at each location) that stand for a square when the shape targets are assigned
(``train_cfg.ga_assigner``, an ``ApproxMaxIoUAssigner``, and ``ga_sampler``); the ``squares``
(one per location) the shapes are predicted from; the guided anchors the classification and
box targets are assigned to (``train_cfg.assigner``). The losses:

- ``loss_loc``: focal loss of the location map against a center region of each object on the
  level of its size (``center_ratio`` of the box), ignored around it (``ignore_ratio``) and on
  the neighbouring levels, 0.1 weight elsewhere. As in MMDetection 2.x, the map's target 1 is
  passed as a class index to a one-class sigmoid focal loss, which reads index 0 as the class
  and 1 as background; kept as is so that MMDetection's weights and losses carry over.
- ``loss_shape``: bounded IoU of the guided anchors of the shape positives with their objects.
- ``loss_cls`` / ``loss_bbox``: :class:`AnchorHead`'s, on the guided anchors.

Raw outputs: ``(cls_scores, bbox_preds, shape_preds, loc_preds)``, per level ``(B, A*C, H, W)``,
``(B, A*4, H, W)``, ``(B, A*2, H, W)`` and ``(B, 1, H, W)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.anchors import (
    check_approx_and_square,
    squares_inside_flags,
)
from detlab.models.assigners import PseudoSampler
from detlab.models.heads.anchor_head import AnchorHead, AnchorTargets
from detlab.models.heads.base_dense_head import (
    TEST_CFG_KEYS,
    TRAIN_CFG_KEYS,
    GroundTruth,
    pad_shape_of,
)
from detlab.models.heads.nms import multiclass_nms
from detlab.models.heads.postprocess import (
    DEFAULT_NMS,
    boxes_to_original,
    levels_to_rows,
    map_to_rows,
    result_meta,
)
from detlab.models.heads.retina_head import DELTA_CODER, FOCAL
from detlab.models.init import initialize
from detlab.models.ops.deform_conv import DeformConv2d
from detlab.models.utils import ConvModule, frozen
from detlab.registry import MODELS
from detlab.structures import DetResult

# guided anchors may be far from square: MMDetection decodes them with a wide ratio clip
SHAPE_RATIO_CLIP = 1e-6
BOUNDED_IOU = frozen(type="BoundedIoULoss", beta=0.2, loss_weight=1.0)
GA_APPROX = frozen(type="AnchorGenerator", octave_base_scale=8, scales_per_octave=3,
                   ratios=(0.5, 1.0, 2.0), strides=(4, 8, 16, 32, 64))
GA_SQUARE = frozen(type="AnchorGenerator", ratios=(1.0,), scales=(8,), strides=(4, 8, 16, 32, 64))
SIGMOID_CE = frozen(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0)
SMOOTH_L1 = frozen(type="SmoothL1Loss", beta=1.0, loss_weight=1.0)
GA_INIT = frozen(type="Normal", layer="Conv2d", std=0.01,
                 override=frozen(type="Normal", name="conv_loc", std=0.01, bias_prob=0.01))
GA_RETINA_INIT = frozen(type="Normal", layer="Conv2d", std=0.01, override=(
    frozen(type="Normal", name="conv_loc", std=0.01, bias_prob=0.01),
    frozen(type="Normal", name="retina_cls", std=0.01, bias_prob=0.01)))
FEATURE_ADAPTION_INIT = frozen(type="Normal", layer="Conv2d", std=0.1,
                               override=frozen(type="Normal", name="conv_adaption", std=0.01))
GA_TRAIN_CFG_KEYS = TRAIN_CFG_KEYS + ("ga_assigner", "ga_sampler", "center_ratio",
                                      "ignore_ratio")


class MaskedConv2d(nn.Conv2d):
    """A conv whose output is kept only where ``mask`` is set (mmcv's ``MaskedConv2d``, which
    computes only those locations): ``forward(x, mask)`` with ``mask`` ``(B, H, W)`` bool or
    None (every location)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(x)
        if mask is None:
            return out
        return out * mask[:, None].to(out.dtype)


class FeatureAdaption(nn.Module):
    """Features adapted to the predicted anchor shape: a deformable conv (DCN v1) whose offsets
    a 1x1 conv computes from the (detached) ``(dw, dh)`` shape map, then ReLU.

    Args:
        in_channels, out_channels: of the deformable conv.
        kernel_size: of the deformable conv (padding keeps the size).
        deform_groups: offset groups of the deformable conv.
        init_cfg: weight initialization (default: MMDetection's, normal std 0.1 for the offset
            conv and 0.01 for the deformable conv).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 deform_groups: int = 4,
                 init_cfg: Mapping | Sequence[Mapping] | None = FEATURE_ADAPTION_INIT) -> None:
        super().__init__()
        self.conv_offset = nn.Conv2d(2, deform_groups * kernel_size * kernel_size * 2, 1,
                                     bias=False)
        self.conv_adaption = DeformConv2d(in_channels, out_channels, kernel_size=kernel_size,
                                          padding=(kernel_size - 1) // 2,
                                          deform_groups=deform_groups)
        self.relu = nn.ReLU(inplace=True)
        self.init_cfg = init_cfg
        initialize(self, init_cfg, load_pretrained=False)

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` features, ``(B, 2, H, W)`` shape map -> ``(B,
        out_channels, H, W)``."""
        return self.relu(self.conv_adaption(x, self.conv_offset(shape.detach())))


def takes_approxs(assigner: Any) -> bool:
    """Whether ``assigner.assign`` accepts the ``approxs`` of the squares it assigns."""
    return "approxs" in inspect.signature(assigner.assign).parameters


def center_region(box: torch.Tensor, ratio: float, size: Sequence[int]) -> tuple[int, ...]:
    """The cells ``x1, y1, x2, y2`` (inclusive, clamped to ``[0, w]`` / ``[0, h]``) of the part
    of ``box`` (in cells) left after cutting ``ratio`` of its width and height from each side
    (MMDetection's ``calc_region``)."""
    x1 = torch.round((1 - ratio) * box[0] + ratio * box[2]).long()
    y1 = torch.round((1 - ratio) * box[1] + ratio * box[3]).long()
    x2 = torch.round(ratio * box[0] + (1 - ratio) * box[2]).long()
    y2 = torch.round(ratio * box[1] + (1 - ratio) * box[3]).long()
    h, w = size
    return (int(x1.clamp(min=0, max=w)), int(y1.clamp(min=0, max=h)),
            int(x2.clamp(min=0, max=w)), int(y2.clamp(min=0, max=h)))


class GuidedAnchorHead(AnchorHead):
    """The Guided Anchoring head (MMDetection's ``GuidedAnchorHead``; registered subclasses
    such as :class:`GARetinaHead` add towers).

    Args:
        num_classes: object classes (background excluded).
        in_channels: channels of the input feature maps.
        feat_channels: channels of the adapted features.
        approx_anchor_generator: the anchors that stand for a square in shape assignment.
        square_anchor_generator: the squares (one per location) whose shapes are predicted;
            ``scales[0]`` must be the approx generator's ``octave_base_scale``, strides the same.
        anchor_coder: decodes the ``(dw, dh)`` shape predictions on the squares.
        bbox_coder: decodes the box deltas on the guided anchors.
        reg_decoded_bbox: regress decoded boxes (for IoU losses) instead of deltas.
        deform_groups: offset groups of the feature adaption's deformable conv.
        loc_filter_thr: at test time, locations whose location probability is below it are
            dropped.
        train_cfg: :class:`AnchorHead`'s keys, plus ``ga_assigner`` (one taking ``approxs``,
            e.g. ``ApproxMaxIoUAssigner``), ``ga_sampler`` (optional), ``center_ratio`` and
            ``ignore_ratio`` (the location map's positive and ignored regions).
        test_cfg: ``nms_pre``, ``score_thr``, ``nms``, ``max_per_img`` (``min_bbox_size`` is
            accepted and, as in MMDetection, not applied).
        loss_loc, loss_shape, loss_cls, loss_bbox: the four losses (config or module).
        init_cfg: weight initialization.
    """

    train_cfg_keys = GA_TRAIN_CFG_KEYS
    test_cfg_keys = TEST_CFG_KEYS

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int = 256,
                 approx_anchor_generator: Mapping | Any = GA_APPROX,
                 square_anchor_generator: Mapping | Any = GA_SQUARE,
                 anchor_coder: Mapping | Any = DELTA_CODER,
                 bbox_coder: Mapping | Any = DELTA_CODER, reg_decoded_bbox: bool = False,
                 deform_groups: int = 4, loc_filter_thr: float = 0.01,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 loss_loc: Mapping | nn.Module = FOCAL,
                 loss_shape: Mapping | nn.Module = BOUNDED_IOU,
                 loss_cls: Mapping | nn.Module = SIGMOID_CE,
                 loss_bbox: Mapping | nn.Module = SMOOTH_L1,
                 init_cfg: Mapping | Sequence[Mapping] | None = GA_INIT) -> None:
        name = type(self).__name__
        check_approx_and_square(name, approx_anchor_generator, square_anchor_generator)
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         feat_channels=feat_channels, anchor_generator=square_anchor_generator,
                         bbox_coder=bbox_coder, reg_decoded_bbox=reg_decoded_bbox,
                         loss_cls=loss_cls, loss_bbox=loss_bbox, train_cfg=train_cfg,
                         test_cfg=test_cfg, init_cfg=init_cfg)
        self.approx_anchor_generator = MODELS.build(approx_anchor_generator)
        self.approxs_per_octave = self.approx_anchor_generator.num_base_priors[0]
        self.anchor_coder = MODELS.build(anchor_coder)
        self.loss_loc, self.loss_shape = MODELS.build(loss_loc), MODELS.build(loss_shape)
        self.deform_groups, self.loc_filter_thr = deform_groups, loc_filter_thr
        # MMDetection's rule for this head: every classification loss but the focal loss
        # averages over the sampled negatives too (PseudoSampler unless train_cfg.sampler)
        self.sampling = type(self.loss_cls).__name__ != "FocalLoss"
        self.sampler = MODELS.build(self.train_cfg["sampler"]) \
            if self.sampling and "sampler" in self.train_cfg else PseudoSampler()
        self.ga_assigner = self.ga_sampler = None
        self.ga_sampling = "ga_sampler" in self.train_cfg
        if self.train_cfg:
            if "ga_assigner" not in self.train_cfg:
                raise ConfigError(f"{name} needs model.train_cfg.ga_assigner for the anchor "
                                  f"shape targets, e.g. dict(type='ApproxMaxIoUAssigner', "
                                  f"pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.4)")
            self.ga_assigner = MODELS.build(self.train_cfg["ga_assigner"])
            if not takes_approxs(self.ga_assigner):
                raise ConfigError(f"{name}: model.train_cfg.ga_assigner assigns squares through "
                                  f"their approximating anchors and must take them, e.g. "
                                  f"type='ApproxMaxIoUAssigner', got "
                                  f"{type(self.ga_assigner).__name__}")
            self.ga_sampler = MODELS.build(self.train_cfg["ga_sampler"]) if self.ga_sampling \
                else PseudoSampler()
            for key in ("center_ratio", "ignore_ratio"):
                if key not in self.train_cfg:
                    raise ConfigError(f"{name} needs model.train_cfg.{key} (the location "
                                      f"map's regions; the zoo's: center_ratio=0.2, "
                                      f"ignore_ratio=0.5)")
        self._build_layers()
        initialize(self, init_cfg, load_pretrained=False)

    @property
    def square_anchor_generator(self) -> Any:
        """MMDetection's name of :attr:`prior_generator`."""
        return self.prior_generator

    def _build_layers(self) -> None:
        """MMDetection's ``GuidedAnchorHead`` layers: 1x1 location and shape convs on the input,
        one feature adaption, 1x1 masked classification and regression convs."""
        self.conv_loc = nn.Conv2d(self.in_channels, 1, 1)
        self.conv_shape = nn.Conv2d(self.in_channels, self.num_base_priors * 2, 1)
        self.feature_adaption = FeatureAdaption(self.in_channels, self.feat_channels,
                                                kernel_size=3, deform_groups=self.deform_groups)
        self.conv_cls = MaskedConv2d(self.feat_channels,
                                     self.num_base_priors * self.cls_out_channels, 1)
        self.conv_reg = MaskedConv2d(self.feat_channels, self.num_base_priors * 4, 1)

    def init_weights(self) -> None:
        """The head's ``init_cfg``, then each feature adaption's own (as MMDetection initializes
        children after their parent)."""
        super().init_weights()
        for module in self.modules():
            if isinstance(module, FeatureAdaption):
                initialize(module, module.init_cfg)

    def location_mask(self, loc_pred: torch.Tensor) -> torch.Tensor | None:
        """``(B, H, W)`` bool: the locations kept at test time (None while training)."""
        if self.training:
            return None
        return loc_pred.sigmoid()[:, 0] >= self.loc_filter_thr

    def forward_single(self, x: torch.Tensor, level: int = 0) -> tuple[torch.Tensor, ...]:
        """One level: class logits, box deltas (zero at dropped locations in eval mode),
        shape ``(dw, dh)`` and location logits."""
        loc_pred = self.conv_loc(x)
        shape_pred = self.conv_shape(x)
        x = self.feature_adaption(x, shape_pred)
        mask = self.location_mask(loc_pred)
        return self.conv_cls(x, mask), self.conv_reg(x, mask), shape_pred, loc_pred

    # ---- anchors -------------------------------------------------------------------------------

    def guided_anchors(self, squares: torch.Tensor, shape_rows: torch.Tensor) -> torch.Tensor:
        """``(N, 4)`` squares and their ``(N, 2)`` ``(dw, dh)`` -> ``(N, 4)`` xyxy guided
        anchors (no gradient: the shape is trained by ``loss_shape`` alone)."""
        deltas = torch.cat([shape_rows.new_zeros(shape_rows.shape), shape_rows.detach()], -1)
        return self.anchor_coder.decode(squares, deltas, wh_ratio_clip=SHAPE_RATIO_CLIP)

    def _inside_flags(self, approxs: torch.Tensor, sizes: Sequence[tuple[int, int]],
                      meta: Mapping) -> torch.Tensor:
        """``(A,)`` bool per square: any of its approximating anchors is valid (inside the
        padded image) and within ``allowed_border`` of the image."""
        return squares_inside_flags(self.approx_anchor_generator, approxs, sizes,
                                    pad_shape_of(meta), meta["img_shape"],
                                    self.train_cfg.get("allowed_border", -1),
                                    self.approxs_per_octave)

    # ---- targets -------------------------------------------------------------------------------

    def location_targets(self, gts: Sequence[GroundTruth], sizes: Sequence[tuple[int, int]],
                         device: torch.device) -> tuple[list[torch.Tensor], ...]:
        """Per level ``(B, 1, H, W)`` location targets and weights, and the loss's divisor.

        Each object belongs to the level whose anchor scale is nearest its size
        (``sqrt(w * h)``); there its center region (``center_ratio``) is target 1, weight 1,
        the region around it (``ignore_ratio``) weight 0, and its ignore region is also
        weight 0 on the two neighbouring levels. Every other cell is weight 0.1.
        """
        strides = self.approx_anchor_generator.strides
        if any(s[0] != s[1] for s in strides):
            raise ConfigError(f"{type(self).__name__} needs square strides (one number per "
                              f"level) in approx_anchor_generator, got {strides}")
        strides = [s[0] for s in strides]
        scale = self.approx_anchor_generator.octave_base_scale
        center = (1 - self.train_cfg["center_ratio"]) / 2
        ignore = (1 - self.train_cfg["ignore_ratio"]) / 2
        num_images, num_levels = len(gts), len(sizes)
        loc_t = [torch.zeros(num_images, 1, h, w, device=device) for h, w in sizes]
        loc_w = [torch.full_like(t, -1) for t in loc_t]
        ignored = [torch.zeros_like(t) for t in loc_t]
        for i, gt in enumerate(gts):
            boxes = gt.boxes
            size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
            smallest = size.new_full((1,), float(scale * strides[0]))
            levels = torch.floor(torch.log2(size) - torch.log2(smallest) + 0.5)
            levels = levels.clamp(min=0, max=num_levels - 1).long()
            for g in range(boxes.size(0)):
                lvl = int(levels[g])
                box = boxes[g, :4] / strides[lvl]
                ix1, iy1, ix2, iy2 = center_region(box, ignore, sizes[lvl])
                cx1, cy1, cx2, cy2 = center_region(box, center, sizes[lvl])
                loc_t[lvl][i, 0, cy1:cy2 + 1, cx1:cx2 + 1] = 1
                loc_w[lvl][i, 0, iy1:iy2 + 1, ix1:ix2 + 1] = 0
                loc_w[lvl][i, 0, cy1:cy2 + 1, cx1:cx2 + 1] = 1
                for near in (lvl - 1, lvl + 1):
                    if 0 <= near < num_levels:
                        x1, y1, x2, y2 = center_region(boxes[g, :4] / strides[near], ignore,
                                                       sizes[near])
                        ignored[near][i, 0, y1:y2 + 1, x1:x2 + 1] = 1
        for weights, ign in zip(loc_w, ignored, strict=True):
            weights[(weights < 0) & (ign > 0)] = 0
            weights[weights < 0] = 0.1
        avg_factor = sum(t.size(0) * t.size(-1) * t.size(-2) for t in loc_t) / 200
        return loc_t, loc_w, avg_factor

    def shape_targets_per_image(self, squares: torch.Tensor, approxs: torch.Tensor,
                                inside: torch.Tensor, gt: GroundTruth) -> tuple:
        """One image's shape targets: the positive squares ``(A, 4)``, their objects ``(A,
        4)`` and weights ``(A, 4)`` (1 at positives), and the numbers of positives and
        negatives (``ga_assigner`` through the approxs, then ``ga_sampler``)."""
        anchors, boxes, weights = (torch.zeros_like(squares) for _ in range(3))
        idx = torch.nonzero(inside).squeeze(1)
        if idx.numel() == 0:
            return anchors, boxes, weights, 0, 0
        num = squares.shape[0]
        inside_approxs = approxs.reshape(num, self.approxs_per_octave, 4)[idx].reshape(-1, 4)
        assign = self.ga_assigner.assign(squares[idx], gt.boxes, gt.boxes_ignore, None,
                                         approxs=inside_approxs)
        sample = self.ga_sampler.sample(assign, squares[idx], gt.boxes)
        pos = idx[sample.pos_inds]
        if pos.numel() > 0:
            anchors[pos] = sample.pos_bboxes
            boxes[pos] = sample.pos_gt_bboxes
            weights[pos] = 1.0
        return anchors, boxes, weights, len(sample.pos_inds), len(sample.neg_inds)

    def box_targets(self, guided: torch.Tensor, inside: torch.Tensor,
                    num_level: Sequence[int], gts: Sequence[GroundTruth],
                    metas: Sequence[Mapping]) -> AnchorTargets:
        """:class:`AnchorHead`'s targets of each image's ``(A, 4)`` guided anchors (``guided``
        ``(B, A, 4)``), valid where the image's squares are inside (``inside`` ``(B, A)``)."""
        per_image = [self.targets_per_image(guided[i], inside[i], num_level, gts[i], metas[i])
                     for i in range(len(gts))]
        labels, label_weights, bbox_targets, bbox_weights, samples = zip(*per_image, strict=True)
        num_pos = [0 if s is None else len(s.pos_inds) for s in samples]
        num_neg = [0 if s is None else len(s.neg_inds) for s in samples]
        avg_factor = sum(max(n, 1) for n in num_pos)
        if self.sampling:
            avg_factor += sum(max(n, 1) for n in num_neg)
        return AnchorTargets(torch.stack(labels), torch.stack(label_weights),
                             torch.stack(bbox_targets), torch.stack(bbox_weights), num_pos,
                             num_neg, float(avg_factor), list(samples))

    # ---- loss ----------------------------------------------------------------------------------

    def loss(self, raw: tuple[list[torch.Tensor], ...], targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls`` and ``loss_bbox`` on the guided anchors, ``loss_shape`` of the shape
        positives' guided anchors, ``loss_loc`` of the location maps."""
        self.check_trainable()
        cls_scores, bbox_preds, shape_preds, loc_preds = raw
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        device = cls_scores[0].device
        gts = self.ground_truths(targets, metas, len(cls_scores[0]), device)
        square_levels = self.prior_generator.grid_priors(sizes, dtype=torch.float32,
                                                         device=device)
        squares = torch.cat(square_levels)
        approxs = torch.cat(self.approx_anchor_generator.grid_priors(
            sizes, dtype=torch.float32, device=device))
        inside = torch.stack([self._inside_flags(approxs, sizes, m) for m in metas])

        # the shape targets first: with random samplers for both, MMDetection draws the shape
        # samples before the box samples
        shapes = [self.shape_targets_per_image(squares, approxs, inside[i], gt)
                  for i, gt in enumerate(gts)]
        shape_rows = levels_to_rows(shape_preds, 2)  # (B, A, 2)
        guided = torch.stack([self.guided_anchors(squares, rows) for rows in shape_rows])
        t = self.box_targets(guided, inside, [len(s) for s in square_levels], gts, metas)
        cls_rows = levels_to_rows(cls_scores, self.cls_out_channels)
        reg_rows = levels_to_rows(bbox_preds, 4)
        losses = self.loss_by_targets(cls_rows, reg_rows, guided, t)

        anchors, boxes, weights, num_pos, num_neg = zip(*shapes, strict=True)
        total = sum(max(n, 1) for n in num_pos)
        if self.ga_sampling:
            total += sum(max(n, 1) for n in num_neg)
        weights = torch.cat(weights)
        pos = torch.nonzero(weights[:, 0] > 0).squeeze(1)
        shape_flat = shape_rows.reshape(-1, 2)[pos]
        deltas = torch.cat([shape_flat.new_zeros(shape_flat.shape), shape_flat], dim=-1)
        predicted = self.anchor_coder.decode(torch.cat(anchors)[pos], deltas,
                                             wh_ratio_clip=SHAPE_RATIO_CLIP)
        losses["loss_shape"] = self.loss_shape(predicted, torch.cat(boxes)[pos], weights[pos],
                                               avg_factor=total)

        loc_t, loc_w, loc_avg = self.location_targets(gts, sizes, device)
        losses["loss_loc"] = self.loss_loc(
            torch.cat([p.reshape(-1, 1) for p in loc_preds]),
            torch.cat([t.reshape(-1) for t in loc_t]).long(),
            torch.cat([w.reshape(-1) for w in loc_w]), avg_factor=loc_avg)
        return losses

    # ---- post-processing -----------------------------------------------------------------------

    def predict(self, raw: tuple[list[torch.Tensor], ...], metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Each image's detections from the guided anchors of the locations kept (location
        probability ``>= loc_filter_thr`` in eval mode, all while training): per level the
        ``nms_pre`` anchors of best class score, their boxes, then over all levels the boxes
        mapped to the original image (``rescale``), the (box, class) pairs above
        ``score_thr``, NMS and ``max_per_img`` (MMDetection 2.x's older post-processing)."""
        if not self.test_cfg:
            raise ConfigError(f"{type(self).__name__} was built without test_cfg; give the "
                              f"model a test_cfg (nms_pre, score_thr, nms, max_per_img)")
        cls_scores, bbox_preds, shape_preds, loc_preds = raw
        if len(metas) != cls_scores[0].shape[0]:
            raise ValueError(f"predict got {cls_scores[0].shape[0]} images but {len(metas)} "
                             f"metas")
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        squares = self.prior_generator.grid_priors(sizes, dtype=torch.float32,
                                                   device=cls_scores[0].device)
        return [self._predict_image([m[i] for m in cls_scores], [m[i] for m in bbox_preds],
                                    [m[i] for m in shape_preds], [m[i] for m in loc_preds],
                                    squares, meta, rescale) for i, meta in enumerate(metas)]

    def _predict_image(self, cls_scores: Sequence[torch.Tensor],
                       bbox_preds: Sequence[torch.Tensor], shape_preds: Sequence[torch.Tensor],
                       loc_preds: Sequence[torch.Tensor], squares: Sequence[torch.Tensor],
                       meta: Mapping, rescale: bool) -> DetResult:
        cfg = self.test_cfg
        thr = 0.0 if self.training else self.loc_filter_thr
        nms_pre = cfg.get("nms_pre", -1)
        all_boxes, all_scores = [], []
        for cls, reg, shape, loc, prior in zip(cls_scores, bbox_preds, shape_preds, loc_preds,
                                               squares, strict=True):
            num = prior.shape[0]
            keep = (loc.sigmoid() >= thr).permute(1, 2, 0).expand(
                -1, -1, self.num_base_priors).reshape(-1)
            if not keep.any():
                continue
            anchors = self.guided_anchors(prior[keep], map_to_rows(shape.float(), num)[keep])
            scores = map_to_rows(cls.float(), num)
            scores = scores.sigmoid() if self.use_sigmoid_cls else scores.softmax(-1)
            scores, deltas = scores[keep], map_to_rows(reg.float(), num)[keep]
            if 0 < nms_pre < scores.shape[0]:
                best = scores.max(dim=1)[0] if self.use_sigmoid_cls \
                    else scores[:, :-1].max(dim=1)[0]
                top = best.topk(nms_pre)[1]
                anchors, deltas, scores = anchors[top], deltas[top], scores[top]
            all_boxes.append(self.bbox_coder.decode(anchors, deltas,
                                                    max_shape=meta["img_shape"]))
            all_scores.append(scores[:, :self.num_classes])
        if not all_boxes:
            empty = squares[0].new_zeros((0, 4))
            return DetResult(empty, empty[:, 0], empty[:, 0].long(), meta=result_meta(meta))
        boxes, scores = torch.cat(all_boxes), torch.cat(all_scores)
        if rescale:
            boxes = boxes_to_original(boxes, meta)
        pairs = torch.nonzero(scores.reshape(-1) > cfg.get("score_thr", 0.0)).squeeze(1)
        index, labels = pairs // self.num_classes, pairs % self.num_classes
        boxes, scores = boxes[index], scores.reshape(-1)[pairs]
        keep, scores = multiclass_nms(boxes, scores, labels, cfg.get("nms", DEFAULT_NMS),
                                      cfg.get("max_per_img"))
        return DetResult(boxes[keep], scores, labels[keep], meta=result_meta(meta))


@MODELS.register_module()
class GARetinaHead(GuidedAnchorHead):
    """Guided-anchoring RetinaNet head: RetinaNet's two towers, the location map on the
    classification tower and the shape map on the regression tower, one feature adaption per
    tower, 3x3 masked classification and regression convs.

    Args:
        num_classes, in_channels: as :class:`GuidedAnchorHead`.
        stacked_convs: 3x3 conv + ReLU layers in each tower.
        conv_cfg, norm_cfg: of the tower convs.
        init_cfg: weight initialization (default: normal std 0.01, location and classifier
            biases at the 0.01 prior).
        **kwargs: the rest of :class:`GuidedAnchorHead`'s arguments.
    """

    def __init__(self, num_classes: int, in_channels: int, stacked_convs: int = 4,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None, **kwargs: Any) -> None:
        self.stacked_convs, self.conv_cfg, self.norm_cfg = stacked_convs, conv_cfg, norm_cfg
        super().__init__(num_classes, in_channels,
                         init_cfg=GA_RETINA_INIT if init_cfg is None else init_cfg, **kwargs)

    def _build_layers(self) -> None:
        def tower() -> nn.ModuleList:
            return nn.ModuleList(
                ConvModule(self.in_channels if i == 0 else self.feat_channels,
                           self.feat_channels, 3, padding=1, conv_cfg=self.conv_cfg,
                           norm_cfg=self.norm_cfg) for i in range(self.stacked_convs))

        self.cls_convs, self.reg_convs = tower(), tower()
        self.conv_loc = nn.Conv2d(self.feat_channels, 1, 1)
        self.conv_shape = nn.Conv2d(self.feat_channels, self.num_base_priors * 2, 1)
        self.feature_adaption_cls = FeatureAdaption(self.feat_channels, self.feat_channels,
                                                    kernel_size=3,
                                                    deform_groups=self.deform_groups)
        self.feature_adaption_reg = FeatureAdaption(self.feat_channels, self.feat_channels,
                                                    kernel_size=3,
                                                    deform_groups=self.deform_groups)
        self.retina_cls = MaskedConv2d(self.feat_channels,
                                       self.num_base_priors * self.cls_out_channels, 3,
                                       padding=1)
        self.retina_reg = MaskedConv2d(self.feat_channels, self.num_base_priors * 4, 3,
                                       padding=1)

    def forward_single(self, x: torch.Tensor, level: int = 0) -> tuple[torch.Tensor, ...]:
        """One level: the towers, location logits (classification tower) and shape (regression
        tower), each tower's features adapted to the shape, then class logits and box deltas
        (zero at dropped locations in eval mode)."""
        cls_feat = reg_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        loc_pred = self.conv_loc(cls_feat)
        shape_pred = self.conv_shape(reg_feat)
        cls_feat = self.feature_adaption_cls(cls_feat, shape_pred)
        reg_feat = self.feature_adaption_reg(reg_feat, shape_pred)
        mask = self.location_mask(loc_pred)
        return self.retina_cls(cls_feat, mask), self.retina_reg(reg_feat, mask), shape_pred, \
            loc_pred


__all__ = ["FeatureAdaption", "GARetinaHead", "GuidedAnchorHead", "MaskedConv2d",
           "center_region"]
