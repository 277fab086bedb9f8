"""Geometric transforms: Resize, RandomFlip, Pad, Expand, RandomShift, SegRescale -- images,
box fields, mask fields and semantic maps move together.

Boxes are ``(n, 4)`` float32 xyxy in pixels of the current image. Randomness comes from NumPy's
global generator, as in MMDetection, so that ``np.random.seed`` and the data loader's worker
seeding make a pipeline repeatable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Number
from typing import Any

import numpy as np

from detlab.data.transforms.imageops import (
    INTERPOLATIONS,
    imflip,
    impad,
    impad_to_multiple,
    imrescale,
    imresize,
    rescale_size,
)
from detlab.data.transforms.instances import (
    bbox_fields,
    check_single_image,
    clip_to_image,
    select_instances,
)
from detlab.registry import TRANSFORMS
from detlab.structures import clip_boxes, flip_boxes

FLIP_DIRECTIONS = ("horizontal", "vertical", "diagonal")


def _is_pair(value: Any) -> bool:
    return (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
            and all(isinstance(v, Number) for v in value))


def as_scales(img_scale: Any) -> list[tuple[int, int]] | None:
    """``img_scale`` as a list of ``(a, b)`` tuples: a pair or a list of pairs (lists from JSON
    or YAML configs are accepted as well as MMDetection's tuples)."""
    if img_scale is None:
        return None
    if _is_pair(img_scale):
        return [tuple(int(v) for v in img_scale)]
    if isinstance(img_scale, Sequence) and img_scale and all(_is_pair(s) for s in img_scale):
        return [tuple(int(v) for v in s) for s in img_scale]
    raise ValueError(f"img_scale must be a (long, short) pair or a list of pairs, "
                     f"got {img_scale!r}")


@TRANSFORMS.register_module()
class Resize:
    """Resize the image and the boxes to a scale chosen as MMDetection 2.x chooses it.

    The scale is ``results['scale']`` when an earlier step set it (``MultiScaleFlipAug``), else
    ``results['scale_factor']`` times the image size, else drawn from ``img_scale``: the only
    one; with several, a random one of them (``multiscale_mode='value'``) or random edges between
    their smallest and largest (``'range'``); with ``ratio_range``, ``img_scale`` (or the image
    size) times a random ratio. With ``keep_ratio`` the image is scaled as large as fits: long
    edge <= ``max(scale)``, short edge <= ``min(scale)``; otherwise to ``scale`` = ``(w, h)``.

    Adds ``scale``, ``scale_idx``, ``scale_factor`` (float32 ``[w_scale, h_scale, w_scale,
    h_scale]``), ``keep_ratio``; updates ``img`` (every key of ``img_fields``), ``img_shape``,
    ``pad_shape``, every key of ``bbox_fields`` (clipped to the image with
    ``bbox_clip_border``), of ``mask_fields`` (resized to the image, nearest neighbour) and of
    ``seg_fields`` (nearest neighbour).

    Args:
        img_scale: ``(long, short)`` edges or a list of them.
        multiscale_mode: ``'range'`` or ``'value'``, for a list of scales.
        ratio_range: ``(low, high)`` ratios that multiply the single ``img_scale``.
        keep_ratio: keep the aspect ratio.
        bbox_clip_border: clip boxes to the resized image.
        backend: ``'cv2'`` or ``'pillow'``; accepted for MMDetection configs, PIL resizes both.
        interpolation: ``'nearest'``, ``'bilinear'``, ``'bicubic'``, ``'area'``, ``'lanczos'``.
        override: choose a new scale even if ``scale`` is set (a second Resize).
    """

    def __init__(self, img_scale: Any = None, multiscale_mode: str = "range",
                 ratio_range: Sequence[float] | None = None, keep_ratio: bool = True,
                 bbox_clip_border: bool = True, backend: str = "cv2",
                 interpolation: str = "bilinear", override: bool = False) -> None:
        self.img_scale = as_scales(img_scale)
        if ratio_range is not None and self.img_scale is not None and len(self.img_scale) != 1:
            raise ValueError("Resize with ratio_range takes one img_scale, got "
                             f"{len(self.img_scale)}")
        if multiscale_mode not in ("range", "value"):
            raise ValueError(f"multiscale_mode must be 'range' or 'value', got "
                             f"{multiscale_mode!r}")
        if backend not in ("cv2", "pillow"):
            raise ValueError(f"backend must be 'cv2' or 'pillow', got {backend!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, "
                             f"got {interpolation!r}")
        self.multiscale_mode = multiscale_mode
        self.ratio_range = None if ratio_range is None else tuple(ratio_range)
        self.keep_ratio = keep_ratio
        self.bbox_clip_border = bbox_clip_border
        self.backend = backend
        self.interpolation = interpolation
        self.override = override

    @staticmethod
    def random_select(img_scales: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], int]:
        """One of ``img_scales`` at random, and its index."""
        index = int(np.random.randint(len(img_scales)))
        return img_scales[index], index

    @staticmethod
    def random_sample(img_scales: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], None]:
        """Random ``(long, short)`` edges, each between the smallest and largest of
        ``img_scales``."""
        longs = [max(s) for s in img_scales]
        shorts = [min(s) for s in img_scales]
        long_edge = int(np.random.randint(min(longs), max(longs) + 1))
        short_edge = int(np.random.randint(min(shorts), max(shorts) + 1))
        return (long_edge, short_edge), None

    @staticmethod
    def random_sample_ratio(img_scale: tuple[int, int],
                            ratio_range: Sequence[float]) -> tuple[tuple[int, int], None]:
        """``img_scale`` times a ratio drawn uniformly from ``ratio_range``."""
        low, high = ratio_range
        if not 0 < low <= high:
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, "
                             f"got {ratio_range}")
        ratio = np.random.random_sample() * (high - low) + low
        return (int(img_scale[0] * ratio), int(img_scale[1] * ratio)), None

    def _random_scale(self, results: dict[str, Any]) -> None:
        if self.ratio_range is not None:
            h, w = results["img"].shape[:2]
            base = self.img_scale[0] if self.img_scale is not None else (w, h)
            scale, index = self.random_sample_ratio(base, self.ratio_range)
        elif self.img_scale is None:
            raise ValueError("Resize has no img_scale and the sample has no 'scale' or "
                             "'scale_factor' (set img_scale, or put Resize inside "
                             "MultiScaleFlipAug)")
        elif len(self.img_scale) == 1:
            scale, index = self.img_scale[0], 0
        elif self.multiscale_mode == "range":
            scale, index = self.random_sample(self.img_scale)
        else:
            scale, index = self.random_select(self.img_scale)
        results["scale"] = scale
        results["scale_idx"] = index

    def _choose_scale(self, results: dict[str, Any]) -> None:
        if "scale" in results and self.override:
            results.pop("scale")
            results.pop("scale_factor", None)
        elif "scale" in results:
            if "scale_factor" in results:
                raise ValueError("the sample has both 'scale' and 'scale_factor'; resize it "
                                 "once, or pass override=True to the second Resize")
            return
        if "scale_factor" in results:
            factor = results["scale_factor"]
            if not isinstance(factor, Number):
                raise ValueError(f"a sample's 'scale_factor' before Resize must be a number "
                                 f"(from MultiScaleFlipAug), got {factor!r}")
            h, w = results["img"].shape[:2]
            results["scale"] = (int(w * factor), int(h * factor))
        else:
            self._random_scale(results)

    def _resize_img(self, results: dict[str, Any]) -> None:
        for key in results.get("img_fields", ["img"]):
            img = results[key]
            h, w = img.shape[:2]
            if self.keep_ratio:
                (new_w, new_h), _ = rescale_size((w, h), results["scale"])
            else:
                new_w, new_h = results["scale"]
            results[key] = imresize(img, (new_w, new_h), self.interpolation)
            # the factor of the sizes actually reached, not the requested one (rounding)
            factor = np.array([new_w / w, new_h / h] * 2, dtype=np.float32)
        results["img_shape"] = results["img"].shape
        results["pad_shape"] = results["img"].shape  # until a Pad
        results["scale_factor"] = factor
        results["keep_ratio"] = self.keep_ratio

    def _resize_bboxes(self, results: dict[str, Any]) -> None:
        for key in results.get("bbox_fields", []):
            boxes = (results[key] * results["scale_factor"]).astype(np.float32)
            if self.bbox_clip_border:
                boxes = clip_boxes(boxes, results["img_shape"])
            results[key] = boxes

    @staticmethod
    def _resize_masks_and_maps(results: dict[str, Any]) -> None:
        # to the image's exact size, which covers keep_ratio and not alike
        h, w = results["img_shape"][:2]
        for key in results.get("mask_fields", []):
            if results.get(key) is not None:
                results[key] = results[key].resize((h, w))
        for key in results.get("seg_fields", []):
            results[key] = imresize(results[key], (w, h), "nearest")

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        self._choose_scale(results)
        self._resize_img(results)
        self._resize_bboxes(results)
        self._resize_masks_and_maps(results)
        return results

    def __repr__(self) -> str:
        return (f"Resize(img_scale={self.img_scale}, multiscale_mode={self.multiscale_mode!r}, "
                f"ratio_range={self.ratio_range}, keep_ratio={self.keep_ratio})")


