"""Prior generators (MMDetection 2.x's): anchors (``AnchorGenerator`` and its SSD, YOLO and
legacy variants) and points (``MlvlPointGenerator``).

They share one interface: ``num_levels``, ``num_base_priors`` (priors per location, per level),
``strides`` (``(stride_w, stride_h)`` per level), ``grid_priors(featmap_sizes, dtype, device,
with_stride=False)`` and ``valid_flags(featmap_sizes, pad_shape, device)``.

Anchors are ``(N, 4)`` xyxy in input-image pixels; points are ``(N, 2)`` ``(x, y)``, or ``(N, 4)``
``(x, y, stride_w, stride_h)``. On each level priors are ordered location-major (row by row,
then column) and, at each location, base prior by base prior -- the order of a head's
``(B, A*K, H, W)`` output after ``permute(0, 2, 3, 1).reshape(B, H*W*A, K)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from detlab.config import ConfigError
from detlab.registry import MODELS


def _pair(value: int | float | Sequence) -> tuple:
    if isinstance(value, (int, float)):
        return (value, value)
    if len(value) != 2:
        raise ConfigError(f"a stride or size must be a number or a (w, h) pair, got {value!r}")
    return tuple(value)


def base_anchors(base_size: float, scales: torch.Tensor, ratios: torch.Tensor,
                 center: Sequence[float], scale_major: bool = True) -> torch.Tensor:
    """``(len(ratios) * len(scales), 4)`` xyxy anchors centered at ``center`` ``(x, y)``: width
    ``base_size * scale / sqrt(ratio)``, height ``base_size * scale * sqrt(ratio)``; ratio by
    ratio with scales inside (``scale_major``) or the reverse."""
    cx, cy = center
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    if scale_major:
        ws = (base_size * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (base_size * h_ratios[:, None] * scales[None, :]).reshape(-1)
    else:
        ws = (base_size * scales[:, None] * w_ratios[None, :]).reshape(-1)
        hs = (base_size * scales[:, None] * h_ratios[None, :]).reshape(-1)
    return torch.stack([cx - 0.5 * ws, cy - 0.5 * hs, cx + 0.5 * ws, cy + 0.5 * hs], dim=-1)


def legacy_base_anchors(base_size: float, scales: torch.Tensor, ratios: torch.Tensor,
                        center: Sequence[float], scale_major: bool = True) -> torch.Tensor:
    """:func:`base_anchors` in MMDetection 1.x's pixel convention: a box of width ``w`` spans
    ``w - 1`` (``x2 - x1 + 1 == w``), and corners are rounded to whole pixels."""
    cx, cy = center
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    if scale_major:
        ws = (base_size * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (base_size * h_ratios[:, None] * scales[None, :]).reshape(-1)
    else:
        ws = (base_size * scales[:, None] * w_ratios[None, :]).reshape(-1)
        hs = (base_size * scales[:, None] * h_ratios[None, :]).reshape(-1)
    return torch.stack([cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1),
                        cy + 0.5 * (hs - 1)], dim=-1).round()


def _center(centers: Sequence[Sequence[float]] | None, center_offset: float, base_size: float,
            level: int) -> tuple[float, float]:
    """The base anchors' center of ``level``: given, or ``center_offset * base_size``."""
    if centers is not None:
        return tuple(centers[level])
    return (center_offset * base_size, center_offset * base_size)


def _legacy_center(centers: Sequence[Sequence[float]] | None, center_offset: float,
                   base_size: float, level: int) -> tuple[float, float]:
    """The legacy convention's center: given, or ``center_offset * (base_size - 1)``."""
    if centers is not None:
        return tuple(centers[level])
    return (center_offset * (base_size - 1), center_offset * (base_size - 1))


