"""MMDetection's ``MaskIoUHead`` (Mask Scoring R-CNN, Huang et al., 2019): a small network that
predicts, per RoI and class, the IoU of the mask head's mask with the ground-truth instance.

Input: the mask branch's RoI features ``(N, in_channels, 14, 14)`` and the mask head's logits of
one class per RoI ``(N, 28, 28)``, whose probabilities are max-pooled to ``14 x 14`` and stacked
onto the features as one more channel. ``num_convs`` 3x3 convs (the last of stride 2, all
followed by ReLU; ``convs.i``), ``num_fcs`` fully connected layers with ReLU (``fcs.i``) and
``fc_mask_iou``, one IoU per class.

Targets (:meth:`MaskIoUHead.get_targets`): the predicted mask (thresholded at
``train_cfg.rcnn.mask_thr_binary``) against the RoI's mask target; the ground truth's full
area is its area inside the RoI divided by the share of the instance that lies in the
proposal (``area_ratios``), so that a RoI cutting an instance is not rewarded. The loss
(``loss_mask_iou``, MSE with weight 0.5) counts only positive targets.

At test time the mask score of a detection is its class score times the predicted IoU of its
class (:meth:`MaskIoUHead.get_mask_scores`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from detlab.config import ConfigError
from detlab.data.masks import BitmapMasks, PolygonMasks
from detlab.models.init import initialize
from detlab.models.utils import frozen, thaw
from detlab.registry import MODELS

MASK_IOU_LOSS = frozen(type="MSELoss", loss_weight=0.5)
MASK_IOU_INIT = (frozen(type="Kaiming", override=frozen(name="convs")),
                 frozen(type="Caffe2Xavier", override=frozen(name="fcs")),
                 frozen(type="Normal", std=0.01, override=frozen(name="fc_mask_iou")))


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


@MODELS.register_module()
class MaskIoUHead(nn.Module):
    """Predicts the IoU of each RoI's predicted mask with its ground truth, per class.

    Args:
        num_convs: 3x3 convs (the last one halves the size).
        num_fcs: fully connected layers after them.
        roi_feat_size: side of the mask RoI features (the fcs' input is half of it squared).
        in_channels: channels of the RoI features (one more channel, the pooled mask, is added).
        conv_out_channels, fc_out_channels: widths of the convs and the fcs.
        num_classes: classes, without background (one IoU each).
        loss_iou: the IoU regression loss (``MSELoss`` with weight 0.5).
        init_cfg: Kaiming convs, Caffe2 Xavier fcs, ``Normal(std=0.01)`` for ``fc_mask_iou``.
    """

    def __init__(self, num_convs: int = 4, num_fcs: int = 2,
                 roi_feat_size: int | Sequence[int] = 14, in_channels: int = 256,
                 conv_out_channels: int = 256, fc_out_channels: int = 1024,
                 num_classes: int = 80,
                 loss_iou: Mapping[str, Any] | nn.Module = MASK_IOU_LOSS,
                 init_cfg: Any = MASK_IOU_INIT) -> None:
        super().__init__()
        if num_convs < 1:
            raise ConfigError(f"mask_iou_head.num_convs must be at least 1 (the last conv "
                              f"halves the features to the pooled mask's size), got {num_convs}")
        self.in_channels, self.conv_out_channels = in_channels, conv_out_channels
        self.fc_out_channels, self.num_classes = fc_out_channels, num_classes
        self.init_cfg = thaw(init_cfg)
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels + 1 if i == 0 else conv_out_channels, conv_out_channels, 3,
                      stride=2 if i == num_convs - 1 else 1, padding=1)
            for i in range(num_convs))
        height, width = _pair(roi_feat_size)
        pooled_area = (height // 2) * (width // 2)
        self.fcs = nn.ModuleList(
            nn.Linear(conv_out_channels * pooled_area if i == 0 else fc_out_channels,
                      fc_out_channels) for i in range(num_fcs))
        self.fc_mask_iou = nn.Linear(fc_out_channels, num_classes)
        self.relu = nn.ReLU()
        self.max_pool = nn.MaxPool2d(2, 2)
        self.loss_iou = MODELS.build(thaw(loss_iou))
        self.init_weights()

    def init_weights(self) -> None:
        """Apply ``init_cfg``."""
        initialize(self, self.init_cfg, load_pretrained=False)

    def forward(self, mask_feat: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
        """RoI features ``(N, in_channels, h, w)`` and mask logits ``(N, 2h, 2w)`` of one class
        each -> ``(N, num_classes)`` predicted IoUs."""
        pooled = self.max_pool(mask_pred.sigmoid().unsqueeze(1))
        x = torch.cat((mask_feat, pooled), 1)
        for conv in self.convs:
            x = self.relu(conv(x))
        x = x.flatten(1)
        for fc in self.fcs:
            x = self.relu(fc(x))
        return self.fc_mask_iou(x)

    # ---- training ----------------------------------------------------------------------------

    def loss(self, mask_iou_pred: torch.Tensor, mask_iou_targets: torch.Tensor
             ) -> dict[str, torch.Tensor]:
        """``loss_mask_iou`` of the ``(P,)`` predictions of the positives' classes against the
        ``(P,)`` targets, over the targets above zero (zero with a gradient path otherwise)."""
        positive = mask_iou_targets > 0
        if positive.sum() > 0:
            loss = self.loss_iou(mask_iou_pred[positive], mask_iou_targets[positive])
        else:
            loss = mask_iou_pred.sum() * 0
        return dict(loss_mask_iou=loss)

    def get_targets(self, sampling_results: Sequence[Any], gt_masks: Sequence[Any],
                    mask_pred: torch.Tensor, mask_targets: torch.Tensor,
                    rcnn_train_cfg: Mapping[str, Any]) -> torch.Tensor:
        """``(P,)`` IoU of each positive's predicted mask (logits ``(P, h, w)`` of its class,
        thresholded at ``rcnn_train_cfg['mask_thr_binary']``) with its whole ground-truth
        instance, from its ``(P, h, w)`` mask target and the share of the instance inside the
        proposal."""
        if "mask_thr_binary" not in rcnn_train_cfg:
            raise ConfigError("train_cfg.rcnn.mask_thr_binary is missing: Mask Scoring R-CNN "
                              "thresholds the predicted masks to compute their IoU targets "
                              "(add mask_thr_binary=0.5 to model.train_cfg.rcnn)")
        ratios = torch.cat([area_ratios(res.pos_bboxes, res.pos_assigned_gt_inds, masks)
                            for res, masks in zip(sampling_results, gt_masks, strict=True)])
        if len(ratios) != len(mask_targets):
            raise ValueError(f"{len(mask_targets)} mask targets for {len(ratios)} positives")
        mask_pred = (mask_pred > rcnn_train_cfg["mask_thr_binary"]).float()
        pred_areas = mask_pred.sum((-1, -2))
        overlaps = (mask_pred * mask_targets).sum((-1, -2))
        gt_full_areas = mask_targets.sum((-1, -2)) / (ratios + 1e-7)
        return overlaps / (pred_areas + gt_full_areas - overlaps)

    # ---- testing -----------------------------------------------------------------------------

    def get_mask_scores(self, mask_iou_pred: torch.Tensor, det_bboxes: torch.Tensor,
                        det_labels: torch.Tensor) -> torch.Tensor:
        """``(N,)`` mask scores: each detection's score (``det_bboxes[:, -1]``) times the
        predicted IoU of its class."""
        index = torch.arange(len(det_labels), device=det_labels.device)
        return mask_iou_pred[index, det_labels] * det_bboxes[index, -1]


def area_ratios(proposals: torch.Tensor, gt_inds: torch.Tensor, gt_masks: Any) -> torch.Tensor:
    """``(P,)`` float32: the share of each positive's ground-truth mask that lies inside its
    proposal (the proposal's corners truncated to whole pixels, clipped to the masks' canvas
    and at least a pixel wide and high, as MMDetection's ``BitmapMasks.crop``).

    ``gt_masks``: ``(G, H, W)`` tensor (the batch's ``targets['masks']``), ``BitmapMasks`` or
    ``PolygonMasks``."""
    if len(proposals) == 0:
        return proposals.new_zeros((0,))
    boxes = proposals.detach().cpu().numpy().astype(np.int32)
    inds = gt_inds.cpu().numpy()
    if isinstance(gt_masks, PolygonMasks):
        # MMDetection's PolygonMasks.crop only moves the polygons (their area is not cut), so
        # a polygon instance counts as wholly inside its proposal: the ratio is 1 (up to
        # rounding), which is kept here
        areas = gt_masks.areas
        inside = [_moved_polygon_area(gt_masks.masks[int(i)], box, gt_masks.height,
                                      gt_masks.width) for box, i in zip(boxes, inds, strict=True)]
        ratios = np.asarray(inside, dtype=np.float64) / (areas[inds] + 1e-7)
        return torch.from_numpy(ratios).float().to(proposals.device)
    if isinstance(gt_masks, BitmapMasks):
        areas = gt_masks.areas
        inside = [gt_masks[int(i)].crop(box).areas[0] for box, i in zip(boxes, inds,
                                                                         strict=True)]
        ratios = np.asarray(inside, dtype=np.float64) / (areas[inds] + 1e-7)
        return torch.from_numpy(ratios).float().to(proposals.device)
    masks = torch.as_tensor(gt_masks)
    height, width = masks.shape[-2:]
    selected = masks.index_select(0, gt_inds.to(masks.device).long())
    areas = selected.flatten(1).sum(1).double().cpu().numpy()
    inside = []
    for mask, (x1, y1, x2, y2) in zip(selected, boxes.tolist(), strict=True):
        x1, x2 = min(max(x1, 0), width), min(max(x2, 0), width)
        y1, y2 = min(max(y1, 0), height), min(max(y2, 0), height)
        w, h = max(x2 - x1, 1), max(y2 - y1, 1)
        inside.append(float(mask[y1:y1 + h, x1:x1 + w].sum()))
    ratios = np.asarray(inside, dtype=np.float64) / (areas + 1e-7)
    return torch.from_numpy(ratios).float().to(proposals.device)


def _moved_polygon_area(polygons: Sequence[np.ndarray], box: np.ndarray, height: int,
                        width: int) -> float:
    """The shoelace area of an instance's polygons moved by the corner of ``box`` (clipped to
    the ``height x width`` canvas), as MMDetection's polygon crop computes it."""
    x1 = float(np.clip(box[0], 0, width))
    y1 = float(np.clip(box[1], 0, height))
    area = 0.0
    for polygon in polygons:
        points = np.asarray(polygon, dtype=np.float64).reshape(-1)
        x, y = points[0::2] - x1, points[1::2] - y1
        area += 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    return area
