"""DDOD's head (Chen et al., 2021): ATSS's layout -- GroupNorm towers, one square anchor per
location, per-level scales -- with the classification and regression disentangled.

- Features: each tower starts with its own deformable conv (``use_dcn``); the regression tower
  also predicts an IoU score (``atss_iou``), multiplied into the class scores at test time.
- Assignment: the anchors are assigned twice, by ``train_cfg.assigner`` for classification and
  by ``train_cfg.reg_assigner`` for regression (the zoo's: ATSS with the predicted-quality cost
  ``alpha`` 0.8 and 0.5), each looking at the detached predicted probabilities and boxes.
- Pyramid supervision: each level's losses are multiplied by a factor from 2 (the level with
  the fewest positives) down to 1 (the most), the positives counted per level over every loss
  computed so far by the head (both assignments add to the same counts, as MMDetection's).

Losses, per level: focal classification over the classification targets, GIoU of the decoded
boxes against the decoded regression targets, and a sigmoid cross-entropy of the IoU score
against the detached boxes' IoU at the regression positives; each divided by its assignment's
positives averaged over processes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.dist import reduce_mean
from detlab.models.assigners import PseudoSampler
from detlab.models.heads.anchor_head import AnchorHead, AnchorTargets
from detlab.models.heads.atss_head import ANCHORS, DELTA_CODER, SIGMOID_CE, SMOOTH_L1
from detlab.models.heads.base_dense_head import TRAIN_CFG_KEYS, DensePriors
from detlab.models.heads.fcos_head import GN_32
from detlab.models.heads.postprocess import levels_to_rows
from detlab.models.losses.box_iou_loss import aligned_bbox_overlaps
from detlab.models.utils import ConvModule, Scale, frozen
from detlab.registry import MODELS

DCN = frozen(type="DCN", deform_groups=1)  # the first conv of each tower with use_dcn
# normal(0, 0.01) convs, deformable ones too; the classifier's bias starts at the 0.01 prior
DDOD_INIT = frozen(type="Normal", layer=("Conv2d", "DeformConv2d"), std=0.01,
                   override=frozen(type="Normal", name="atss_cls", std=0.01, bias_prob=0.01))

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]


def level_reweight_factors(counts: Sequence[float]) -> list[float]:
    """Per level, 2 minus its positives' count's place between the fewest and the most of
    ``counts`` (2 for the fewest, 1 for the most)."""
    low, high = min(counts), max(counts)
    interval = 1.0 / (high - low + 1e-10)
    return [2.0 - (count - low) * interval for count in counts]


@MODELS.register_module()
class DDODHead(AnchorHead):
    """DDOD head.

    Args:
        num_classes: object classes (background excluded).
        in_channels: channels of the input feature maps.
        stacked_convs: 3x3 convs in each tower.
        conv_cfg: of the tower convs (the first ones are deformable with ``use_dcn``).
        use_dcn: make each tower's first conv a deformable conv (``DCN``, one offset group).
        norm_cfg: of the tower convs (default: GroupNorm of 32 groups).
        feat_channels: channels of the tower convs.
        anchor_generator: anchors (the zoo's: one square anchor of 8 strides per location).
        bbox_coder: box parameterization (the zoo's: deltas with stds 0.1, 0.1, 0.2, 0.2).
        reg_decoded_bbox: must stay False: the box targets are encoded, and decoded for the
            loss, as MMDetection's.
        loss_cls: classification loss (the zoo's: focal loss).
        loss_bbox: box loss on decoded boxes (the zoo's: GIoU, weight 2).
        loss_iou: IoU-score loss (default: sigmoid cross-entropy).
        train_cfg: ``assigner`` (classification) and ``reg_assigner`` (regression), both
            ``ATSSAssigner`` in the zoo, ``allowed_border``, ``pos_weight``, ``debug``; never
            sampled.
        test_cfg: ``nms_pre``, ``score_thr``, ``nms``, ``min_bbox_size``, ``max_per_img``.
        init_cfg: weight initialization (default: normal std 0.01, classifier bias prior 0.01).
    """

    train_cfg_keys = (*TRAIN_CFG_KEYS, "reg_assigner")

    def __init__(self, num_classes: int, in_channels: int, stacked_convs: int = 4,
                 conv_cfg: Mapping | None = None, use_dcn: bool = True,
                 norm_cfg: Mapping | None = GN_32, feat_channels: int = 256,
                 anchor_generator: Mapping | Any = ANCHORS,
                 bbox_coder: Mapping | Any = DELTA_CODER, reg_decoded_bbox: bool = False,
                 loss_cls: Mapping | nn.Module = SIGMOID_CE,
                 loss_bbox: Mapping | nn.Module = SMOOTH_L1,
                 loss_iou: Mapping | nn.Module = SIGMOID_CE,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = DDOD_INIT) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         feat_channels=feat_channels, anchor_generator=anchor_generator,
                         bbox_coder=bbox_coder, reg_decoded_bbox=reg_decoded_bbox,
                         loss_cls=loss_cls, loss_bbox=loss_bbox, train_cfg=train_cfg,
                         test_cfg=test_cfg, init_cfg=init_cfg)
        if reg_decoded_bbox:
            raise ConfigError("DDODHead encodes its box targets and decodes them for the loss: "
                              "leave bbox_head.reg_decoded_bbox=False")
        if train_cfg is not None and "reg_assigner" not in self.train_cfg:
            raise ConfigError("DDODHead assigns the regression separately: model.train_cfg "
                              "needs reg_assigner, e.g. dict(type='ATSSAssigner', topk=9, "
                              "alpha=0.5)")
        # every anchor counts: MMDetection's DDODHead never samples, whatever train_cfg says
        self.sampling, self.sampler = False, PseudoSampler()
        self.cls_assigner = self.assigner
        self.reg_assigner = MODELS.build(self.train_cfg["reg_assigner"]) \
            if "reg_assigner" in self.train_cfg else None
        self.loss_iou = MODELS.build(loss_iou)
        self.stacked_convs, self.use_dcn = stacked_convs, use_dcn
        self.cls_convs = self._tower(conv_cfg, norm_cfg)
        self.reg_convs = self._tower(conv_cfg, norm_cfg)
        self.atss_cls = self._predictor(self.num_base_priors * self.cls_out_channels)
        self.atss_reg = self._predictor(self.num_base_priors * 4)
        self.atss_iou = self._predictor(self.num_base_priors)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.prior_generator.strides)
        # positives per level over every loss computed so far (not state: MMDetection keeps
        # them out of the checkpoint, and both assignments add to them)
        self.cls_num_pos_samples_per_level = [0.0] * self.prior_generator.num_levels
        self.init_weights()

    def _tower(self, conv_cfg: Mapping | None, norm_cfg: Mapping | None) -> nn.ModuleList:
        return nn.ModuleList(
            ConvModule(self.in_channels if i == 0 else self.feat_channels, self.feat_channels,
                       3, stride=1, padding=1,
                       conv_cfg=DCN if i == 0 and self.use_dcn else conv_cfg, norm_cfg=norm_cfg)
            for i in range(self.stacked_convs))

    def _predictor(self, out_channels: int) -> nn.Conv2d:
        # sized by feat_channels even without tower convs, as MMDetection's
        return nn.Conv2d(self.feat_channels, out_channels, 3, padding=1)

    def forward_single(self, x: torch.Tensor,
                       level: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One level: ``(B, in_channels, H, W)`` -> class logits ``(B, A*C, H, W)``, deltas
        ``(B, A*4, H, W)`` (float32, times the level's scale) and IoU logits
        ``(B, A, H, W)``."""
        cls_feat = reg_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        bbox_pred = self.scales[level](self.atss_reg(reg_feat)).float()
        return self.atss_cls(cls_feat), bbox_pred, self.atss_iou(reg_feat)

    # ---- targets -------------------------------------------------------------------------------

    def check_trainable(self) -> None:
        """Fail, saying what to add, when an assigner is missing."""
        super().check_trainable()
        if self.reg_assigner is None:
            raise ConfigError("DDODHead has no reg_assigner, so it cannot compute a loss: add "
                              "one to model.train_cfg, e.g. reg_assigner=dict(type="
                              "'ATSSAssigner', topk=9, alpha=0.5)")

    def targets_by(self, assigner: Any, priors: DensePriors, targets: Sequence[Mapping],
                   metas: Sequence[Mapping], cls_rows: torch.Tensor,
                   reg_rows: torch.Tensor) -> AnchorTargets:
        """:meth:`AnchorHead.get_targets` with ``assigner`` in place of
        ``train_cfg.assigner``."""
        kept, self.assigner = self.assigner, assigner
        try:
            return self.get_targets(priors, targets, metas, cls_rows=cls_rows,
                                    reg_rows=reg_rows)
        finally:
            self.assigner = kept

    def reweight_factors(self, priors: DensePriors, labels: torch.Tensor) -> list[float]:
        """Add the ``(B, A)`` labels' positives per level to the running counts; their factors
        (see :func:`level_reweight_factors`)."""
        positives = (labels >= 0) & (labels < self.num_classes)
        for level, pos in enumerate(priors.per_level(positives, dim=1)):
            self.cls_num_pos_samples_per_level[level] += int(pos.sum())
        return level_reweight_factors(self.cls_num_pos_samples_per_level)

    # ---- loss ----------------------------------------------------------------------------------

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls`` (classification assignment), ``loss_bbox`` and ``loss_iou`` (regression
        assignment), each summed over the levels times their reweight factors."""
        cls_scores, bbox_preds, iou_preds = raw
        priors = self.get_priors(cls_scores, metas)
        # float32 rows, whatever the forward ran in (MMDetection's force_fp32)
        cls_rows = levels_to_rows(cls_scores, self.cls_out_channels).float()  # (B, A, C)
        reg_rows = levels_to_rows(bbox_preds, 4).float()  # (B, A, 4)
        iou_rows = levels_to_rows(iou_preds, 1).float()  # (B, A, 1)
        self.check_trainable()

        t = self.targets_by(self.cls_assigner, priors, targets, metas, cls_rows, reg_rows)
        num_samples = self._num_samples(t, cls_rows)
        factors = self.reweight_factors(priors, t.labels)
        levels = zip(factors, priors.per_level(cls_rows, dim=1), priors.per_level(t.labels, 1),
                     priors.per_level(t.label_weights, 1), strict=True)
        loss_cls = sum(factor * self.loss_cls(cls.reshape(-1, self.cls_out_channels),
                                              labels.reshape(-1), weights.reshape(-1),
                                              avg_factor=num_samples)
                       for factor, cls, labels, weights in levels)

        t = self.targets_by(self.reg_assigner, priors, targets, metas, cls_rows, reg_rows)
        num_samples = self._num_samples(t, cls_rows)
        factors = self.reweight_factors(priors, t.labels)
        anchors = priors.priors.expand(len(reg_rows), -1, -1)
        loss_bbox, loss_iou = [], []
        for factor, *level in zip(factors, priors.per_level(anchors, 1),
                                  priors.per_level(reg_rows, 1), priors.per_level(iou_rows, 1),
                                  priors.per_level(t.labels, 1),
                                  priors.per_level(t.bbox_targets, 1),
                                  priors.per_level(t.bbox_weights, 1), strict=True):
            box, iou = self.regression_losses(*level, num_samples)
            loss_bbox.append(factor * box)
            loss_iou.append(factor * iou)
        return dict(loss_cls=loss_cls, loss_bbox=sum(loss_bbox), loss_iou=sum(loss_iou))

    @staticmethod
    def _num_samples(t: AnchorTargets, like: torch.Tensor) -> float:
        """The positives (at least 1 per image) averaged over processes, at least 1."""
        return max(reduce_mean(torch.tensor(t.avg_factor, dtype=torch.float,
                                            device=like.device)).item(), 1.0)

    def regression_losses(self, anchors: torch.Tensor, reg: torch.Tensor, iou: torch.Tensor,
                          labels: torch.Tensor, bbox_targets: torch.Tensor,
                          bbox_weights: torch.Tensor,
                          num_samples: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One level's box and IoU-score losses: ``(B, A_l, 4)`` anchors, deltas and encoded
        targets, ``(B, A_l, 1)`` IoU logits, ``(B, A_l)`` labels, ``(B, A_l, 4)`` box
        weights."""
        anchors, reg, bbox_targets = (v.reshape(-1, 4) for v in (anchors, reg, bbox_targets))
        iou, labels = iou.reshape(-1), labels.reshape(-1)
        pos = torch.nonzero((labels >= 0) & (labels < self.num_classes)).squeeze(1)
        if len(pos) == 0:  # zeros that keep the graph (every parameter gets a gradient)
            return reg.sum() * 0, iou.sum() * 0
        iou_weights = (bbox_weights.reshape(-1, 4).sum(dim=1) > 0).to(iou.dtype)
        decoded = self.decode_boxes(anchors[pos], reg[pos])
        decoded_targets = self.decode_boxes(anchors[pos], bbox_targets[pos])
        loss_bbox = self.loss_bbox(decoded, decoded_targets, avg_factor=num_samples)
        iou_targets = torch.zeros_like(iou)
        iou_targets[pos] = aligned_bbox_overlaps(decoded.detach(), decoded_targets)
        loss_iou = self.loss_iou(iou, iou_targets, iou_weights, avg_factor=num_samples)
        return loss_bbox, loss_iou