def _check_flip_args(flip_ratio: Any, direction: Any) -> None:
    directions = direction if isinstance(direction, list) else [direction]
    if not directions or any(d not in FLIP_DIRECTIONS for d in directions):
        raise ValueError(f"direction must be one of {FLIP_DIRECTIONS} or a list of them, "
                         f"got {direction!r}")
    if isinstance(flip_ratio, list):
        if len(flip_ratio) != len(directions) or not 0 <= sum(flip_ratio) <= 1:
            raise ValueError(f"a list flip_ratio needs one ratio per direction, summing to at "
                             f"most 1; got {flip_ratio} for {direction}")
    elif flip_ratio is not None and not (isinstance(flip_ratio, Number) and 0 <= flip_ratio <= 1):
        raise ValueError(f"flip_ratio must be None, a number in [0, 1] or a list of them, "
                         f"got {flip_ratio!r}")


@TRANSFORMS.register_module()
class RandomFlip:
    """Mirror the image and its boxes at random.

    ``flip_ratio`` is the chance to flip, shared evenly among the ``direction`` list, or a list
    of chances, one per direction. When the sample already has ``flip`` (``MultiScaleFlipAug``
    sets it) that decision is kept. ``flip_ratio=None`` never flips on its own.

    Adds ``flip`` and ``flip_direction``; updates every key of ``img_fields``,
    ``bbox_fields``, ``mask_fields`` and ``seg_fields`` when flipping.
    """

    def __init__(self, flip_ratio: float | list[float] | None = None,
                 direction: str | list[str] = "horizontal") -> None:
        _check_flip_args(flip_ratio, direction)
        self.flip_ratio = flip_ratio
        self.direction = direction

    def _draw(self) -> str | None:
        """A random direction, or None for no flip."""
        directions = self.direction if isinstance(self.direction, list) else [self.direction]
        if isinstance(self.flip_ratio, list):
            chances = list(self.flip_ratio)
        else:
            ratio = float(self.flip_ratio or 0.0)
            chances = [ratio / len(directions)] * len(directions)
        chances.append(max(0.0, 1.0 - sum(chances)))
        pick = int(np.random.choice(len(chances), p=np.asarray(chances) / sum(chances)))
        return directions[pick] if pick < len(directions) else None

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        if "flip" not in results:
            direction = self._draw()
            results["flip"] = direction is not None
            results.setdefault("flip_direction", direction)
        results.setdefault("flip_direction", None)
        if results["flip"]:
            direction = results["flip_direction"]
            for key in results.get("img_fields", ["img"]):
                results[key] = imflip(results[key], direction)
            for key in results.get("bbox_fields", []):
                results[key] = flip_boxes(results[key], results["img_shape"], direction)
            for key in results.get("mask_fields", []):
                if results.get(key) is not None:
                    results[key] = results[key].flip(direction)
            for key in results.get("seg_fields", []):
                results[key] = imflip(results[key], direction)
        return results

    def __repr__(self) -> str:
        return f"RandomFlip(flip_ratio={self.flip_ratio}, direction={self.direction!r})"


