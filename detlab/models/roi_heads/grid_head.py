"""MMDetection's ``GridHead`` (Grid R-CNN, Lu et al., 2019 and Grid R-CNN Plus): instead of
regressing box offsets, predict a heatmap per grid point (the 3 x 3 corners, edge midpoints
and center of the box by default) and place the box's sides where the points are.

Per RoI feature ``(in_channels, 14, 14)`` (the grid RoI extractor's): ``num_convs`` convs
(:class:`ConvModule` with GN, the first of stride 2; ``convs.i``) to ``grid_points x
point_feat_channels`` channels, one group per point; feature fusion: each point's features plus
its neighbours', passed through a depthwise 5x5 + pointwise conv (first order,
``forder_trans``), then the same again from the first-order features (second order,
``sorder_trans``); two grouped transposed convs (``deconv1`` with GN ``norm1`` and ReLU,
``deconv2``) up to one ``28 x 28`` heatmap per point (``fused``). In training the unfused
features go through the same deconvs too (``unfused``), and both are supervised.

Each point's heatmap covers only its own quarter-overlapping sub-region (``sub_regions``) of
the ``56 x 56`` map of the RoI enlarged twice about its center (Grid R-CNN Plus).

Targets (:meth:`GridHead.get_targets`): the ground truth's grid points, in the enlarged
proposal's map, as discs of radius ``train_cfg.rcnn.pos_radius`` (proposals whose enlarged
sides are at most ``grid_size`` pixels get none); the loss (``loss_grid``) is the sigmoid
cross-entropy of both heatmaps (weight 15 each).

At test time (:meth:`GridHead.get_bboxes`) each point's most likely pixel is found; a side of
the box is the score-weighted mean of the positions of the points on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, frozen, thaw
from detlab.registry import MODELS

GRID_LOSS = frozen(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=15)
GRID_NORM = frozen(type="GN", num_groups=36)
GRID_INIT = (frozen(type="Kaiming", layer=("Conv2d", "Linear")),
             frozen(type="Normal", layer="ConvTranspose2d", std=0.001,
                    override=frozen(type="Normal", name="deconv2", std=0.001,
                                    bias=-math.log(0.99 / 0.01))))


def _fusion_conv(channels: int) -> nn.Sequential:
    """A depthwise 5x5 conv then a pointwise conv: one edge of the feature fusion."""
    return nn.Sequential(nn.Conv2d(channels, channels, 5, stride=1, padding=2, groups=channels),
                         nn.Conv2d(channels, channels, 1))


@MODELS.register_module()
class GridHead(nn.Module):
    """Grid point heatmaps of RoIs, their targets and loss, and boxes from them.

    Args:
        grid_points: points of the square grid (9: a 3 x 3 grid).
        num_convs: convs before the fusion (the first halves the RoI features).
        roi_feat_size: side of the square RoI features (14).
        in_channels: their channels.
        conv_kernel_size: kernel of the convs.
        point_feat_channels: channels per grid point (the convs have
            ``grid_points * point_feat_channels``).
        deconv_kernel_size: kernel of the two transposed convs (stride 2 each).
        class_agnostic: kept for configs (the grid is always class-agnostic).
        loss_grid: the heatmap loss (sigmoid ``CrossEntropyLoss``, weight 15).
        conv_cfg, norm_cfg: of the convs (GN with groups dividing their channels).
        init_cfg: Kaiming convs, ``Normal(std=0.001)`` deconvs, ``deconv2`` biased to a 1 %
            prior.
    """

    def __init__(self, grid_points: int = 9, num_convs: int = 8, roi_feat_size: int = 14,
                 in_channels: int = 256, conv_kernel_size: int = 3,
                 point_feat_channels: int = 64, deconv_kernel_size: int = 4,
                 class_agnostic: bool = False,
                 loss_grid: Mapping[str, Any] | nn.Module = GRID_LOSS,
                 conv_cfg: Mapping[str, Any] | None = None,
                 norm_cfg: Mapping[str, Any] | None = GRID_NORM,
                 init_cfg: Any = GRID_INIT) -> None:
        super().__init__()
        self.grid_points, self.num_convs = grid_points, num_convs
        self.roi_feat_size, self.in_channels = roi_feat_size, in_channels
        self.conv_kernel_size = conv_kernel_size
        self.point_feat_channels = point_feat_channels
        self.conv_out_channels = point_feat_channels * grid_points
        self.class_agnostic = class_agnostic
        self.conv_cfg, self.norm_cfg = conv_cfg, thaw(norm_cfg)
        self.init_cfg = thaw(init_cfg)
        if isinstance(norm_cfg, Mapping) and norm_cfg.get("type") == "GN" and \
                self.conv_out_channels % norm_cfg["num_groups"]:
            raise ConfigError(f"grid_head.norm_cfg.num_groups {norm_cfg['num_groups']} must "
                              f"divide the convs' channels, grid_points x point_feat_channels "
                              f"= {self.conv_out_channels}")
        if grid_points < 4:
            raise ConfigError(f"grid_head.grid_points must be at least 4, got {grid_points}")
        self.grid_size = int(math.isqrt(grid_points))
        if self.grid_size ** 2 != grid_points:
            raise ConfigError(f"grid_head.grid_points must be a square number (9, 16 ...), "
                              f"got {grid_points}")
        if not isinstance(roi_feat_size, int):
            raise ConfigError(f"grid_head.roi_feat_size must be one int: Grid R-CNN supports "
                              f"square RoIs only, got {roi_feat_size!r}")
        self.whole_map_size = roi_feat_size * 4
        self.sub_regions = self.calc_sub_regions()

        padding = (conv_kernel_size - 1) // 2
        self.convs = nn.Sequential(*[
            ConvModule(in_channels if i == 0 else self.conv_out_channels,
                       self.conv_out_channels, conv_kernel_size, stride=2 if i == 0 else 1,
                       padding=padding, conv_cfg=conv_cfg, norm_cfg=norm_cfg, bias=True)
            for i in range(num_convs)])
        deconv_padding = (deconv_kernel_size - 2) // 2
        self.deconv1 = nn.ConvTranspose2d(self.conv_out_channels, self.conv_out_channels,
                                          kernel_size=deconv_kernel_size, stride=2,
                                          padding=deconv_padding, groups=grid_points)
        self.norm1 = nn.GroupNorm(grid_points, self.conv_out_channels)
        self.deconv2 = nn.ConvTranspose2d(self.conv_out_channels, grid_points,
                                          kernel_size=deconv_kernel_size, stride=2,
                                          padding=deconv_padding, groups=grid_points)

        # point i = (column i // grid_size, row i % grid_size); its left, up, down and right
        # neighbours, in that order
        size = self.grid_size
        self.neighbor_points: list[tuple[int, ...]] = []
        for col in range(size):
            for row in range(size):
                neighbors = []
                if col > 0:
                    neighbors.append((col - 1) * size + row)
                if row > 0:
                    neighbors.append(col * size + row - 1)
                if row < size - 1:
                    neighbors.append(col * size + row + 1)
                if col < size - 1:
                    neighbors.append((col + 1) * size + row)
                self.neighbor_points.append(tuple(neighbors))
        self.num_edges = sum(len(p) for p in self.neighbor_points)
        self.forder_trans = nn.ModuleList(
            nn.ModuleList(_fusion_conv(point_feat_channels) for _ in neighbors)
            for neighbors in self.neighbor_points)
        self.sorder_trans = nn.ModuleList(
            nn.ModuleList(_fusion_conv(point_feat_channels) for _ in neighbors)
            for neighbors in self.neighbor_points)
        self.loss_grid = MODELS.build(thaw(loss_grid))
        self.init_weights()

    def init_weights(self) -> None:
        """Apply ``init_cfg``."""
        initialize(self, self.init_cfg, load_pretrained=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """RoI features ``(N, in_channels, s, s)`` -> ``dict(fused, unfused)`` heatmap logits
        ``(N, grid_points, 2s, 2s)`` (``unfused`` is ``fused`` outside training)."""
        if x.shape[-1] != self.roi_feat_size or x.shape[-2] != self.roi_feat_size:
            raise ValueError(f"GridHead takes {self.roi_feat_size} x {self.roi_feat_size} RoI "
                             f"features (grid_head.roi_feat_size), got {tuple(x.shape[-2:])}: "
                             f"set grid_roi_extractor.roi_layer.output_size to match")
        x = self.convs(x)
        c = self.point_feat_channels
        parts = [x[:, i * c:(i + 1) * c] for i in range(self.grid_points)]
        first = []
        for i, neighbors in enumerate(self.neighbor_points):
            out = parts[i]
            for j, k in enumerate(neighbors):
                out = out + self.forder_trans[i][j](parts[k])
            first.append(out)
        second = []
        for i, neighbors in enumerate(self.neighbor_points):
            out = parts[i]
            for j, k in enumerate(neighbors):
                out = out + self.sorder_trans[i][j](first[k])
            second.append(out)
        fused = self._upsample(torch.cat(second, dim=1))
        unfused = self._upsample(x) if self.training else fused
        return dict(fused=fused, unfused=unfused)

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv2(F.relu(self.norm1(self.deconv1(x)), inplace=True))

    def calc_sub_regions(self) -> list[tuple[int, int, int, int]]:
        """``(x1, y1, x2, y2)`` of each point's half-size window of the whole map: the
        first column / row at 0, the last at half, the others around their place."""
        half = self.whole_map_size // 4 * 2

        def start(index: int) -> int:
            if index == 0:
                return 0
            if index == self.grid_size - 1:
                return half
            return max(int((index / (self.grid_size - 1) - 0.25) * self.whole_map_size), 0)

        regions = []
        for i in range(self.grid_points):
            x1, y1 = start(i // self.grid_size), start(i % self.grid_size)
            regions.append((x1, y1, x1 + half, y1 + half))
        return regions

    # ---- training ----------------------------------------------------------------------------

    def get_targets(self, sampling_results: Sequence[Any],
                    rcnn_train_cfg: Mapping[str, Any]) -> torch.Tensor:
        """``(P, grid_points, half, half)`` heatmap targets of the positives of all images: a
        disc of radius ``pos_radius`` around each ground-truth grid point, in its
        sub-region of the proposal's twice-enlarged map."""
        if "pos_radius" not in rcnn_train_cfg:
            raise ConfigError("train_cfg.rcnn.pos_radius is missing: Grid R-CNN draws its grid "
                              "point targets as discs of this radius (pos_radius=1 in the zoo)")
        device = sampling_results[0].pos_bboxes.device
        boxes = torch.cat([r.pos_bboxes for r in sampling_results]).detach().float().cpu()
        gts = torch.cat([r.pos_gt_bboxes for r in sampling_results]).detach().float().cpu()
        w0, h0 = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        x1, y1 = boxes[:, 0] - w0 / 2, boxes[:, 1] - h0 / 2
        x2, y2 = boxes[:, 2] + w0 / 2, boxes[:, 3] + h0 / 2
        widths, heights = (x2 - x1)[:, None], (y2 - y1)[:, None]
        num, size = len(boxes), self.whole_map_size
        targets = torch.zeros((num, self.grid_points, size, size), dtype=torch.float)
        last = self.grid_size - 1
        factor_x = torch.tensor([1 - (j // self.grid_size) / last
                                 for j in range(self.grid_points)], dtype=torch.float)
        factor_y = torch.tensor([1 - (j % self.grid_size) / last
                                 for j in range(self.grid_points)], dtype=torch.float)
        rest_x = torch.tensor([1 - (1 - (j // self.grid_size) / last)
                               for j in range(self.grid_points)], dtype=torch.float)
        rest_y = torch.tensor([1 - (1 - (j % self.grid_size) / last)
                               for j in range(self.grid_points)], dtype=torch.float)
        point_x = factor_x * gts[:, 0:1] + rest_x * gts[:, 2:3]  # (P, grid_points)
        point_y = factor_y * gts[:, 1:2] + rest_y * gts[:, 3:4]
        cx = ((point_x - x1[:, None]) / widths * size).trunc().long()
        cy = ((point_y - y1[:, None]) / heights * size).trunc().long()
        radius = int(rcnn_train_cfg["pos_radius"])
        offsets = [(dx, dy) for dx in range(-radius, radius + 1)
                   for dy in range(-radius, radius + 1) if dx * dx + dy * dy <= radius * radius]
        # proposals too small once enlarged get no targets
        keep = ((widths[:, 0] > self.grid_size) & (heights[:, 0] > self.grid_size))[:, None]
        rois = torch.arange(num)[:, None].expand(num, self.grid_points)
        points = torch.arange(self.grid_points)[None].expand(num, self.grid_points)
        for dx, dy in offsets:
            xs, ys = cx + dx, cy + dy
            inside = keep & (xs >= 0) & (xs < size) & (ys >= 0) & (ys < size)
            targets[rois[inside], points[inside], ys[inside], xs[inside]] = 1
        sub_targets = [targets[:, [i], y1_:y2_, x1_:x2_]
                       for i, (x1_, y1_, x2_, y2_) in enumerate(self.sub_regions)]
        return torch.cat(sub_targets, dim=1).to(device)

    def loss(self, grid_pred: Mapping[str, torch.Tensor], grid_targets: torch.Tensor
             ) -> dict[str, torch.Tensor]:
        """``loss_grid``: the loss of the fused heatmaps plus that of the unfused ones."""
        return dict(loss_grid=self.loss_grid(grid_pred["fused"], grid_targets)
                    + self.loss_grid(grid_pred["unfused"], grid_targets))

    # ---- testing -----------------------------------------------------------------------------

    def get_bboxes(self, det_bboxes: torch.Tensor, grid_pred: torch.Tensor,
                   img_meta: Mapping[str, Any] | None = None) -> torch.Tensor:
        """``(N, 5)`` detections (x1 y1 x2 y2 score) refined by their ``(N, grid_points, h,
        w)`` heatmap logits: each side the score-weighted mean of its points' positions.

        As MMDetection's, the boxes are not clipped to the image (its clipping acts on a copy),
        so ``img_meta`` is unused."""
        if len(det_bboxes) != len(grid_pred):
            raise ValueError(f"{len(det_bboxes)} detections for {len(grid_pred)} heatmaps")
        device = det_bboxes.device
        det_bboxes = det_bboxes.cpu()
        scores, boxes = det_bboxes[:, [4]], det_bboxes[:, :4]
        grid_pred = grid_pred.sigmoid().cpu()
        num, points, h, w = grid_pred.shape
        half = self.whole_map_size // 4 * 2
        if h != half or w != half or points != self.grid_points:
            raise ValueError(f"GridHead heatmaps must be ({self.grid_points}, {half}, {half}), "
                             f"got {tuple(grid_pred.shape[1:])}")
        pred_scores, position = grid_pred.view(num * points, h * w).max(dim=1)
        xs, ys = position % w, position // w
        offset_x = torch.tensor([r[0] for r in self.sub_regions]).repeat(num)
        offset_y = torch.tensor([r[1] for r in self.sub_regions]).repeat(num)
        xs, ys = (xs + offset_x).view(num, points), (ys + offset_y).view(num, points)
        pred_scores = pred_scores.view(num, points)
        widths = (boxes[:, 2] - boxes[:, 0]).unsqueeze(-1)
        heights = (boxes[:, 3] - boxes[:, 1]).unsqueeze(-1)
        x1, y1 = boxes[:, 0, None] - widths / 2, boxes[:, 1, None] - heights / 2
        abs_xs = (xs.float() + 0.5) / w * widths + x1
        abs_ys = (ys.float() + 0.5) / h * heights + y1
        size = self.grid_size
        sides = (([i for i in range(size)], abs_xs),  # left column
                 ([i * size for i in range(size)], abs_ys),  # top row
                 ([points - size + i for i in range(size)], abs_xs),  # right column
                 ([(i + 1) * size - 1 for i in range(size)], abs_ys))  # bottom row
        coords = [(values[:, inds] * pred_scores[:, inds]).sum(dim=1, keepdim=True)
                  / pred_scores[:, inds].sum(dim=1, keepdim=True) for inds, values in sides]
        return torch.cat([*coords, scores], dim=1).to(device)
