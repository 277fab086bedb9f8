"""Point sampling for PointRend (mmcv 1.7's ``point_sample`` family and MMDetection 2.28's
uncertainty sampling), in plain PyTorch.

Coordinates: a point *relative to a RoI* is ``(x, y)`` in ``[0, 1] x [0, 1]`` of the box; a
point *relative to an image* (or a feature map) is in ``[0, 1]`` of its width and height, and
:func:`point_sample` reads a map there bilinearly (``grid_sample``, zeros outside).

- :func:`point_sample`, :func:`rel_roi_point_to_rel_img_point`, :func:`generate_grid`;
- :class:`SimpleRoIAlign` -- RoI features as a regular grid of sampled points (PointRend's
  ``mask_roi_extractor`` layer, ``roi_layer=dict(type='SimpleRoIAlign', output_size=14)``);
- :func:`get_uncertainty` and :func:`get_uncertain_point_coords_with_randomness` -- the points
  whose logit of the instance's class is closest to 0, mixed with random ones (training).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detlab.models.roi_heads.roi_extractors import ROI_LAYERS


def point_sample(features: torch.Tensor, points: torch.Tensor,
                 align_corners: bool = False) -> torch.Tensor:
    """``(N, C, H, W)`` maps read at ``(N, P, 2)`` (or ``(N, h, w, 2)``) points relative to
    the maps -> ``(N, C, P)`` (or ``(N, C, h, w)``)."""
    flat = points.dim() == 3
    if flat:
        points = points.unsqueeze(2)
    out = F.grid_sample(features, points * 2.0 - 1.0, align_corners=align_corners)
    return out.squeeze(3) if flat else out


def rel_roi_point_to_rel_img_point(rois: torch.Tensor, rel_roi_points: torch.Tensor,
                                   size: torch.Tensor | tuple[int, int],
                                   spatial_scale: float = 1.0) -> torch.Tensor:
    """``(N, P, 2)`` points relative to ``(N, 4)`` boxes or ``(N, 5)`` RoIs -> relative to an
    image or map of ``size`` (a ``(h, w)`` tuple or an ``(N, C, h, w)`` tensor) whose pixels
    are ``1 / spatial_scale`` image pixels. No gradient flows to the boxes."""
    with torch.no_grad():
        boxes = rois[:, 1:] if rois.size(1) == 5 else rois
        xs = rel_roi_points[:, :, 0] * (boxes[:, None, 2] - boxes[:, None, 0])
        ys = rel_roi_points[:, :, 1] * (boxes[:, None, 3] - boxes[:, None, 1])
        xs = xs + boxes[:, None, 0]
        ys = ys + boxes[:, None, 1]
        absolute = torch.stack([xs, ys], dim=2)
    if isinstance(size, torch.Tensor):
        height, width = size.shape[2:]
    else:
        height, width = size
    scale = torch.tensor([width, height], dtype=torch.float,
                         device=absolute.device).view(1, 1, 2)
    return absolute / scale * spatial_scale


def generate_grid(num_grid: int, size: Sequence[int], device: torch.device | str
                  ) -> torch.Tensor:
    """``(num_grid, h * w, 2)`` the centers of an ``h x w`` grid of cells in ``[0, 1]^2``."""
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], device=device)
    grid = F.affine_grid(theta, torch.Size((1, 1, *size)), align_corners=False)
    return ((grid + 1.0) / 2.0).view(1, -1, 2).expand(num_grid, -1, -1)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class SimpleRoIAlign(nn.Module):
    """mmcv's ``SimpleRoIAlign``: each RoI's ``output_size`` grid of cell centers read from
    the map by :func:`point_sample` (one bilinear sample per cell).

    Args:
        output_size: ``h`` and ``w`` of the output (an int for a square).
        spatial_scale: map pixels per image pixel (``1 / stride``).
        aligned: False reads with ``align_corners=True`` (MMDetection's legacy sampling).
    """

    def __init__(self, output_size: int | Sequence[int], spatial_scale: float,
                 aligned: bool = True) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.aligned = aligned

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` maps and ``(K, 5)`` RoIs (image index first, in image order) ->
        ``(K, C, h, w)``."""
        num_rois, channels = rois.size(0), features.size(1)
        if num_rois == 0:
            return features.new_zeros((0, channels, *self.output_size))
        grid = generate_grid(num_rois, self.output_size, rois.device)
        parts = []
        for index in range(features.size(0)):
            chosen = rois[:, 0].long() == index
            if chosen.any():
                feat = features[index].unsqueeze(0)
                points = rel_roi_point_to_rel_img_point(rois[chosen], grid[chosen], feat,
                                                        self.spatial_scale).unsqueeze(0)
                sampled = point_sample(feat, points, align_corners=not self.aligned)
                parts.append(sampled.squeeze(0).transpose(0, 1))
        return torch.cat(parts, dim=0).reshape(num_rois, channels, *self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


# RoI extractors build it from roi_layer=dict(type='SimpleRoIAlign', ...)
ROI_LAYERS.setdefault("SimpleRoIAlign", SimpleRoIAlign)


def get_uncertainty(mask_pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(N, 1, ...)`` uncertainty of mask logits ``(N, C, ...)``: minus the absolute logit of
    each instance's class (of the only channel when ``C == 1``); highest nearest 0."""
    if mask_pred.shape[1] == 1:
        logits = mask_pred.clone()
    else:
        index = torch.arange(mask_pred.shape[0], device=mask_pred.device)
        logits = mask_pred[index, labels].unsqueeze(1)
    return -torch.abs(logits)


def get_uncertain_point_coords_with_randomness(mask_pred: torch.Tensor, labels: torch.Tensor,
                                               num_points: int, oversample_ratio: float,
                                               importance_sample_ratio: float
                                               ) -> torch.Tensor:
    """``(N, num_points, 2)`` points relative to the RoIs: of ``num_points *
    oversample_ratio`` random points, the ``importance_sample_ratio`` share most uncertain
    under ``mask_pred`` ``(N, C, h, w)`` for ``labels``, then random ones (draws from torch's
    generator in MMDetection's order)."""
    num = mask_pred.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(num, num_sampled, 2, device=mask_pred.device)
    uncertainties = get_uncertainty(point_sample(mask_pred, coords), labels)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    index = torch.topk(uncertainties[:, 0, :], k=num_uncertain, dim=1)[1]
    index = index + num_sampled * torch.arange(num, dtype=torch.long,
                                               device=mask_pred.device)[:, None]
    coords = coords.view(-1, 2)[index.view(-1), :].view(num, num_uncertain, 2)
    if num_random > 0:
        coords = torch.cat((coords, torch.rand(num, num_random, 2, device=mask_pred.device)),
                           dim=1)
    return coords
