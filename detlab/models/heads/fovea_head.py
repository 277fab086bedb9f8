"""FoveaBox's head (Kong et al., 2019): anchor-free, each pyramid level responsible for the
objects of one range of sizes, and the points in a shrunk "fovea" of each object positive.

Targets, level by level: an object whose size ``sqrt(w * h)`` lies in the level's
``scale_ranges`` entry (bounds included; ranges overlap, so an object may train several levels)
marks the points of its central region -- the box scaled by ``sigma`` about its center, in
feature cells -- with its class; larger objects are painted first, so a smaller one wins where
two overlap. Each such point regresses ``log`` of its distances to the box's left, top, right
and bottom edges divided by the level's ``base_edge_list`` entry (clamped to ``[1/16, 16]``).
Losses: the classification loss over every point, divided by the positives plus the number
of images; the box loss over the positives, divided by their number.

At test time a point's box is its distances ``exp(pred) * base_edge`` from the point, clipped
to ``[0, w - 1] x [0, h - 1]`` of the input image; no score factor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.heads.anchor_free_head import ANCHOR_FREE_INIT, FOCAL, IOU, AnchorFreeHead
from detlab.models.heads.base_dense_head import GroundTruth
from detlab.models.heads.postprocess import dense_postprocess
from detlab.models.init import initialize
from detlab.registry import MODELS, BuildArgumentError
from detlab.structures import DetResult

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor]]


def fovea_targets_per_image(gt: GroundTruth, points: Sequence[torch.Tensor],
                            sizes: Sequence[tuple[int, int]], strides: Sequence[int],
                            base_edges: Sequence[float],
                            scale_ranges: Sequence[Sequence[float]], sigma: float,
                            num_classes: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One image's targets on each level: labels ``(H_l * W_l,)`` (``num_classes`` for
    background) and ``(H_l * W_l, 4)`` log-distance targets (0 where no object is), from the
    ``(H_l * W_l, 2)`` points of each level."""
    boxes, labels = gt.boxes, gt.labels
    sides = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level_labels, level_targets = [], []
    for level_points, (h, w), stride, base, (low, high) in zip(
            points, sizes, strides, base_edges, scale_ranges, strict=True):
        x, y = level_points[:, 0].view(h, w), level_points[:, 1].view(h, w)
        lab = labels.new_full((h, w), num_classes)
        targets = boxes.new_ones((h, w, 4))
        hits = ((sides >= low) & (sides <= high)).nonzero().flatten()
        if len(hits) > 0:
            hits = hits[torch.sort(-sides[hits])[1]]  # the largest first
            cells = boxes[hits] / stride
            half_w = 0.5 * (cells[:, 2] - cells[:, 0])
            half_h = 0.5 * (cells[:, 3] - cells[:, 1])
            left = torch.ceil(cells[:, 0] + (1 - sigma) * half_w - 0.5).long().clamp(0, w - 1)
            right = torch.floor(cells[:, 0] + (1 + sigma) * half_w - 0.5).long().clamp(0, w - 1)
            top = torch.ceil(cells[:, 1] + (1 - sigma) * half_h - 0.5).long().clamp(0, h - 1)
            bottom = torch.floor(cells[:, 1] + (1 + sigma) * half_h - 0.5).long().clamp(0, h - 1)
            for x1, y1, x2, y2, label, box in zip(left.tolist(), top.tolist(), right.tolist(),
                                                  bottom.tolist(), labels[hits], boxes[hits],
                                                  strict=True):
                rows, cols = slice(y1, y2 + 1), slice(x1, x2 + 1)
                lab[rows, cols] = label
                px, py = x[rows, cols], y[rows, cols]
                targets[rows, cols, 0] = (px - box[0]) / base
                targets[rows, cols, 1] = (py - box[1]) / base
                targets[rows, cols, 2] = (box[2] - px) / base
                targets[rows, cols, 3] = (box[3] - py) / base
            targets = targets.clamp(min=1.0 / 16, max=16.0)
        level_labels.append(lab.reshape(-1))
        level_targets.append(torch.log(targets).reshape(-1, 4))
    return level_labels, level_targets


