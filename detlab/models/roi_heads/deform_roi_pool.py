"""Deformable RoI pooling (Dai et al., 2017; DCNv2's modulated version, Zhu et al., 2019) in
plain PyTorch, as mmcv 1.x's ``DeformRoIPool`` / ``DeformRoIPoolPack`` /
``ModulatedDeformRoIPoolPack`` compute it (torchvision has no such op).

The pooling is RoIAlign's (aligned: boxes shifted by half a pixel; ``sampling_ratio`` points
per bin side, ``ceil(roi size / bins)`` when 0; bilinear samples averaged), each bin's start
moved by ``gamma * roi size * offset``. Without offsets it is
``torchvision.ops.roi_align(..., aligned=True)``. The packs predict the offsets (and, modulated,
a sigmoid weight per bin) from a first, undeformed pooling with fcs that start at zero, so an
untrained pack pools as RoIAlign does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.utils import _pair


def _bilinear(rows: torch.Tensor, batch: torch.Tensor, height: int, width: int,
              y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mmcv's ``bilinear_interpolate`` at points ``y``, ``x`` ``(K, h, w)`` of each RoI's image
    (``batch`` ``(K,)``) from ``rows`` ``(B * H * W, C)`` -> ``(K, C, h, w)``: 0 outside
    ``[-1, H] x [-1, W]``, coordinates clamped to the map."""
    outside = (y < -1.0) | (y > height) | (x < -1.0) | (x > width)
    y, x = y.clamp(min=0), x.clamp(min=0)
    y_low, x_low = y.long(), x.long()
    y_edge, x_edge = y_low >= height - 1, x_low >= width - 1
    y_low, x_low = y_low.clamp(max=height - 1), x_low.clamp(max=width - 1)
    y = torch.where(y_edge, y_low.to(y.dtype), y)
    x = torch.where(x_edge, x_low.to(x.dtype), x)
    y_high = torch.where(y_edge, y_low, y_low + 1)
    x_high = torch.where(x_edge, x_low, x_low + 1)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    base = (batch * height * width)[:, None, None]

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        index = (base + yy * width + xx).reshape(-1)
        return rows.index_select(0, index).reshape(*yy.shape, -1).permute(0, 3, 1, 2)

    weights = [(hy * hx), (hy * lx), (ly * hx), (ly * lx)]
    val = (weights[0][:, None] * at(y_low, x_low) + weights[1][:, None] * at(y_low, x_high)
           + weights[2][:, None] * at(y_high, x_low) + weights[3][:, None] * at(y_high, x_high))
    return torch.where(outside[:, None], torch.zeros((), dtype=val.dtype), val)


def deform_roi_pool(feats: torch.Tensor, rois: torch.Tensor, offset: torch.Tensor | None,
                    output_size: Sequence[int], spatial_scale: float = 1.0,
                    sampling_ratio: int = 0, gamma: float = 0.1) -> torch.Tensor:
    """``(B, C, H, W)`` features, ``(K, 5)`` RoIs and ``(K, 2, h, w)`` bin offsets (x then y,
    in units of the RoI's size; None: no offset) -> ``(K, C, h, w)`` pooled features."""
    out_h, out_w = _pair(output_size)
    num, (_, channels, height, width) = rois.shape[0], feats.shape
    if num == 0:
        return feats.new_zeros((0, channels, out_h, out_w))
    rois = rois.to(feats.dtype)
    batch = rois[:, 0].long()
    start_w = rois[:, 1] * spatial_scale - 0.5
    start_h = rois[:, 2] * spatial_scale - 0.5
    roi_w = rois[:, 3] * spatial_scale - 0.5 - start_w
    roi_h = rois[:, 4] * spatial_scale - 0.5 - start_h
    bin_h, bin_w = roi_h / out_h, roi_w / out_w  # (K,)
    if sampling_ratio > 0:
        grid_h = torch.full((num,), sampling_ratio, dtype=torch.long, device=feats.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / out_h).long()
        grid_w = torch.ceil(roi_w / out_w).long()
    ph = torch.arange(out_h, device=feats.device, dtype=feats.dtype)[None, :, None]
    pw = torch.arange(out_w, device=feats.device, dtype=feats.dtype)[None, None, :]
    start_h = start_h[:, None, None].expand(num, out_h, out_w)
    start_w = start_w[:, None, None].expand(num, out_h, out_w)
    if offset is not None:
        start_w = start_w + gamma * roi_w[:, None, None] * offset[:, 0]
        start_h = start_h + gamma * roi_h[:, None, None] * offset[:, 1]
    rows = feats.permute(0, 2, 3, 1).reshape(-1, channels)
    count = (grid_h * grid_w).clamp(min=1).to(feats.dtype)
    total = feats.new_zeros((num, channels, out_h, out_w))
    bh, bw = bin_h[:, None, None], bin_w[:, None, None]
    gh = grid_h.to(feats.dtype)[:, None, None]
    gw = grid_w.to(feats.dtype)[:, None, None]
    for iy in range(int(grid_h.max())):
        y = start_h + ph * bh + (iy + 0.5) * bh / gh
        for ix in range(int(grid_w.max())):
            x = start_w + pw * bw + (ix + 0.5) * bw / gw
            used = (iy < grid_h) & (ix < grid_w)  # RoIs with this sample point
            if not bool(used.any()):
                continue
            val = _bilinear(rows, batch, height, width, y, x)
            total = total + torch.where(used[:, None, None, None], val,
                                        torch.zeros((), dtype=val.dtype))
    return total / count[:, None, None, None]


