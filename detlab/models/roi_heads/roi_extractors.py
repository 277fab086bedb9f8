"""RoI feature extractors: a fixed-size feature map per region of interest, pooled from the
feature level that suits the region's size (MMDetection 2.28's ``SingleRoIExtractor``) or from
every level, summed or concatenated (``GenericRoIExtractor``, GRoIE).

RoIs are ``(K, 5)`` rows ``(image index, x1, y1, x2, y2)`` in input-image pixels (see
:func:`boxes_to_rois`). The pooling layers are :func:`torchvision.ops.roi_align` /
:func:`torchvision.ops.roi_pool`, configured as mmcv's ``RoIAlign`` / ``RoIPool`` are
(``roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0, aligned=True)``), and the
deformable RoI pooling of :mod:`~detlab.models.roi_heads.deform_roi_pool` (``DeformRoIPoolPack``,
``ModulatedDeformRoIPoolPack``: offset / mask fcs under mmcv's names).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import roi_align, roi_pool

from detlab.config import ConfigError, did_you_mean
from detlab.models.init import initialize
from detlab.models.roi_heads.deform_roi_pool import (
    DeformRoIPool,
    DeformRoIPoolPack,
    ModulatedDeformRoIPoolPack,
)
from detlab.models.utils import ConvModule, thaw
from detlab.registry import MODELS, UnknownTypeError


def boxes_to_rois(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image ``(n_i, 4+)`` xyxy boxes -> ``(sum n_i, 5)`` RoIs ``(image index, x1, y1, x2,
    y2)`` (MMDetection's ``bbox2roi``; extra columns such as scores are dropped)."""
    rois = []
    for index, image_boxes in enumerate(boxes):
        column = image_boxes.new_full((image_boxes.shape[0], 1), float(index))
        rois.append(torch.cat([column, image_boxes[:, :4]], dim=1) if image_boxes.numel()
                    else image_boxes.new_zeros((0, 5)))
    return torch.cat(rois, dim=0)


