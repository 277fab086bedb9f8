"""Instance masks that follow the image through the pipeline: ``BitmapMasks`` and ``PolygonMasks``.

They behave as MMDetection 2.x's mask structures: a sample's ``gt_masks`` holds one mask per box
of ``gt_bboxes`` (same order), and every geometric transform that moves the image calls the
matching method here, which returns a new object (the old one is never modified).

Coordinates are those of boxes: continuous pixels, ``x`` to the right and ``y`` down, pixel
``(row i, column j)`` covering ``[j, j + 1) x [i, i + 1)``. A polygon rectangle
``[x1, y1, x2, y1, x2, y2, x1, y2]`` therefore rasterizes to exactly the pixels of the box
``[x1, y1, x2, y2]`` (pycocotools' rule), and a bitmap mask's ``get_bboxes`` is that box.

- ``BitmapMasks(masks, height, width)``: ``masks`` ``(n, height, width)`` uint8 (0 / 1).
- ``PolygonMasks(masks, height, width)``: ``masks[i]`` is the list of polygons of instance
  ``i``, each a flat ``[x0, y0, x1, y1, ...]`` float64 array of at least 3 points.

Unlike MMDetection, polygons are clipped to the canvas when they are cropped, translated or
warped (Sutherland-Hodgman), so their ``areas`` stay those of the visible part, and
``PolygonMasks.expand`` works.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

Shape = tuple[int, int]
FLIP_DIRECTIONS = ("horizontal", "vertical", "diagonal")


def _check_direction(direction: str) -> None:
    if direction not in FLIP_DIRECTIONS:
        raise ValueError(f"flip direction must be one of {FLIP_DIRECTIONS}, got {direction!r}")


def _out_shape(shape: Sequence[int]) -> Shape:
    h, w = int(shape[0]), int(shape[1])
    if h < 0 or w < 0:
        raise ValueError(f"a mask shape must not be negative, got {tuple(shape)} (h, w)")
    return h, w


def _rescaled_shape(height: int, width: int, scale: float | Sequence[int]) -> Shape:
    from detlab.data.transforms.imageops import rescale_size

    (new_w, new_h), _ = rescale_size((width, height), scale)
    return new_h, new_w


def _as_index(index: Any) -> Any:
    """A NumPy-friendly index: lists and tensors become arrays, scalars stay scalars."""
    if isinstance(index, torch.Tensor):
        index = index.cpu().numpy()
    if isinstance(index, (list, tuple)):
        index = np.asarray(index)
        if index.size == 0:
            index = index.astype(np.int64)
    return index


# --------------------------------------------------------------------------------------------
# BitmapMasks
# --------------------------------------------------------------------------------------------


class BitmapMasks:
    """Masks as ``(n, height, width)`` uint8 arrays of 0 and 1.

    Args:
        masks: an ``(n, h, w)`` array (any dtype; non-zero is inside) or a list of ``(h, w)``
            arrays; empty for no instance.
        height, width: the mask size (the image's).
    """

    def __init__(self, masks: np.ndarray | Sequence[np.ndarray], height: int,
                 width: int) -> None:
        self.height, self.width = _out_shape((height, width))
        if len(masks) == 0:
            self.masks = np.zeros((0, self.height, self.width), dtype=np.uint8)
            return
        array = np.stack(masks) if isinstance(masks, (list, tuple)) else np.asarray(masks)
        if array.ndim != 3 or array.shape[1:] != (self.height, self.width):
            raise ValueError(f"BitmapMasks of {self.height} x {self.width} (h x w) need masks "
                             f"of shape (n, {self.height}, {self.width}), got {array.shape}")
        self.masks = array if array.dtype == np.uint8 else (array != 0).astype(np.uint8)

    # ---- container ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.masks)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.masks)

    def __getitem__(self, index: Any) -> BitmapMasks:
        """The masks at ``index`` (an int, a slice, indices or a boolean array)."""
        masks = self.masks[_as_index(index)].reshape(-1, self.height, self.width)
        return BitmapMasks(masks, self.height, self.width)

    def __repr__(self) -> str:
        return (f"BitmapMasks(num_masks={len(self)}, height={self.height}, "
                f"width={self.width})")

    @classmethod
    def cat(cls, masks: Sequence[BitmapMasks]) -> BitmapMasks:
        """The masks of ``masks`` one after the other (all of one size)."""
        if not masks:
            raise ValueError("BitmapMasks.cat needs at least one BitmapMasks")
        shapes = {(m.height, m.width) for m in masks}
        if len(shapes) != 1:
            raise ValueError(f"cannot concatenate masks of different sizes {sorted(shapes)}")
        h, w = shapes.pop()
        return cls(np.concatenate([m.masks for m in masks]), h, w)

    # ---- geometry ----------------------------------------------------------------------------

    def rescale(self, scale: float | Sequence[int], interpolation: str = "nearest"
                ) -> BitmapMasks:
        """Resized keeping the aspect ratio, to the size ``Resize(keep_ratio=True)`` gives the
        image for ``scale`` (a factor or an edge pair)."""
        return self.resize(_rescaled_shape(self.height, self.width, scale), interpolation)

    def resize(self, out_shape: Sequence[int], interpolation: str = "nearest") -> BitmapMasks:
        """Resized to ``out_shape`` ``(h, w)``; nearest neighbour samples at pixel centres, as
        the image resize does, so edges land where the image's do."""
        h, w = _out_shape(out_shape)
        if interpolation != "nearest":
            from detlab.data.transforms.imageops import imresize

            resized = [imresize(m, (w, h), interpolation) for m in self.masks]
            return BitmapMasks(np.stack(resized) if resized else [], h, w)
        rows = np.minimum(((np.arange(h) + 0.5) * self.height / max(h, 1)).astype(np.int64),
                          max(self.height - 1, 0))
        cols = np.minimum(((np.arange(w) + 0.5) * self.width / max(w, 1)).astype(np.int64),
                          max(self.width - 1, 0))
        if len(self) == 0 or self.height == 0 or self.width == 0:
            return BitmapMasks([], h, w)
        return BitmapMasks(self.masks[:, rows[:, None], cols[None, :]], h, w)

    def flip(self, flip_direction: str = "horizontal") -> BitmapMasks:
        """Mirrored ``'horizontal'``-ly, ``'vertical'``-ly or both (``'diagonal'``)."""
        _check_direction(flip_direction)
        axes = {"horizontal": (2,), "vertical": (1,), "diagonal": (1, 2)}[flip_direction]
        return BitmapMasks(np.ascontiguousarray(np.flip(self.masks, axes)), self.height,
                           self.width)

    def pad(self, out_shape: Sequence[int], pad_val: int = 0) -> BitmapMasks:
        """Padded at the bottom and right to ``out_shape`` ``(h, w)`` with ``pad_val``."""
        h, w = _out_shape(out_shape)
        if h < self.height or w < self.width:
            raise ValueError(f"cannot pad masks of {self.height} x {self.width} to the smaller "
                             f"{h} x {w} (h x w)")
        return self.place((0, 0), (h, w), fill=pad_val)

    def place(self, offset: Sequence[float], out_shape: Sequence[int],
              fill: int = 0) -> BitmapMasks:
        """The masks moved by ``offset`` ``(dx, dy)`` (rounded to pixels) onto a new canvas of
        ``out_shape`` ``(h, w)`` filled with ``fill``; what falls outside is cut off.

        Crop, expand, pad, translate and the mosaic paste are all this one operation."""
        h, w = _out_shape(out_shape)
        dx, dy = (int(round(float(v))) for v in offset)
        out = np.full((len(self), h, w), fill, dtype=np.uint8)
        # the overlap of the moved masks with the canvas, in canvas and in source pixels
        x1, y1 = max(dx, 0), max(dy, 0)
        x2, y2 = min(dx + self.width, w), min(dy + self.height, h)
        if x2 > x1 and y2 > y1:
            out[:, y1:y2, x1:x2] = self.masks[:, y1 - dy:y2 - dy, x1 - dx:x2 - dx]
        return BitmapMasks(out, h, w)

    def crop(self, bbox: np.ndarray) -> BitmapMasks:
        """The part inside ``bbox`` ``[x1, y1, x2, y2]`` (clipped to the masks, at least one
        pixel wide and high, as MMDetection)."""
        x1, y1, x2, y2 = _crop_window(bbox, self.height, self.width)
        return self.place((-x1, -y1), (y2 - y1, x2 - x1))

    def expand(self, expanded_h: int, expanded_w: int, top: int, left: int) -> BitmapMasks:
        """Placed at ``(left, top)`` on an empty ``expanded_h x expanded_w`` canvas
        (``Expand``)."""
        return self.place((left, top), (expanded_h, expanded_w))

    def translate(self, out_shape: Sequence[int], offset: float,
                  direction: str = "horizontal", border_value: int = 0,
                  interpolation: str = "bilinear") -> BitmapMasks:
        """Shifted by ``offset`` pixels along ``direction`` onto a canvas of ``out_shape``
        (MMDetection's signature; ``interpolation`` is unused, shifts are whole pixels)."""
        if direction not in ("horizontal", "vertical"):
            raise ValueError(f"direction must be 'horizontal' or 'vertical', got {direction!r}")
        shift = (offset, 0) if direction == "horizontal" else (0, offset)
        return self.place(shift, out_shape, fill=border_value)

    def warp(self, matrix: np.ndarray, out_shape: Sequence[int]) -> BitmapMasks:
        """The masks under the ``3 x 3`` projective ``matrix`` (source -> output points),
        sampled at output pixel centres with nearest neighbour; outside is 0."""
        h, w = _out_shape(out_shape)
        if len(self) == 0:
            return BitmapMasks([], h, w)
        rows, cols, valid = warp_source_pixels(matrix, (self.height, self.width), (h, w))
        out = np.zeros((len(self), h, w), dtype=np.uint8)
        out[:, valid] = self.masks[:, rows[valid], cols[valid]]
        return BitmapMasks(out, h, w)

    def crop_and_resize(self, bboxes: Any, out_shape: Sequence[int], inds: Any,
                        device: str = "cpu", interpolation: str = "bilinear",
                        binarize: bool = True) -> BitmapMasks:
        """For each box of ``bboxes`` ``(m, 4)`` xyxy, mask ``inds[i]`` cut to the box and
        resized to ``out_shape`` (mask targets of mask heads), through ``roi_align``."""
        from torchvision.ops import roi_align

        h, w = _out_shape(out_shape)
        boxes = torch.as_tensor(np.asarray(bboxes), dtype=torch.float32, device=device)
        if len(self) == 0 or len(boxes) == 0:
            return BitmapMasks([], h, w)
        index = torch.as_tensor(np.asarray(inds), dtype=torch.int64, device=device)
        masks = torch.from_numpy(self.masks).to(device).index_select(0, index).float()
        rois = torch.cat([torch.arange(len(boxes), device=device, dtype=torch.float32)[:, None],
                          boxes.reshape(-1, 4)], dim=1)
        targets = roi_align(masks[:, None], rois, (h, w), 1.0, 0, True).squeeze(1)
        targets = targets >= 0.5 if binarize else targets
        return BitmapMasks(targets.cpu().numpy(), h, w)

    # ---- measures and conversions ------------------------------------------------------------

    def get_bboxes(self) -> np.ndarray:
        """``(n, 4)`` float32 xyxy boxes of the masks' pixels (zeros for an empty mask)."""
        boxes = np.zeros((len(self), 4), dtype=np.float32)
        if len(self) == 0:
            return boxes
        cols, rows = self.masks.any(axis=1), self.masks.any(axis=2)  # (n, w), (n, h)
        boxes[:, 0] = cols.argmax(axis=1)
        boxes[:, 2] = self.width - cols[:, ::-1].argmax(axis=1)
        boxes[:, 1] = rows.argmax(axis=1)
        boxes[:, 3] = self.height - rows[:, ::-1].argmax(axis=1)
        boxes[~cols.any(axis=1)] = 0
        return boxes

    @property
    def areas(self) -> np.ndarray:
        """``(n,)`` pixel counts."""
        return self.masks.sum(axis=(1, 2))

    def to_ndarray(self) -> np.ndarray:
        """``(n, h, w)`` uint8."""
        return self.masks

    def to_tensor(self, dtype: torch.dtype, device: str | torch.device = "cpu") -> torch.Tensor:
        """``(n, h, w)`` tensor of ``dtype``."""
        return torch.as_tensor(self.masks, device=device).to(dtype)


# --------------------------------------------------------------------------------------------
# PolygonMasks
# --------------------------------------------------------------------------------------------


def _as_polygon(polygon: Any) -> np.ndarray:
    array = np.asarray(polygon, dtype=np.float64).reshape(-1)
    if array.size % 2:
        raise ValueError(f"a polygon is a flat [x0, y0, x1, y1, ...] list; got {array.size} "
                         "numbers (an odd count)")
    return array


class PolygonMasks:
    """Masks as polygons: ``masks[i]`` is the list of flat ``[x0, y0, x1, y1, ...]`` polygons
    of instance ``i`` (an instance may have none: an empty mask).

    Args:
        masks: one list of polygons per instance (lists or arrays of numbers).
        height, width: the image size the polygons live in.
    """

    def __init__(self, masks: Sequence[Sequence[Any]], height: int, width: int) -> None:
        self.height, self.width = _out_shape((height, width))
        if not isinstance(masks, (list, tuple)) or any(
                not isinstance(m, (list, tuple)) or any(np.ndim(p) != 1 for p in m)
                for m in masks):
            raise TypeError("PolygonMasks needs one list of polygons per instance, e.g. "
                            "[[[x0, y0, x1, y1, x2, y2]], ...]")
        self.masks: list[list[np.ndarray]] = [[_as_polygon(p) for p in m] for m in masks]

    # ---- container ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.masks)

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        return iter(self.masks)

    def __getitem__(self, index: Any) -> PolygonMasks:
        """The instances at ``index`` (an int, a slice, indices or a boolean array)."""
        index = _as_index(index)
        if isinstance(index, (int, np.integer)):
            chosen = [self.masks[index]]
        else:
            chosen = [self.masks[i] for i in np.arange(len(self))[index].reshape(-1)]
        return PolygonMasks(chosen, self.height, self.width)

    def __repr__(self) -> str:
        return (f"PolygonMasks(num_masks={len(self)}, height={self.height}, "
                f"width={self.width})")

    @classmethod
    def cat(cls, masks: Sequence[PolygonMasks]) -> PolygonMasks:
        """The instances of ``masks`` one after the other (all of one size)."""
        if not masks:
            raise ValueError("PolygonMasks.cat needs at least one PolygonMasks")
        shapes = {(m.height, m.width) for m in masks}
        if len(shapes) != 1:
            raise ValueError(f"cannot concatenate masks of different sizes {sorted(shapes)}")
        h, w = shapes.pop()
        return cls([poly for m in masks for poly in m.masks], h, w)

    def _map(self, function: Any, out_shape: Sequence[int], clip: bool) -> PolygonMasks:
        """Apply ``function`` ``(k, 2) -> (k, 2)`` to every polygon's points; with ``clip``,
        clip the results to the new canvas and drop polygons that vanish."""
        h, w = _out_shape(out_shape)
        out = []
        for polygons in self.masks:
            kept = []
            for p in polygons:
                points = function(p.reshape(-1, 2))
                if clip:
                    points = clip_polygon(points, w, h)
                if len(points) >= 3:
                    kept.append(np.ascontiguousarray(points, dtype=np.float64).reshape(-1))
            out.append(kept)
        return PolygonMasks(out, h, w)

    # ---- geometry ----------------------------------------------------------------------------

    def rescale(self, scale: float | Sequence[int], interpolation: str | None = None
                ) -> PolygonMasks:
        """Scaled keeping the aspect ratio, to the size ``Resize(keep_ratio=True)`` gives."""
        return self.resize(_rescaled_shape(self.height, self.width, scale))

    def resize(self, out_shape: Sequence[int], interpolation: str | None = None
               ) -> PolygonMasks:
        """Scaled to ``out_shape`` ``(h, w)``."""
        h, w = _out_shape(out_shape)
        factor = np.array([w / max(self.width, 1), h / max(self.height, 1)])
        return self._map(lambda pts: pts * factor, (h, w), clip=False)

    def flip(self, flip_direction: str = "horizontal") -> PolygonMasks:
        """Mirrored ``'horizontal'``-ly, ``'vertical'``-ly or both (``'diagonal'``)."""
        _check_direction(flip_direction)
        sign = np.array([-1.0 if flip_direction != "vertical" else 1.0,
                         -1.0 if flip_direction != "horizontal" else 1.0])
        base = np.array([self.width if sign[0] < 0 else 0, self.height if sign[1] < 0 else 0])
        return self._map(lambda pts: base + sign * pts, (self.height, self.width), clip=False)

    def pad(self, out_shape: Sequence[int], pad_val: int = 0) -> PolygonMasks:
        """A larger canvas ``out_shape`` ``(h, w)``; the polygons do not move."""
        return PolygonMasks(self.masks, *_out_shape(out_shape))

    def place(self, offset: Sequence[float], out_shape: Sequence[int],
              fill: int = 0) -> PolygonMasks:
        """Moved by ``offset`` ``(dx, dy)`` onto a canvas of ``out_shape`` ``(h, w)``, clipped
        to it (``fill`` is accepted for symmetry with bitmaps and must be 0)."""
        if fill:
            raise ValueError("polygon masks cannot fill the canvas; use bitmaps (fill != 0)")
        shift = np.asarray(offset, dtype=np.float64).reshape(2)
        return self._map(lambda pts: pts + shift, out_shape, clip=True)

    def crop(self, bbox: np.ndarray) -> PolygonMasks:
        """The part inside ``bbox`` ``[x1, y1, x2, y2]``, in the crop's coordinates."""
        x1, y1, x2, y2 = _crop_window(bbox, self.height, self.width)
        return self.place((-x1, -y1), (y2 - y1, x2 - x1))

    def expand(self, expanded_h: int, expanded_w: int, top: int, left: int) -> PolygonMasks:
        """Moved to ``(left, top)`` of an ``expanded_h x expanded_w`` canvas (``Expand``)."""
        return self.place((left, top), (expanded_h, expanded_w))

    def translate(self, out_shape: Sequence[int], offset: float,
                  direction: str = "horizontal", border_value: int = 0,
                  interpolation: str | None = None) -> PolygonMasks:
        """Shifted by ``offset`` along ``direction`` onto a canvas of ``out_shape``."""
        if direction not in ("horizontal", "vertical"):
            raise ValueError(f"direction must be 'horizontal' or 'vertical', got {direction!r}")
        shift = (offset, 0) if direction == "horizontal" else (0, offset)
        return self.place(shift, out_shape)

    def warp(self, matrix: np.ndarray, out_shape: Sequence[int]) -> PolygonMasks:
        """The polygons under the ``3 x 3`` projective ``matrix``, clipped to ``out_shape``."""
        matrix = np.asarray(matrix, dtype=np.float64)

        def apply(pts: np.ndarray) -> np.ndarray:
            moved = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ matrix.T
            return moved[:, :2] / moved[:, 2:3]

        return self._map(apply, out_shape, clip=True)

    def crop_and_resize(self, bboxes: Any, out_shape: Sequence[int], inds: Any,
                        device: str = "cpu", interpolation: str = "bilinear",
                        binarize: bool = True) -> PolygonMasks:
        """For each box of ``bboxes`` ``(m, 4)``, polygon ``inds[i]`` cut to the box and
        scaled to ``out_shape`` (as MMDetection, the polygons are moved and scaled; the
        rasterization clips them)."""
        h, w = _out_shape(out_shape)
        boxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
        out = []
        for box, i in zip(boxes, np.asarray(inds).reshape(-1), strict=True):
            scale = np.array([w / max(box[2] - box[0], 0.1), h / max(box[3] - box[1], 0.1)])
            out.append([((p.reshape(-1, 2) - box[:2]) * scale).reshape(-1)
                        for p in self.masks[int(i)]])
        return PolygonMasks(out, h, w)

    # ---- measures and conversions ------------------------------------------------------------

    def get_bboxes(self) -> np.ndarray:
        """``(n, 4)`` float32 xyxy boxes of the polygons' points (zeros for an empty mask)."""
        boxes = np.zeros((len(self), 4), dtype=np.float32)
        for i, polygons in enumerate(self.masks):
            if polygons:
                points = np.concatenate([p.reshape(-1, 2) for p in polygons])
                boxes[i] = [*points.min(axis=0), *points.max(axis=0)]
        return boxes

    @property
    def areas(self) -> np.ndarray:
        """``(n,)`` areas: the sum of each instance's polygon areas (shoelace formula)."""
        areas = np.zeros(len(self), dtype=np.float64)
        for i, polygons in enumerate(self.masks):
            for p in polygons:
                x, y = p[0::2], p[1::2]
                areas[i] += 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        return areas

    def to_ndarray(self) -> np.ndarray:
        """``(n, h, w)`` uint8 bitmaps, rasterized by pycocotools."""
        if len(self) == 0:
            return np.zeros((0, self.height, self.width), dtype=np.uint8)
        return np.stack([polygons_to_bitmap(p, self.height, self.width) for p in self.masks])

    def to_bitmap(self) -> BitmapMasks:
        """The same masks as :class:`BitmapMasks`."""
        return BitmapMasks(self.to_ndarray(), self.height, self.width)

    def to_tensor(self, dtype: torch.dtype, device: str | torch.device = "cpu") -> torch.Tensor:
        """``(n, h, w)`` tensor of ``dtype`` of the rasterized masks."""
        return torch.as_tensor(self.to_ndarray(), device=device).to(dtype)


Masks = BitmapMasks | PolygonMasks


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _crop_window(bbox: Any, height: int, width: int) -> tuple[int, int, int, int]:
    """``bbox`` as whole pixels clipped to the canvas, at least 1 x 1 (MMDetection's rule)."""
    box = np.asarray(bbox).reshape(-1)
    if box.size != 4:
        raise ValueError(f"a crop box is [x1, y1, x2, y2], got {bbox!r}")
    x1, x2 = np.clip(box[0::2], 0, width).astype(np.int64)
    y1, y2 = np.clip(box[1::2], 0, height).astype(np.int64)
    return int(x1), int(y1), int(x1 + max(x2 - x1, 1)), int(y1 + max(y2 - y1, 1))


def warp_source_pixels(matrix: np.ndarray, src_shape: Shape, out_shape: Shape
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every output pixel of ``out_shape``, the source pixel (row, column) its centre comes
    from under the projective ``matrix`` (source -> output), and whether it is in the source.

    Returns ``rows``, ``cols`` (int64) and ``valid`` (bool), each ``out_shape``."""
    h, w = out_shape
    inverse = np.linalg.inv(np.asarray(matrix, dtype=np.float64))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    points = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ inverse.T  # (h, w, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        sx = np.floor(points[..., 0] / points[..., 2])
        sy = np.floor(points[..., 1] / points[..., 2])
    valid = (sx >= 0) & (sx < src_shape[1]) & (sy >= 0) & (sy < src_shape[0])
    rows = np.where(valid, sy, 0).astype(np.int64)
    cols = np.where(valid, sx, 0).astype(np.int64)
    return rows, cols, valid


def clip_polygon(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """The ``(k, 2)`` polygon ``points`` clipped to ``[0, width] x [0, height]``
    (Sutherland-Hodgman: one pass per side, vectorized over the vertices)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    for axis, bound, keep_above in ((0, 0.0, True), (0, width, False), (1, 0.0, True),
                                    (1, height, False)):
        if len(points) == 0:
            break
        points = _clip_side(points, axis, float(bound), keep_above)
    return points


def _clip_side(points: np.ndarray, axis: int, bound: float, keep_above: bool) -> np.ndarray:
    """One Sutherland-Hodgman pass: keep the part of the polygon on one side of a line."""
    following = np.roll(points, -1, axis=0)
    value, next_value = points[:, axis], following[:, axis]
    inside = value >= bound if keep_above else value <= bound
    next_inside = next_value >= bound if keep_above else next_value <= bound
    with np.errstate(divide="ignore", invalid="ignore"):  # parallel edges never cross
        t = (bound - value) / (next_value - value)
        crossing = points + t[:, None] * (following - points)
    crossing[:, axis] = bound
    # each edge emits its crossing (if it crosses) and then its end point (if inside)
    emitted = np.stack([crossing, following], axis=1)  # (k, 2, 2)
    emit = np.stack([inside != next_inside, next_inside], axis=1)  # (k, 2)
    return emitted[emit]


def polygons_to_bitmap(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """The ``(height, width)`` uint8 mask of the union of ``polygons`` (pycocotools)."""
    valid = [np.asarray(p, dtype=np.float64).tolist() for p in polygons if len(p) >= 6]
    if not valid or height == 0 or width == 0:
        return np.zeros((height, width), dtype=np.uint8)
    from pycocotools import mask as mask_utils

    rle = mask_utils.merge(mask_utils.frPyObjects(valid, height, width))
    return decode_rles([rle])[0]


def decode_rles(rles: Sequence[dict]) -> np.ndarray:
    """``(n, h, w)`` uint8 masks of compressed RLEs (pycocotools)."""
    from pycocotools import mask as mask_utils

    with warnings.catch_warnings():
        # pycocotools' decoder trips NumPy 2's __array__(copy=...) deprecation; harmless
        warnings.filterwarnings("ignore", message="__array__ implementation",
                                category=DeprecationWarning)
        decoded = mask_utils.decode(list(rles))  # (h, w, n), Fortran order
    return np.ascontiguousarray(decoded.transpose(2, 0, 1))


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict:
    """One COCO ``segmentation`` -- a list of polygons, an uncompressed RLE (``counts`` a
    list) or a compressed RLE -- as a compressed RLE of ``height x width``."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        if not polygons:
            return mask_utils.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation:
        size = [int(v) for v in segmentation.get("size", (height, width))]
        if size != [height, width]:
            raise ValueError(f"an RLE mask of size {size} (h, w) for an image of "
                             f"{height} x {width}")
        if isinstance(segmentation["counts"], list):
            total = int(sum(segmentation["counts"]))
            if total != height * width:
                raise ValueError(f"the RLE counts add up to {total}, not {height} x {width} "
                                 f"= {height * width} pixels")
            return mask_utils.frPyObjects(segmentation, height, width)
        counts = segmentation["counts"]
        return dict(segmentation, counts=counts.encode() if isinstance(counts, str) else counts)
    raise ValueError("a segmentation is a list of polygons or an RLE dict with 'size' and "
                     f"'counts', got {type(segmentation).__name__}")


def bitmaps_from_segmentations(segmentations: Sequence[Any], height: int,
                               width: int) -> BitmapMasks:
    """:class:`BitmapMasks` of COCO ``segmentations`` (polygons or RLEs), decoded at once."""
    if not segmentations:
        return BitmapMasks([], height, width)
    rles = [segmentation_to_rle(s, height, width) for s in segmentations]
    return BitmapMasks(decode_rles(rles), height, width)


def polygons_from_segmentations(segmentations: Sequence[Any], height: int,
                                width: int) -> PolygonMasks:
    """:class:`PolygonMasks` of COCO polygon ``segmentations``; polygons of fewer than 3 points
    are left out (as MMDetection does). RLE segmentations cannot become polygons."""
    instances = []
    for i, segmentation in enumerate(segmentations):
        if not isinstance(segmentation, list):
            raise ValueError(f"instance {i} has an RLE mask, which polygon masks cannot hold; "
                             "load masks with LoadAnnotations(poly2mask=True)")
        instances.append([p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0])
    return PolygonMasks(instances, height, width)


def masks_to_bool_tensor(masks: Any) -> torch.Tensor:
    """``(n, h, w)`` bool tensor of mask structures, arrays or tensors."""
    if hasattr(masks, "to_ndarray"):
        masks = masks.to_ndarray()
    return torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor)
                           else masks).bool()


__all__ = ["BitmapMasks", "PolygonMasks", "Masks", "clip_polygon", "polygons_to_bitmap",
           "segmentation_to_rle", "bitmaps_from_segmentations", "polygons_from_segmentations",
           "masks_to_bool_tensor", "warp_source_pixels", "decode_rles"]
