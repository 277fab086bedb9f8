"""FCOS's head (Tian et al., 2019): per point of each level, class scores, the distances to
the four sides of a box, and a centerness that damps the scores of points far from an object's
center at test time.

Targets: a point learns a ground-truth box when it lies inside the box (or, with
``center_sampling``, inside a square of ``center_sample_radius`` strides around its center,
clipped to the box) and the box's largest distance from it falls in its level's
``regress_range``; among several such boxes, the smallest (the first of equal areas, as
MMDetection breaks ties). Loss: focal classification over every point, an IoU-type box loss
over the positives weighted by their centerness targets, and a binary cross-entropy of the
centerness.

Raw outputs are the same in training and evaluation: per level ``(B, C, H, W)`` class logits,
``(B, 4, H, W)`` distances (left, top, right, bottom; in strides with ``norm_on_bbox``, else in
pixels) and ``(B, 1, H, W)`` centerness logits. MMDetection multiplies the ``norm_on_bbox``
distances by the stride inside ``forward`` in eval mode; here :meth:`FCOSHead.predict` does, so
that the loss of an evaluated model is the training loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.dist import reduce_mean
from detlab.models.heads.anchor_free_head import (
    ANCHOR_FREE_INIT,
    DISTANCE_CODER,
    FOCAL,
    IOU,
    AnchorFreeHead,
)
from detlab.models.heads.base_dense_head import GroundTruth
from detlab.models.heads.postprocess import levels_to_rows
from detlab.models.init import initialize
from detlab.models.utils import Scale, frozen
from detlab.registry import MODELS
from detlab.structures import DetResult

INF = 1e8  # MMDetection's "no upper bound" of the last regress range
FCOS_RANGES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF))
SIGMOID_BCE = frozen(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0)
GN_32 = frozen(type="GN", num_groups=32, requires_grad=True)

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]


def centerness_target(distances: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` (left, top, right, bottom) distances from points inside their boxes ->
    ``(N,)`` centerness ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``."""
    left_right, top_bottom = distances[:, [0, 2]], distances[:, [1, 3]]
    if len(left_right) == 0:
        return left_right[:, 0]
    return torch.sqrt((left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0])
                      * (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0]))


@dataclass
class PointLevels:
    """What each point of one image's levels is held to.

    Attributes:
        points: ``(A, 2)`` (x, y) of all levels, level after level.
        regress_ranges: ``(A, 2)`` the range of the largest target distance of its level.
        strides: ``(A,)`` its level's stride.
        radii: ``(A,)`` its level's center-sampling half side (stride x radius), or None
            without center sampling.
        num_level: points per level.
    """

    points: torch.Tensor
    regress_ranges: torch.Tensor
    strides: torch.Tensor
    radii: torch.Tensor | None
    num_level: list[int]


