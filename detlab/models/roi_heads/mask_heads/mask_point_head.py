"""MMDetection's ``MaskPointHead`` (PointRend): classifies single points of a RoI from their
fine-grained features (read from the FPN's finest map) and the coarse mask's logits there.

A shared MLP written as 1x1 ``Conv1d`` layers over ``(N, channels, points)``: ``num_fcs``
layers with ReLU (``fcs.i.conv``), the coarse logits concatenated again after each one with
``coarse_pred_each_layer``, and ``fc_logits``, one logit per class (one in all when
``class_agnostic``). Training picks points by uncertainty
(:meth:`get_roi_rel_points_train`) and reads their targets from the ground-truth masks
(:meth:`get_targets`); the loss (``loss_point``) is the mask cross-entropy of the points'
logits of their instance's class. At test time the most uncertain cells of an upsampled mask
(:meth:`get_roi_rel_points_test`) are re-classified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.data.masks import BitmapMasks, PolygonMasks
from detlab.models.init import initialize
from detlab.models.roi_heads.point_sample import (
    get_uncertain_point_coords_with_randomness,
    get_uncertainty,
    point_sample,
    rel_roi_point_to_rel_img_point,
)
from detlab.models.utils import frozen, thaw
from detlab.registry import MODELS

POINT_LOSS = frozen(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0)
POINT_INIT = frozen(type="Normal", std=0.001, override=frozen(name="fc_logits"))


class PointFC(nn.Module):
    """A 1x1 ``Conv1d`` and ReLU, under mmcv ``ConvModule``'s names (``conv``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=1)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.constant_(self.conv.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.conv(x))


