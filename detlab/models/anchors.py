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
from collections.abc import Sequence

import torch

from detlab.config import ConfigError
from detlab.registry import MODELS


def _pair(value: int | float | Sequence) -> tuple:
    if isinstance(value, (int, float)):
        return (value, value)
    if len(value) != 2:
        raise ConfigError(f"an anchor stride must be a number or a (w, h) pair, got {value!r}")
    return tuple(value)


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
        self.base_anchors = [self.base_anchors_per_level(size, i)
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
        if self.centers is None:
            cx = cy = self.center_offset * base_size
        else:
            cx, cy = self.centers[level]
        h_ratios = torch.sqrt(self.ratios)
        w_ratios = 1 / h_ratios
        if self.scale_major:
            ws = (base_size * w_ratios[:, None] * self.scales[None, :]).reshape(-1)
            hs = (base_size * h_ratios[:, None] * self.scales[None, :]).reshape(-1)
        else:
            ws = (base_size * self.scales[:, None] * w_ratios[None, :]).reshape(-1)
            hs = (base_size * self.scales[:, None] * h_ratios[None, :]).reshape(-1)
        return torch.stack([cx - 0.5 * ws, cy - 0.5 * hs, cx + 0.5 * ws, cy + 0.5 * hs], dim=-1)

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
        return (shifts + base[None]).reshape(-1, 4)

    def _check_sizes(self, featmap_sizes: Sequence[Sequence[int]]) -> None:
        if len(featmap_sizes) != self.num_levels:
            raise ValueError(f"the anchor generator has {self.num_levels} levels (strides "
                             f"{self.strides}) but got {len(featmap_sizes)} feature maps; make "
                             f"anchor_generator.strides match the neck's num_outs")

    def grid_priors(self, featmap_sizes: Sequence[Sequence[int]],
                    dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Anchors of every level: a list of ``(H_l * W_l * A_l, 4)`` xyxy tensors."""
        self._check_sizes(featmap_sizes)
        return [self.grid_priors_per_level(size, i, dtype, device)
                for i, size in enumerate(featmap_sizes)]

    grid_anchors = grid_priors

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
        return (f"AnchorGenerator(strides={self.strides}, ratios={self.ratios.tolist()}, "
                f"scales={self.scales.tolist()}, base_sizes={self.base_sizes}, "
                f"scale_major={self.scale_major}, center_offset={self.center_offset})")


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
