"""RepPoints' head (Yang et al., 2019): objects as sets of points, found in two stages.

At each location of a level (points ``MlvlPointGenerator(point_strides, offset=0)``: cell
corners) the head predicts ``num_points`` points, as ``(y, x)`` offsets in units of the level's
stride (the raw maps are ``(B, 2 * num_points, H, W)``, y first):

1. initial points from the regression tower (``reppoints_pts_init_conv`` then
   ``reppoints_pts_init_out``), starting at the location itself (``center_init``) or, without
   it, on a ``point_base_scale`` grid around it;
2. a deformable conv samples each tower's features *at those points*
   (``reppoints_cls_conv`` / ``reppoints_pts_refine_conv``, a ``sqrt(num_points)`` square
   kernel) for the class logits and for offsets refining the initial points. The deformable
   convs see the initial points through ``gradient_mul``: only that share of their gradient
   flows back into the initial stage.

With ``use_grid_points`` each stage regresses a box instead (a center shift and a log size
relative to the previous box, first a ``point_base_scale`` square) and its points are the
``sqrt(num_points)`` square grid spread over that box.

A point set becomes a box through ``transform_method``: ``'minmax'`` (the points' extent),
``'partial_minmax'`` (the extent of the first four points) or ``'moment'`` (mean +- the points'
standard deviation times ``exp`` of a learnt ``moment_transfer``, whose gradient is scaled by
``moment_mul``).

Training (``train_cfg.init`` and ``train_cfg.refine``, each with an ``assigner`` and a
``pos_weight``): the initial boxes are assigned by ``init.assigner`` to the ground truth -- a
``PointAssigner`` on the locations, or another assigner (e.g. ``MaxIoUAssigner``) on a
``point_base_scale``-stride square around each -- and the refined boxes by
``refine.assigner`` on the initial boxes themselves. Classification (focal) loss over the
refine stage's labels; ``loss_bbox_init`` and ``loss_bbox_refine`` (SmoothL1) on the boxes,
both in units of ``point_base_scale * stride``. Each divisor is the sum over images of
``max(positives, 1)`` (plus ``max(negatives, 1)`` when sampling, i.e. without a focal loss).

Raw outputs (mode-independent): ``(cls_scores, pts_init, pts_refine)`` per level; at test
time the refined points' boxes (``points_to_boxes``), in strides from the location, are
decoded and clipped to ``[0, w] x [0, h]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.assigners import PseudoSampler
from detlab.models.heads.base_dense_head import (
    BaseDenseHead,
    GroundTruth,
    check_cfg_keys,
    pad_shape_of,
)
from detlab.models.heads.postprocess import dense_postprocess
from detlab.models.init import initialize
from detlab.models.ops.deform_conv import DeformConv2d
from detlab.models.utils import ConvModule, frozen, thaw
from detlab.registry import MODELS
from detlab.structures import DetResult

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]
FOCAL = frozen(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)
SMOOTH_L1_INIT = frozen(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=0.5)
SMOOTH_L1_REFINE = frozen(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=1.0)
REPPOINTS_INIT = frozen(type="Normal", layer="Conv2d", std=0.01,
                        override=frozen(type="Normal", name="reppoints_cls_out", std=0.01,
                                        bias_prob=0.01))
TRANSFORM_METHODS = ("moment", "minmax", "partial_minmax")
STAGE_KEYS = ("assigner", "allowed_border", "pos_weight", "debug")


@dataclass
class StageTargets:
    """One stage's targets over the rows of a batch (level after level, image after image
    within a level).

    Attributes:
        labels: ``(R,)`` int64, ``num_classes`` for background and invalid rows.
        label_weights: ``(R,)`` 0 for rows neither positive nor negative.
        boxes: ``(R, 4)`` xyxy ground truth of the positives (0 elsewhere).
        box_weights: ``(R, 4)`` 1 for the positives.
        num_pos, num_neg: sums over images of ``max(count, 1)`` (MMDetection's divisors).
    """

    labels: torch.Tensor
    label_weights: torch.Tensor
    boxes: torch.Tensor
    box_weights: torch.Tensor
    num_pos: int
    num_neg: int


def grid_offsets(kernel: int) -> torch.Tensor:
    """``(2 * kernel**2,)`` the ``(y, x)`` offsets of a ``kernel x kernel`` conv's taps from its
    center, row by row (the order of a deformable conv's offset channels)."""
    pad = (kernel - 1) // 2
    steps = torch.arange(-pad, pad + 1, dtype=torch.float64)
    ys, xs = steps.repeat_interleave(kernel), steps.repeat(kernel)
    return torch.stack([ys, xs], dim=1).reshape(-1)


@MODELS.register_module()
class RepPointsHead(BaseDenseHead):
    """RepPoints head (see the module docstring).

    Args:
        num_classes: object classes (background excluded).
        in_channels: channels of the input feature maps.
        feat_channels: channels of the tower convs.
        point_feat_channels: channels of the point convs (the deformable ones included).
        stacked_convs: 3x3 ConvModules in each tower (``cls_convs``, ``reg_convs``).
        num_points: points per object, an odd square (the deformable kernel's taps).
        gradient_mul: share of the gradient the deformable convs pass to the initial points.
        point_strides: stride of each level.
        point_base_scale: the base box size in strides (assignment, normalization, grids).
        loss_cls: classification loss (default focal; another loss samples, see below).
        loss_bbox_init, loss_bbox_refine: box losses of the two stages (default SmoothL1,
            beta 1/9, weights 0.5 and 1).
        use_grid_points: regress boxes and place the points on a grid over them.
        center_init: start the initial points at the location (else on a grid around it;
            with ``use_grid_points`` the grid is always used).
        transform_method: ``'moment'``, ``'minmax'`` or ``'partial_minmax'``.
        moment_mul: the gradient share of ``moment_transfer`` (``'moment'`` only).
        conv_cfg, norm_cfg: of the tower convs.
        train_cfg: ``init`` and ``refine``, each a dict with ``assigner`` and ``pos_weight``
            (``allowed_border`` and ``debug`` are accepted), and optionally ``sampler`` (used
            only when ``loss_cls`` is not a ``FocalLoss``, as in MMDetection).
        test_cfg: ``nms_pre``, ``min_bbox_size``, ``score_thr``, ``nms``, ``max_per_img``.
        init_cfg: weight initialization (default normal std 0.01 for the plain convs, the
            classifier's bias at the 0.01 prior).
    """

    train_cfg_keys = ("init", "refine", "sampler")

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int = 256,
                 point_feat_channels: int = 256, stacked_convs: int = 3, num_points: int = 9,
                 gradient_mul: float = 0.1, point_strides: Sequence[int] = (8, 16, 32, 64, 128),
                 point_base_scale: float = 4, loss_cls: Mapping | nn.Module = FOCAL,
                 loss_bbox_init: Mapping | nn.Module = SMOOTH_L1_INIT,
                 loss_bbox_refine: Mapping | nn.Module = SMOOTH_L1_REFINE,
                 use_grid_points: bool = False, center_init: bool = True,
                 transform_method: str = "moment", moment_mul: float = 0.01,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = None,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = REPPOINTS_INIT) -> None:
        kernel = math.isqrt(num_points) if isinstance(num_points, int) and num_points > 0 else 0
        if kernel * kernel != num_points or kernel % 2 == 0:
            raise ConfigError(f"bbox_head.num_points must be an odd square (the deformable "
                              f"kernel's taps: 1, 9, 25 ...), got {num_points!r}")
        if transform_method not in TRANSFORM_METHODS:
            raise ConfigError(f"bbox_head.transform_method must be one of "
                              f"{', '.join(TRANSFORM_METHODS)}, got {transform_method!r}")
        points = dict(type="MlvlPointGenerator", strides=list(point_strides), offset=0.0)
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         prior_generator=points, bbox_coder=None, loss_cls=loss_cls,
                         loss_bbox=loss_bbox_refine, train_cfg=train_cfg, test_cfg=test_cfg,
                         init_cfg=init_cfg)
        self.loss_bbox_init = MODELS.build(loss_bbox_init)
        self.loss_bbox_refine = self.loss_bbox
        self.feat_channels, self.point_feat_channels = feat_channels, point_feat_channels
        self.stacked_convs, self.num_points, self.dcn_kernel = stacked_convs, num_points, kernel
        self.gradient_mul, self.point_base_scale = gradient_mul, point_base_scale
        self.point_strides = list(point_strides)
        self.use_grid_points, self.center_init = use_grid_points, center_init
        self.transform_method, self.moment_mul = transform_method, moment_mul
        self.conv_cfg, self.norm_cfg = thaw(conv_cfg), thaw(norm_cfg)
        self._build_assigners()
        self.register_buffer("dcn_base_offset", grid_offsets(kernel).float().view(1, -1, 1, 1),
                             persistent=False)
        self._build_layers()
        if transform_method == "moment":
            self.moment_transfer = nn.Parameter(torch.zeros(2))
        initialize(self, self.init_cfg, load_pretrained=False)

    def _build_assigners(self) -> None:
        """``train_cfg.init`` / ``train_cfg.refine`` assigners, and MMDetection's sampling rule:
        sample (``train_cfg.sampler``, else keep all) unless ``loss_cls`` is a ``FocalLoss``."""
        self.sampling = type(self.loss_cls).__name__ != "FocalLoss"
        self.sampler = MODELS.build(self.train_cfg["sampler"]) \
            if self.sampling and "sampler" in self.train_cfg else PseudoSampler()
        self.stage_cfgs: dict[str, dict[str, Any]] = {}
        self.stage_assigners: dict[str, Any] = {}
        if not self.train_cfg:
            return
        for stage in ("init", "refine"):
            where = f"model.train_cfg.{stage}"
            if stage not in self.train_cfg:
                raise ConfigError(f"RepPointsHead's train_cfg needs {stage}=dict(assigner=..., "
                                  f"pos_weight=-1) (one per stage: init and refine)")
            cfg = check_cfg_keys(self.train_cfg[stage], STAGE_KEYS, where)
            if "assigner" not in cfg:
                raise ConfigError(f"{where} needs an assigner, e.g. dict(type='PointAssigner', "
                                  f"scale=4, pos_num=1) for init or dict(type='MaxIoUAssigner', "
                                  f"pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0) for refine")
            self.stage_cfgs[stage] = cfg
            self.stage_assigners[stage] = MODELS.build(cfg["assigner"])

    def _build_layers(self) -> None:
        """The towers and the point convs, under MMDetection's names."""
        self.relu = nn.ReLU(inplace=True)
        self.cls_convs, self.reg_convs = self._tower(), self._tower()
        pts_out = 4 if self.use_grid_points else 2 * self.num_points
        kernel, pad = self.dcn_kernel, (self.dcn_kernel - 1) // 2
        feat, point = self.feat_channels, self.point_feat_channels
        self.reppoints_cls_conv = DeformConv2d(feat, point, kernel, 1, pad)
        self.reppoints_cls_out = nn.Conv2d(point, self.cls_out_channels, 1, 1, 0)
        self.reppoints_pts_init_conv = nn.Conv2d(feat, point, 3, 1, 1)
        self.reppoints_pts_init_out = nn.Conv2d(point, pts_out, 1, 1, 0)
        self.reppoints_pts_refine_conv = DeformConv2d(feat, point, kernel, 1, pad)
        self.reppoints_pts_refine_out = nn.Conv2d(point, pts_out, 1, 1, 0)

    def _tower(self) -> nn.ModuleList:
        return nn.ModuleList(
            ConvModule(self.in_channels if i == 0 else self.feat_channels, self.feat_channels,
                       3, stride=1, padding=1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg)
            for i in range(self.stacked_convs))

    # ---- point sets and boxes ------------------------------------------------------------------

    def points_to_boxes(self, pts: torch.Tensor, y_first: bool = True) -> torch.Tensor:
        """Point sets ``(B, 2K, H, W)`` or ``(N, 2K)`` (``(y, x)`` pairs with ``y_first``,
        else ``(x, y)``) -> boxes ``(B, 4, H, W)`` or ``(N, 4)`` xyxy, by
        ``transform_method``."""
        pairs = pts.view(pts.shape[0], -1, 2, *pts.shape[2:])
        ys = pairs[:, :, 0, ...] if y_first else pairs[:, :, 1, ...]
        xs = pairs[:, :, 1, ...] if y_first else pairs[:, :, 0, ...]
        if self.transform_method == "moment":
            return self._moment_boxes(xs, ys)
        if self.transform_method == "partial_minmax":
            xs, ys = xs[:, :4, ...], ys[:, :4, ...]
        return torch.cat([xs.min(dim=1, keepdim=True)[0], ys.min(dim=1, keepdim=True)[0],
                          xs.max(dim=1, keepdim=True)[0], ys.max(dim=1, keepdim=True)[0]],
                         dim=1)

    def _moment_boxes(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Mean +- the (unbiased) standard deviation times ``exp(moment_transfer)``; the
        transfer's gradient scaled by ``moment_mul``."""
        x_mean, y_mean = xs.mean(dim=1, keepdim=True), ys.mean(dim=1, keepdim=True)
        x_std = torch.std(xs - x_mean, dim=1, keepdim=True)
        y_std = torch.std(ys - y_mean, dim=1, keepdim=True)
        transfer = self.moment_transfer * self.moment_mul \
            + self.moment_transfer.detach() * (1 - self.moment_mul)
        half_w, half_h = x_std * torch.exp(transfer[0]), y_std * torch.exp(transfer[1])
        return torch.cat([x_mean - half_w, y_mean - half_h, x_mean + half_w, y_mean + half_h],
                         dim=1)

    def grid_from_box_deltas(self, deltas: torch.Tensor, previous: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 4, H, W)`` deltas (center shift in box sizes, log size) applied to
        ``previous`` ``(B or 1, 4, H, W)`` xyxy boxes -> the ``(B, 2K, H, W)`` ``(y, x)`` grid
        points on the new boxes, and the ``(B, 4, H, W)`` new boxes."""
        b, _, h, w = deltas.shape
        center = (previous[:, :2, ...] + previous[:, 2:, ...]) / 2.0
        size = (previous[:, 2:, ...] - previous[:, :2, ...]).clamp(min=1e-6)
        top_left = center + size * deltas[:, :2, ...] - 0.5 * size * torch.exp(deltas[:, 2:, ...])
        new_size = size * torch.exp(deltas[:, 2:, ...])
        left, top = top_left[:, [0], ...], top_left[:, [1], ...]
        width, height = new_size[:, [0], ...], new_size[:, [1], ...]
        k = self.dcn_kernel
        steps = torch.linspace(0.0, 1.0, k).view(1, k, 1, 1).type_as(deltas)
        grid_x = (left + width * steps).unsqueeze(1).repeat(1, k, 1, 1, 1).view(b, -1, h, w)
        grid_y = (top + height * steps).unsqueeze(2).repeat(1, 1, k, 1, 1).view(b, -1, h, w)
        grid = torch.stack([grid_y, grid_x], dim=2).view(b, -1, h, w)
        boxes = torch.cat([left, top, left + width, top + height], 1)
        return grid, boxes

    # ---- forward ---------------------------------------------------------------------------------

    def forward_single(self, x: torch.Tensor,
                       level: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One level: class logits ``(B, C, H, W)``, initial and refined points ``(B, 2K, H,
        W)`` (``(y, x)`` offsets in strides from the location)."""
        base = self.dcn_base_offset.type_as(x)
        cls_feat, pts_feat = x, x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            pts_feat = conv(pts_feat)
        pts_init = self.reppoints_pts_init_out(self.relu(self.reppoints_pts_init_conv(pts_feat)))
        scale = self.point_base_scale / 2
        if self.use_grid_points:
            start = x.new_tensor([-scale, -scale, scale, scale]).view(1, 4, 1, 1)
            pts_init, box_init = self.grid_from_box_deltas(pts_init, start)
        elif not self.center_init:
            pts_init = pts_init + base / base.max() * scale
        # the deformable convs' share of the initial points' gradient is gradient_mul
        pts_init_scaled = (1 - self.gradient_mul) * pts_init.detach() \
            + self.gradient_mul * pts_init
        offset = pts_init_scaled - base
        cls_out = self.reppoints_cls_out(self.relu(self.reppoints_cls_conv(cls_feat, offset)))
        pts_refine = self.reppoints_pts_refine_out(
            self.relu(self.reppoints_pts_refine_conv(pts_feat, offset)))
        if self.use_grid_points:
            pts_refine, _ = self.grid_from_box_deltas(pts_refine, box_init.detach())
        else:
            pts_refine = pts_refine + pts_init.detach()
        return cls_out, pts_init, pts_refine

    # ---- targets ---------------------------------------------------------------------------------

    def targets_per_image(self, candidates: torch.Tensor, valid: torch.Tensor, gt: GroundTruth,
                          stage: str) -> tuple[torch.Tensor, ...]:
        """One image's targets of one stage: ``candidates`` ``(A, P)`` (points with strides or
        xyxy boxes), ``valid`` ``(A,)`` -> labels ``(A,)``, label weights ``(A,)``, boxes
        ``(A, 4)``, box weights ``(A, 4)``, and the numbers of positives and negatives."""
        assigner, pos_weight = self.stage_assigners[stage], self.stage_cfgs[stage].get(
            "pos_weight", -1)
        count = candidates.shape[0]
        labels = gt.labels.new_full((count,), self.num_classes)
        label_weights = candidates.new_zeros(count)
        boxes, box_weights = candidates.new_zeros((count, 4)), candidates.new_zeros((count, 4))
        rows = valid.nonzero().squeeze(1)
        if len(rows) == 0:
            raise ValueError("RepPointsHead: an image has no point inside its pad_shape; check "
                             "the metas' pad_shape against the feature maps")
        proposals = candidates[rows]
        assign = assigner.assign(proposals, gt.boxes, gt.boxes_ignore,
                                 None if self.sampling else gt.labels)
        sample = self.sampler.sample(assign, proposals, gt.boxes)
        pos, neg = rows[sample.pos_inds], rows[sample.neg_inds]
        if len(pos) > 0:
            boxes[pos] = sample.pos_gt_bboxes
            box_weights[pos] = 1.0
            labels[pos] = gt.labels[sample.pos_assigned_gt_inds]
            label_weights[pos] = 1.0 if pos_weight <= 0 else pos_weight
        label_weights[neg] = 1.0
        return labels, label_weights, boxes, box_weights, len(pos), len(neg)

    def stage_targets(self, candidates: Sequence[torch.Tensor], valid: torch.Tensor,
                      gts: Sequence[GroundTruth], num_level: Sequence[int],
                      stage: str) -> StageTargets:
        """Targets of every image (``candidates`` ``(A, P)`` of each, ``valid`` ``(B, A)``),
        reordered level by level, image by image within a level."""
        per_image = [self.targets_per_image(c, v, gt, stage)
                     for c, v, gt in zip(candidates, valid, gts, strict=True)]
        fields = [self._level_major([img[k] for img in per_image], num_level) for k in range(4)]
        return StageTargets(*fields, num_pos=sum(max(img[4], 1) for img in per_image),
                            num_neg=sum(max(img[5], 1) for img in per_image))

    @staticmethod
    def _level_major(per_image: Sequence[torch.Tensor], num_level: Sequence[int]
                     ) -> torch.Tensor:
        """Per image ``(A, ...)`` rows -> ``(B * A, ...)`` ordered level, then image."""
        levels = [t.split(list(num_level)) for t in per_image]
        return torch.cat([img[level] for level in range(len(num_level)) for img in levels])

    def _level_rows(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per level ``(B, K, H, W)`` -> per image ``(A, K)`` rows of all levels."""
        flat = [m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps]
        return list(torch.cat(flat, dim=1).unbind(0))

    def _absolute_points(self, pts: Sequence[torch.Tensor], points: Sequence[torch.Tensor]
                         ) -> torch.Tensor:
        """Per level ``(B, 2K, H, W)`` ``(y, x)`` offsets in strides -> ``(B * A, 2K)``
        ``(x, y)`` pixel coordinates, rows level by level, image by image within a level."""
        rows = []
        for level_pts, level_points in zip(pts, points, strict=True):
            yx = level_pts.permute(0, 2, 3, 1).reshape(level_pts.shape[0], -1, 2 * self.num_points)
            xy = torch.stack([yx[..., 1::2], yx[..., 0::2]], -1).view(*yx.shape[:-1], -1)
            center = level_points[:, :2].repeat(1, self.num_points)
            rows.append((xy * level_points[:, 2:3] + center).reshape(-1, 2 * self.num_points))
        return torch.cat(rows)

    # ---- loss ------------------------------------------------------------------------------------

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls`` (refine stage's labels), ``loss_pts_init`` and ``loss_pts_refine``."""
        if not self.stage_assigners:
            raise ConfigError("RepPointsHead has no train_cfg, so it cannot compute a loss: give "
                              "the model train_cfg=dict(init=dict(assigner=dict(type="
                              "'PointAssigner', scale=4, pos_num=1), pos_weight=-1), refine="
                              "dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, "
                              "neg_iou_thr=0.4, min_pos_iou=0), pos_weight=-1))")
        cls_scores, pts_init, pts_refine = raw
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        device, num_images = cls_scores[0].device, cls_scores[0].shape[0]
        gts = self.ground_truths(targets, metas, num_images, device)
        levels = self.prior_generator.grid_priors(sizes, dtype=torch.float32, device=device,
                                                  with_stride=True)
        num_level = [len(p) for p in levels]
        points = torch.cat(levels)  # (A, 4): x, y, stride_w, stride_h
        valid = torch.stack([torch.cat(self.prior_generator.valid_flags(
            sizes, pad_shape_of(meta), device)) for meta in metas])
        init_targets = self.stage_targets([self._init_candidates(points)] * num_images, valid,
                                          gts, num_level, "init")
        refine_targets = self.stage_targets(self._refine_candidates(pts_init, points), valid,
                                            gts, num_level, "refine")
        return self._losses(cls_scores, pts_init, pts_refine, levels, init_targets,
                            refine_targets)

    def _init_candidates(self, points: torch.Tensor) -> torch.Tensor:
        """What ``init.assigner`` assigns: the points (``PointAssigner``), else a square of
        ``point_base_scale`` strides around each."""
        if type(self.stage_assigners["init"]).__name__ == "PointAssigner":
            return points
        half = self.point_base_scale * points[:, 2:3] * 0.5
        return torch.cat([points[:, :2] - half, points[:, :2] + half], dim=1)

    def _refine_candidates(self, pts_init: Sequence[torch.Tensor], points: torch.Tensor
                           ) -> list[torch.Tensor]:
        """Per image ``(A, 4)`` xyxy boxes of the (detached) initial points."""
        shifts = [self.points_to_boxes(p.detach()) * stride
                  for p, stride in zip(pts_init, self.point_strides, strict=True)]
        centers = torch.cat([points[:, :2], points[:, :2]], dim=1)
        return [centers + rows for rows in self._level_rows(shifts)]

    def _losses(self, cls_scores: Sequence[torch.Tensor], pts_init: Sequence[torch.Tensor],
                pts_refine: Sequence[torch.Tensor], levels: Sequence[torch.Tensor],
                init: StageTargets, refine: StageTargets) -> dict[str, torch.Tensor]:
        """The three losses over all rows (level after level, image after image), boxes in
        units of ``point_base_scale * stride``."""
        num_images = cls_scores[0].shape[0]
        cls = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, self.cls_out_channels)
                         for c in cls_scores])
        strides = torch.cat([p[:, 2].repeat(num_images) for p in levels])
        norm = (self.point_base_scale * strides)[:, None]
        boxes_init = self.points_to_boxes(self._absolute_points(pts_init, levels), y_first=False)
        boxes_refine = self.points_to_boxes(self._absolute_points(pts_refine, levels),
                                            y_first=False)
        samples_init = init.num_pos + (init.num_neg if self.sampling else 0)
        samples_refine = refine.num_pos + (refine.num_neg if self.sampling else 0)
        loss_cls = self.loss_cls(cls.contiguous(), refine.labels, refine.label_weights,
                                 avg_factor=samples_refine)
        loss_init = self.loss_bbox_init(boxes_init / norm, init.boxes / norm, init.box_weights,
                                        avg_factor=samples_init)
        loss_refine = self.loss_bbox_refine(boxes_refine / norm, refine.boxes / norm,
                                            refine.box_weights, avg_factor=samples_refine)
        return {"loss_cls": loss_cls, "loss_pts_init": loss_init,
                "loss_pts_refine": loss_refine}

    # ---- post-processing -------------------------------------------------------------------------

    def decode_boxes(self, priors: torch.Tensor, bbox_preds: torch.Tensor,
                     max_shape: Sequence[int] | None = None) -> torch.Tensor:
        """``(k, 4)`` points ``(x, y, stride_w, stride_h)`` and ``(k, 4)`` boxes in strides
        from them -> ``(k, 4)`` xyxy pixels, clipped to ``[0, w] x [0, h]`` of
        ``max_shape``."""
        boxes = bbox_preds * priors[:, 2:3] + torch.cat([priors[:, :2], priors[:, :2]], dim=1)
        if max_shape is None:
            return boxes
        h, w = max_shape[0], max_shape[1]
        return torch.stack([boxes[:, 0].clamp(min=0, max=w), boxes[:, 1].clamp(min=0, max=h),
                            boxes[:, 2].clamp(min=0, max=w), boxes[:, 3].clamp(min=0, max=h)],
                           dim=-1)

    def predict(self, raw: RawOutputs, metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Detections from the class logits and the refined points' boxes (see
        :meth:`BaseDenseHead.predict_by_feat` for ``test_cfg`` and ``rescale``)."""
        cls_scores, _, pts_refine = raw
        if not self.test_cfg:
            raise ConfigError("RepPointsHead was built without test_cfg; give the model a "
                              "test_cfg (nms_pre, score_thr, nms, max_per_img)")
        if len(metas) != cls_scores[0].shape[0]:
            raise ValueError(f"predict got {cls_scores[0].shape[0]} images but {len(metas)} "
                             f"metas")
        boxes = [self.points_to_boxes(p) for p in pts_refine]
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        priors = self.prior_generator.grid_priors(sizes, dtype=torch.float32,
                                                  device=cls_scores[0].device, with_stride=True)
        return [dense_postprocess(
            [c[i] for c in cls_scores], [b[i] for b in boxes], priors, meta, self.test_cfg,
            decode=self.decode_boxes, use_sigmoid=self.use_sigmoid_cls, rescale=rescale)
            for i, meta in enumerate(metas)]
