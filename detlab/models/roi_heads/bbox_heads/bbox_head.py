"""The R-CNN box head: class scores and per-class box deltas of each RoI's pooled features,
their training targets from the sampled RoIs, the loss, and the detections of one image
(MMDetection 2.28's ``BBoxHead``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from detlab.config import ConfigError
from detlab.models.assigners import SamplingResult
from detlab.models.heads.nms import check_nms_cfg, multiclass_nms
from detlab.models.heads.postprocess import boxes_to_original
from detlab.models.init import initialize
from detlab.models.utils import thaw
from detlab.registry import MODELS

DEFAULT_CODER = dict(type="DeltaXYWHBBoxCoder", clip_border=True,
                     target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[0.1, 0.1, 0.2, 0.2])
DEFAULT_CLS_LOSS = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)
DEFAULT_BOX_LOSS = dict(type="SmoothL1Loss", beta=1.0, loss_weight=1.0)
LINEAR = dict(type="Linear")


class NormedLinear(nn.Linear):
    """A linear layer on L2-normalized inputs and weight rows, the inputs scaled by
    ``tempearture`` (MMDetection's spelling): cosine-similarity logits (the Seesaw configs'
    classifier, ``cls_predictor_cfg=dict(type='NormedLinear', tempearture=20)``).

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        tempearture: the inputs' scale.
        power: the norms' exponent.
        eps: added to the norms.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 tempearture: float = 20, power: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.tempearture, self.power, self.eps = tempearture, power, eps
        nn.init.normal_(self.weight, mean=0, std=0.01)
        if self.bias is not None:
            nn.init.constant_(self.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight / (self.weight.norm(dim=1, keepdim=True).pow(self.power)
                                + self.eps)
        x = x / (x.norm(dim=1, keepdim=True).pow(self.power) + self.eps)
        return F.linear(x * self.tempearture, weight, self.bias)


LINEAR_LAYERS: dict[str, type[nn.Linear]] = {"Linear": nn.Linear, "NormedLinear": NormedLinear}


def build_linear_layer(cfg: Mapping[str, Any] | None, in_features: int, out_features: int,
                       where: str) -> nn.Linear:
    """A predictor layer from ``cls_predictor_cfg`` / ``reg_predictor_cfg``:
    ``dict(type='Linear')`` (MMDetection's default) or ``dict(type='NormedLinear',
    tempearture=20)``."""
    cfg = dict(LINEAR if cfg is None else cfg)
    kind = cfg.pop("type", None)
    if kind not in LINEAR_LAYERS:
        raise ConfigError(f"bbox_head.{where} type {kind!r} is not supported; use one of "
                          f"{', '.join(LINEAR_LAYERS)}")
    try:
        return LINEAR_LAYERS[kind](in_features, out_features, **cfg)
    except TypeError as err:
        raise ConfigError(f"bbox_head.{where}: {err}") from err


def accuracy(cls_score: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of ``(N, C+1)`` scores against ``(N,)`` labels, in percent, as a
    ``(1,)`` tensor (0 without RoIs), as MMDetection's ``accuracy`` logs it as ``acc``."""
    if cls_score.shape[0] == 0:
        return cls_score.new_zeros(1)
    correct = (cls_score.argmax(dim=1) == labels).float().sum(0, keepdim=True)
    return correct * (100.0 / cls_score.shape[0])


@MODELS.register_module()
class BBoxHead(nn.Module):
    """Two linear predictors on the (optionally averaged) RoI features: ``fc_cls``
    (``num_classes + 1`` scores, background last) and ``fc_reg`` (4 deltas per class, or 4
    with ``reg_class_agnostic``).

    Args:
        with_avg_pool: average each RoI's map to one vector first.
        with_cls, with_reg: build the classifier / the regressor.
        roi_feat_size: ``(h, w)`` of the pooled RoI features.
        in_channels: channels of the RoI features.
        num_classes: object classes (background excluded).
        bbox_coder: box coder of the deltas (DeltaXYWHBBoxCoder, stds 0.1 0.1 0.2 0.2).
        reg_class_agnostic: one box per RoI instead of one per class.
        reg_decoded_bbox: the box loss compares decoded boxes (IoU-type losses).
        reg_predictor_cfg, cls_predictor_cfg: the predictors' layers (``Linear``).
        loss_cls, loss_bbox: CrossEntropyLoss and SmoothL1Loss by default.
        init_cfg: default ``Normal`` std 0.01 for ``fc_cls`` and 0.001 for ``fc_reg``.
    """

    def __init__(self, with_avg_pool: bool = False, with_cls: bool = True,
                 with_reg: bool = True, roi_feat_size: int | Sequence[int] = 7,
                 in_channels: int = 256, num_classes: int = 80,
                 bbox_coder: Mapping | Any = DEFAULT_CODER, reg_class_agnostic: bool = False,
                 reg_decoded_bbox: bool = False, reg_predictor_cfg: Mapping | None = LINEAR,
                 cls_predictor_cfg: Mapping | None = LINEAR,
                 loss_cls: Mapping | nn.Module = DEFAULT_CLS_LOSS,
                 loss_bbox: Mapping | nn.Module = DEFAULT_BOX_LOSS,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__()
        if not (with_cls or with_reg):
            raise ConfigError("bbox_head needs with_cls or with_reg (or both) to be True")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes <= 0:
            raise ConfigError(f"roi_head.bbox_head.num_classes must be a positive int (object "
                              f"classes, background excluded), got {num_classes!r}")
        self.with_avg_pool, self.with_cls, self.with_reg = with_avg_pool, with_cls, with_reg
        self.roi_feat_size = _pair(roi_feat_size)
        self.roi_feat_area = self.roi_feat_size[0] * self.roi_feat_size[1]
        self.in_channels, self.num_classes = in_channels, num_classes
        self.reg_class_agnostic, self.reg_decoded_bbox = reg_class_agnostic, reg_decoded_bbox
        self.reg_predictor_cfg, self.cls_predictor_cfg = reg_predictor_cfg, cls_predictor_cfg
        self.bbox_coder = MODELS.build(bbox_coder)
        self.loss_cls, self.loss_bbox = MODELS.build(loss_cls), MODELS.build(loss_bbox)
        if getattr(self.loss_cls, "use_sigmoid", False):
            raise ConfigError("roi_head.bbox_head.loss_cls must be a softmax loss (use_sigmoid="
                              "False): the R-CNN box head scores num_classes + 1 columns")
        features = in_channels
        if with_avg_pool:
            self.avg_pool = nn.AvgPool2d(self.roi_feat_size)
        else:
            features *= self.roi_feat_area
        if with_cls:
            self.fc_cls = build_linear_layer(cls_predictor_cfg, features, self.cls_channels,
                                             "cls_predictor_cfg")
        if with_reg:
            self.fc_reg = build_linear_layer(reg_predictor_cfg, features,
                                             4 if reg_class_agnostic else 4 * num_classes,
                                             "reg_predictor_cfg")
        if init_cfg is None:
            init_cfg = []
            if with_cls:
                init_cfg.append(dict(type="Normal", std=0.01, override=dict(name="fc_cls")))
            if with_reg:
                init_cfg.append(dict(type="Normal", std=0.001, override=dict(name="fc_reg")))
        self.init_cfg = thaw(init_cfg)
        if type(self) is BBoxHead:
            initialize(self, self.init_cfg, load_pretrained=False)

    @property
    def custom_cls_channels(self) -> bool:
        """Whether the classification loss sets the classifier's width (SeesawLoss)."""
        return getattr(self.loss_cls, "custom_cls_channels", False)

    @property
    def custom_activation(self) -> bool:
        """Whether the classification loss turns logits into scores itself."""
        return getattr(self.loss_cls, "custom_activation", False)

    @property
    def custom_accuracy(self) -> bool:
        """Whether the classification loss reports its own accuracies."""
        return getattr(self.loss_cls, "custom_accuracy", False)

    @property
    def cls_channels(self) -> int:
        """The classifier's outputs: ``num_classes + 1`` (background last), or what a custom
        loss asks for."""
        return self.loss_cls.get_cls_channels(self.num_classes) if self.custom_cls_channels \
            else self.num_classes + 1

    def class_scores(self, cls_score: torch.Tensor) -> torch.Tensor:
        """``(K, cls_channels)`` logits -> ``(K, num_classes + 1)`` probabilities (softmax,
        or the custom loss's activation)."""
        return self.loss_cls.get_activation(cls_score) if self.custom_cls_channels \
            else F.softmax(cls_score, dim=-1)

    def init_weights(self) -> None:
        """Apply ``init_cfg``."""
        initialize(self, self.init_cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(K, in_channels, h, w)`` RoI features -> ``(K, num_classes + 1)`` class logits
        and ``(K, 4 * num_classes)`` (or ``(K, 4)``) deltas; None for a branch not built."""
        if self.with_avg_pool:
            x = self.avg_pool(x).flatten(1) if x.numel() > 0 else x.mean(dim=(-1, -2))
        x = x.flatten(1)
        cls_score = self.fc_cls(x) if self.with_cls else None
        bbox_pred = self.fc_reg(x) if self.with_reg else None
        return cls_score, bbox_pred

    # ---- targets and loss --------------------------------------------------------------------

    def _get_target_single(self, pos_bboxes: torch.Tensor, neg_bboxes: torch.Tensor,
                           pos_gt_bboxes: torch.Tensor, pos_gt_labels: torch.Tensor,
                           cfg: Mapping) -> tuple[torch.Tensor, ...]:
        """One image's targets: positives first, then negatives (the order of the sampled
        RoIs). Labels (background ``num_classes``), label weights (``pos_weight`` for
        positives, 1 for negatives), encoded (or, with ``reg_decoded_bbox``, xyxy) box targets
        and box weights (1 for positives)."""
        num_pos, num_neg = pos_bboxes.shape[0], neg_bboxes.shape[0]
        num = num_pos + num_neg
        labels = pos_bboxes.new_full((num,), self.num_classes, dtype=torch.long)
        label_weights = pos_bboxes.new_zeros(num)
        bbox_targets = pos_bboxes.new_zeros(num, 4)
        bbox_weights = pos_bboxes.new_zeros(num, 4)
        if num_pos > 0:
            labels[:num_pos] = pos_gt_labels
            pos_weight = cfg.get("pos_weight", -1)
            label_weights[:num_pos] = 1.0 if pos_weight <= 0 else pos_weight
            bbox_targets[:num_pos] = pos_gt_bboxes if self.reg_decoded_bbox \
                else self.bbox_coder.encode(pos_bboxes, pos_gt_bboxes)
            bbox_weights[:num_pos] = 1
        if num_neg > 0:
            label_weights[-num_neg:] = 1.0
        return labels, label_weights, bbox_targets, bbox_weights

    def get_targets(self, sampling_results: Sequence[SamplingResult],
                    gt_bboxes: Sequence[torch.Tensor] | None, gt_labels: Sequence[torch.Tensor]
                    | None, rcnn_train_cfg: Mapping, concat: bool = True
                    ) -> tuple[torch.Tensor | list[torch.Tensor], ...]:
        """Targets of every image's sampled RoIs (MMDetection's arguments; the ground truth
        comes from the sampling results, ``gt_bboxes`` / ``gt_labels`` are unused here):
        ``(labels, label_weights, bbox_targets, bbox_weights)``, concatenated over the images
        with ``concat``, else one list each."""
        per_image = [self._get_target_single(res.pos_bboxes, res.neg_bboxes, res.pos_gt_bboxes,
                                             res.pos_gt_labels, rcnn_train_cfg or {})
                     for res in sampling_results]
        columns = [list(c) for c in zip(*per_image, strict=True)]
        return tuple(torch.cat(c, 0) for c in columns) if concat else tuple(columns)

    def loss(self, cls_score: torch.Tensor | None, bbox_pred: torch.Tensor | None,
             rois: torch.Tensor, labels: torch.Tensor, label_weights: torch.Tensor,
             bbox_targets: torch.Tensor, bbox_weights: torch.Tensor,
             reduction_override: str | None = None) -> dict[str, torch.Tensor]:
        """``loss_cls`` (averaged over RoIs with a weight), ``acc`` (top-1 accuracy in percent,
        logged, not optimized) and ``loss_bbox`` on the positives (averaged over all sampled
        RoIs, as MMDetection; a zero in the graph without positives). A classification loss
        that returns a dict (SeesawLoss) gives its keys, and its own accuracies."""
        losses: dict[str, torch.Tensor] = {}
        if cls_score is not None:
            avg_factor = max(float((label_weights > 0).sum()), 1.0)
            if cls_score.numel() > 0:
                loss = self.loss_cls(cls_score, labels, label_weights, avg_factor=avg_factor,
                                     reduction_override=reduction_override)
                if isinstance(loss, Mapping):
                    losses.update(loss)
                else:
                    losses["loss_cls"] = loss
                if self.custom_activation:
                    losses.update(self.loss_cls.get_accuracy(cls_score.detach(), labels))
                else:
                    losses["acc"] = accuracy(cls_score.detach(), labels)
        if bbox_pred is not None:
            pos = (labels >= 0) & (labels < self.num_classes)
            if pos.any():
                if self.reg_decoded_bbox:
                    bbox_pred = self.bbox_coder.decode(rois[:, 1:], bbox_pred)
                if self.reg_class_agnostic:
                    pos_pred = bbox_pred.view(bbox_pred.shape[0], 4)[pos]
                else:
                    pos_pred = bbox_pred.view(bbox_pred.shape[0], -1, 4)[pos, labels[pos]]
                losses["loss_bbox"] = self.loss_bbox(pos_pred, bbox_targets[pos],
                                                     bbox_weights[pos],
                                                     avg_factor=bbox_targets.shape[0],
                                                     reduction_override=reduction_override)
            else:
                losses["loss_bbox"] = bbox_pred[pos].sum()
        return losses

    # ---- detections --------------------------------------------------------------------------

    def get_bboxes(self, rois: torch.Tensor, cls_score: torch.Tensor | None,
                   bbox_pred: torch.Tensor | None, meta: Mapping, rescale: bool = False,
                   cfg: Mapping | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's detections from its ``(K, 5)`` RoIs and their outputs.

        Boxes are decoded and clipped to ``meta['img_shape']``; with ``rescale`` they go back
        to the original image (flip undone, divided by ``meta['scale_factor']``). With a
        ``cfg`` (``rcnn`` test settings: ``score_thr``, ``nms``, ``max_per_img``) -> ``(k, 5)``
        ``x1 y1 x2 y2 score`` and ``(k,)`` labels after per-class NMS; without -> all ``(K,
        4 * num_classes)`` boxes and ``(K, num_classes + 1)`` probabilities (MMDetection's
        ``get_bboxes``)."""
        scores = self.class_scores(cls_score) if cls_score is not None else None
        if bbox_pred is not None:
            bboxes = self.bbox_coder.decode(rois[..., 1:], bbox_pred,
                                            max_shape=meta.get("img_shape"))
        else:
            # MMDetection's clamp here works on a copy, so the RoIs come back unclipped
            bboxes = rois[:, 1:].clone()
        if rescale and bboxes.shape[0] > 0:
            bboxes = boxes_to_original(bboxes.reshape(-1, 4), meta).reshape(bboxes.shape[0], -1)
        if cfg is None:
            return bboxes, scores
        return self.multiclass_nms(bboxes, scores, cfg)

    def multiclass_nms(self, bboxes: torch.Tensor, scores: torch.Tensor, cfg: Mapping
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """MMDetection's ``multiclass_nms``: each (RoI, class) pair above ``score_thr`` (the
        background column dropped) is a candidate, then NMS per class (``nms`` or ``soft_nms``)
        and the best ``max_per_img`` -> ``(k, 5)`` and ``(k,)`` labels."""
        num_classes = scores.shape[1] - 1
        boxes = bboxes.view(scores.shape[0], -1, 4)
        if boxes.shape[1] == 1:
            boxes = boxes.expand(scores.shape[0], num_classes, 4)
        labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand(
            scores.shape[0], num_classes).reshape(-1)
        boxes, flat = boxes.reshape(-1, 4), scores[:, :-1].reshape(-1)
        valid = torch.nonzero(flat > cfg.get("score_thr", 0.0)).squeeze(1)
        boxes, flat, labels = boxes[valid], flat[valid], labels[valid]
        if boxes.numel() == 0:
            return torch.cat([boxes, flat[:, None]], -1), labels
        max_num = cfg.get("max_per_img", -1)
        nms_cfg = check_nms_cfg(cfg.get("nms", dict(type="nms", iou_threshold=0.5)),
                                "model.test_cfg.rcnn.nms")
        keep, kept_scores = multiclass_nms(boxes, flat, labels, nms_cfg,
                                           max_num if max_num > 0 else None)
        return torch.cat([boxes[keep], kept_scores[:, None]], -1), labels[keep]
