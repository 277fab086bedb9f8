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

FoveaBox-align (``with_deform=True``): the classification branch first samples the level's
features with a deformable conv whose offsets a 1x1 conv reads from the predicted box
(``exp`` of the regression output), then runs a 3x3 and a 1x1 conv of four times the
channels (:class:`FeatureAlign`, MMDetection's ``feature_adaption``).
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
from detlab.models.ops.deform_conv import DeformConv2d
from detlab.models.utils import ConvModule, frozen
from detlab.registry import MODELS
from detlab.structures import DetResult

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor]]
# mmcv's order: the head's init first, then FeatureAlign's own (offset convs std 0.1)
FEATURE_ALIGN_INIT = frozen(type="Normal", layer="Conv2d", std=0.1,
                            override=frozen(type="Normal", name="conv_adaption", std=0.01))


class FeatureAlign(nn.Module):
    """Features resampled where the predicted box says: a deformable ``kernel_size`` conv
    (``conv_adaption``, no bias) whose offsets a bias-free 1x1 conv (``conv_offset``) computes
    from the ``(B, 4, H, W)`` box distances, then ReLU.

    Args:
        in_channels, out_channels: of the deformable conv.
        kernel_size: its kernel (padding keeps the size).
        deform_groups: its offset groups.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 deform_groups: int = 4) -> None:
        super().__init__()
        self.conv_offset = nn.Conv2d(4, deform_groups * kernel_size * kernel_size * 2, 1,
                                     bias=False)
        self.conv_adaption = DeformConv2d(in_channels, out_channels, kernel_size,
                                          padding=(kernel_size - 1) // 2,
                                          deform_groups=deform_groups)
        self.relu = nn.ReLU(inplace=True)
        self.init_weights()

    def init_weights(self) -> None:
        """MMDetection's: normal std 0.1 for ``conv_offset``, 0.01 for ``conv_adaption``."""
        initialize(self, FEATURE_ALIGN_INIT, load_pretrained=False)

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """``x (B, in_channels, H, W)``, ``shape (B, 4, H, W)`` -> ``(B, out_channels, H, W)``."""
        return self.relu(self.conv_adaption(x, self.conv_offset(shape)))


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
        with_deform: FoveaBox-align: the classification branch is ``feature_adaption``
            (:class:`FeatureAlign` of ``feat_channels``, which must then equal
            ``in_channels``), then ``cls_convs`` of a 3x3 and a 1x1 ConvModule of
            ``4 * feat_channels`` channels (biased only without ``norm_cfg``) and ``conv_cls``
            on those; ``stacked_convs`` shapes only the regression tower.
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
        if with_deform and in_channels != feat_channels:
            raise ConfigError(f"FoveaHead with with_deform=True aligns the input features with "
                              f"a conv of feat_channels inputs: bbox_head.in_channels "
                              f"({in_channels}) must equal bbox_head.feat_channels "
                              f"({feat_channels})")
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
        self.sigma, self.with_deform, self.deform_groups = float(sigma), with_deform, \
            deform_groups
        if with_deform:
            self._build_aligned_cls_branch()
        initialize(self, self.init_cfg, load_pretrained=False)
        if with_deform:
            self.feature_adaption.init_weights()

    def init_weights(self) -> None:
        """The base's init, then FeatureAlign's own (its ``conv_offset`` is a plain conv
        reading the boxes, not a deformable conv's offset branch to start at zero)."""
        super().init_weights()
        if self.with_deform:
            self.feature_adaption.init_weights()

    def _build_aligned_cls_branch(self) -> None:
        """FoveaBox-align's classification branch under MMDetection's names (replacing the
        base's ``cls_convs`` and ``conv_cls``)."""
        wide = self.feat_channels * 4
        bias = self.norm_cfg is None
        self.cls_convs = nn.ModuleList([
            ConvModule(self.feat_channels, wide, 3, stride=1, padding=1, conv_cfg=self.conv_cfg,
                       norm_cfg=self.norm_cfg, bias=bias),
            ConvModule(wide, wide, 1, stride=1, padding=0, conv_cfg=self.conv_cfg,
                       norm_cfg=self.norm_cfg, bias=bias)])
        self.feature_adaption = FeatureAlign(self.feat_channels, self.feat_channels,
                                             kernel_size=3, deform_groups=self.deform_groups)
        self.conv_cls = nn.Conv2d(wide, self.cls_out_channels, 3, padding=1)

    def forward_single(self, x: torch.Tensor,
                       level: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """One level: class logits ``(B, C, H, W)`` and log distances ``(B, 4, H, W)``; with
        ``with_deform`` the class branch reads features aligned by the predicted boxes."""
        if not self.with_deform:
            return super().forward_single(x, level)
        reg_feat = x
        for layer in self.reg_convs:
            reg_feat = layer(reg_feat)
        bbox_pred = self.conv_reg(reg_feat)
        cls_feat = self.feature_adaption(x, bbox_pred.exp())
        for layer in self.cls_convs:
            cls_feat = layer(cls_feat)
        return self.conv_cls(cls_feat), bbox_pred

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
