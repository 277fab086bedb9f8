"""TOOD's head (Feng et al., 2021): a task-aligned head on ATSS's anchors.

One tower of ``stacked_convs`` GroupNorm convs (``inter_convs``) feeds two task decompositions
(``cls_decomp``, ``reg_decomp``: a layer attention over the tower's levels folded into a 1x1
reduction conv). The class score is the geometric mean of the sigmoids of ``tood_cls`` and of a
per-location probability map (``cls_prob_module``); the box, decoded per level in units of the
level's stride (distances from the anchor centers with ``anchor_type='anchor_free'``, deltas
from the anchors with ``'anchor_based'``), is resampled at offsets predicted per side
(``reg_offset_module``, bilinear sampling) and kept as decoded where that makes it invalid.
The raw outputs are ``(class probabilities, xyxy boxes / stride)`` per level.

Training: before ``train_cfg.initial_epoch`` (the detector's ``set_epoch``), ATSS assignment
(``initial_assigner``) with a focal loss of the probabilities and GIoU weighted by the
anchors' centerness targets; from it on, task-aligned assignment (``assigner``, built with
``train_cfg.alpha`` / ``beta``) with a quality focal loss against the alignment metrics
(normalized per ground truth to its best IoU) and GIoU weighted by them. Both losses are sums
divided by the sum of their weights averaged over processes, as MMDetection does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from detlab.config import ConfigError
from detlab.dist import reduce_mean
from detlab.models.anchors import anchor_inside_flags
from detlab.models.assigners import PseudoSampler
from detlab.models.heads.anchor_head import AnchorHead
from detlab.models.heads.atss_head import (
    ANCHORS,
    DELTA_CODER,
    SIGMOID_CE,
    SMOOTH_L1,
    ATSSHead,
    anchor_centerness,
)
from detlab.models.heads.base_dense_head import TRAIN_CFG_KEYS, DensePriors, GroundTruth
from detlab.models.heads.fcos_head import GN_32
from detlab.models.heads.gfl_head import anchor_centers
from detlab.models.heads.nms import multiclass_nms
from detlab.models.heads.postprocess import (
    DEFAULT_NMS,
    boxes_to_original,
    drop_small_boxes,
    filter_scores_and_topk,
    levels_to_rows,
    map_to_rows,
    result_meta,
)
from detlab.models.init import bias_init_with_prob
from detlab.models.utils import ConvModule, Scale, frozen
from detlab.registry import MODELS
from detlab.structures import DetResult

PROB_FOCAL = frozen(type="FocalLoss", use_sigmoid=True, activated=True, gamma=2.0, alpha=0.25,
                    loss_weight=1.0)
ANCHOR_TYPES = ("anchor_free", "anchor_based")

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor]]


DCN_V2_4 = dict(type="DCNv2", deform_groups=4)  # the tower convs num_dcn makes deformable

class _SigmoidGeometricMean(torch.autograd.Function):
    """``sqrt(sigmoid(x) * sigmoid(y))`` with the gradient written from the sigmoids (finite
    where the product underflows)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        sx, sy = x.sigmoid(), y.sigmoid()
        z = (sx * sy).sqrt()
        ctx.save_for_backward(sx, sy, z)
        return z

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        sx, sy, z = ctx.saved_tensors
        return grad * z * (1 - sx) / 2, grad * z * (1 - sy) / 2


def sigmoid_geometric_mean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The geometric mean of ``sigmoid(x)`` and ``sigmoid(y)`` (broadcast)."""
    return _SigmoidGeometricMean.apply(x, y)


def sample_per_channel(maps: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` maps bilinearly sampled, channel ``c`` at its location shifted by the
    ``(dy, dx)`` pair ``offsets[:, 2c:2c+2]`` (``(B, 2C, H, W)``); zero outside the map."""
    channels = maps.shape[1]
    weight = maps.new_ones(channels, 1, 1, 1)
    return deform_conv2d(maps, offsets, weight)


