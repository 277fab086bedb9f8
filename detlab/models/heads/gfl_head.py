"""GFL's head (Li et al., 2020, "Generalized Focal Loss"): one anchor per location, a joint
class-and-quality score trained with the quality focal loss, and each box side predicted as a
distribution over ``0..reg_max`` (stride units) trained with the distribution focal loss and a
GIoU loss.

Layers, targets and losses are MMDetection 2.28's ``GFLHead``'s: ATSS assignment (through the
assigner interface), the IoU of each positive's predicted box with its ground truth as the
quality target, box losses weighted by the positive's best class score and divided by the sum
of those weights (averaged over processes), the classification loss by the positives (at least
one per image, averaged over processes).

Shapes: ``B`` images, ``A`` anchors of all levels of one image, ``C`` classes, ``R = reg_max``.
Raw maps are per level ``(B, C, H_l, W_l)`` logits and ``(B, 4 * (R + 1), H_l, W_l)``
distribution logits (the four sides' bins, side after side).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.dist import reduce_mean
from detlab.models.assigners import PseudoSampler
from detlab.models.heads.anchor_head import AnchorHead, AnchorTargets
from detlab.models.heads.postprocess import levels_to_rows
from detlab.models.init import initialize
from detlab.models.losses import aligned_bbox_overlaps
from detlab.models.utils import ConvModule, Scale, frozen
from detlab.registry import MODELS
from detlab.structures import DetResult

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor]]

GFL_ANCHORS = frozen(type="AnchorGenerator", ratios=(1.0,), octave_base_scale=8,
                     scales_per_octave=1, strides=(8, 16, 32, 64, 128))
DISTANCE_CODER = frozen(type="DistancePointBBoxCoder")
GN = frozen(type="GN", num_groups=32, requires_grad=True)
QFL = frozen(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0)
GIOU = frozen(type="GIoULoss", loss_weight=2.0)
DFL = frozen(type="DistributionFocalLoss", loss_weight=0.25)
# normal(0, 0.01) convs; the classifier's bias starts every score at the 0.01 prior
GFL_INIT = frozen(type="Normal", layer="Conv2d", std=0.01,
                  override=frozen(type="Normal", name="gfl_cls", std=0.01, bias_prob=0.01))


class Integral(nn.Module):
    """The expected value of a distribution over ``0..reg_max``: ``sum_i softmax(x)_i * i``.

    The bins ``0..reg_max`` are the buffer ``project`` (in MMDetection's state_dicts).

    Args:
        reg_max: the largest value of the discrete set.
    """

    def __init__(self, reg_max: int = 16) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., 4 * (reg_max + 1))`` logits (four sides' bins, side after side) -> ``(N, 4)``
        expected distances, ``N`` the number of locations (all leading dimensions flattened)."""
        probs = F.softmax(x.reshape(-1, self.reg_max + 1), dim=1)
        return F.linear(probs, self.project.type_as(probs)).reshape(-1, 4)


def anchor_centers(anchors: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` xyxy anchors -> ``(..., 2)`` their ``(x, y)`` centers."""
    return torch.stack([(anchors[..., 0] + anchors[..., 2]) / 2,
                        (anchors[..., 1] + anchors[..., 3]) / 2], dim=-1)


@MODELS.register_module()
class GFLHead(AnchorHead):
    """Generalized focal loss head.

    Args:
        num_classes: object classes (background excluded).
        in_channels: channels of the input feature maps.
        stacked_convs: 3x3 conv (+ norm) + ReLU layers in each tower.
        conv_cfg, norm_cfg: of the tower convs (default: GroupNorm with 32 groups).
        feat_channels: channels of the tower convs.
        anchor_generator: one square anchor per location (default: size 8 strides, strides
            8-128); only its centers and strides are used, its size by the ATSS assigner.
        bbox_coder: distances (l, t, r, b) from a point (``DistancePointBBoxCoder``).
        reg_max: the distribution's bins are ``0..reg_max`` strides.
        loss_cls: joint class-and-quality loss (default: quality focal loss, beta 2).
        loss_bbox: box loss on decoded boxes in stride units (default: GIoU, weight 2).
        loss_dfl: distribution focal loss on each side (default: weight 0.25).
        train_cfg: ``assigner`` (e.g. ``dict(type='ATSSAssigner', topk=9)``),
            ``allowed_border``, ``pos_weight``; every assigned anchor is kept (a ``sampler`` is
            ignored, as in MMDetection).
        test_cfg: ``nms_pre``, ``score_thr``, ``nms``, ``min_bbox_size``, ``max_per_img``.
        init_cfg: weight initialization (default: normal std 0.01, classifier bias prior 0.01).
    """

    def __init__(self, num_classes: int, in_channels: int, stacked_convs: int = 4,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = GN,
                 feat_channels: int = 256, anchor_generator: Mapping | Any = GFL_ANCHORS,
                 bbox_coder: Mapping | Any = DISTANCE_CODER, reg_max: int = 16,
                 loss_cls: Mapping | nn.Module = QFL, loss_bbox: Mapping | nn.Module = GIOU,
                 loss_dfl: Mapping | nn.Module = DFL, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = GFL_INIT) -> None:
        # boxes are regressed decoded: the targets are the ground-truth boxes themselves
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         feat_channels=feat_channels, anchor_generator=anchor_generator,
                         bbox_coder=bbox_coder, reg_decoded_bbox=True, loss_cls=loss_cls,
                         loss_bbox=loss_bbox, train_cfg=train_cfg, test_cfg=test_cfg,
                         init_cfg=init_cfg)
        self._check_gfl_priors()
        self.sampling, self.sampler = False, PseudoSampler()
        self.stacked_convs, self.reg_max = stacked_convs, reg_max
        self.loss_dfl = MODELS.build(loss_dfl)
        self.cls_convs = self._tower(stacked_convs, conv_cfg, norm_cfg)
        self.reg_convs = self._tower(stacked_convs, conv_cfg, norm_cfg)
        self.gfl_cls = nn.Conv2d(feat_channels, self.cls_out_channels, 3, padding=1)
        self.gfl_reg = nn.Conv2d(feat_channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.prior_generator.strides)
        self.integral = Integral(reg_max)
        initialize(self, init_cfg, load_pretrained=False)

    def _check_gfl_priors(self) -> None:
        if self.num_base_priors != 1:
            raise ConfigError(f"GFLHead needs one anchor per location, but bbox_head."
                              f"anchor_generator gives {self.num_base_priors}; use ratios=[1.0] "
                              f"and scales_per_octave=1")
        if not self.use_sigmoid_cls:
            raise ConfigError("GFLHead scores classes with sigmoids: bbox_head.loss_cls needs "
                              "use_sigmoid=True (e.g. QualityFocalLoss)")
        uneven = [s for s in self.prior_generator.strides if s[0] != s[1]]
        if uneven:
            raise ConfigError(f"GFLHead measures distances in strides, so each level's stride "
                              f"must be the same in x and y; bbox_head.anchor_generator.strides "
                              f"has {uneven}")

    def _tower(self, depth: int, conv_cfg: Mapping | None,
               norm_cfg: Mapping | None) -> nn.ModuleList:
        return nn.ModuleList(
            ConvModule(self.in_channels if i == 0 else self.feat_channels, self.feat_channels, 3,
                       stride=1, padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for i in range(depth))

    def forward_single(self, x: torch.Tensor,
                       level: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """One level: ``(B, in_channels, H, W)`` -> joint scores ``(B, C, H, W)`` (logits) and
        distribution logits ``(B, 4 * (R + 1), H, W)`` (float32), scaled by ``scales[level]``."""
        cls_feat = reg_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        return self.gfl_cls(cls_feat), self.scales[level](self.gfl_reg(reg_feat)).float()

    # ---- distances and boxes -----------------------------------------------------------------

    def level_strides(self) -> list[int]:
        """The stride of each level, in pixels."""
        return [int(s[0]) for s in self.prior_generator.strides]

    def distance_map(self, bbox_pred: torch.Tensor, stride: int) -> torch.Tensor:
        """One level's ``(B, 4 * (R + 1), H, W)`` distribution logits -> ``(B, 4, H, W)``
        expected distances (l, t, r, b) in pixels."""
        b, _, h, w = bbox_pred.shape
        rows = bbox_pred.permute(0, 2, 3, 1)  # (B, H, W, 4 * (R + 1))
        dist = self.integral(rows) * stride  # (B * H * W, 4)
        return dist.reshape(b, h, w, 4).permute(0, 3, 1, 2)

    def decode_boxes(self, priors: torch.Tensor, bbox_preds: torch.Tensor,
                     max_shape: Sequence[int] | None = None) -> torch.Tensor:
        """``(..., 4)`` xyxy anchors and ``(..., 4)`` distances from their centers, in pixels
        (:meth:`distance_map`) -> ``(..., 4)`` xyxy boxes, clipped to ``max_shape``."""
        return self.bbox_coder.decode(anchor_centers(priors), bbox_preds, max_shape=max_shape)

    def predict(self, raw: RawOutputs, metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Detections of each image: the distributions integrated to distances per level (times
        the level's stride), decoded from the anchor centers, then the one post-processing
        function, without score factors."""
        distances = [self.distance_map(pred, stride)
                     for pred, stride in zip(raw[1], self.level_strides(), strict=True)]
        return self.predict_by_feat(raw[0], distances, metas=metas, rescale=rescale)

    # ---- loss ----------------------------------------------------------------------------------

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls`` (quality focal), ``loss_bbox`` (GIoU) and ``loss_dfl`` of the raw
        outputs against the ground truth (one target dict and one meta dict per image)."""
        return self.loss_by_targets(*self.loss_rows(raw, targets, metas))

    def loss_rows(self, raw: RawOutputs, targets: Sequence[Mapping], metas: Sequence[Mapping]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             AnchorTargets]:
        """What :meth:`loss_by_targets` takes: the raw outputs as ``(B, A, C)`` logits and
        ``(B, A, 4 * (R + 1))`` distribution logits, the ``(A, 4)`` anchors, their ``(A,)``
        strides and the assigned targets."""
        cls_scores, bbox_preds = raw[0], raw[1]
        priors = self.get_priors(cls_scores, metas)
        cls_rows = levels_to_rows(cls_scores, self.cls_out_channels).float()  # (B, A, C)
        reg_rows = levels_to_rows(bbox_preds, 4 * (self.reg_max + 1)).float()  # (B, A, 4(R+1))
        with torch.no_grad():  # what the assigner may look at: boxes in pixels
            dist_rows = levels_to_rows(
                [self.distance_map(p.float(), s)
                 for p, s in zip(bbox_preds, self.level_strides(), strict=True)], 4)
        t = self.get_targets(priors, targets, metas, cls_rows=cls_rows, reg_rows=dist_rows)
        strides = torch.repeat_interleave(
            torch.tensor(self.level_strides(), dtype=torch.float32, device=cls_rows.device),
            torch.tensor(priors.num_level, device=cls_rows.device))  # (A,)
        return cls_rows, reg_rows, priors.priors, strides, t

    def loss_by_targets(self, cls_rows: torch.Tensor, reg_rows: torch.Tensor,
                        anchors: torch.Tensor, strides: torch.Tensor,
                        t: AnchorTargets) -> dict[str, torch.Tensor]:
        """The three losses over the whole batch at once: ``(B, A, C)`` logits, ``(B, A, 4 *
        (R + 1))`` distribution logits, ``(A, 4)`` xyxy anchors, ``(A,)`` their strides, and
        the targets (box targets: xyxy ground truths in pixels)."""
        num_anchors = len(anchors)
        cls = cls_rows.reshape(-1, self.cls_out_channels)
        reg = reg_rows.reshape(-1, 4 * (self.reg_max + 1))
        labels = t.labels.reshape(-1)
        pos = ((labels >= 0) & (labels < self.num_classes)).nonzero().squeeze(1)
        quality = cls.new_zeros(labels.shape)
        if pos.numel() > 0:
            loss_bbox, loss_dfl, weight_sum, pos_quality = self.box_losses(
                cls[pos], reg[pos], anchors[pos % num_anchors], strides[pos % num_anchors],
                t.bbox_targets.reshape(-1, 4)[pos])
            quality[pos] = pos_quality
        else:
            loss_bbox = loss_dfl = reg.sum() * 0
            weight_sum = reg.new_tensor(0.0)
        num_pos = max(reduce_mean(cls.new_tensor(t.avg_factor)).item(), 1.0)
        loss_cls = self.loss_cls(cls, (labels, quality), weight=t.label_weights.reshape(-1),
                                 avg_factor=num_pos)
        weight_sum = reduce_mean(weight_sum).clamp(min=1).item()
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox / weight_sum,
                    loss_dfl=loss_dfl / weight_sum)

    def box_losses(self, cls: torch.Tensor, reg: torch.Tensor, anchors: torch.Tensor,
                   strides: torch.Tensor, gt_boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The positives' box losses, in stride units: ``(P, C)`` logits, ``(P, 4 * (R + 1))``
        distribution logits, ``(P, 4)`` xyxy anchors, ``(P,)`` strides, ``(P, 4)`` xyxy ground
        truths in pixels -> GIoU and DFL losses weighted by the best class score (summed, not
        yet normalized), the sum of those weights, and the IoU of each predicted box with its
        ground truth (detached: the quality target)."""
        weight = cls.detach().sigmoid().max(dim=1)[0]  # (P,)
        centers = anchor_centers(anchors) / strides[:, None]
        targets = gt_boxes / strides[:, None]
        boxes = self.bbox_coder.decode(centers, self.integral(reg))
        quality = aligned_bbox_overlaps(boxes.detach(), targets)
        loss_bbox = self.loss_bbox(boxes, targets, weight=weight, avg_factor=1.0)
        sides = self.bbox_coder.encode(centers, targets, self.reg_max).reshape(-1)  # (P * 4,)
        loss_dfl = self.loss_dfl(reg.reshape(-1, self.reg_max + 1), sides,
                                 weight=weight[:, None].expand(-1, 4).reshape(-1),
                                 avg_factor=4.0)
        return loss_bbox, loss_dfl, weight.sum(), quality