@MODELS.register_module()
class MaskPointHead(nn.Module):
    """Point logits from fine-grained and coarse point features.

    Args:
        num_classes: classes, without background.
        num_fcs: the MLP's layers.
        in_channels: channels of the fine-grained features.
        fc_channels: width of the layers.
        class_agnostic: one logit per point instead of one per class.
        coarse_pred_each_layer: concatenate the coarse logits to every layer's input.
        conv_cfg: ``dict(type='Conv1d')`` (the only layer type).
        norm_cfg: must be None (no normalization of points, as in the zoo).
        act_cfg: ``dict(type='ReLU')`` (the only activation).
        loss_point: the point loss (``CrossEntropyLoss`` with ``use_mask=True``).
        init_cfg: ``Normal(std=0.001)`` for ``fc_logits``.
    """

    def __init__(self, num_classes: int, num_fcs: int = 3, in_channels: int = 256,
                 fc_channels: int = 256, class_agnostic: bool = False,
                 coarse_pred_each_layer: bool = True,
                 conv_cfg: Mapping[str, Any] | None = frozen(type="Conv1d"),
                 norm_cfg: Mapping[str, Any] | None = None,
                 act_cfg: Mapping[str, Any] | None = frozen(type="ReLU"),
                 loss_point: Mapping[str, Any] | nn.Module = POINT_LOSS,
                 init_cfg: Any = POINT_INIT) -> None:
        super().__init__()
        if conv_cfg is not None and conv_cfg.get("type") != "Conv1d":
            raise ConfigError(f"point_head.conv_cfg must be dict(type='Conv1d'), got "
                              f"{dict(conv_cfg)!r}")
        if norm_cfg is not None:
            raise ConfigError("point_head.norm_cfg is not supported by detlab's MaskPointHead "
                              "(no zoo config normalizes points); remove it")
        if act_cfg is None or act_cfg.get("type") != "ReLU":
            raise ConfigError(f"point_head.act_cfg must be dict(type='ReLU'), got {act_cfg!r}")
        self.num_fcs, self.in_channels = num_fcs, in_channels
        self.fc_channels, self.num_classes = fc_channels, num_classes
        self.class_agnostic = class_agnostic
        self.coarse_pred_each_layer = coarse_pred_each_layer
        self.init_cfg = thaw(init_cfg)
        self.loss_point = MODELS.build(thaw(loss_point))
        fc_in = in_channels + num_classes
        self.fcs = nn.ModuleList()
        for _ in range(num_fcs):
            self.fcs.append(PointFC(fc_in, fc_channels))
            fc_in = fc_channels + (num_classes if coarse_pred_each_layer else 0)
        self.fc_logits = nn.Conv1d(fc_in, 1 if class_agnostic else num_classes, kernel_size=1)
        self.init_weights()

    def init_weights(self) -> None:
        """Apply ``init_cfg``."""
        initialize(self, self.init_cfg, load_pretrained=False)

    def forward(self, fine_grained_feats: torch.Tensor, coarse_feats: torch.Tensor
                ) -> torch.Tensor:
        """``(N, in_channels, P)`` and ``(N, num_classes, P)`` -> ``(N, C, P)`` logits."""
        x = torch.cat([fine_grained_feats, coarse_feats], dim=1)
        for fc in self.fcs:
            x = fc(x)
            if self.coarse_pred_each_layer:
                x = torch.cat((x, coarse_feats), dim=1)
        return self.fc_logits(x)

    # ---- training ----------------------------------------------------------------------------

    def get_targets(self, rois: torch.Tensor, rel_roi_points: torch.Tensor,
                    sampling_results: Sequence[Any], gt_masks: Sequence[Any],
                    cfg: Mapping[str, Any]) -> torch.Tensor:
        """``(P, num_points)`` float targets: each positive's ground-truth mask read
        (bilinearly) at its ``(P, num_points, 2)`` points relative to its RoI."""
        targets = []
        for index, (result, masks) in enumerate(zip(sampling_results, gt_masks, strict=True)):
            chosen = rois[:, 0] == index
            image_rois, points = rois[chosen], rel_roi_points[chosen]
            if len(image_rois) == 0:
                targets.append(rois.new_zeros((0, cfg["num_points"])))
                continue
            if isinstance(masks, (BitmapMasks, PolygonMasks)):
                masks = masks.to_tensor(rois.dtype, rois.device)
            masks = torch.as_tensor(masks).to(device=rois.device, dtype=rois.dtype)
            masks = masks.index_select(0, result.pos_assigned_gt_inds.long()).unsqueeze(1)
            img_points = rel_roi_point_to_rel_img_point(image_rois, points, masks)
            targets.append(point_sample(masks, img_points).squeeze(1))
        return torch.cat(targets) if targets else rois.new_zeros((0, cfg["num_points"]))

    def loss(self, point_pred: torch.Tensor, point_targets: torch.Tensor,
             labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss_point`` of ``(P, C, num_points)`` logits for the positives' ``labels``."""
        if self.class_agnostic:
            labels = torch.zeros_like(labels)
        return dict(loss_point=self.loss_point(point_pred, point_targets, labels))

    def get_roi_rel_points_train(self, mask_pred: torch.Tensor, labels: torch.Tensor,
                                 cfg: Mapping[str, Any]) -> torch.Tensor:
        """``(N, num_points, 2)`` training points of each RoI (``cfg``: ``num_points``,
        ``oversample_ratio``, ``importance_sample_ratio``)."""
        for key in ("num_points", "oversample_ratio", "importance_sample_ratio"):
            if key not in cfg:
                raise ConfigError(f"train_cfg.rcnn.{key} is missing: PointRend samples its "
                                  f"training points with num_points=196, oversample_ratio=3, "
                                  f"importance_sample_ratio=0.75")
        if cfg["oversample_ratio"] < 1 or not 0 <= cfg["importance_sample_ratio"] <= 1:
            raise ConfigError("train_cfg.rcnn needs oversample_ratio >= 1 and "
                              "0 <= importance_sample_ratio <= 1")
        return get_uncertain_point_coords_with_randomness(
            mask_pred, labels, cfg["num_points"], cfg["oversample_ratio"],
            cfg["importance_sample_ratio"])

    def get_roi_rel_points_test(self, mask_pred: torch.Tensor, pred_label: torch.Tensor,
                                cfg: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``subdivision_num_points`` most uncertain cells of each ``(h, w)`` mask:
        ``(N, n)`` flat indices and ``(N, n, 2)`` cell centers relative to the RoI."""
        uncertainty = get_uncertainty(mask_pred, pred_label)
        num, _, height, width = uncertainty.shape
        size = height * width
        count = min(size, cfg["subdivision_num_points"])
        indices = uncertainty.view(num, size).topk(count, dim=1)[1]
        h_step, w_step = 1.0 / height, 1.0 / width
        xs = w_step / 2.0 + (indices % width).float() * w_step
        ys = h_step / 2.0 + (indices // width).float() * h_step
        return indices, torch.stack([xs, ys], dim=2)