@TRANSFORMS.register_module()
class Pad:
    """Pad the image at the bottom and right: to ``size`` ``(h, w)``, to multiples of
    ``size_divisor``, or to a square (``pad_to_square``). Boxes do not move.

    Adds ``pad_shape``, ``pad_fixed_size``, ``pad_size_divisor``; updates every key of
    ``img_fields``, of ``mask_fields`` (padded with ``pad_val['masks']``) and of
    ``seg_fields`` (with ``pad_val['seg']``) to ``pad_shape``.

    Args:
        size: ``(h, w)`` to pad to.
        size_divisor: pad both sides up to a multiple of it.
        pad_to_square: pad the shorter side to the longer one.
        pad_val: a number, or ``dict(img=..., masks=..., seg=...)`` (defaults 0, 0, 255); an
            image value may be one number per channel.
    """

    def __init__(self, size: Sequence[int] | None = None, size_divisor: int | None = None,
                 pad_to_square: bool = False,
                 pad_val: float | Mapping[str, float] | None = None) -> None:
        if pad_to_square and (size is not None or size_divisor is not None):
            raise ValueError("Pad(pad_to_square=True) takes neither size nor size_divisor")
        if not pad_to_square and (size is None) == (size_divisor is None):
            raise ValueError("Pad needs exactly one of size and size_divisor (or "
                             "pad_to_square=True)")
        if isinstance(pad_val, Number):
            pad_val = dict(img=pad_val, masks=pad_val, seg=255)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.size_divisor = size_divisor
        self.pad_to_square = pad_to_square
        self.pad_val = {"img": 0, "masks": 0, "seg": 255, **dict(pad_val or {})}

    def _pad(self, img: np.ndarray) -> np.ndarray:
        value = self.pad_val["img"]
        if self.pad_to_square:
            side = max(img.shape[:2])
            return impad(img, (side, side), value)
        if self.size is not None:
            return impad(img, self.size, value)
        return impad_to_multiple(img, self.size_divisor, value)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        for key in results.get("img_fields", ["img"]):
            results[key] = self._pad(results[key])
        results["pad_shape"] = results["img"].shape
        results["pad_fixed_size"] = (results["img"].shape[:2] if self.pad_to_square
                                     else self.size)
        results["pad_size_divisor"] = self.size_divisor
        shape = results["pad_shape"][:2]
        for key in results.get("mask_fields", []):
            if results.get(key) is not None:
                results[key] = results[key].pad(shape, pad_val=self.pad_val["masks"])
        for key in results.get("seg_fields", []):
            results[key] = impad(results[key], shape, self.pad_val["seg"])
        return results

    def __repr__(self) -> str:
        return (f"Pad(size={self.size}, size_divisor={self.size_divisor}, "
                f"pad_to_square={self.pad_to_square}, pad_val={self.pad_val})")