@MODELS.register_module()
class AnchorGenerator:
    """Anchors of every level of a feature pyramid.

    Args:
        strides: stride of each level, a number or ``(stride_w, stride_h)``.
        ratios: height / width ratios of the anchors.
        scales: anchor scales, relative to the base size; or give ``octave_base_scale`` and
            ``scales_per_octave`` (scales ``octave_base_scale * 2**(i / scales_per_octave)``).
        base_sizes: base size of each level (default: the smaller stride of the level).
        scale_major: order the base anchors ratio by ratio, scales inside (True) or the reverse.
        octave_base_scale, scales_per_octave: see ``scales``.
        centers: the ``(x, y)`` center of the base anchors of each level (default: the grid
            cell's corner plus ``center_offset`` times the base size).
        center_offset: offset of the center, in units of the base size (0 or 0.5 usually).
    """

    def __init__(self, strides: Sequence[int | Sequence[int]], ratios: Sequence[float],
                 scales: Sequence[float] | None = None, base_sizes: Sequence[int] | None = None,
                 scale_major: bool = True, octave_base_scale: float | None = None,
                 scales_per_octave: int | None = None,
                 centers: Sequence[Sequence[float]] | None = None,
                 center_offset: float = 0.0) -> None:
        self.strides = [_pair(s) for s in strides]
        self.base_sizes = [min(s) for s in self.strides] if base_sizes is None \
            else list(base_sizes)
        if len(self.base_sizes) != len(self.strides):
            raise ConfigError(f"anchor_generator base_sizes has {len(self.base_sizes)} entries "
                              f"but strides has {len(self.strides)}")
        if centers is not None and len(centers) != len(self.strides):
            raise ConfigError(f"anchor_generator centers has {len(centers)} entries but strides "
                              f"has {len(self.strides)}")
        if not 0 <= center_offset <= 1:
            raise ConfigError(f"anchor_generator center_offset must be in [0, 1], got "
                              f"{center_offset}")
        if centers is not None and center_offset != 0:
            raise ConfigError("anchor_generator: set centers or center_offset, not both")
        self.scales = self._scales(scales, octave_base_scale, scales_per_octave)
        self.ratios = torch.tensor([float(r) for r in ratios])
        self.octave_base_scale, self.scales_per_octave = octave_base_scale, scales_per_octave
        self.scale_major, self.centers, self.center_offset = scale_major, centers, center_offset
        self.base_anchors = [base_anchors(size, self.scales, self.ratios,
                                          _center(centers, center_offset, size, i), scale_major)
                             for i, size in enumerate(self.base_sizes)]

    @staticmethod
    def _scales(scales: Sequence[float] | None, octave_base_scale: float | None,
                scales_per_octave: int | None) -> torch.Tensor:
        octave = octave_base_scale is not None and scales_per_octave is not None
        if (scales is not None) == octave or (not octave and (
                octave_base_scale is not None or scales_per_octave is not None)):
            raise ConfigError("anchor_generator needs either scales, or octave_base_scale "
                              "together with scales_per_octave (not both)")
        if scales is not None:
            return torch.tensor([float(s) for s in scales])
        return torch.tensor([octave_base_scale * 2 ** (i / scales_per_octave)
                             for i in range(scales_per_octave)], dtype=torch.float32)

    @property
    def num_levels(self) -> int:
        """Number of pyramid levels."""
        return len(self.strides)

    @property
    def num_base_priors(self) -> list[int]:
        """Anchors per location on each level."""
        return [len(anchors) for anchors in self.base_anchors]

    num_base_anchors = num_base_priors

    def base_anchors_per_level(self, base_size: float, level: int) -> torch.Tensor:
        """``(len(ratios) * len(scales), 4)`` xyxy anchors of one location of ``level``."""
        center = _center(self.centers, self.center_offset, base_size, level)
        return base_anchors(base_size, self.scales, self.ratios, center, self.scale_major)

    def grid_priors_per_level(self, featmap_size: Sequence[int], level: int,
                              dtype: torch.dtype = torch.float32,
                              device: torch.device | str = "cpu") -> torch.Tensor:
        """``(H * W * A, 4)`` xyxy anchors of a ``(H, W)`` feature map of ``level``."""
        feat_h, feat_w = int(featmap_size[0]), int(featmap_size[1])
        stride_w, stride_h = self.strides[level]
        shift_x = torch.arange(feat_w, device=device).to(dtype) * stride_w
        shift_y = torch.arange(feat_h, device=device).to(dtype) * stride_h
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")  # (H, W): rows first
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        base = self.base_anchors[level].to(device=device, dtype=dtype)
        return (base[None] + shifts).reshape(-1, 4)

    def _check_sizes(self, featmap_sizes: Sequence[Sequence[int]]) -> None:
        _check_level_count(self.num_levels, self.strides, featmap_sizes)

    def grid_priors(self, featmap_sizes: Sequence[Sequence[int]],
                    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                    with_stride: bool = False) -> list[torch.Tensor]:
        """Anchors of every level: a list of ``(H_l * W_l * A_l, 4)`` xyxy tensors.

        ``with_stride`` is part of the prior generators' shared signature; anchors carry no
        stride column, so it must stay False.
        """
        if with_stride:
            raise ValueError(f"{type(self).__name__} makes xyxy anchors, which have no stride "
                             f"column; with_stride=True is for MlvlPointGenerator")
        self._check_sizes(featmap_sizes)
        return [self.grid_priors_per_level(size, i, dtype, device)
                for i, size in enumerate(featmap_sizes)]

    grid_anchors = grid_priors

    def sparse_priors(self, prior_idxs: torch.Tensor, featmap_size: Sequence[int], level: int,
                      dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> torch.Tensor:
        """``(K, 4)`` xyxy anchors at the flat indices ``prior_idxs`` ``(K,)`` of a ``(H, W)``
        feature map of ``level`` (the rows of :meth:`grid_priors_per_level`)."""
        height, width = int(featmap_size[0]), int(featmap_size[1])
        num_base = self.num_base_priors[level]
        stride_w, stride_h = self.strides[level]
        base_id = prior_idxs % num_base
        x = (prior_idxs // num_base) % width * stride_w
        y = (prior_idxs // width // num_base) % height * stride_h
        shifts = torch.stack([x, y, x, y], 1).to(dtype).to(device)
        return shifts + self.base_anchors[level][base_id, :].to(device)

    def valid_flags(self, featmap_sizes: Sequence[Sequence[int]], pad_shape: Sequence[int],
                    device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Per level, ``(H_l * W_l * A_l,)`` bool: the anchor's grid cell lies inside the
        image's padded area ``pad_shape`` ``(h, w, ...)`` (a batch may be padded further)."""
        self._check_sizes(featmap_sizes)
        h, w = pad_shape[0], pad_shape[1]
        flags = []
        for level, (feat_h, feat_w) in enumerate(featmap_sizes):
            stride_w, stride_h = self.strides[level]
            valid_h = min(math.ceil(h / stride_h), int(feat_h))
            valid_w = min(math.ceil(w / stride_w), int(feat_w))
            flags.append(self.valid_flags_per_level((feat_h, feat_w), (valid_h, valid_w),
                                                    self.num_base_priors[level], device))
        return flags

    @staticmethod
    def valid_flags_per_level(featmap_size: Sequence[int], valid_size: Sequence[int],
                              num_base_anchors: int,
                              device: torch.device | str = "cpu") -> torch.Tensor:
        """``(H * W * A,)`` bool: the first ``valid_size`` rows/columns of the grid are valid."""
        feat_h, feat_w = int(featmap_size[0]), int(featmap_size[1])
        valid_y = torch.arange(feat_h, device=device) < valid_size[0]
        valid_x = torch.arange(feat_w, device=device) < valid_size[1]
        valid = (valid_y[:, None] & valid_x[None, :]).reshape(-1)
        return valid[:, None].expand(-1, num_base_anchors).reshape(-1)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(strides={self.strides}, "
                f"ratios={self.ratios.tolist()}, scales={self.scales.tolist()}, "
                f"base_sizes={self.base_sizes}, scale_major={self.scale_major}, "
                f"center_offset={self.center_offset})")


@MODELS.register_module()
class LegacyAnchorGenerator(AnchorGenerator):
    """:class:`AnchorGenerator` in MMDetection 1.x's pixel convention, for its checkpoints.

    A box of width ``w`` spans ``w - 1`` pixels' distance, corners are rounded, and the
    ``center_offset`` is taken of ``base_size - 1``. Use it with ``LegacyDeltaXYWHBBoxCoder``.
    Same arguments as :class:`AnchorGenerator`.
    """

    def __init__(self, strides: Sequence[int | Sequence[int]], ratios: Sequence[float],
                 scales: Sequence[float] | None = None, base_sizes: Sequence[int] | None = None,
                 scale_major: bool = True, octave_base_scale: float | None = None,
                 scales_per_octave: int | None = None,
                 centers: Sequence[Sequence[float]] | None = None,
                 center_offset: float = 0.0) -> None:
        super().__init__(strides, ratios, scales, base_sizes, scale_major, octave_base_scale,
                         scales_per_octave, centers, center_offset)
        self.base_anchors = [
            legacy_base_anchors(size, self.scales, self.ratios,
                                _legacy_center(centers, center_offset, size, i), scale_major)
            for i, size in enumerate(self.base_sizes)]

    def base_anchors_per_level(self, base_size: float, level: int) -> torch.Tensor:
        """``(len(ratios) * len(scales), 4)`` legacy xyxy anchors of one location."""
        center = _legacy_center(self.centers, self.center_offset, base_size, level)
        return legacy_base_anchors(base_size, self.scales, self.ratios, center,
                                   self.scale_major)


# SSD's first level when sizes are derived from basesize_ratio_range: {(input_size,
# basesize_ratio_range[0]): (min, max) in percent of the input size} -- MMDetection's table
_SSD_FIRST_LEVEL = {(300, 0.15): (7, 15), (300, 0.2): (10, 20), (512, 0.1): (4, 10),
                    (512, 0.15): (7, 15)}


def ssd_sizes(num_levels: int, basesize_ratio_range: Sequence[float],
              input_size: int) -> tuple[list[int], list[int]]:
    """SSD's ``(min_sizes, max_sizes)`` per level, spread evenly (in whole percents of
    ``input_size``) over ``basesize_ratio_range`` for levels 2..L, level 1 from SSD's table."""
    if len(basesize_ratio_range) != 2 or num_levels < 3:
        raise ConfigError(f"SSD anchors from basesize_ratio_range need a (low, high) pair and "
                          f"at least 3 levels, got {basesize_ratio_range!r} and {num_levels}")
    first = _SSD_FIRST_LEVEL.get((input_size, basesize_ratio_range[0]))
    if first is None:
        choices = ", ".join(f"input_size={k[0]} with basesize_ratio_range[0]={k[1]}"
                            for k in _SSD_FIRST_LEVEL)
        raise ConfigError(f"SSDAnchorGenerator without min_sizes / max_sizes knows {choices}; "
                          f"got input_size={input_size}, basesize_ratio_range="
                          f"{tuple(basesize_ratio_range)}. Give min_sizes and max_sizes instead")
    low, high = int(basesize_ratio_range[0] * 100), int(basesize_ratio_range[1] * 100)
    step = int(math.floor(high - low) / (num_levels - 2))
    min_sizes = [int(input_size * first[0] / 100)]
    max_sizes = [int(input_size * first[1] / 100)]
    for ratio in range(low, high + 1, step):
        min_sizes.append(int(input_size * ratio / 100))
        max_sizes.append(int(input_size * (ratio + step) / 100))
    if len(min_sizes) != num_levels:
        raise ConfigError(f"SSD anchors: basesize_ratio_range {tuple(basesize_ratio_range)} "
                          f"spread over {num_levels} levels gives {len(min_sizes)} sizes; "
                          f"give min_sizes and max_sizes instead")
    return min_sizes, max_sizes


def _ssd_scales_ratios(ratios: Sequence[Sequence[float]], min_sizes: Sequence[float],
                       max_sizes: Sequence[float]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per level: scales ``(1, sqrt(max / min))`` and ratios ``(1, 1/r1, r1, 1/r2, r2 ...)``."""
    scales, level_ratios = [], []
    for level_r, low, high in zip(ratios, min_sizes, max_sizes, strict=True):
        scales.append(torch.tensor([1.0, float(np.sqrt(high / low))], dtype=torch.float32))
        level_ratios.append(torch.tensor([1.0] + [v for r in level_r for v in (1 / r, r)],
                                         dtype=torch.float32))
    return scales, level_ratios


def _ssd_select(anchors: torch.Tensor, num_ratios: int) -> torch.Tensor:
    """SSD keeps ``num_ratios + 1`` anchors: the first, then the one at ``num_ratios`` (with
    ``scale_major=False``: the larger square), then the rest of the first ``num_ratios``."""
    order = [0, num_ratios] + list(range(1, num_ratios))
    return anchors[order]


def _check_ssd(strides: Sequence, ratios: Sequence, min_sizes, max_sizes) -> None:
    if len(strides) != len(ratios):
        raise ConfigError(f"SSD anchor_generator needs one ratios list per level: {len(strides)} "
                          f"strides but {len(ratios)} ratios lists")
    if (min_sizes is None) != (max_sizes is None):
        raise ConfigError("SSD anchor_generator: give both min_sizes and max_sizes, or neither")
    if min_sizes is not None and not len(min_sizes) == len(max_sizes) == len(strides):
        raise ConfigError(f"SSD anchor_generator needs one min_size and max_size per level: "
                          f"{len(strides)} strides, {len(min_sizes)} min_sizes, "
                          f"{len(max_sizes)} max_sizes")


@MODELS.register_module()
class SSDAnchorGenerator(AnchorGenerator):
    """SSD's anchors: per level, a square of ``min_size``, a square of ``sqrt(min_size *
    max_size)``, and ``min_size`` boxes of ratios ``1/r, r`` for each ``r`` of the level.

    Args:
        strides: stride of each level; anchors are centered at ``stride / 2`` of a cell.
        ratios: per level, the ratios ``r`` (``[[2], [2, 3], ...]``).
        min_sizes, max_sizes: per level anchor sizes in pixels; or leave both None to derive
            them from ``basesize_ratio_range`` and ``input_size`` (300 or 512) as SSD does.
        basesize_ratio_range: ``(low, high)`` sizes as fractions of ``input_size``.
        input_size: the network's input size, 300 or 512.
        scale_major: the base anchors' order before SSD picks its ``len(ratios) + 1`` (SSD's
            configs use False).
    """

    def __init__(self, strides: Sequence[int | Sequence[int]],
                 ratios: Sequence[Sequence[float]], min_sizes: Sequence[float] | None = None,
                 max_sizes: Sequence[float] | None = None,
                 basesize_ratio_range: Sequence[float] = (0.15, 0.9), input_size: int = 300,
                 scale_major: bool = True) -> None:
        _check_ssd(strides, ratios, min_sizes, max_sizes)
        self.strides = [_pair(s) for s in strides]
        self.centers = [(sw / 2.0, sh / 2.0) for sw, sh in self.strides]
        self.input_size, self.basesize_ratio_range = input_size, tuple(basesize_ratio_range)
        if min_sizes is None:
            min_sizes, max_sizes = ssd_sizes(len(self.strides), basesize_ratio_range,
                                             input_size)
        self.base_sizes, self.max_sizes = list(min_sizes), list(max_sizes)
        self.scales, self.ratios = _ssd_scales_ratios(ratios, min_sizes, max_sizes)
        self.scale_major, self.center_offset = scale_major, 0
        self.octave_base_scale = self.scales_per_octave = None
        self.base_anchors = [
            _ssd_select(base_anchors(size, self.scales[i], self.ratios[i], self.centers[i],
                                     scale_major), len(self.ratios[i]))
            for i, size in enumerate(self.base_sizes)]

    def base_anchors_per_level(self, base_size: float, level: int) -> torch.Tensor:
        """The ``len(ratios) + 1`` xyxy anchors of one location of ``level``."""
        return self.base_anchors[level]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(strides={self.strides}, min_sizes={self.base_sizes}, "
                f"max_sizes={self.max_sizes}, ratios={[r.tolist() for r in self.ratios]}, "
                f"scale_major={self.scale_major})")


@MODELS.register_module()
class LegacySSDAnchorGenerator(AnchorGenerator):
    """:class:`SSDAnchorGenerator` in MMDetection 1.x's pixel convention (centers at
    ``(stride - 1) / 2``, widths spanning ``w - 1``, rounded corners), for its SSD checkpoints.

    Args:
        strides, ratios, basesize_ratio_range, input_size, scale_major: as for
            :class:`SSDAnchorGenerator` (sizes always come from ``basesize_ratio_range``).
    """

    def __init__(self, strides: Sequence[int], ratios: Sequence[Sequence[float]],
                 basesize_ratio_range: Sequence[float], input_size: int = 300,
                 scale_major: bool = True) -> None:
        _check_ssd(strides, ratios, None, None)
        self.strides = [_pair(s) for s in strides]
        self.centers = [((s - 1) / 2.0, (s - 1) / 2.0) for s in strides]
        self.input_size, self.basesize_ratio_range = input_size, tuple(basesize_ratio_range)
        min_sizes, max_sizes = ssd_sizes(len(self.strides), basesize_ratio_range, input_size)
        self.base_sizes, self.max_sizes = min_sizes, max_sizes
        self.scales, self.ratios = _ssd_scales_ratios(ratios, min_sizes, max_sizes)
        self.scale_major, self.center_offset = scale_major, 0
        self.octave_base_scale = self.scales_per_octave = None
        self.base_anchors = [
            _ssd_select(legacy_base_anchors(size, self.scales[i], self.ratios[i],
                                            self.centers[i], scale_major), len(self.ratios[i]))
            for i, size in enumerate(self.base_sizes)]

    def base_anchors_per_level(self, base_size: float, level: int) -> torch.Tensor:
        """The ``len(ratios) + 1`` legacy xyxy anchors of one location of ``level``."""
        return self.base_anchors[level]

    __repr__ = SSDAnchorGenerator.__repr__


@MODELS.register_module()
class YOLOAnchorGenerator(AnchorGenerator):
    """YOLO's anchors: boxes of given ``(w, h)`` sizes centered in each grid cell.

    Args:
        strides: stride of each level, a number or ``(stride_w, stride_h)``.
        base_sizes: per level, the ``(w, h)`` of its anchors (the same count on every level),
            e.g. ``[[(116, 90), (156, 198), (373, 326)], ...]``.
    """

    def __init__(self, strides: Sequence[int | Sequence[int]],
                 base_sizes: Sequence[Sequence[int | Sequence[int]]]) -> None:
        if len(strides) != len(base_sizes):
            raise ConfigError(f"YOLOAnchorGenerator has {len(strides)} strides but "
                              f"{len(base_sizes)} base_sizes lists; give one per level")
        if len({len(sizes) for sizes in base_sizes}) > 1:
            raise ConfigError(f"YOLOAnchorGenerator needs as many base sizes on every level, "
                              f"got {[len(sizes) for sizes in base_sizes]}")
        self.strides = [_pair(s) for s in strides]
        self.centers = [(sw / 2.0, sh / 2.0) for sw, sh in self.strides]
        self.base_sizes = [[_pair(size) for size in sizes] for sizes in base_sizes]
        self.scale_major, self.center_offset = True, 0
        self.octave_base_scale = self.scales_per_octave = None
        self.base_anchors = [self.base_anchors_per_level(sizes, i)
                             for i, sizes in enumerate(self.base_sizes)]

    def base_anchors_per_level(self, base_size: Sequence[Sequence[float]],
                               level: int) -> torch.Tensor:
        """``(A, 4)`` xyxy anchors of one location of ``level``, of the ``(w, h)`` sizes
        ``base_size``."""
        cx, cy = self.centers[level]
        # corners computed in double precision, then stored as float32 (as MMDetection does)
        return torch.tensor([[cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]
                             for w, h in base_size], dtype=torch.float32)

    def responsible_flags(self, featmap_sizes: Sequence[Sequence[int]],
                          gt_bboxes: torch.Tensor,
                          device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Per level, ``(H_l * W_l * A,)`` bool: the anchors of the cells that hold the center
        of a ground-truth box (``gt_bboxes (Tensor[G, 4], xyxy)``) -- the anchors YOLO makes
        responsible for it (``GridAssigner`` takes them as ``responsible_flags``)."""
        self._check_sizes(featmap_sizes)
        return [self.responsible_flags_per_level(size, gt_bboxes, i, device)
                for i, size in enumerate(featmap_sizes)]

    def responsible_flags_per_level(self, featmap_size: Sequence[int], gt_bboxes: torch.Tensor,
                                    level: int,
                                    device: torch.device | str = "cpu") -> torch.Tensor:
        """``(H * W * A,)`` bool flags of one level (see :meth:`responsible_flags`)."""
        feat_h, feat_w = int(featmap_size[0]), int(featmap_size[1])
        stride_w, stride_h = self.strides[level]
        cx = ((gt_bboxes[:, 0] + gt_bboxes[:, 2]) * 0.5).to(device)
        cy = ((gt_bboxes[:, 1] + gt_bboxes[:, 3]) * 0.5).to(device)
        # row-major cell index; out-of-grid centers wrap like Python indices, as in MMDetection
        cell = torch.floor(cy / stride_h).long() * feat_w + torch.floor(cx / stride_w).long()
        grid = torch.zeros(feat_h * feat_w, dtype=torch.bool, device=device)
        grid[cell] = True
        return grid[:, None].expand(-1, self.num_base_priors[level]).reshape(-1)

    def __repr__(self) -> str:
        return f"YOLOAnchorGenerator(strides={self.strides}, base_sizes={self.base_sizes})"


def anchor_inside_flags(anchors: torch.Tensor, valid_flags: torch.Tensor,
                        img_shape: Sequence[int], allowed_border: int = 0) -> torch.Tensor:
    """``(N,)`` bool: valid anchors that also lie within ``allowed_border`` pixels of the image
    ``img_shape`` ``(h, w, ...)``; a negative ``allowed_border`` keeps every valid anchor."""
    if allowed_border < 0:
        return valid_flags
    h, w = img_shape[0], img_shape[1]
    return (valid_flags & (anchors[:, 0] >= -allowed_border)
            & (anchors[:, 1] >= -allowed_border) & (anchors[:, 2] < w + allowed_border)
            & (anchors[:, 3] < h + allowed_border))


def _check_level_count(num_levels: int, strides: Sequence, featmap_sizes: Sequence) -> None:
    if len(featmap_sizes) != num_levels:
        raise ValueError(f"the prior generator has {num_levels} levels (strides {list(strides)}) "
                         f"but got {len(featmap_sizes)} feature maps; make the generator's "
                         f"strides match the neck's num_outs")


@MODELS.register_module()
class MlvlPointGenerator:
    """Points at the cells of every level of a feature pyramid (anchor-free heads).

    The point of cell ``(row i, column j)`` of a level is ``((j + offset) * stride_w,
    (i + offset) * stride_h)``; one point per cell.

    Args:
        strides: stride of each level, a number or ``(stride_w, stride_h)``.
        offset: position of the point inside its cell, in units of the stride (0.5: the cell's
            center; 0: its top-left corner).
    """

    def __init__(self, strides: Sequence[int | Sequence[int]], offset: float = 0.5) -> None:
        self.strides = [_pair(s) for s in strides]
        self.offset = offset

    @property
    def num_levels(self) -> int:
        """Number of pyramid levels."""
        return len(self.strides)

    @property
    def num_base_priors(self) -> list[int]:
        """Points per location on each level: one."""
        return [1] * len(self.strides)

    def grid_priors_per_level(self, featmap_size: Sequence[int], level: int,
                              dtype: torch.dtype = torch.float32,
                              device: torch.device | str = "cpu",
                              with_stride: bool = False) -> torch.Tensor:
        """``(H * W, 2)`` ``(x, y)`` points of a ``(H, W)`` feature map of ``level``, or
        ``(H * W, 4)`` ``(x, y, stride_w, stride_h)`` with ``with_stride``."""
        feat_h, feat_w = int(featmap_size[0]), int(featmap_size[1])
        stride_w, stride_h = self.strides[level]
        # computed in the default dtype, then cast, as MMDetection does
        shift_x = ((torch.arange(feat_w, device=device) + self.offset) * stride_w).to(dtype)
        shift_y = ((torch.arange(feat_h, device=device) + self.offset) * stride_h).to(dtype)
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")  # (H, W): rows first
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        if not with_stride:
            return torch.stack([xx, yy], dim=-1)
        sw = xx.new_full(xx.shape, stride_w).to(dtype)
        sh = xx.new_full(xx.shape, stride_h).to(dtype)
        return torch.stack([xx, yy, sw, sh], dim=-1)

    def grid_priors(self, featmap_sizes: Sequence[Sequence[int]],
                    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                    with_stride: bool = False) -> list[torch.Tensor]:
        """Points of every level: a list of ``(H_l * W_l, 2 or 4)`` tensors."""
        _check_level_count(self.num_levels, self.strides, featmap_sizes)
        return [self.grid_priors_per_level(size, i, dtype, device, with_stride)
                for i, size in enumerate(featmap_sizes)]

    def valid_flags(self, featmap_sizes: Sequence[Sequence[int]], pad_shape: Sequence[int],
                    device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Per level, ``(H_l * W_l,)`` bool: the point's cell lies inside the image's padded
        area ``pad_shape`` ``(h, w, ...)``."""
        _check_level_count(self.num_levels, self.strides, featmap_sizes)
        h, w = pad_shape[0], pad_shape[1]
        flags = []
        for (feat_h, feat_w), (stride_w, stride_h) in zip(featmap_sizes, self.strides, strict=True):
            valid = (min(math.ceil(h / stride_h), int(feat_h)),
                     min(math.ceil(w / stride_w), int(feat_w)))
            flags.append(AnchorGenerator.valid_flags_per_level((feat_h, feat_w), valid, 1,
                                                               device))
        return flags

    def sparse_priors(self, prior_idxs: torch.Tensor, featmap_size: Sequence[int], level: int,
                      dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> torch.Tensor:
        """``(K, 2)`` ``(x, y)`` points at the flat indices ``prior_idxs`` ``(K,)`` of a
        ``(H, W)`` feature map of ``level`` (the rows of :meth:`grid_priors_per_level`)."""
        height, width = int(featmap_size[0]), int(featmap_size[1])
        stride_w, stride_h = self.strides[level]
        x = (prior_idxs % width + self.offset) * stride_w
        y = ((prior_idxs // width) % height + self.offset) * stride_h
        return torch.stack([x, y], 1).to(dtype).to(device)

    def __repr__(self) -> str:
        return f"MlvlPointGenerator(strides={self.strides}, offset={self.offset})"


def _cfg_value(cfg: Mapping | Any, key: str) -> Any:
    return cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)


def check_approx_and_square(owner: str, approx: Mapping | Any, square: Mapping | Any) -> None:
    """Fail unless the square generator's ``scales[0]`` is the approx generator's
    ``octave_base_scale`` and both have the same strides (MMDetection asserts both)."""
    scales = _cfg_value(square, "scales")
    base = _cfg_value(approx, "octave_base_scale")
    if scales is not None and base is not None and float(base) != float(list(scales)[0]):
        raise ConfigError(f"{owner}: square_anchor_generator.scales[0] ({list(scales)[0]}) must "
                          f"equal approx_anchor_generator.octave_base_scale ({base})")
    strides = [_cfg_value(g, "strides") for g in (approx, square)]
    if None not in strides and list(strides[0]) != list(strides[1]):
        raise ConfigError(f"{owner}: approx_anchor_generator.strides {strides[0]} and "
                          f"square_anchor_generator.strides {strides[1]} must be the same")


def squares_inside_flags(approx_generator: Any, approxs: torch.Tensor,
                         sizes: Sequence[tuple[int, int]], pad_shape: Sequence[int],
                         img_shape: Sequence[int], allowed_border: float,
                         approxs_per_square: int) -> torch.Tensor:
    """``(A,)`` bool per square anchor (Guided Anchoring, SABL): any of its
    ``approxs_per_square`` approximating anchors ``approxs`` is valid (inside the padded image)
    and within ``allowed_border`` of the image."""
    flags = torch.cat(approx_generator.valid_flags(sizes, pad_shape, approxs.device))
    inside = anchor_inside_flags(approxs, flags, img_shape[:2], allowed_border)
    return inside.reshape(-1, approxs_per_square).any(dim=1)