class RoIAlign(nn.Module):
    """mmcv's ``RoIAlign`` through :func:`torchvision.ops.roi_align` (same sampling points).

    Args:
        output_size: ``(h, w)`` (or one int) of each RoI's pooled map.
        spatial_scale: the feature map's scale relative to the input (1 / stride).
        sampling_ratio: sampling points per bin side (0: adaptive, ``ceil(roi size / bin)``).
        pool_mode: ``'avg'`` only (mmcv's ``'max'`` has no torchvision counterpart).
        aligned: shift the box by half a pixel (the aligned version of RoIAlign).
        use_torchvision: accepted for mmcv's configs; torchvision is always used.
    """

    def __init__(self, output_size: int | Sequence[int], spatial_scale: float = 1.0,
                 sampling_ratio: int = 0, pool_mode: str = "avg", aligned: bool = True,
                 use_torchvision: bool = False) -> None:
        super().__init__()
        if pool_mode != "avg":
            raise ConfigError(f"roi_layer RoIAlign pool_mode={pool_mode!r} is not supported; "
                              f"use pool_mode='avg' (torchvision's roi_align averages)")
        self.output_size = _pair(output_size)
        self.spatial_scale, self.sampling_ratio = float(spatial_scale), int(sampling_ratio)
        self.pool_mode, self.aligned = pool_mode, aligned

    def forward(self, feats: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` features and ``(K, 5)`` RoIs -> ``(K, C, h, w)``."""
        return roi_align(feats, rois.to(feats.dtype), self.output_size, self.spatial_scale,
                         self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


class RoIPool(nn.Module):
    """mmcv's ``RoIPool`` (max pooling over quantized bins) through
    :func:`torchvision.ops.roi_pool`.

    Args:
        output_size: ``(h, w)`` (or one int) of each RoI's pooled map.
        spatial_scale: the feature map's scale relative to the input (1 / stride).
    """

    def __init__(self, output_size: int | Sequence[int], spatial_scale: float = 1.0) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)

    def forward(self, feats: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` features and ``(K, 5)`` RoIs -> ``(K, C, h, w)``."""
        return roi_pool(feats, rois.to(feats.dtype), self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


ROI_LAYERS: dict[str, type[nn.Module]] = {
    "RoIAlign": RoIAlign, "RoIPool": RoIPool, "DeformRoIPool": DeformRoIPool,
    "DeformRoIPoolPack": DeformRoIPoolPack,
    "ModulatedDeformRoIPoolPack": ModulatedDeformRoIPoolPack}


def build_roi_layers(layer_cfg: Mapping[str, Any], featmap_strides: Sequence[int],
                     where: str) -> nn.ModuleList:
    """One pooling layer per feature level, at ``spatial_scale = 1 / stride``."""
    if not isinstance(layer_cfg, Mapping) or "type" not in layer_cfg:
        raise ConfigError(f"{where}.roi_layer must be a dict such as dict(type='RoIAlign', "
                          f"output_size=7, sampling_ratio=0), got {layer_cfg!r}")
    cfg = dict(layer_cfg)
    kind = cfg.pop("type")
    if kind not in ROI_LAYERS:
        raise UnknownTypeError(f"{where}.roi_layer.type {kind!r} is not supported."
                          f"{did_you_mean(str(kind), ROI_LAYERS)} Supported: "
                          f"{', '.join(ROI_LAYERS)}.")
    try:
        return nn.ModuleList([ROI_LAYERS[kind](spatial_scale=1 / s, **cfg)
                              for s in featmap_strides])
    except TypeError as err:
        raise ConfigError(f"{where}.roi_layer: {err}") from err


class BaseRoIExtractor(nn.Module):
    """What the RoI extractors share: one pooling layer per level, ``out_channels``,
    ``featmap_strides`` and MMDetection's ``roi_rescale``.

    Args:
        roi_layer: the pooling layer's config (``type`` RoIAlign or RoIPool, ``output_size``,
            ``sampling_ratio``, ``aligned``).
        out_channels: channels of the feature maps (and of the pooled features).
        featmap_strides: the stride of each level read (as many levels as strides).
        init_cfg: weight initialization (the extractors themselves have no weights).
    """

    def __init__(self, roi_layer: Mapping[str, Any], out_channels: int,
                 featmap_strides: Sequence[int],
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__()
        self.roi_layers = build_roi_layers(roi_layer, featmap_strides,
                                           f"roi_head's {type(self).__name__}")
        self.out_channels, self.featmap_strides = out_channels, list(featmap_strides)
        self.init_cfg = thaw(init_cfg)

    @property
    def num_inputs(self) -> int:
        """How many feature levels the extractor reads (the first ones)."""
        return len(self.featmap_strides)

    @property
    def output_size(self) -> tuple[int, int]:
        """``(h, w)`` of each RoI's pooled map."""
        return self.roi_layers[0].output_size

    def init_weights(self) -> None:
        """Apply ``init_cfg`` (submodules such as GenericRoIExtractor's convs)."""
        initialize(self, self.init_cfg)

    @staticmethod
    def roi_rescale(rois: torch.Tensor, scale_factor: float) -> torch.Tensor:
        """RoIs scaled by ``scale_factor`` about their centers."""
        center = (rois[:, 1:3] + rois[:, 3:5]) * 0.5
        half = (rois[:, 3:5] - rois[:, 1:3]) * scale_factor * 0.5
        return torch.cat([rois[:, :1], center - half, center + half], dim=1)

    def _empty(self, feats: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        return feats[0].new_zeros((rois.shape[0], self.out_channels, *self.output_size))


@MODELS.register_module()
class SingleRoIExtractor(BaseRoIExtractor):
    """Pools each RoI from one level, chosen by its size (FPN's level mapping): level
    ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))`` clamped to the levels read, so RoIs
    under ``2 * finest_scale`` pixels go to the first level, each doubling one level up.

    Args:
        roi_layer, out_channels, featmap_strides, init_cfg: see :class:`BaseRoIExtractor`.
        finest_scale: the scale of the first level's RoIs (MMDetection's 56).
    """

    def __init__(self, roi_layer: Mapping[str, Any], out_channels: int,
                 featmap_strides: Sequence[int], finest_scale: int = 56,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(roi_layer, out_channels, featmap_strides, init_cfg)
        self.finest_scale = finest_scale

    def map_roi_levels(self, rois: torch.Tensor, num_levels: int) -> torch.Tensor:
        """``(K,)`` level index of each of the ``(K, 5)`` RoIs."""
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return levels.clamp(min=0, max=num_levels - 1).long()

    def forward(self, feats: Sequence[torch.Tensor], rois: torch.Tensor,
                roi_scale_factor: float | None = None) -> torch.Tensor:
        """The first :attr:`num_inputs` feature maps ``(B, C, H_l, W_l)`` and ``(K, 5)`` RoIs
        -> ``(K, C, h, w)`` pooled features (RoIs optionally enlarged by
        ``roi_scale_factor`` after their level is chosen)."""
        num_levels = len(feats)
        out = self._empty(feats, rois)
        if num_levels == 1:
            return out if len(rois) == 0 else self.roi_layers[0](feats[0], rois)
        levels = self.map_roi_levels(rois, num_levels)
        if roi_scale_factor is not None:
            rois = self.roi_rescale(rois, roi_scale_factor)
        for level in range(num_levels):
            inds = torch.nonzero(levels == level).squeeze(1)
            if inds.numel() > 0:
                out[inds] = self.roi_layers[level](feats[level], rois[inds])
            else:
                # keeps every level in the graph (distributed training needs each parameter
                # used), as MMDetection does
                out = out + feats[level].sum() * 0.0
        return out

    def extra_repr(self) -> str:
        return f"featmap_strides={self.featmap_strides}, finest_scale={self.finest_scale}"


def build_plugin(cfg: Mapping[str, Any], where: str) -> nn.Module:
    """A GenericRoIExtractor's ``pre_cfg`` / ``post_cfg`` module: ``ConvModule`` (mmcv's
    arguments), or any registered module type (e.g. an attention block)."""
    if not isinstance(cfg, Mapping) or "type" not in cfg:
        raise ConfigError(f"{where} must be a dict with a type, e.g. dict(type='ConvModule', "
                          f"in_channels=256, out_channels=256, kernel_size=5, padding=2), got "
                          f"{cfg!r}")
    args = dict(cfg)
    if args["type"] == "ConvModule":
        args.pop("type")
        try:
            return ConvModule(**args)
        except TypeError as err:
            raise ConfigError(f"{where}: {err}") from err
    return MODELS.build(args)


@MODELS.register_module()
class GenericRoIExtractor(BaseRoIExtractor):
    """Pools each RoI from every level (GRoIE, Rossi et al., 2020): each level's pooled map,
    through the optional ``pre_cfg`` module (shared by the levels), is summed into the output
    (``aggregation='sum'``) or written into its slice of the channels (``'concat'``); the
    optional ``post_cfg`` module then runs on the result.

    Args:
        aggregation: ``'sum'`` or ``'concat'`` (``out_channels`` is then the levels' total).
        pre_cfg, post_cfg: module configs (``ConvModule`` or a registered type), or None.
        roi_layer, out_channels, featmap_strides, init_cfg: see :class:`BaseRoIExtractor`.
    """

    def __init__(self, roi_layer: Mapping[str, Any], out_channels: int,
                 featmap_strides: Sequence[int], aggregation: str = "sum",
                 pre_cfg: Mapping | None = None, post_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(roi_layer, out_channels, featmap_strides, init_cfg)
        if aggregation not in ("sum", "concat"):
            raise ConfigError(f"GenericRoIExtractor aggregation must be 'sum' or 'concat', got "
                              f"{aggregation!r}")
        self.aggregation = aggregation
        self.with_post, self.with_pre = post_cfg is not None, pre_cfg is not None
        if post_cfg is not None:  # registered first, as in MMDetection's state_dict
            self.post_module = build_plugin(post_cfg, "bbox_roi_extractor.post_cfg")
        if pre_cfg is not None:
            self.pre_module = build_plugin(pre_cfg, "bbox_roi_extractor.pre_cfg")

    def forward(self, feats: Sequence[torch.Tensor], rois: torch.Tensor,
                roi_scale_factor: float | None = None) -> torch.Tensor:
        """The first :attr:`num_inputs` feature maps and ``(K, 5)`` RoIs -> ``(K,
        out_channels, h, w)`` features aggregated over the levels."""
        if len(feats) == 1:
            return self.roi_layers[0](feats[0], rois)
        out = self._empty(feats, rois)
        if out.shape[0] == 0:
            return out
        if roi_scale_factor is not None:
            rois = self.roi_rescale(rois, roi_scale_factor)
        start = 0
        for level, feat in enumerate(feats):
            pooled = self.roi_layers[level](feat, rois)
            end = start + pooled.shape[1]
            if self.with_pre:
                pooled = self.pre_module(pooled)
            if self.aggregation == "sum":
                out = out + pooled
            else:
                out[:, start:end] = pooled
            start = end
        if self.aggregation == "concat" and start != self.out_channels:
            raise ConfigError(f"GenericRoIExtractor(aggregation='concat') gives {start} "
                              f"channels from {len(feats)} levels, but out_channels="
                              f"{self.out_channels}; set out_channels={start}")
        return self.post_module(out) if self.with_post else out

    def extra_repr(self) -> str:
        return f"featmap_strides={self.featmap_strides}, aggregation={self.aggregation!r}"
