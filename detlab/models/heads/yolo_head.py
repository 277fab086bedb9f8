"""YOLOv3's head (Redmon and Farhadi, 2018) as MMDetection 2.28 builds it.

Each level has a 3x3 conv block (``convs_bridge``) and a 1x1 predictor (``convs_pred``) of
``5 + num_classes`` values per anchor: the box (x, y offsets in the cell, log width and height
ratios to the anchor; :class:`~detlab.models.coders.YOLOBBoxCoder`), the objectness logit and
the class logits. The raw outputs are ``(pred_maps,)``, one map per level, coarsest first.

Training: an anchor may be positive only in the cell holding an object's center (the anchor
generator's ``responsible_flags``); ``GridAssigner`` picks among those by IoU and marks the
anchors of low IoU with every object negative. Losses, each the mean over a level's whole
``(images, anchors, values)`` tensor, summed over the levels: the binary cross-entropy of the
classes (one-hot, smoothed by ``one_hot_smoother``) and of the sigmoid x, y at the positives,
the MSE of the log sizes at the positives, and the binary cross-entropy of the objectness at
the positives and negatives.

Test: anchors whose objectness is below ``conf_thr`` dropped, class probabilities times the
objectness above ``score_thr`` kept, class-wise NMS and ``max_per_img`` (MMDetection's
``multiclass_nms`` with the objectness as score factor; ``nms_pre`` and ``min_bbox_size`` are
accepted and, as in MMDetection, unused).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.backbones.darknet import DARKNET_BN, LEAKY_RELU
from detlab.models.heads.base_dense_head import TEST_CFG_KEYS, BaseDenseHead, GroundTruth
from detlab.models.heads.nms import multiclass_nms
from detlab.models.heads.postprocess import boxes_to_original, levels_to_rows, result_meta
from detlab.models.init import bias_init_with_prob
from detlab.models.utils import ConvModule, frozen
from detlab.registry import MODELS
from detlab.structures import DetResult

YOLO_ANCHORS = frozen(type="YOLOAnchorGenerator",
                      base_sizes=[[(116, 90), (156, 198), (373, 326)],
                                  [(30, 61), (62, 45), (59, 119)],
                                  [(10, 13), (16, 30), (33, 23)]],
                      strides=[32, 16, 8])
YOLO_BCE = frozen(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0)
YOLO_MSE = frozen(type="MSELoss", loss_weight=1.0)
YOLO_HEAD_INIT = frozen(type="Normal", std=0.01, override=dict(name="convs_pred"))


@MODELS.register_module()
class YOLOV3Head(BaseDenseHead):
    """Args (MMDetection's names and defaults):
        num_classes: object classes (sigmoid scores, no background).
        in_channels: channels of each input level (coarsest first).
        out_channels: channels of each level's bridge conv.
        anchor_generator: a ``YOLOAnchorGenerator``.
        bbox_coder: a ``YOLOBBoxCoder``.
        featmap_strides: the levels' strides.
        one_hot_smoother: label smoothing of the class targets.
        conv_cfg, norm_cfg, act_cfg: of the bridge convs.
        loss_cls, loss_conf, loss_xy, loss_wh: the losses (see the module docstring).
        train_cfg: ``assigner`` (``GridAssigner``), optionally ``sampler``.
        test_cfg: ``conf_thr``, ``score_thr``, ``nms``, ``max_per_img`` (``nms_pre``,
            ``min_bbox_size`` unused).
        init_cfg: kept for MMDetection's configs; :meth:`init_weights` is the head's own.
    """

    test_cfg_keys = (*TEST_CFG_KEYS, "conf_thr")

    def __init__(self, num_classes: int, in_channels: Sequence[int],
                 out_channels: Sequence[int] = (1024, 512, 256),
                 anchor_generator: Mapping = YOLO_ANCHORS,
                 bbox_coder: Mapping = frozen(type="YOLOBBoxCoder"),  # noqa: B008
                 featmap_strides: Sequence[int] = (32, 16, 8), one_hot_smoother: float = 0.0,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = DARKNET_BN,
                 act_cfg: Mapping | None = LEAKY_RELU, loss_cls: Mapping = YOLO_BCE,
                 loss_conf: Mapping = YOLO_BCE, loss_xy: Mapping = YOLO_BCE,
                 loss_wh: Mapping = YOLO_MSE, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = YOLO_HEAD_INIT) -> None:
        if not len(in_channels) == len(out_channels) == len(featmap_strides):
            raise ConfigError(f"YOLOV3Head needs as many in_channels, out_channels and "
                              f"featmap_strides, got {list(in_channels)}, {list(out_channels)} "
                              f"and {list(featmap_strides)}")
        super().__init__(num_classes=num_classes, in_channels=list(in_channels),
                         prior_generator=anchor_generator, bbox_coder=bbox_coder,
                         loss_cls=loss_cls, loss_bbox=loss_xy, train_cfg=train_cfg,
                         test_cfg=test_cfg, init_cfg=init_cfg)
        if self.prior_generator.num_levels != len(featmap_strides):
            raise ConfigError(f"YOLOV3Head's anchor generator has "
                              f"{self.prior_generator.num_levels} levels but featmap_strides "
                              f"{list(featmap_strides)}")
        self.out_channels, self.featmap_strides = list(out_channels), list(featmap_strides)
        self.one_hot_smoother = one_hot_smoother
        self.loss_xy = self.loss_bbox
        self.loss_conf, self.loss_wh = MODELS.build(loss_conf), MODELS.build(loss_wh)
        self.num_attrib = 5 + num_classes
        self.convs_bridge = nn.ModuleList(
            ConvModule(c_in, c_out, 3, padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                       act_cfg=act_cfg)
            for c_in, c_out in zip(self.in_channels, self.out_channels, strict=True))
        self.convs_pred = nn.ModuleList(
            nn.Conv2d(c_out, self.num_base_priors * self.num_attrib, 1)
            for c_out in self.out_channels)
        self.init_weights()

    @property
    def num_levels(self) -> int:
        return len(self.featmap_strides)

    def init_weights(self) -> None:
        """MMDetection's: convs normal (std 0.01), norms at 1, and the predictors' objectness
        biases at the prior ``8 / (608 / stride) ** 2``, class biases at 0.01."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, 0.0, 0.01)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
                                  nn.InstanceNorm2d)):
                    if m.weight is not None:
                        nn.init.ones_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            for conv, stride in zip(self.convs_pred, self.featmap_strides, strict=True):
                bias = conv.bias.view(self.num_base_priors, -1)
                bias[:, 4] = bias_init_with_prob(8 / (608 / stride) ** 2)
                bias[:, 5:] = bias_init_with_prob(0.01)

    # ---- forward -----------------------------------------------------------------------------

    def forward_single(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor]:
        """One level: ``(B, A * (5 + C), H, W)`` predictions."""
        return (self.convs_pred[level](self.convs_bridge[level](x)),)

    def _anchors_and_strides(self, maps: Sequence[torch.Tensor]
                             ) -> tuple[list[torch.Tensor], torch.Tensor]:
        sizes = [tuple(m.shape[-2:]) for m in maps]
        anchors = self.prior_generator.grid_priors(sizes, device=maps[0].device)
        strides = torch.cat([anchors[i].new_full((len(anchors[i]),), float(s))
                             for i, s in enumerate(self.featmap_strides)])
        return anchors, strides

    # ---- targets and loss --------------------------------------------------------------------

    @torch.no_grad()
    def targets_per_image(self, anchors: torch.Tensor, strides: torch.Tensor,
                          responsible: torch.Tensor, gt: GroundTruth
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's ``(N, 5 + C)`` target rows (encoded box, objectness 1, class one-hot at
        the positives) and ``(N,)`` negative mask."""
        assign = self.assigner.assign(anchors, gt.boxes.to(anchors.dtype), gt.boxes_ignore,
                                      gt.labels, responsible_flags=responsible)
        sample = self.sampler.sample(assign, anchors, gt.boxes.to(anchors.dtype))
        pos = sample.pos_inds
        target = anchors.new_zeros(anchors.shape[0], self.num_attrib)
        target[pos, :4] = self.bbox_coder.encode(sample.pos_bboxes, sample.pos_gt_bboxes,
                                                 strides[pos])
        target[pos, 4] = 1
        one_hot = F.one_hot(gt.labels.long(), self.num_classes).float()
        if self.one_hot_smoother != 0:
            one_hot = one_hot * (1 - self.one_hot_smoother) \
                + self.one_hot_smoother / self.num_classes
        target[pos, 5:] = one_hot[sample.pos_assigned_gt_inds]
        negative = torch.zeros(anchors.shape[0], dtype=torch.bool, device=anchors.device)
        negative[sample.neg_inds] = True
        return target, negative

    def loss(self, raw: tuple[list[torch.Tensor]], targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_cls``, ``loss_conf``, ``loss_xy``, ``loss_wh``, each summed over levels."""
        self.check_trainable()
        (pred_maps,) = raw
        num_images = pred_maps[0].shape[0]
        anchors, strides = self._anchors_and_strides(pred_maps)
        sizes = [tuple(m.shape[-2:]) for m in pred_maps]
        flat_anchors = torch.cat(anchors)
        gts = self.ground_truths(targets, metas, num_images, pred_maps[0].device)
        per_image = [self.targets_per_image(
            flat_anchors, strides,
            torch.cat(self.prior_generator.responsible_flags(sizes, gt.boxes, flat_anchors.device)),
            gt) for gt in gts]
        target_rows = torch.stack([t for t, _ in per_image])
        negatives = torch.stack([n for _, n in per_image])
        counts = [len(a) for a in anchors]
        losses = {key: pred_maps[0].new_zeros(()) for key in
                  ("loss_cls", "loss_conf", "loss_xy", "loss_wh")}
        for pred_map, target, negative in zip(
                pred_maps, target_rows.split(counts, dim=1), negatives.split(counts, dim=1),
                strict=True):
            pred = levels_to_rows([pred_map], self.num_attrib).float()
            pos_mask = target[..., 4]
            pos_and_neg = (negative.float() + pos_mask).clamp(max=1.0)
            weight = pos_mask.unsqueeze(-1)
            losses["loss_cls"] = losses["loss_cls"] + self.loss_cls(
                pred[..., 5:], target[..., 5:], weight=weight.expand_as(pred[..., 5:]))
            losses["loss_conf"] = losses["loss_conf"] + self.loss_conf(
                pred[..., 4], target[..., 4], weight=pos_and_neg)
            losses["loss_xy"] = losses["loss_xy"] + self.loss_xy(
                pred[..., :2], target[..., :2], weight=weight.expand_as(pred[..., :2]))
            losses["loss_wh"] = losses["loss_wh"] + self.loss_wh(
                pred[..., 2:4], target[..., 2:4], weight=weight.expand_as(pred[..., 2:4]))
        return losses

    # ---- detections ----------------------------------------------------------------------------

    def predict(self, raw: tuple[list[torch.Tensor]], metas: Sequence[Mapping],
                rescale: bool = True) -> list[DetResult]:
        """Each image's detections (see the module docstring)."""
        cfg = self.test_cfg
        if not cfg or "nms" not in cfg:
            raise ConfigError("YOLOV3Head was built without test_cfg; give the model a test_cfg"
                              " (conf_thr, score_thr, nms, max_per_img), e.g. dict(conf_thr="
                              "0.005, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.45),"
                              " max_per_img=100)")
        (pred_maps,) = raw
        rows = levels_to_rows(pred_maps, self.num_attrib).float()
        if len(metas) != rows.shape[0]:
            raise ValueError(f"predict got {rows.shape[0]} images but {len(metas)} metas")
        anchors, strides = self._anchors_and_strides(pred_maps)
        box_preds = torch.cat([rows[..., :2].sigmoid(), rows[..., 2:4]], dim=-1)
        boxes = self.bbox_coder.decode(torch.cat(anchors).float(), box_preds, strides[:, None])
        objectness, probs = rows[..., 4].sigmoid(), rows[..., 5:].sigmoid()
        conf_thr, score_thr = cfg.get("conf_thr", -1), cfg.get("score_thr", 0.0)
        results = []
        for i, meta in enumerate(metas):
            image_boxes, image_probs, image_obj = boxes[i], probs[i], objectness[i]
            if rescale:
                image_boxes = boxes_to_original(image_boxes, meta)
            if conf_thr > 0:
                keep = image_obj >= conf_thr
                image_boxes, image_probs, image_obj = \
                    image_boxes[keep], image_probs[keep], image_obj[keep]
            scores = image_probs * image_obj[:, None]
            rows_i, labels = (scores > score_thr).nonzero(as_tuple=True)
            candidates, scores = image_boxes[rows_i], scores[rows_i, labels]
            kept, scores = multiclass_nms(candidates, scores, labels, cfg["nms"],
                                          cfg.get("max_per_img"))
            results.append(DetResult(candidates[kept], scores, labels[kept],
                                     meta=result_meta(meta)))
        return results