def _shift_array(array: np.ndarray, dx: int, dy: int, fill: float = 0) -> np.ndarray:
    """``array`` (``H x W (x C)``) moved by ``(dx, dy)`` pixels on a canvas of its own size."""
    out = np.full_like(array, fill)
    h, w = array.shape[:2]
    x1, y1, x2, y2 = max(dx, 0), max(dy, 0), min(w + dx, w), min(h + dy, h)
    if x2 > x1 and y2 > y1:
        out[y1:y2, x1:x2] = array[y1 - dy:y2 - dy, x1 - dx:x2 - dx]
    return out


@TRANSFORMS.register_module()
class Expand:
    """Zoom out (SSD): with probability ``prob``, put the image at a random place of a canvas
    ``ratio`` times its size (``ratio`` drawn from ``ratio_range``) filled with ``mean``.

    Updates ``img``, ``img_shape`` (MMDetection leaves it stale; later steps such as
    ``RandomFlip`` read it), every key of ``bbox_fields`` (shifted), of ``mask_fields`` and of
    ``seg_fields`` (filled with ``seg_ignore_label``). No box is dropped.

    Args:
        mean: the canvas colour in RGB order when ``to_rgb`` (reversed to the image's BGR),
            else in the image's order: usually ``Normalize``'s mean.
        to_rgb: ``mean`` is given in RGB order.
        ratio_range: ``(low, high)`` canvas size ratios, ``low >= 1``.
        seg_ignore_label: the label of the new area of semantic maps (needed with them).
        prob: the chance to expand.
    """

    def __init__(self, mean: Sequence[float] = (0, 0, 0), to_rgb: bool = True,
                 ratio_range: Sequence[float] = (1, 4), seg_ignore_label: int | None = None,
                 prob: float = 0.5) -> None:
        low, high = (float(r) for r in ratio_range)
        if not 1 <= low <= high:
            raise ValueError(f"ratio_range must be (low, high) with 1 <= low <= high, "
                             f"got {tuple(ratio_range)}")
        if not 0 <= prob <= 1:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        self.to_rgb = to_rgb
        self.mean = tuple(mean)[::-1] if to_rgb else tuple(mean)
        self.ratio_range = (low, high)
        self.seg_ignore_label = seg_ignore_label
        self.prob = prob

    def _expand_image(self, img: np.ndarray, ratio: float) -> tuple[np.ndarray, int, int]:
        h, w = img.shape[:2]
        channels = 1 if img.ndim == 2 else img.shape[2]
        if len(self.mean) not in (1, channels):
            raise ValueError(f"Expand has {len(self.mean)} mean values for an image of "
                             f"{channels} channels")
        canvas = np.empty((int(h * ratio), int(w * ratio)) + img.shape[2:], dtype=img.dtype)
        canvas[...] = self.mean if img.ndim == 3 else self.mean[0]
        # draw order as MMDetection: left then top (same crops for the same seed)
        left = int(np.random.uniform(0, w * ratio - w))
        top = int(np.random.uniform(0, h * ratio - h))
        canvas[top:top + h, left:left + w] = img
        return canvas, left, top

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        if np.random.uniform(0, 1) > self.prob:
            return results
        check_single_image(results, "Expand")
        if results.get("seg_fields") and self.seg_ignore_label is None:
            raise ValueError("Expand needs seg_ignore_label to fill the new area of semantic "
                             "maps (e.g. seg_ignore_label=255)")
        h, w = results["img"].shape[:2]
        ratio = np.random.uniform(*self.ratio_range)
        results["img"], left, top = self._expand_image(results["img"], ratio)
        new_h, new_w = results["img"].shape[:2]
        results["img_shape"] = results["img"].shape
        for key in bbox_fields(results):
            results[key] = results[key] + np.array([left, top, left, top], results[key].dtype)
        for key in results.get("mask_fields", []):
            if results.get(key) is not None:
                results[key] = results[key].expand(new_h, new_w, top, left)
        for key in results.get("seg_fields", []):
            seg = np.full((new_h, new_w), self.seg_ignore_label, dtype=results[key].dtype)
            seg[top:top + h, left:left + w] = results[key]
            results[key] = seg
        return results

    def __repr__(self) -> str:
        return (f"Expand(mean={self.mean}, to_rgb={self.to_rgb}, ratio_range="
                f"{self.ratio_range}, seg_ignore_label={self.seg_ignore_label}, "
                f"prob={self.prob})")