class DeformRoIPool(nn.Module):
    """Deformable RoI pooling with given offsets (mmcv's ``DeformRoIPool``).

    Args:
        output_size: ``(h, w)`` (or one int) of each RoI's pooled map.
        spatial_scale: the feature map's scale relative to the input (1 / stride).
        sampling_ratio: sampling points per bin side (0: adaptive).
        gamma: the offsets' scale (a bin moves by ``gamma * roi size * offset``).
    """

    def __init__(self, output_size: int | Sequence[int], spatial_scale: float = 1.0,
                 sampling_ratio: int = 0, gamma: float = 0.1) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale, self.sampling_ratio = float(spatial_scale), int(sampling_ratio)
        self.gamma = float(gamma)

    def pool(self, feats: torch.Tensor, rois: torch.Tensor,
             offset: torch.Tensor | None = None) -> torch.Tensor:
        return deform_roi_pool(feats, rois, offset, self.output_size, self.spatial_scale,
                               self.sampling_ratio, self.gamma)

    def forward(self, feats: torch.Tensor, rois: torch.Tensor,
                offset: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` features, ``(K, 5)`` RoIs, ``(K, 2, h, w)`` offsets or None ->
        ``(K, C, h, w)``."""
        return self.pool(feats, rois, offset)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, gamma={self.gamma}")


def _offset_fc(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_features))


class DeformRoIPoolPack(DeformRoIPool):
    """Deformable RoI pooling that predicts its offsets: ``offset_fc`` (three fcs, the last
    zero-initialized) on a first undeformed pooling (mmcv's ``DeformRoIPoolPack``).

    Args:
        output_size, spatial_scale, sampling_ratio, gamma: see :class:`DeformRoIPool`.
        output_channels: channels of the features (the fcs read ``h * w * C`` values).
        deform_fc_channels: width of the hidden fcs.
    """

    def __init__(self, output_size: int | Sequence[int], output_channels: int,
                 deform_fc_channels: int = 1024, spatial_scale: float = 1.0,
                 sampling_ratio: int = 0, gamma: float = 0.1) -> None:
        super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
        self.output_channels, self.deform_fc_channels = output_channels, deform_fc_channels
        area = self.output_size[0] * self.output_size[1]
        self.offset_fc = _offset_fc(area * output_channels, deform_fc_channels, area * 2)
        nn.init.zeros_(self.offset_fc[-1].weight)
        nn.init.zeros_(self.offset_fc[-1].bias)

    def _check(self, feats: torch.Tensor) -> None:
        if feats.shape[1] != self.output_channels:
            raise ValueError(f"{type(self).__name__} has output_channels="
                             f"{self.output_channels} but the features have {feats.shape[1]} "
                             f"channels; set roi_layer.output_channels to the extractor's "
                             f"out_channels")

    def forward(self, feats: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``(B, C, H, W)`` features and ``(K, 5)`` RoIs -> ``(K, C, h, w)``."""
        self._check(feats)
        plain = self.pool(feats, rois)
        offset = self.offset_fc(plain.flatten(1)).view(rois.shape[0], 2, *self.output_size)
        return self.pool(feats, rois, offset)


class ModulatedDeformRoIPoolPack(DeformRoIPoolPack):
    """:class:`DeformRoIPoolPack` whose bins are also weighted by ``mask_fc`` (two fcs and a
    sigmoid, the last fc zero-initialized: weights 0.5 at first), as mmcv's
    ``ModulatedDeformRoIPoolPack``. Arguments as :class:`DeformRoIPoolPack`."""

    def __init__(self, output_size: int | Sequence[int], output_channels: int,
                 deform_fc_channels: int = 1024, spatial_scale: float = 1.0,
                 sampling_ratio: int = 0, gamma: float = 0.1) -> None:
        super().__init__(output_size, output_channels, deform_fc_channels, spatial_scale,
                         sampling_ratio, gamma)
        area = self.output_size[0] * self.output_size[1]
        self.mask_fc = nn.Sequential(nn.Linear(area * output_channels, deform_fc_channels),
                                     nn.ReLU(inplace=True),
                                     nn.Linear(deform_fc_channels, area), nn.Sigmoid())
        nn.init.zeros_(self.mask_fc[2].weight)
        nn.init.zeros_(self.mask_fc[2].bias)

    def forward(self, feats: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``(B, C, H, W)`` features and ``(K, 5)`` RoIs -> ``(K, C, h, w)``."""
        self._check(feats)
        plain = self.pool(feats, rois).flatten(1)
        offset = self.offset_fc(plain).view(rois.shape[0], 2, *self.output_size)
        mask = self.mask_fc(plain).view(rois.shape[0], 1, *self.output_size)
        return self.pool(feats, rois, offset) * mask
