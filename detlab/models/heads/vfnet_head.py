"""VarifocalNet's head (Zhang et al., 2021): FCOS's towers, a first box from the regression
tower, and a star-shaped deformable conv that samples the features at the first box's sides
and center to refine the box and to predict an IoU-aware classification score.

Per level: ``vfnet_reg_conv`` then ``vfnet_reg`` give the first distances (``exp`` of the
scaled output times the level's ``reg_denom`` -- the upper end of its regress range, the last
level twice the previous one -- or its stride, by ``bbox_norm_type``). Those distances, in
strides and with only ``gradient_mul`` of their gradient, place the nine samples of the 3x3
deformable convs ``vfnet_reg_refine_dconv`` and ``vfnet_cls_dconv`` at ``(-top, 0, bottom) x
(-left, 0, right)`` around the point. The refined distances are the first ones (detached)
times ``exp`` of ``vfnet_reg_refine``'s scaled output.

Targets: with ``use_atss`` the points are the centers of one square anchor per location
(``anchor_generator``, ``center_offset`` 0), assigned by ``train_cfg.assigner`` (ATSS) as
:class:`~detlab.models.heads.anchor_head.AnchorHead` assigns anchors; otherwise FCOS's rules
(:func:`~detlab.models.heads.fcos_head.fcos_targets_per_image`, points at cell centers).
Loss: varifocal classification whose positive targets are the IoU of the refined box with its
ground truth (or focal loss on the labels without ``use_vfl``), divided by the positives
(averaged over processes with ``sync_num_pos``); GIoU losses of the first and refined boxes,
each weighted by its own IoU and divided by the sum of those weights.

Raw outputs are the same in training and evaluation: per level ``(B, C, H, W)`` logits and the
``(B, 4, H, W)`` first and refined distances in pixels (MMDetection's eval-mode forward drops
the first ones); detections come from the refined ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.dist import reduce_mean
from detlab.models.heads.anchor_free_head import DISTANCE_CODER, AnchorFreeHead
from detlab.models.heads.anchor_head import AnchorHead
from detlab.models.heads.base_dense_head import DensePriors, pad_shape_of
from detlab.models.heads.fcos_head import FCOS_RANGES, GN_32, FCOSHead, fcos_targets_per_image
from detlab.models.heads.postprocess import levels_to_rows
from detlab.models.init import initialize
from detlab.models.losses import aligned_bbox_overlaps
from detlab.models.ops.deform_conv import DeformConv2d
from detlab.models.utils import ConvModule, Scale, frozen
from detlab.registry import MODELS
from detlab.structures import DetResult

FOCAL = frozen(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)
VARIFOCAL = frozen(type="VarifocalLoss", use_sigmoid=True, alpha=0.75, gamma=2.0,
                   iou_weighted=True, loss_weight=1.0)
GIOU_INIT = frozen(type="GIoULoss", loss_weight=1.5)
GIOU_REFINE = frozen(type="GIoULoss", loss_weight=2.0)
VFNET_ANCHORS = frozen(type="AnchorGenerator", ratios=(1.0,), octave_base_scale=8,
                       scales_per_octave=1, center_offset=0.0, strides=(8, 16, 32, 64, 128))
VFNET_INIT = frozen(type="Normal", layer="Conv2d", std=0.01,
                    override=frozen(type="Normal", name="vfnet_cls", std=0.01, bias_prob=0.01))
BBOX_NORM_TYPES = ("reg_denom", "stride")

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]


def star_offsets(distances: torch.Tensor) -> torch.Tensor:
    """``(B, 4, H, W)`` (left, top, right, bottom) distances in strides -> ``(B, 18, H, W)``
    offsets of a 3x3 deformable conv (``(dy, dx)`` per kernel sample, row by row) that move
    its samples to rows ``(-top, 0, bottom)`` and columns ``(-left, 0, right)``."""
    left, top, right, bottom = distances.unbind(dim=1)
    zero = torch.zeros_like(left)
    rows, cols = (-top, zero, bottom), (-left, zero, right)
    offsets = []
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            # the kernel's own sample sits at (i - 1, j - 1)
            offsets += [row - (i - 1.0), col - (j - 1.0)]
    return torch.stack(offsets, dim=1)


@MODELS.register_module()
class VFNetHead(AnchorFreeHead):
    """VarifocalNet head.

    Args:
        num_classes: object classes (background excluded).
        in_channels: channels of the input feature maps.
        regress_ranges: per level, the ``(low, high)`` range of FCOS's targets (without
            ``use_atss``); their upper ends are the ``reg_denom`` normalizers.
        center_sampling, center_sample_radius: FCOS's center sampling (without ``use_atss``).
        sync_num_pos: average the positives' count over processes (else this process's).
        gradient_mul: share of the first distances' gradient that flows back through the
            deformable convs' offsets.
        bbox_norm_type: ``'reg_denom'`` or ``'stride'``: what ``exp`` of the first box output
            is multiplied by.
        loss_cls_fl: classification loss without ``use_vfl`` (focal loss).
        use_vfl: varifocal loss with IoU targets (``loss_cls``) instead of ``loss_cls_fl``.
        loss_cls: the varifocal loss.
        loss_bbox, loss_bbox_refine: GIoU losses of the first and refined boxes.
        norm_cfg: of the tower convs and ``vfnet_reg_conv`` (default: GroupNorm of 32 groups).
        use_atss: ATSS assignment of ``anchor_generator``'s anchors (else FCOS's targets).
        reg_decoded_bbox: must stay True (the ATSS targets are boxes).
        anchor_generator: the anchors ATSS assigns; its strides and ``center_offset`` also
            place the points (offset 0.5 without ``use_atss``).
        feat_channels, stacked_convs, strides, dcn_on_last_conv, conv_bias, conv_cfg,
            bbox_coder: see :class:`AnchorFreeHead`.
        train_cfg: ``assigner`` (``ATSSAssigner``), ``allowed_border``, ``pos_weight``,
            ``debug``.
        test_cfg: ``nms_pre``, ``score_thr``, ``nms``, ``min_bbox_size``, ``max_per_img``.
        init_cfg: weight initialization (default: normal std 0.01, ``vfnet_cls`` bias prior
            0.01).
    """

    def __init__(self, num_classes: int, in_channels: int,
                 regress_ranges: Sequence[Sequence[float]] = FCOS_RANGES,
                 center_sampling: bool = False, center_sample_radius: float = 1.5,
                 sync_num_pos: bool = True, gradient_mul: float = 0.1,
                 bbox_norm_type: str = "reg_denom",
                 loss_cls_fl: Mapping | nn.Module = FOCAL, use_vfl: bool = True,
                 loss_cls: Mapping | nn.Module = VARIFOCAL,
                 loss_bbox: Mapping | nn.Module = GIOU_INIT,
                 loss_bbox_refine: Mapping | nn.Module = GIOU_REFINE,
                 norm_cfg: Mapping | None = GN_32, use_atss: bool = True,
                 reg_decoded_bbox: bool = True, anchor_generator: Mapping = VFNET_ANCHORS,
                 feat_channels: int = 256, stacked_convs: int = 4,
                 strides: Sequence[int] = (4, 8, 16, 32, 64), dcn_on_last_conv: bool = False,
                 conv_bias: bool | str = "auto", conv_cfg: Mapping | None = None,
                 bbox_coder: Mapping | Any = DISTANCE_CODER, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = VFNET_INIT) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         feat_channels=feat_channels, stacked_convs=stacked_convs,
                         strides=strides, dcn_on_last_conv=dcn_on_last_conv,
                         conv_bias=conv_bias, loss_cls=loss_cls if use_vfl else loss_cls_fl,
                         loss_bbox=loss_bbox, bbox_coder=bbox_coder, conv_cfg=conv_cfg,
                         norm_cfg=norm_cfg, train_cfg=train_cfg, test_cfg=test_cfg,
                         init_cfg=init_cfg)
        if bbox_norm_type not in BBOX_NORM_TYPES:
            raise ConfigError(f"bbox_head.bbox_norm_type must be one of {BBOX_NORM_TYPES}, got "
                              f"{bbox_norm_type!r}")
        if not reg_decoded_bbox:
            raise ConfigError("VFNetHead's ATSS targets are boxes: leave "
                              "bbox_head.reg_decoded_bbox=True")
        self.regress_ranges = tuple(tuple(r) for r in regress_ranges)
        if len(self.regress_ranges) != len(strides) \
                or any(len(r) != 2 for r in self.regress_ranges):
            raise ConfigError(f"bbox_head.regress_ranges needs one (low, high) pair per level "
                              f"of bbox_head.strides={list(strides)}, got "
                              f"{[list(r) for r in self.regress_ranges]}")
        # the upper ends of the ranges; the last (unbounded) one twice the one before
        self.reg_denoms = [r[-1] for r in self.regress_ranges]
        self.reg_denoms[-1] = self.reg_denoms[-2] * 2
        self.center_sampling, self.center_sample_radius = center_sampling, center_sample_radius
        self.norm_on_bbox = False  # FCOS's targets in pixels (for FCOSHead.point_levels)
        self.sync_num_pos, self.gradient_mul = sync_num_pos, gradient_mul
        self.bbox_norm_type, self.use_vfl, self.use_atss = bbox_norm_type, use_vfl, use_atss
        self.reg_decoded_bbox = reg_decoded_bbox
        self.loss_bbox_refine = MODELS.build(loss_bbox_refine)
        self.atss_prior_generator = MODELS.build(anchor_generator)
        if isinstance(anchor_generator, Mapping):
            anchor_strides = list(anchor_generator["strides"])
            center_offset = float(anchor_generator.get("center_offset", 0.0))
        else:
            anchor_strides = list(self.atss_prior_generator.strides)
            center_offset = float(getattr(anchor_generator, "center_offset", 0.0))
        self.anchor_center_offset = center_offset
        # the points of the targets and of the detections: the anchors' centers with ATSS
        self.prior_generator = MODELS.build(dict(
            type="MlvlPointGenerator", strides=anchor_strides,
            offset=center_offset if use_atss else 0.5))
        self.fcos_prior_generator = self.prior_generator
        if self.atss_prior_generator.num_levels != self.prior_generator.num_levels \
                or len(strides) != self.prior_generator.num_levels:
            raise ConfigError(f"bbox_head.strides={list(strides)} and "
                              f"bbox_head.anchor_generator.strides need one entry per level")
        # MMDetection's VFNetHead has no conv_cls / conv_reg: its predictors are below
        del self.conv_cls, self.conv_reg
        self.vfnet_reg_conv = ConvModule(feat_channels, feat_channels, 3, stride=1, padding=1,
                                         conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                                         bias=self.conv_bias)
        self.vfnet_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in strides)
        self.vfnet_reg_refine_dconv = DeformConv2d(feat_channels, feat_channels, 3, 1, padding=1)
        self.vfnet_reg_refine = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.scales_refine = nn.ModuleList(Scale(1.0) for _ in strides)
        self.vfnet_cls_dconv = DeformConv2d(feat_channels, feat_channels, 3, 1, padding=1)
        self.vfnet_cls = nn.Conv2d(feat_channels, self.cls_out_channels, 3, padding=1)
        initialize(self, self.init_cfg, load_pretrained=False)

    @property
    def anchor_generator(self) -> Any:
        """MMDetection's older name of the ATSS anchors' generator."""
        return self.atss_prior_generator

    # ---- forward -------------------------------------------------------------------------------

    def forward_single(self, x: torch.Tensor,
                       level: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One level: ``(B, in_channels, H, W)`` -> IoU-aware class logits ``(B, C, H, W)``,
        first and refined distances ``(B, 4, H, W)`` (float32, pixels)."""
        cls_feat = reg_feat = x
        for layer in self.cls_convs:
            cls_feat = layer(cls_feat)
        for layer in self.reg_convs:
            reg_feat = layer(reg_feat)
        stride = self.strides[level]
        norm = self.reg_denoms[level] if self.bbox_norm_type == "reg_denom" else stride
        first = self.scales[level](self.vfnet_reg(self.vfnet_reg_conv(reg_feat)))
        bbox_pred = first.float().exp() * norm
        # only gradient_mul of the gradient flows back through the offsets
        damped = (1 - self.gradient_mul) * bbox_pred.detach() + self.gradient_mul * bbox_pred
        offsets = star_offsets(damped / stride).to(reg_feat.dtype)
        reg_feat = torch.relu(self.vfnet_reg_refine_dconv(reg_feat, offsets))
        refine = self.scales_refine[level](self.vfnet_reg_refine(reg_feat)).float().exp()
        bbox_pred_refine = refine * bbox_pred.detach()
        cls_score = self.vfnet_cls(torch.relu(self.vfnet_cls_dconv(cls_feat, offsets)))
        return cls_score, bbox_pred, bbox_pred_refine

    # ---- targets -------------------------------------------------------------------------------

    # the ATSS targets are AnchorHead's (assignment of the anchors inside each image)
    anchor_targets = AnchorHead.get_targets
    targets_per_image = AnchorHead.targets_per_image
    _empty_targets = AnchorHead._empty_targets
    _fill_targets = AnchorHead._fill_targets
    # FCOS's targets: the points and what each is held to
    point_levels = FCOSHead.point_levels

    def get_targets(self, maps: Sequence[torch.Tensor], targets: Sequence[Mapping],
                    metas: Sequence[Mapping]) -> tuple[torch.Tensor, torch.Tensor | None,
                                                       torch.Tensor, torch.Tensor]:
        """Labels ``(B, A)`` (``num_classes``: background), label weights ``(B, A)`` (None
        with FCOS's targets), distance targets ``(B, A, 4)`` in pixels and the ``(A, 2)``
        points, for the maps ``(B, ., H_l, W_l)`` of each level."""
        sizes = [tuple(m.shape[-2:]) for m in maps]
        device = maps[0].device
        if not self.use_atss:
            levels = self.point_levels(sizes, device)
            gts = self.ground_truths(targets, metas, len(metas), device)
            labels, distances = zip(*[fcos_targets_per_image(levels, gt, self.num_classes)
                                      for gt in gts], strict=True)
            return torch.stack(labels), None, torch.stack(distances), levels.points
        anchors = self.atss_prior_generator.grid_priors(sizes, dtype=torch.float32,
                                                        device=device)
        flags = [torch.cat(self.atss_prior_generator.valid_flags(
            sizes, pad_shape_of(meta), device)) for meta in metas]
        priors = DensePriors(torch.cat(anchors), torch.stack(flags), [len(a) for a in anchors])
        t = self.anchor_targets(priors, targets, metas)
        points = torch.cat(self.prior_generator.grid_priors(sizes, dtype=torch.float32,
                                                            device=device))
        num_images = len(metas)
        distances = self.bbox_coder.encode(points.repeat(num_images, 1),
                                           t.bbox_targets.reshape(-1, 4))
        return t.labels, t.label_weights, distances.reshape(num_images, -1, 4), points

    # ---- loss ----------------------------------------------------------------------------------

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls``, ``loss_bbox`` (first boxes) and ``loss_bbox_rf`` (refined boxes) of the
        raw outputs against the ground truth (one target dict and one meta dict per image)."""
        cls_scores, bbox_preds, bbox_preds_refine = raw
        labels, label_weights, distances, points = self.get_targets(cls_scores, targets, metas)
        # float32 rows, whatever the forward ran in (MMDetection's force_fp32)
        cls = levels_to_rows(cls_scores, self.cls_out_channels).float()
        cls = cls.reshape(-1, self.cls_out_channels)
        reg = levels_to_rows(bbox_preds, 4).float().reshape(-1, 4)
        reg_refine = levels_to_rows(bbox_preds_refine, 4).float().reshape(-1, 4)
        points = points.repeat(len(metas), 1)
        return self.loss_by_targets(cls, reg, reg_refine, points, labels.reshape(-1),
                                    None if label_weights is None else label_weights.reshape(-1),
                                    distances.reshape(-1, 4))

    def loss_by_targets(self, cls: torch.Tensor, reg: torch.Tensor, reg_refine: torch.Tensor,
                        points: torch.Tensor, labels: torch.Tensor,
                        label_weights: torch.Tensor | None,
                        distances: torch.Tensor) -> dict[str, torch.Tensor]:
        """The losses over the points of the whole batch: ``(N, C)`` logits, ``(N, 4)`` first,
        refined and target distances, ``(N, 2)`` points, ``(N,)`` labels and label weights
        (used by the focal loss only)."""
        pos = torch.nonzero((labels >= 0) & (labels < self.num_classes)).reshape(-1)
        num_pos = len(pos)
        if self.sync_num_pos:
            num_pos_avg = max(reduce_mean(torch.tensor(float(num_pos),
                                                       device=cls.device)).item(), 1.0)
        else:
            num_pos_avg = num_pos
        pos_points, pos_labels = points[pos], labels[pos]
        pos_reg, pos_reg_refine = reg[pos], reg_refine[pos]
        target_boxes = self.bbox_coder.decode(pos_points, distances[pos]).detach()
        boxes = self.bbox_coder.decode(pos_points, pos_reg)
        boxes_refine = self.bbox_coder.decode(pos_points, pos_reg_refine)
        iou = aligned_bbox_overlaps(boxes, target_boxes).clamp(min=1e-6).detach()
        iou_refine = aligned_bbox_overlaps(boxes_refine, target_boxes).clamp(min=1e-6).detach()
        # every process reduces its sums, positives or not, so the collectives pair up
        avg_factor = reduce_mean(iou.sum()).clamp(min=1).item()
        avg_factor_refine = reduce_mean(iou_refine.sum()).clamp(min=1).item()
        iou_targets = torch.zeros_like(cls)
        if num_pos > 0:
            loss_bbox = self.loss_bbox(boxes, target_boxes, weight=iou, avg_factor=avg_factor)
            loss_bbox_rf = self.loss_bbox_refine(boxes_refine, target_boxes, weight=iou_refine,
                                                 avg_factor=avg_factor_refine)
            iou_targets[pos, pos_labels] = iou_refine
        else:  # zeros that keep the graph (every parameter gets a gradient)
            loss_bbox, loss_bbox_rf = pos_reg.sum() * 0, pos_reg_refine.sum() * 0
        if self.use_vfl:
            loss_cls = self.loss_cls(cls, iou_targets, avg_factor=num_pos_avg)
        else:
            loss_cls = self.loss_cls(cls, labels, weight=label_weights, avg_factor=num_pos_avg)
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_bbox_rf=loss_bbox_rf)

    # ---- post-processing -----------------------------------------------------------------------

    def predict(self, raw: RawOutputs, metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Detections of each image: the refined boxes, scored by the IoU-aware scores."""
        cls_scores, _, bbox_preds_refine = raw
        return self.predict_by_feat(cls_scores, bbox_preds_refine, metas=metas, rescale=rescale)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict,
                              strict: bool, missing_keys: list, unexpected_keys: list,
                              error_msgs: list) -> None:
        """No renaming of FCOS's early predictor names (``vfnet_cls``, ``vfnet_reg`` are not
        legacy names), as MMDetection's VFNetHead."""
        nn.Module._load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                                        missing_keys, unexpected_keys, error_msgs)
