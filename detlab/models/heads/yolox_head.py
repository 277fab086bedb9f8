"""YOLOX's head (Ge et al., 2021) as MMDetection 2.28 builds it.

Each level has its own decoupled head: a classification tower and a regression tower of
``stacked_convs`` conv blocks (``multi_level_cls_convs`` / ``multi_level_reg_convs``) and 1x1
predictors of the class logits, the box and the objectness (``multi_level_conv_cls``,
``multi_level_conv_reg``, ``multi_level_conv_obj``). The raw outputs are ``(cls_scores,
bbox_preds, objectnesses)`` per level. Boxes are decoded from the cells' corners
(``MlvlPointGenerator(strides, offset=0)``): center ``pred_xy * stride + point`` and size
``exp(pred_wh) * stride``.

Training: SimOTA (``train_cfg.assigner``, through the assigner interface) matches the cells
(their centers) to the objects from the detached class probabilities times the objectness and
the decoded boxes; the classification target of a positive is its object's one-hot label
times the IoU of its predicted box. Losses, each a sum over the batch divided by the
positives (averaged over processes, at least 1): the IoU loss of the positives' boxes, the
binary cross-entropy of the objectness at every cell and of the positives' classes, and, once
``use_l1`` is set (``YOLOXModeSwitchHook`` for the last epochs), the L1 loss of the positives'
raw box outputs against the objects' encoded offsets and log sizes.

Test: each cell's best class, scored by its probability times the objectness, kept at
``score_thr`` or above, then class-wise NMS (``test_cfg.nms``); no ``nms_pre`` and, as in
MMDetection, no ``max_per_img`` unless the config sets one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.dist import reduce_mean
from detlab.models.backbones.csp_darknet import SWISH, YOLOX_BN, conv_type
from detlab.models.heads.base_dense_head import BaseDenseHead, GroundTruth
from detlab.models.heads.nms import multiclass_nms
from detlab.models.heads.postprocess import boxes_to_original, levels_to_rows, result_meta
from detlab.models.init import bias_init_with_prob, initialize
from detlab.models.utils import frozen
from detlab.registry import MODELS
from detlab.structures import DetResult

YOLOX_CLS = frozen(type="CrossEntropyLoss", use_sigmoid=True, reduction="sum", loss_weight=1.0)
YOLOX_IOU = frozen(type="IoULoss", mode="square", eps=1e-16, reduction="sum", loss_weight=5.0)
YOLOX_L1 = frozen(type="L1Loss", reduction="sum", loss_weight=1.0)
YOLOX_HEAD_INIT = frozen(type="Kaiming", layer="Conv2d", a=math.sqrt(5), distribution="uniform",
                         mode="fan_in", nonlinearity="leaky_relu")

RawOutputs = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]


def decode_yolox_boxes(priors: torch.Tensor, preds: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` points ``(x, y, stride_w, stride_h)`` and ``(..., N, 4)`` outputs
    ``(dx, dy, log w, log h)`` in strides -> ``(..., N, 4)`` xyxy boxes."""
    centers = preds[..., :2] * priors[:, 2:] + priors[:, :2]
    half = preds[..., 2:].exp() * priors[:, 2:] / 2
    return torch.cat([centers - half, centers + half], dim=-1)


def encode_yolox_boxes(priors: torch.Tensor, boxes: torch.Tensor,
                       eps: float = 1e-8) -> torch.Tensor:
    """The inverse of :func:`decode_yolox_boxes` (the L1 targets): ``(N, 4)`` xyxy boxes ->
    center offsets and log sizes in the points' strides."""
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    sizes = boxes[:, 2:] - boxes[:, :2]
    return torch.cat([(centers - priors[:, :2]) / priors[:, 2:],
                      torch.log(sizes / priors[:, 2:] + eps)], dim=1)