class TaskDecomposition(nn.Module):
    """A task's features from the tower's ``stacked_convs`` levels concatenated: a 1x1
    reduction conv whose input blocks are scaled by a layer attention of the pooled features.

    Args:
        feat_channels: channels of each tower level (and of the output).
        stacked_convs: tower levels.
        la_down_rate: channel reduction inside the layer attention.
        conv_cfg, norm_cfg: of the reduction conv (bias only without a norm).
    """

    def __init__(self, feat_channels: int, stacked_convs: int, la_down_rate: int = 8,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = None) -> None:
        super().__init__()
        self.feat_channels, self.stacked_convs = feat_channels, stacked_convs
        self.in_channels = feat_channels * stacked_convs
        self.layer_attention = nn.Sequential(
            nn.Conv2d(self.in_channels, self.in_channels // la_down_rate, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(self.in_channels // la_down_rate, stacked_convs, 1),
            nn.Sigmoid())
        self.reduction_conv = ConvModule(self.in_channels, feat_channels, 1, conv_cfg=conv_cfg,
                                         norm_cfg=norm_cfg, bias=norm_cfg is None)

    def init_weights(self) -> None:
        for m in self.layer_attention.modules():
            if isinstance(m, nn.Conv2d):
                _normal(m, 0.001)
        _normal(self.reduction_conv.conv, 0.01)

    def forward(self, feat: torch.Tensor, avg_feat: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, stacked_convs * feat_channels, H, W)`` -> ``(B, feat_channels, H, W)``."""
        b, _, h, w = feat.shape
        if avg_feat is None:
            avg_feat = F.adaptive_avg_pool2d(feat, (1, 1))
        attention = self.layer_attention(avg_feat)  # (B, stacked_convs, 1, 1)
        # the attention folded into the conv's weight: one (C, S*C) matrix per image
        weight = attention.reshape(b, 1, self.stacked_convs, 1) \
            * self.reduction_conv.conv.weight.reshape(1, self.feat_channels,
                                                      self.stacked_convs, self.feat_channels)
        weight = weight.reshape(b, self.feat_channels, self.in_channels)
        out = torch.bmm(weight, feat.reshape(b, self.in_channels, h * w))
        out = out.reshape(b, self.feat_channels, h, w)
        if self.reduction_conv.norm is not None:
            out = self.reduction_conv.norm(out)
        return self.reduction_conv.activate(out)


def _normal(conv: nn.Conv2d, std: float, bias: float = 0.0) -> None:
    nn.init.normal_(conv.weight, 0.0, std)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, bias)


@MODELS.register_module()
class TOODHead(ATSSHead):
    """TOOD head.

    Args:
        num_classes: object classes (background excluded).
        in_channels: channels of the input feature maps.
        num_dcn: modulated deformable convs (``DCNv2``, 4 offset groups) at the start of the
            tower.
        anchor_type: ``'anchor_free'`` (distances from the anchor centers, exponentiated) or
            ``'anchor_based'`` (deltas from the anchors).
        initial_loss_cls: classification loss before ``initial_epoch`` (focal loss of the
            probabilities).
        stacked_convs, conv_cfg, norm_cfg, feat_channels: the tower (default: GroupNorm).
        anchor_generator, bbox_coder: anchors and (anchor-based) box deltas.
        reg_decoded_bbox: must stay True.
        loss_cls: classification loss from ``initial_epoch`` on (quality focal loss of the
            probabilities).
        loss_bbox: box loss of decoded boxes (GIoU).
        train_cfg: ``initial_epoch``, ``initial_assigner`` (ATSS), ``assigner``
            (TaskAligned), ``alpha``, ``beta``, ``allowed_border``, ``pos_weight``, ``debug``.
        test_cfg: ``nms_pre``, ``score_thr``, ``nms``, ``min_bbox_size``, ``max_per_img``.
        init_cfg: not used: the layers start as MMDetection's ``TOODHead.init_weights`` sets
            them.
    """

    train_cfg_keys: ClassVar[tuple[str, ...]] = (*TRAIN_CFG_KEYS, "initial_epoch",
                                                  "initial_assigner", "alpha", "beta")

    def __init__(self, num_classes: int, in_channels: int, num_dcn: int = 0,
                 anchor_type: str = "anchor_free",
                 initial_loss_cls: Mapping | nn.Module = PROB_FOCAL,
                 stacked_convs: int = 4, conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = GN_32, feat_channels: int = 256,
                 anchor_generator: Mapping | Any = ANCHORS,
                 bbox_coder: Mapping | Any = DELTA_CODER, reg_decoded_bbox: bool = True,
                 loss_cls: Mapping | nn.Module = SIGMOID_CE,
                 loss_bbox: Mapping | nn.Module = SMOOTH_L1,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        if anchor_type not in ANCHOR_TYPES:
            raise ConfigError(f"TOODHead anchor_type must be one of {ANCHOR_TYPES}, got "
                              f"{anchor_type!r}")
        if not reg_decoded_bbox:
            raise ConfigError("TOODHead regresses decoded boxes: leave "
                              "bbox_head.reg_decoded_bbox=True")
        # ATSSHead's layers are not TOOD's: only AnchorHead's machinery is set up
        AnchorHead.__init__(self, num_classes=num_classes, in_channels=in_channels,
                            feat_channels=feat_channels, anchor_generator=anchor_generator,
                            bbox_coder=bbox_coder, reg_decoded_bbox=reg_decoded_bbox,
                            loss_cls=loss_cls, loss_bbox=loss_bbox, train_cfg=train_cfg,
                            test_cfg=test_cfg, init_cfg=init_cfg)
        self.sampling, self.sampler = False, PseudoSampler()
        self.num_dcn, self.anchor_type, self.stacked_convs = num_dcn, anchor_type, stacked_convs
        self.epoch = 0  # set by the detector's set_epoch (SetEpochInfoHook)
        self.initial_loss_cls = MODELS.build(initial_loss_cls)
        self.initial_epoch = 0
        self.alignment_assigner = None
        if self.train_cfg:
            missing = [k for k in ("initial_epoch", "initial_assigner", "alpha", "beta")
                       if k not in self.train_cfg]
            if missing:
                raise ConfigError(f"TOODHead's train_cfg needs {', '.join(missing)} (e.g. "
                                  f"initial_epoch=4, initial_assigner=dict(type='ATSSAssigner',"
                                  f" topk=9), alpha=1, beta=6)")
            self.initial_epoch = self.train_cfg["initial_epoch"]
            self.alignment_assigner = MODELS.build(self.train_cfg["assigner"],
                                                   alpha=self.train_cfg["alpha"],
                                                   beta=self.train_cfg["beta"])
            self.assigner = MODELS.build(self.train_cfg["initial_assigner"])
        # the first num_dcn tower convs are modulated deformable ones, as MMDetection's
        self.inter_convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1,
                       conv_cfg=DCN_V2_4 if i < num_dcn else conv_cfg, norm_cfg=norm_cfg)
            for i in range(stacked_convs))
        self.cls_decomp = TaskDecomposition(feat_channels, stacked_convs, stacked_convs * 8,
                                            conv_cfg, norm_cfg)
        self.reg_decomp = TaskDecomposition(feat_channels, stacked_convs, stacked_convs * 8,
                                            conv_cfg, norm_cfg)
        self.tood_cls = nn.Conv2d(feat_channels, self.num_base_priors * self.cls_out_channels,
                                  3, padding=1)
        self.tood_reg = nn.Conv2d(feat_channels, self.num_base_priors * 4, 3, padding=1)
        tower = feat_channels * stacked_convs
        self.cls_prob_module = nn.Sequential(
            nn.Conv2d(tower, feat_channels // 4, 1), nn.ReLU(inplace=True),
            nn.Conv2d(feat_channels // 4, 1, 3, padding=1))
        self.reg_offset_module = nn.Sequential(
            nn.Conv2d(tower, feat_channels // 4, 1), nn.ReLU(inplace=True),
            nn.Conv2d(feat_channels // 4, 4 * 2, 3, padding=1))
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.prior_generator.strides)
        self.init_weights()

    def init_weights(self) -> None:
        """MMDetection's: normal convs (std 0.01; 0.001 for the offsets and the layer
        attentions), zero biases but the classifiers', which start at the 0.01 prior."""
        prior = bias_init_with_prob(0.01)
        for m in self.inter_convs:
            _normal(m.conv, 0.01)
        for m in self.cls_prob_module:
            if isinstance(m, nn.Conv2d):
                _normal(m, 0.01)
        for m in self.reg_offset_module:
            if isinstance(m, nn.Conv2d):
                _normal(m, 0.001)
        _normal(self.cls_prob_module[-1], 0.01, prior)
        self.cls_decomp.init_weights()
        self.reg_decomp.init_weights()
        _normal(self.tood_cls, 0.01, prior)
        _normal(self.tood_reg, 0.01)

    def set_epoch(self, epoch: int) -> None:
        """The 0-based training epoch, which picks the assignment and the losses."""
        self.epoch = int(epoch)

    @property
    def initial_phase(self) -> bool:
        """Whether training is still before ``initial_epoch`` (ATSS assignment)."""
        return self.epoch < self.initial_epoch

    def level_strides(self) -> list[int]:
        """The stride of each level, in pixels."""
        return [int(s[0]) for s in self.prior_generator.strides]

    # ---- forward -----------------------------------------------------------------------------

    def forward_single(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One level: ``(B, in_channels, H, W)`` -> class probabilities ``(B, A*C, H, W)`` and
        xyxy boxes in units of the level's stride ``(B, A*4, H, W)`` (float32)."""
        b, _, h, w = x.shape
        stride = self.level_strides()[level]
        anchors = self.prior_generator.grid_priors_per_level((h, w), level, device=x.device)
        anchors = anchors.repeat(b, 1)
        levels = []
        for conv in self.inter_convs:
            x = conv(x)
            levels.append(x)
        feat = torch.cat(levels, 1)
        avg_feat = F.adaptive_avg_pool2d(feat, (1, 1))
        cls_feat = self.cls_decomp(feat, avg_feat)
        reg_feat = self.reg_decomp(feat, avg_feat)
        cls_score = sigmoid_geometric_mean(self.tood_cls(cls_feat), self.cls_prob_module(feat))
        if self.anchor_type == "anchor_free":
            dist = self.scales[level](self.tood_reg(reg_feat).exp()).float()
            dist = dist.permute(0, 2, 3, 1).reshape(-1, 4)
            centers = anchor_centers(anchors) / stride
            boxes = torch.cat([centers - dist[:, :2], centers + dist[:, 2:]], dim=1)
        else:
            deltas = self.scales[level](self.tood_reg(reg_feat)).float()
            deltas = deltas.permute(0, 2, 3, 1).reshape(-1, 4)
            boxes = self.bbox_coder.decode(anchors, deltas) / stride
        boxes = boxes.reshape(b, h, w, 4).permute(0, 3, 1, 2).contiguous()
        sampled = sample_per_channel(boxes, self.reg_offset_module(feat).contiguous())
        # a resampled box whose corners crossed is replaced by the decoded one
        invalid = (sampled[:, [0]] > sampled[:, [2]]) | (sampled[:, [1]] > sampled[:, [3]])
        bbox_pred = torch.where(invalid.expand_as(sampled), boxes, sampled)
        return cls_score, bbox_pred

    # ---- targets -----------------------------------------------------------------------------

    def row_strides(self, priors: DensePriors) -> torch.Tensor:
        """``(A,)`` the stride of each prior's level."""
        return torch.cat([priors.priors.new_full((n,), float(s))
                          for n, s in zip(priors.num_level, self.level_strides(), strict=True)])

    def aligned_targets(self, priors: DensePriors, targets: Sequence[Mapping],
                        metas: Sequence[Mapping], cls_rows: torch.Tensor,
                        box_rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Task-aligned targets of the batch from the ``(B, A, C)`` probabilities and ``(B, A,
        4)`` xyxy boxes (pixels): labels ``(B, A)``, label weights ``(B, A)``, box targets
        ``(B, A, 4)`` and normalized alignment metrics ``(B, A)``."""
        self.check_trainable()
        num_images = len(priors.valid)
        gts = self.ground_truths(targets, metas, num_images, priors.priors.device)
        per_image = [self._aligned_per_image(priors.priors, priors.valid[i], gts[i], metas[i],
                                             cls_rows[i].detach(), box_rows[i].detach())
                     for i in range(num_images)]
        return tuple(torch.stack(parts) for parts in zip(*per_image, strict=True))

    def _aligned_per_image(self, anchors: torch.Tensor, valid: torch.Tensor, gt: GroundTruth,
                           meta: Mapping, scores: torch.Tensor,
                           boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inside = anchor_inside_flags(anchors, valid, meta["img_shape"],
                                     self.train_cfg.get("allowed_border", -1))
        idx = torch.nonzero(inside).squeeze(1)
        metrics = anchors.new_zeros(anchors.shape[0])
        if idx.numel() == 0:
            labels, label_weights, bbox_targets, _ = self._empty_targets(anchors)
            return labels, label_weights, bbox_targets, metrics
        assign = self.alignment_assigner.assign(anchors[idx], gt.boxes, gt.boxes_ignore,
                                                gt.labels, pred_scores=scores[idx],
                                                pred_bboxes=boxes[idx])
        sample = self.sampler.sample(assign, anchors[idx], gt.boxes)
        labels, label_weights, bbox_targets, _ = self._fill_targets(anchors, idx, sample, gt)
        pos, pos_gt = sample.pos_inds, sample.pos_assigned_gt_inds
        for g in torch.unique(pos_gt):
            chosen = pos[pos_gt == g]
            best = assign.assign_metrics[chosen]
            # each ground truth's metrics scaled so that its best is its best IoU
            metrics[idx[chosen]] = best / (best.max() + 10e-8) * assign.max_overlaps[chosen].max()
        return labels, label_weights, bbox_targets, metrics

    # ---- loss ----------------------------------------------------------------------------------

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls`` and ``loss_bbox`` of the raw outputs against the ground truth (one
        target dict and one meta dict per image), by the current epoch's rules."""
        cls_scores, bbox_preds = raw
        priors = self.get_priors(cls_scores, metas)
        strides = self.row_strides(priors)
        cls_rows = levels_to_rows(cls_scores, self.cls_out_channels).float()  # (B, A, C)
        box_rows = levels_to_rows(bbox_preds, 4).float()  # (B, A, 4), in strides
        if self.initial_phase:
            t = self.get_targets(priors, targets, metas)
            labels, label_weights, bbox_targets = t.labels, t.label_weights, t.bbox_targets
            metrics = t.bbox_weights[..., 0]
        else:
            labels, label_weights, bbox_targets, metrics = self.aligned_targets(
                priors, targets, metas, cls_rows, box_rows * strides[:, None])
        return self.loss_by_targets(cls_rows, box_rows, priors.priors, strides, labels,
                                    label_weights, bbox_targets, metrics)

    def loss_by_targets(self, cls_rows: torch.Tensor, box_rows: torch.Tensor,
                        anchors: torch.Tensor, strides: torch.Tensor, labels: torch.Tensor,
                        label_weights: torch.Tensor, bbox_targets: torch.Tensor,
                        metrics: torch.Tensor) -> dict[str, torch.Tensor]:
        """The losses of ``(B, A, C)`` probabilities and ``(B, A, 4)`` boxes in strides, for
        ``(A, 4)`` anchors of ``(A,)`` strides, against labels, label weights, box targets
        (pixels) and alignment metrics (before ``initial_epoch``: 1 at the positives)."""
        num_images = len(cls_rows)
        labels, label_weights = labels.reshape(-1), label_weights.reshape(-1)
        metrics = metrics.reshape(-1)
        cls = cls_rows.reshape(-1, self.cls_out_channels)
        if self.initial_phase:
            loss_cls = self.initial_loss_cls(cls, labels, label_weights, avg_factor=1.0)
        else:
            loss_cls = self.loss_cls(cls, (labels, metrics), label_weights, avg_factor=1.0)
        cls_avg_factor = reduce_mean(metrics.sum().detach()).clamp(min=1).item()
        pos = torch.nonzero((labels >= 0) & (labels < self.num_classes)).squeeze(1)
        reg = box_rows.reshape(-1, 4)
        pos_targets = bbox_targets.reshape(-1, 4)[pos]
        row_strides = strides.repeat(num_images)[pos]
        if self.initial_phase:
            weight = anchor_centerness(anchors.repeat(num_images, 1)[pos], pos_targets)
        else:
            weight = metrics[pos]
        # every process reduces its sum, positives or not, so the collectives pair up
        bbox_avg_factor = reduce_mean(weight.sum().detach()).clamp(min=1).item()
        if len(pos) == 0:
            loss_bbox = reg.sum() * 0
        else:
            loss_bbox = self.loss_bbox(reg[pos], pos_targets / row_strides[:, None],
                                       weight=weight, avg_factor=1.0)
        return dict(loss_cls=loss_cls / cls_avg_factor, loss_bbox=loss_bbox / bbox_avg_factor)

    # ---- detections ----------------------------------------------------------------------------

    def predict(self, raw: RawOutputs, metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Detections of each image: per level the best ``nms_pre`` (prior, class) pairs of the
        probabilities above ``score_thr``, their boxes times the stride (not clipped, as in
        MMDetection), then ``min_bbox_size``, rescaling and NMS."""
        cfg = self.test_cfg
        if not cfg:
            raise ConfigError("TOODHead was built without test_cfg; give the model a test_cfg "
                              "(nms_pre, score_thr, nms, max_per_img)")
        cls_scores, bbox_preds = raw
        strides = self.level_strides()
        results = []
        for i, meta in enumerate(metas):
            found = []
            for cls, box, stride in zip(cls_scores, bbox_preds, strides, strict=True):
                num = cls.shape[-2] * cls.shape[-1] * self.num_base_priors
                scores = map_to_rows(cls[i].float(), num)
                scores, labels, keep = filter_scores_and_topk(scores, cfg.get("score_thr", 0.0),
                                                              cfg.get("nms_pre", -1))
                found.append((map_to_rows(box[i].float(), num)[keep] * stride, scores, labels))
            boxes, scores, labels = (torch.cat([f[k] for f in found]) for k in range(3))
            boxes, scores, labels = drop_small_boxes(boxes, scores, labels,
                                                     min_size=cfg.get("min_bbox_size", 0))
            if rescale:
                boxes = boxes_to_original(boxes, meta)
            keep, scores = multiclass_nms(boxes, scores, labels, cfg.get("nms", DEFAULT_NMS),
                                          cfg.get("max_per_img"))
            results.append(DetResult(boxes[keep], scores, labels[keep], meta=result_meta(meta)))
        return results