@TRANSFORMS.register_module()
class RandomShift:
    """With probability ``shift_ratio``, move the image content by up to ``max_shift_px``
    pixels in x and y (the canvas keeps its size; the uncovered area is 0).

    Boxes move and are clipped; those no wider or taller than ``filter_thr_px`` are dropped with
    their labels, masks and ids. As MMDetection, the sample is left as it is when no box of
    ``gt_bboxes`` would survive (so images without boxes never move). Updates ``img``, every
    key of ``bbox_fields`` and their companions, ``mask_fields`` and ``seg_fields`` (filled
    with 255).

    Args:
        shift_ratio: the chance to shift.
        max_shift_px: the largest shift, in pixels.
        filter_thr_px: boxes must stay wider and taller than this.
    """

    def __init__(self, shift_ratio: float = 0.5, max_shift_px: int = 32,
                 filter_thr_px: int = 1) -> None:
        if not 0 <= shift_ratio <= 1:
            raise ValueError(f"shift_ratio must be in [0, 1], got {shift_ratio}")
        if max_shift_px < 0:
            raise ValueError(f"max_shift_px must be >= 0, got {max_shift_px}")
        self.shift_ratio = shift_ratio
        self.max_shift_px = int(max_shift_px)
        self.filter_thr_px = int(filter_thr_px)

    def _shifted_boxes(self, results: dict[str, Any], dx: int, dy: int
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """New boxes and keep masks of every box field, or None when ``gt_bboxes`` would lose
        every box."""
        h, w = results["img"].shape[:2]
        plan = {}
        for key in bbox_fields(results):
            boxes = clip_to_image(results[key] + np.array([dx, dy, dx, dy], np.float32), h, w)
            keep = ((boxes[:, 2] - boxes[:, 0] > self.filter_thr_px)
                    & (boxes[:, 3] - boxes[:, 1] > self.filter_thr_px))
            if key == "gt_bboxes" and not keep.any():
                return None
            plan[key] = (boxes, keep)
        return plan

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        if np.random.random() >= self.shift_ratio:
            return results
        limit = self.max_shift_px
        dx = int(np.random.randint(-limit, limit)) if limit else 0
        dy = int(np.random.randint(-limit, limit)) if limit else 0
        plan = self._shifted_boxes(results, dx, dy)
        if plan is None:
            return results
        for key, (boxes, keep) in plan.items():
            results[key] = boxes
            select_instances(results, key, keep)
        for key in results.get("img_fields", ["img"]):
            results[key] = _shift_array(results[key], dx, dy)
        shape = results["img"].shape[:2]
        for key in results.get("mask_fields", []):
            if results.get(key) is not None:
                results[key] = results[key].place((dx, dy), shape)
        for key in results.get("seg_fields", []):
            results[key] = _shift_array(results[key], dx, dy, fill=255)
        return results

    def __repr__(self) -> str:
        return (f"RandomShift(shift_ratio={self.shift_ratio}, max_shift_px={self.max_shift_px}, "
                f"filter_thr_px={self.filter_thr_px})")


@TRANSFORMS.register_module()
class SegRescale:
    """Rescale the semantic maps of ``seg_fields`` by ``scale_factor`` (nearest neighbour),
    e.g. to the stride of a semantic head. Updates every key of ``seg_fields``.

    Args:
        scale_factor: the factor.
        backend: ``'cv2'`` (the default): the pixels OpenCV's nearest-neighbour resize picks,
            as MMDetection's (without OpenCV); ``'pillow'``: PIL's nearest.
    """

    def __init__(self, scale_factor: float = 1, backend: str = "cv2") -> None:
        if scale_factor <= 0:
            raise ValueError(f"scale_factor must be positive, got {scale_factor}")
        if backend not in ("cv2", "pillow"):
            raise ValueError(f"backend must be 'cv2' or 'pillow', got {backend!r}")
        self.scale_factor = scale_factor
        self.backend = backend

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        if self.scale_factor != 1:
            for key in results.get("seg_fields", []):
                if self.backend == "cv2":
                    results[key] = _cv2_nearest_rescale(results[key], self.scale_factor)
                else:
                    results[key] = imrescale(results[key], self.scale_factor, "nearest")
        return results

    def __repr__(self) -> str:
        return f"SegRescale(scale_factor={self.scale_factor})"


def _cv2_nearest_rescale(seg: np.ndarray, scale: float) -> np.ndarray:
    """``seg`` rescaled by ``scale`` as OpenCV's ``INTER_NEAREST`` picks pixels (the source
    pixel ``floor(i * src / dst)``, MMDetection's default for SegRescale), which PIL's
    nearest (the pixel under the output pixel's centre) does not: at 1/8 they are half a
    stride apart. The size is mmcv's (:func:`rescale_size`)."""
    h, w = seg.shape[:2]
    (new_w, new_h), _ = rescale_size((w, h), scale)
    rows = np.minimum(np.floor(np.arange(new_h) * (1.0 / (new_h / h))).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(new_w) * (1.0 / (new_w / w))).astype(np.int64), w - 1)
    return seg[rows][:, cols]