def fcos_targets_per_image(levels: PointLevels, gt: GroundTruth,
                           num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's targets: labels ``(A,)`` (``num_classes``: background) and the ``(A, 4)``
    (left, top, right, bottom) distances to the box each point learns (in pixels).

    All ``A`` points against all ``G`` boxes at once; a point eligible for several boxes takes
    the one of least area, the first of equal areas.
    """
    boxes, num_points = gt.boxes, levels.points.shape[0]
    if boxes.shape[0] == 0:
        return gt.labels.new_full((num_points,), num_classes), boxes.new_zeros((num_points, 4))
    xs, ys = levels.points[:, 0, None], levels.points[:, 1, None]  # (A, 1) against (G,)
    distances = torch.stack((xs - boxes[:, 0], ys - boxes[:, 1], boxes[:, 2] - xs,
                             boxes[:, 3] - ys), dim=-1)  # (A, G, 4)
    if levels.radii is None:
        inside = distances.min(dim=-1)[0] > 0
    else:
        inside = inside_center_regions(xs, ys, boxes, levels.radii)
    largest = distances.max(dim=-1)[0]  # (A, G)
    in_range = (largest >= levels.regress_ranges[:, :1]) \
        & (largest <= levels.regress_ranges[:, 1:])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    areas = torch.where(inside & in_range, areas, torch.full_like(areas, INF))  # (A, G)
    min_area, which = areas.min(dim=1)
    labels = gt.labels[which]
    labels[min_area == INF] = num_classes
    return labels, distances[torch.arange(num_points, device=which.device), which]


def inside_center_regions(xs: torch.Tensor, ys: torch.Tensor, boxes: torch.Tensor,
                          radii: torch.Tensor) -> torch.Tensor:
    """``(A, G)`` bool: the point ``(xs, ys)`` ``(A, 1)`` lies inside the square of half side
    ``radii`` ``(A,)`` around each box's center, clipped to the ``(G, 4)`` xyxy box."""
    center_x = (boxes[:, 0] + boxes[:, 2]) / 2
    center_y = (boxes[:, 1] + boxes[:, 3]) / 2
    radius = radii[:, None]
    x1 = torch.maximum(center_x - radius, boxes[:, 0])
    y1 = torch.maximum(center_y - radius, boxes[:, 1])
    x2 = torch.minimum(center_x + radius, boxes[:, 2])
    y2 = torch.minimum(center_y + radius, boxes[:, 3])
    sides = torch.stack((xs - x1, ys - y1, x2 - xs, y2 - ys), dim=-1)  # (A, G, 4)
    return sides.min(dim=-1)[0] > 0


@MODELS.register_module()
class FCOSHead(AnchorFreeHead):
    """FCOS head.

    Args:
        num_classes: object classes (background excluded).
        in_channels: channels of the input feature maps.
        feat_channels: channels of the tower convs.
        stacked_convs: 3x3 convs in each tower.
        strides: stride of each level (one point per cell, at its center).
        regress_ranges: per level, the ``(low, high)`` range of a point's largest distance to
            the sides of a box it may learn.
        center_sampling: positives only inside a square of ``center_sample_radius`` strides
            around the box's center (clipped to the box) instead of the whole box.
        center_sample_radius: half side of that square, in strides.
        norm_on_bbox: distances in strides (ReLU'd) instead of ``exp`` of the output in pixels.
        centerness_on_reg: the centerness branch reads the regression tower instead of the
            classification tower.
        dcn_on_last_conv: a deformable last tower conv (not available in detlab: an error).
        conv_bias: bias of the tower convs: ``'auto'`` (only without a norm layer) or a bool.
        loss_cls: classification loss (default: focal loss, gamma 2, alpha 0.25).
        loss_bbox: box loss on decoded boxes (default: IoU loss; GIoU in the improved configs).
        loss_centerness: centerness loss (default: sigmoid cross-entropy).
        bbox_coder: distances <-> boxes (default: ``DistancePointBBoxCoder``).
        conv_cfg, norm_cfg: of the tower convs (default: GroupNorm of 32 groups).
        train_cfg: accepted for MMDetection's configs (their ``assigner`` is not used: FCOS
            assigns by the rules above).
        test_cfg: ``nms_pre``, ``score_thr``, ``nms``, ``min_bbox_size``, ``max_per_img``.
        init_cfg: weight initialization (default: normal std 0.01, classifier bias prior 0.01).
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int = 256,
                 stacked_convs: int = 4, strides: Sequence[int] = (4, 8, 16, 32, 64),
                 regress_ranges: Sequence[Sequence[float]] = FCOS_RANGES,
                 center_sampling: bool = False, center_sample_radius: float = 1.5,
                 norm_on_bbox: bool = False, centerness_on_reg: bool = False,
                 dcn_on_last_conv: bool = False, conv_bias: bool | str = "auto",
                 loss_cls: Mapping | nn.Module = FOCAL, loss_bbox: Mapping | nn.Module = IOU,
                 loss_centerness: Mapping | nn.Module = SIGMOID_BCE,
                 bbox_coder: Mapping | Any = DISTANCE_CODER, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = GN_32, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = ANCHOR_FREE_INIT) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         feat_channels=feat_channels, stacked_convs=stacked_convs,
                         strides=strides, dcn_on_last_conv=dcn_on_last_conv,
                         conv_bias=conv_bias, loss_cls=loss_cls, loss_bbox=loss_bbox,
                         bbox_coder=bbox_coder, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                         train_cfg=train_cfg, test_cfg=test_cfg, init_cfg=init_cfg)
        self.loss_centerness = MODELS.build(loss_centerness)
        self.regress_ranges = tuple(tuple(r) for r in regress_ranges)
        self.center_sampling, self.center_sample_radius = center_sampling, center_sample_radius
        self.norm_on_bbox, self.centerness_on_reg = norm_on_bbox, centerness_on_reg
        self._check_levels()
        self.conv_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in strides)
        initialize(self, self.init_cfg, load_pretrained=False)

    def _check_levels(self) -> None:
        if len(self.regress_ranges) != len(self.strides) \
                or any(len(r) != 2 for r in self.regress_ranges):
            raise ConfigError(f"bbox_head.regress_ranges needs one (low, high) pair per level "
                              f"of bbox_head.strides={list(self.strides)}, got "
                              f"{[list(r) for r in self.regress_ranges]}")
        if (self.norm_on_bbox or self.center_sampling) \
                and not all(isinstance(s, (int, float)) for s in self.strides):
            raise ConfigError(f"bbox_head.norm_on_bbox and center_sampling need one number per "
                              f"level in bbox_head.strides, got {list(self.strides)}")

    # ---- forward -------------------------------------------------------------------------------

    def forward_single(self, x: torch.Tensor,
                       level: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One level: ``(B, in_channels, H, W)`` -> class logits ``(B, C, H, W)``, distances
        ``(B, 4, H, W)`` (float32; in strides with ``norm_on_bbox``) and centerness logits
        ``(B, 1, H, W)``."""
        cls_score, bbox_pred, cls_feat, reg_feat = self.forward_features(x)
        centerness = self.conv_centerness(reg_feat if self.centerness_on_reg else cls_feat)
        bbox_pred = self.scales[level](bbox_pred).float()  # float32 so that exp cannot overflow
        bbox_pred = bbox_pred.clamp(min=0) if self.norm_on_bbox else bbox_pred.exp()
        return cls_score, bbox_pred, centerness

    # ---- targets -------------------------------------------------------------------------------

    def point_levels(self, sizes: Sequence[tuple[int, int]], device: torch.device) -> PointLevels:
        """The points of feature maps of ``sizes`` and what each is held to."""
        points = self.prior_generator.grid_priors(sizes, dtype=torch.float32, device=device)
        counts = [len(p) for p in points]
        per_point = torch.tensor(counts, device=device)
        ranges = torch.tensor(self.regress_ranges, dtype=torch.float32, device=device)
        strides = torch.tensor(self.strides, dtype=torch.float32, device=device)
        radii = None
        if self.center_sampling:
            # stride x radius in Python, then float32 once, as MMDetection fills its tensor
            radii = torch.tensor([s * self.center_sample_radius for s in self.strides],
                                 dtype=torch.float32, device=device)
            radii = radii.repeat_interleave(per_point)
        return PointLevels(torch.cat(points), ranges.repeat_interleave(per_point, dim=0),
                           strides.repeat_interleave(per_point), radii, counts)

    def get_targets(self, levels: PointLevels, targets: Sequence[Mapping],
                    metas: Sequence[Mapping]) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels ``(B, A)`` (``num_classes``: background) and distance targets ``(B, A, 4)``
        (in strides with ``norm_on_bbox``) of each image's points. Ignored boxes are not
        looked at (nor are they by MMDetection's FCOS)."""
        gts = self.ground_truths(targets, metas, len(metas), levels.points.device)
        labels, distances = zip(*[fcos_targets_per_image(levels, gt, self.num_classes)
                                  for gt in gts], strict=True)
        distances = torch.stack(distances)
        if self.norm_on_bbox:
            distances = distances / levels.strides[:, None]
        return torch.stack(labels), distances

    # ---- loss ----------------------------------------------------------------------------------

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls``, ``loss_bbox`` and ``loss_centerness`` of the raw outputs against the
        ground truth (one target dict and one meta dict per image)."""
        cls_scores, bbox_preds, centernesses = raw
        levels = self.point_levels([tuple(c.shape[-2:]) for c in cls_scores],
                                   cls_scores[0].device)
        labels, distances = self.get_targets(levels, targets, metas)
        # float32 rows, whatever the forward ran in (MMDetection's force_fp32)
        cls = levels_to_rows(cls_scores, self.cls_out_channels).float()
        cls = cls.reshape(-1, self.cls_out_channels)
        reg = levels_to_rows(bbox_preds, 4).float().reshape(-1, 4)
        ctr = levels_to_rows(centernesses, 1).float().reshape(-1)
        points = levels.points.repeat(len(metas), 1)
        return self.loss_by_targets(cls, reg, ctr, points, labels.reshape(-1),
                                    distances.reshape(-1, 4))

    def loss_by_targets(self, cls: torch.Tensor, reg: torch.Tensor, ctr: torch.Tensor,
                        points: torch.Tensor, labels: torch.Tensor,
                        distances: torch.Tensor) -> dict[str, torch.Tensor]:
        """The losses over the points of the whole batch: ``(N, C)`` logits, ``(N, 4)``
        predicted and target distances, ``(N,)`` centerness logits and labels, ``(N, 2)``
        points. The divisors are averaged over processes, as MMDetection does."""
        pos = torch.nonzero((labels >= 0) & (labels < self.num_classes)).reshape(-1)
        num_pos = max(reduce_mean(torch.tensor(float(len(pos)), device=cls.device)), 1.0)
        loss_cls = self.loss_cls(cls, labels, avg_factor=num_pos)
        pos_reg, pos_ctr = reg[pos], ctr[pos]
        pos_centerness = centerness_target(distances[pos])
        # every process reduces its sum, positives or not, so the collectives pair up
        centerness_denorm = max(reduce_mean(pos_centerness.sum().detach()), 1e-6)
        if len(pos) == 0:  # zeros that keep the graph (every parameter gets a gradient)
            return dict(loss_cls=loss_cls, loss_bbox=pos_reg.sum(), loss_centerness=pos_ctr.sum())
        pos_points = points[pos]
        loss_bbox = self.loss_bbox(self.bbox_coder.decode(pos_points, pos_reg),
                                   self.bbox_coder.decode(pos_points, distances[pos]),
                                   weight=pos_centerness, avg_factor=centerness_denorm)
        loss_centerness = self.loss_centerness(pos_ctr, pos_centerness, avg_factor=num_pos)
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_centerness=loss_centerness)

    # ---- post-processing -----------------------------------------------------------------------

    def predict(self, raw: RawOutputs, metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Detections of each image: boxes decoded from the points and distances (in pixels:
        ``norm_on_bbox`` distances times their level's stride), scores times the centerness."""
        cls_scores, bbox_preds, centernesses = raw
        if self.norm_on_bbox:
            bbox_preds = [pred * stride for pred, stride in
                          zip(bbox_preds, self.strides, strict=True)]
        return self.predict_by_feat(cls_scores, bbox_preds, centernesses, metas=metas,
                                    rescale=rescale)