@MODELS.register_module()
class YOLOXHead(BaseDenseHead):
    """Args (MMDetection's names and defaults):
        num_classes: object classes (sigmoid scores, no background).
        in_channels: channels of each input level.
        feat_channels: channels of the towers.
        stacked_convs: conv blocks per tower.
        strides: the levels' strides.
        use_depthwise: depthwise-separable tower convs.
        dcn_on_last_conv: refused (no deformable convs).
        conv_bias: ``'auto'`` (a bias only without a norm) or a bool.
        conv_cfg, norm_cfg, act_cfg: of the tower convs.
        loss_cls, loss_bbox, loss_obj, loss_l1: the losses (see the module docstring).
        train_cfg: ``assigner`` (``SimOTAAssigner``).
        test_cfg: ``score_thr``, ``nms`` (and optionally ``max_per_img``).
        init_cfg: weight initialization (Kaiming-uniform convs); the class and objectness
            biases then start at the 0.01 prior.

    Attributes:
        use_l1: add the L1 loss (set by ``YOLOXModeSwitchHook``).
    """

    def __init__(self, num_classes: int, in_channels: int, feat_channels: int = 256,
                 stacked_convs: int = 2, strides: Sequence[int] = (8, 16, 32),
                 use_depthwise: bool = False, dcn_on_last_conv: bool = False,
                 conv_bias: bool | str = "auto", conv_cfg: Mapping | None = None,
                 norm_cfg: Mapping | None = YOLOX_BN, act_cfg: Mapping | None = SWISH,
                 loss_cls: Mapping = YOLOX_CLS, loss_bbox: Mapping = YOLOX_IOU,
                 loss_obj: Mapping = YOLOX_CLS, loss_l1: Mapping = YOLOX_L1,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = YOLOX_HEAD_INIT) -> None:
        if dcn_on_last_conv:
            raise ConfigError("YOLOXHead dcn_on_last_conv=True needs deformable convs, which "
                              "detlab does not have; use dcn_on_last_conv=False")
        if conv_bias != "auto" and not isinstance(conv_bias, bool):
            raise ConfigError(f"YOLOXHead conv_bias must be 'auto' or a bool, got {conv_bias!r}")
        super().__init__(num_classes=num_classes, in_channels=in_channels,
                         prior_generator=dict(type="MlvlPointGenerator", strides=list(strides),
                                              offset=0),
                         bbox_coder=None, loss_cls=loss_cls, loss_bbox=loss_bbox,
                         train_cfg=train_cfg, test_cfg=test_cfg, init_cfg=init_cfg)
        if not self.use_sigmoid_cls:
            raise ConfigError("YOLOXHead scores classes with sigmoids: loss_cls needs "
                              "use_sigmoid=True")
        self.feat_channels, self.stacked_convs = feat_channels, stacked_convs
        self.strides, self.use_depthwise = list(strides), use_depthwise
        self.conv_bias, self.conv_cfg, self.norm_cfg, self.act_cfg = \
            conv_bias, conv_cfg, norm_cfg, act_cfg
        self.loss_obj, self.loss_l1 = MODELS.build(loss_obj), MODELS.build(loss_l1)
        self.use_l1 = False
        self.multi_level_cls_convs = nn.ModuleList(self._tower() for _ in self.strides)
        self.multi_level_reg_convs = nn.ModuleList(self._tower() for _ in self.strides)
        self.multi_level_conv_cls = nn.ModuleList(
            nn.Conv2d(feat_channels, self.cls_out_channels, 1) for _ in self.strides)
        self.multi_level_conv_reg = nn.ModuleList(
            nn.Conv2d(feat_channels, 4, 1) for _ in self.strides)
        self.multi_level_conv_obj = nn.ModuleList(
            nn.Conv2d(feat_channels, 1, 1) for _ in self.strides)
        self.init_weights()

    def _tower(self) -> nn.Sequential:
        conv = conv_type(self.use_depthwise)
        return nn.Sequential(*(
            conv(self.in_channels if i == 0 else self.feat_channels, self.feat_channels, 3,
                 stride=1, padding=1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                 act_cfg=self.act_cfg, bias=self.conv_bias)
            for i in range(self.stacked_convs)))

    def init_weights(self) -> None:
        """Apply ``init_cfg``, then start the class and objectness biases at the 0.01 prior."""
        initialize(self, self.init_cfg, load_pretrained=False)
        prior = bias_init_with_prob(0.01)
        with torch.no_grad():
            for conv_cls, conv_obj in zip(self.multi_level_conv_cls, self.multi_level_conv_obj,
                                          strict=True):
                conv_cls.bias.fill_(prior)
                conv_obj.bias.fill_(prior)

    # ---- forward -----------------------------------------------------------------------------

    # MMDetection zips the maps with the per-level layers: more maps than strides build and run
    # (the extra ones are ignored); the detector warns about it on its first forward
    reads_leading_levels: ClassVar[bool] = True

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
        """The first ``len(strides)`` feature maps -> per-level class logits, box outputs and
        objectness logits (maps past them are ignored, as MMDetection's YOLOXHead ignores
        them)."""
        return super().forward(tuple(feats)[:len(self.strides)])

    def forward_single(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, ...]:
        """One level: class logits ``(B, C, H, W)``, box outputs ``(B, 4, H, W)`` and the
        objectness logit ``(B, 1, H, W)``."""
        cls_feat = self.multi_level_cls_convs[level](x)
        reg_feat = self.multi_level_reg_convs[level](x)
        return (self.multi_level_conv_cls[level](cls_feat),
                self.multi_level_conv_reg[level](reg_feat),
                self.multi_level_conv_obj[level](reg_feat))

    def strided_priors(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(N, 4)`` points ``(x, y, stride_w, stride_h)`` of all levels' cells (corners)."""
        sizes = [tuple(m.shape[-2:]) for m in maps]
        return torch.cat(self.prior_generator.grid_priors(sizes, dtype=maps[0].dtype,
                                                          device=maps[0].device,
                                                          with_stride=True))

    def flatten(self, raw: RawOutputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, N, C)`` class logits, ``(B, N, 4)`` box outputs, ``(B, N)`` objectness."""
        cls_scores, bbox_preds, objectnesses = raw
        return (levels_to_rows(cls_scores, self.cls_out_channels).float(),
                levels_to_rows(bbox_preds, 4).float(),
                levels_to_rows(objectnesses, 1).float()[..., 0])

    # ---- targets and loss --------------------------------------------------------------------

    @torch.no_grad()
    def targets_per_image(self, priors: torch.Tensor, cls_logits: torch.Tensor,
                          obj_logits: torch.Tensor, boxes: torch.Tensor, gt: GroundTruth
                          ) -> tuple[torch.Tensor, ...]:
        """One image's SimOTA targets: positive mask ``(N,)``, class targets ``(P, C)`` (the
        one-hot label times the predicted box's IoU), objectness targets ``(N, 1)``, box
        targets ``(P, 4)`` and L1 targets ``(P, 4)`` (zeros unless ``use_l1``)."""
        num_priors = priors.shape[0]
        positive = torch.zeros(num_priors, dtype=torch.bool, device=priors.device)
        obj_target = cls_logits.new_zeros(num_priors, 1)
        if len(gt.boxes) == 0:
            empty = cls_logits.new_zeros(0, 4)
            return positive, cls_logits.new_zeros(0, self.num_classes), obj_target, empty, empty
        gt = GroundTruth(gt.boxes.to(boxes.dtype), gt.labels, gt.boxes_ignore)
        # SimOTA looks at the cells' centers
        centers = torch.cat([priors[:, :2] + priors[:, 2:] * 0.5, priors[:, 2:]], dim=-1)
        scores = cls_logits.sigmoid() * obj_logits[:, None].sigmoid()
        self.check_trainable()
        assign = self.assigner.assign(centers, gt.boxes, gt.boxes_ignore, gt.labels,
                                      pred_scores=scores, pred_bboxes=boxes)
        sample = self.sampler.sample(assign, priors, gt.boxes)
        pos = sample.pos_inds
        ious = assign.max_overlaps[pos]
        cls_target = F.one_hot(sample.pos_gt_labels, self.num_classes) * ious[:, None]
        obj_target[pos] = 1
        box_target = sample.pos_gt_bboxes
        l1_target = encode_yolox_boxes(priors[pos], box_target) if self.use_l1 \
            else cls_logits.new_zeros(len(pos), 4)
        positive[pos] = True
        return positive, cls_target, obj_target, box_target, l1_target

    def loss(self, raw: RawOutputs, targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls``, ``loss_bbox``, ``loss_obj`` (and ``loss_l1`` with ``use_l1``)."""
        self.check_trainable()
        cls_rows, box_rows, obj_rows = self.flatten(raw)
        num_images = cls_rows.shape[0]
        priors = self.strided_priors(raw[0]).float()
        boxes = decode_yolox_boxes(priors, box_rows)
        gts = self.ground_truths(targets, metas, num_images, cls_rows.device)
        per_image = [self.targets_per_image(priors, cls_rows[i].detach(), obj_rows[i].detach(),
                                            boxes[i].detach(), gts[i])
                     for i in range(num_images)]
        positive, cls_t, obj_t, box_t, l1_t = (torch.cat(p) for p in zip(*per_image,
                                                                          strict=True))
        num_pos = reduce_mean(positive.sum().float()).clamp(min=1.0)
        losses = dict(
            loss_cls=self.loss_cls(cls_rows.reshape(-1, self.num_classes)[positive],
                                   cls_t) / num_pos,
            loss_bbox=self.loss_bbox(boxes.reshape(-1, 4)[positive], box_t) / num_pos,
            loss_obj=self.loss_obj(obj_rows.reshape(-1, 1), obj_t) / num_pos)
        if self.use_l1:
            losses["loss_l1"] = self.loss_l1(box_rows.reshape(-1, 4)[positive], l1_t) / num_pos
        return losses

    # ---- detections ----------------------------------------------------------------------------

    def predict(self, raw: RawOutputs, metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Each image's detections: every cell's best class scored by its probability times
        the objectness, those at ``score_thr`` or above, class-wise NMS. ``test_cfg``'s
        ``nms_pre`` and ``max_per_img`` are not applied, as MMDetection 2.28's YOLOXHead does
        not apply them."""
        cfg = self.test_cfg
        if not cfg or "nms" not in cfg:
            raise ConfigError("YOLOXHead was built without test_cfg; give the model a test_cfg "
                              "(score_thr, nms), e.g. dict(score_thr=0.01, nms=dict(type='nms',"
                              " iou_threshold=0.65))")
        cls_rows, box_rows, obj_rows = self.flatten(raw)
        if len(metas) != cls_rows.shape[0]:
            raise ValueError(f"predict got {cls_rows.shape[0]} images but {len(metas)} metas")
        boxes = decode_yolox_boxes(self.strided_priors(raw[0]).float(), box_rows)
        probs, objectness = cls_rows.sigmoid(), obj_rows.sigmoid()
        results = []
        for i, meta in enumerate(metas):
            best, labels = probs[i].max(dim=1)
            keep = objectness[i] * best >= cfg.get("score_thr", 0.0)
            image_boxes, labels = boxes[i][keep], labels[keep]
            scores = best[keep] * objectness[i][keep]
            if rescale:
                image_boxes = boxes_to_original(image_boxes, meta)
            # no max_per_img: MMDetection's YOLOXHead keeps every box NMS keeps, whatever
            # test_cfg says (a config borrowing another head's test_cfg shows it)
            kept, scores = multiclass_nms(image_boxes, scores, labels, cfg["nms"], None)
            results.append(DetResult(image_boxes[kept], scores, labels[kept],
                                     meta=result_meta(meta)))
        return results