@MODELS.register_module()
class FoveaHead(AnchorFreeHead):
    """FoveaBox head.

    Args:
        num_classes, in_channels, feat_channels, stacked_convs, strides, conv_cfg, norm_cfg,
        conv_bias, dcn_on_last_conv, loss_cls, loss_bbox, bbox_coder, train_cfg, test_cfg,
        init_cfg: as :class:`AnchorFreeHead` (``bbox_coder`` is unused: FoveaBox decodes its
            own log distances).
        base_edge_list: per level, the length the regressed distances are measured in.
        scale_ranges: per level, ``(low, high)`` bounds of the object sizes (``sqrt(w * h)``,
            input pixels) it is trained on.
        sigma: the fovea's scale: the central ``sigma`` of an object's box is positive.
        with_deform: the classification branch aligned by a deformable conv driven by the
            predicted boxes (FoveaBox-align); needs deformable convs, which detlab has not got
            yet (a :class:`~detlab.registry.BuildArgumentError`, a ConfigError).
        deform_groups: offset groups of that deformable conv.
    """

    def __init__(self, num_classes: int, in_channels: int,
                 base_edge_list: Sequence[float] = (16, 32, 64, 128, 256),
                 scale_ranges: Sequence[Sequence[float]] = ((8, 32), (16, 64), (32, 128),
                                                            (64, 256), (128, 512)),
                 sigma: float = 0.4, with_deform: bool = False, deform_groups: int = 4,
                 feat_channels: int = 256, stacked_convs: int = 4,
                 strides: Sequence[int] = (4, 8, 16, 32, 64), dcn_on_last_conv: bool = False,
                 conv_bias: bool | str = "auto", loss_cls: Mapping | nn.Module = FOCAL,
                 loss_bbox: Mapping | nn.Module = IOU, bbox_coder: Mapping | Any | None = None,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = None,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = ANCHOR_FREE_INIT) -> None:
        if with_deform:
            # a BuildArgumentError: the option exists in MMDetection, detlab does not accept it
            raise BuildArgumentError("FoveaHead does not accept with_deform=True yet: "
                                     "FoveaBox-align (bbox_head.with_deform) needs a deformable "
                                     "conv (DeformConv2d) that detlab cannot build; set "
                                     "with_deform=False")
        levels = len(strides)
        if len(base_edge_list) != levels or len(scale_ranges) != levels:
            raise ConfigError(f"FoveaHead needs one base_edge_list and one scale_ranges entry "
                              f"per level of strides ({levels}), got {len(base_edge_list)} and "
                              f"{len(scale_ranges)}")
        if any(len(r) != 2 for r in scale_ranges):
            raise ConfigError(f"FoveaHead.scale_ranges entries are (low, high) pairs, got "
                              f"{scale_ranges!r}")
        extra = {} if bbox_coder is None else dict(bbox_coder=bbox_coder)
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         feat_channels=feat_channels, stacked_convs=stacked_convs,
                         strides=strides, dcn_on_last_conv=dcn_on_last_conv,
                         conv_bias=conv_bias, loss_cls=loss_cls, loss_bbox=loss_bbox,
                         conv_cfg=conv_cfg, norm_cfg=norm_cfg, train_cfg=train_cfg,
                         test_cfg=test_cfg, init_cfg=init_cfg, **extra)
        if not self.use_sigmoid_cls:
            raise ConfigError("FoveaHead needs sigmoid class scores: give it loss_cls with "
                              "use_sigmoid=True (e.g. FocalLoss)")
        self.base_edge_list = tuple(float(b) for b in base_edge_list)
        self.scale_ranges = tuple(tuple(r) for r in scale_ranges)
        self.sigma, self.with_deform, self.deform_groups = float(sigma), False, deform_groups
        initialize(self, self.init_cfg, load_pretrained=False)

    # ---- targets and loss ----------------------------------------------------------------------

    def get_targets(self, points: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]],
                    gts: Sequence[GroundTruth]) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels ``(N,)`` and log-distance targets ``(N, 4)`` of every point of every image,
        ordered level by level, then image by image within a level (MMDetection's order)."""
        per_image = [fovea_targets_per_image(gt, points, sizes, self.strides,
                                             self.base_edge_list, self.scale_ranges,
                                             self.sigma, self.num_classes) for gt in gts]
        labels = torch.cat([img[0][level] for level in range(len(sizes)) for img in per_image])
        targets = torch.cat([img[1][level] for level in range(len(sizes))
                             for img in per_image])
        return labels, targets

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls`` over every point (divided by the positives plus the images) and
        ``loss_bbox`` over the positives (divided by their number; 0 without any)."""
        cls_scores, bbox_preds = raw[0], raw[1]
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        points = self.prior_generator.grid_priors(sizes, dtype=bbox_preds[0].dtype,
                                                  device=bbox_preds[0].device)
        num_images = cls_scores[0].shape[0]
        gts = self.ground_truths(targets, metas, num_images, cls_scores[0].device)
        cls = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, self.cls_out_channels)
                         for c in cls_scores])
        reg = torch.cat([b.permute(0, 2, 3, 1).reshape(-1, 4) for b in bbox_preds])
        labels, reg_targets = self.get_targets(points, sizes, gts)
        pos = ((labels >= 0) & (labels < self.num_classes)).nonzero().view(-1)
        loss_cls = self.loss_cls(cls, labels, avg_factor=len(pos) + num_images)
        if len(pos) > 0:
            loss_bbox = self.loss_bbox(reg[pos], reg_targets[pos],
                                       torch.ones_like(reg_targets[pos]), avg_factor=len(pos))
        else:  # MMDetection's zero, kept in the graph
            loss_bbox = reg.sum() * 0
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox)

    # ---- post-processing -----------------------------------------------------------------------

    def decode_boxes(self, priors: torch.Tensor, bbox_preds: torch.Tensor,
                     max_shape: Sequence[int] | None = None) -> torch.Tensor:
        """``(k, 3)`` priors (point x, y and the level's base edge) and ``(k, 4)`` log
        distances -> ``(k, 4)`` xyxy boxes, clipped to ``[0, w - 1] x [0, h - 1]`` of
        ``max_shape`` ``(h, w, ...)`` if given."""
        distances = bbox_preds.exp() * priors[:, 2:3]
        x, y = priors[:, 0], priors[:, 1]
        boxes = torch.stack([x - distances[:, 0], y - distances[:, 1],
                             x + distances[:, 2], y + distances[:, 3]], dim=-1)
        if max_shape is not None:
            h, w = max_shape[0], max_shape[1]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=w - 1)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=h - 1)
        return boxes

    def predict_by_feat(self, cls_scores: Sequence[torch.Tensor],
                        bbox_preds: Sequence[torch.Tensor],
                        score_factors: Sequence[torch.Tensor] | None = None, *,
                        metas: Sequence[Mapping], rescale: bool = True) -> list[DetResult]:
        """As :meth:`BaseDenseHead.predict_by_feat`, with each level's points carrying the
        level's base edge for :meth:`decode_boxes`."""
        if not self.test_cfg:
            raise ConfigError("FoveaHead was built without test_cfg; give the model a test_cfg "
                              "(nms_pre, score_thr, nms, max_per_img)")
        if len(metas) != cls_scores[0].shape[0]:
            raise ValueError(f"predict got {cls_scores[0].shape[0]} images but {len(metas)} "
                             f"metas")
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        points = self.prior_generator.grid_priors(sizes, dtype=torch.float32,
                                                  device=cls_scores[0].device)
        priors = [torch.cat([p, p.new_full((len(p), 1), base)], dim=1)
                  for p, base in zip(points, self.base_edge_list, strict=True)]
        return [dense_postprocess(
            [c[i] for c in cls_scores], [b[i] for b in bbox_preds], priors, meta, self.test_cfg,
            decode=self.decode_boxes, use_sigmoid=True, rescale=rescale)
            for i, meta in enumerate(metas)]
