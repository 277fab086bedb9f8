"""BGR <-> HSV conversions in NumPy, with OpenCV's formulas and ranges.

MMDetection's colour augmentations call ``cv2.cvtColor``; these functions give the same numbers
without OpenCV, so that ``PhotoMetricDistortion`` and ``YOLOXHSVRandomAug`` keep their meaning:

- float images (``bgr_to_hsv`` / ``hsv_to_bgr``): hue in degrees ``[0, 360)``, saturation
  ``[0, 1]``, value in the image's own range (``max(b, g, r)``); values outside ``[0, 255]`` are
  carried through, as OpenCV does for float32;
- uint8 images (``bgr_to_hsv_uint8`` / ``hsv_to_bgr_uint8``): hue ``[0, 180)`` (degrees / 2),
  saturation and value ``[0, 255]``, with OpenCV's fixed-point rounding.
"""

from __future__ import annotations

import numpy as np

_EPS = np.finfo(np.float32).eps
# for each hue sector, which of (v, p, q, t) below become blue, green and red
_SECTORS = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def bgr_to_hsv(img: np.ndarray) -> np.ndarray:
    """``H x W x 3`` float BGR -> float32 HSV (hue in degrees)."""
    img = img.astype(np.float32, copy=False)
    b, g, r = img[..., 0], img[..., 1], img[..., 2]
    v = img.max(axis=-1)
    diff = v - img.min(axis=-1)
    s = diff / (np.abs(v) + _EPS)
    step = np.float32(60.0) / (diff + _EPS)
    h = np.where(v == r, (g - b) * step,
                 np.where(v == g, (b - r) * step + 120, (r - g) * step + 240))
    h = np.where(h < 0, h + 360, h)
    return np.stack([h, s, v], axis=-1).astype(np.float32)


def _hsv_planes_to_bgr(h: np.ndarray, s: np.ndarray, v: np.ndarray,
                       sectors_per_unit: float) -> np.ndarray:
    """OpenCV's HSV -> BGR on float planes; ``h * sectors_per_unit`` is in hue sectors."""
    h = np.mod(h * np.float32(sectors_per_unit), 6).astype(np.float32)
    sector = np.floor(h).astype(np.int64).clip(0, 5)
    frac = h - sector
    table = np.stack([v, v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))], axis=-1)
    picks = _SECTORS[sector]  # (..., 3)
    bgr = np.take_along_axis(table, picks, axis=-1)
    gray = (s == 0)[..., None]
    return np.where(gray, v[..., None], bgr).astype(np.float32)


def hsv_to_bgr(img: np.ndarray) -> np.ndarray:
    """``H x W x 3`` float HSV (hue in degrees) -> float32 BGR."""
    img = img.astype(np.float32, copy=False)
    return _hsv_planes_to_bgr(img[..., 0], img[..., 1], img[..., 2], 6.0 / 360.0)


_SHIFT = 12


def _fixed_point_table(numerator: float, count: int) -> np.ndarray:
    index = np.arange(count, dtype=np.float64)
    with np.errstate(divide="ignore"):
        table = np.where(index > 0, np.rint(numerator / np.maximum(index, 1)), 0)
    return table.astype(np.int64)


_SDIV = _fixed_point_table(255 << _SHIFT, 256)
_HDIV = _fixed_point_table((180 << _SHIFT) / 6.0, 256)


def bgr_to_hsv_uint8(img: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 BGR -> uint8 HSV with hue in ``[0, 180)``, rounded as OpenCV."""
    pixels = img.astype(np.int64)
    b, g, r = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    v = pixels.max(axis=-1)
    diff = v - pixels.min(axis=-1)
    half = 1 << (_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + half) >> _SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv_to_bgr_uint8(img: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 HSV (hue in ``[0, 180)``) -> uint8 BGR, rounded as OpenCV."""
    planes = img.astype(np.float32)
    bgr = _hsv_planes_to_bgr(planes[..., 0], planes[..., 1] / 255, planes[..., 2] / 255,
                             6.0 / 180.0)
    return np.rint(bgr * 255).clip(0, 255).astype(np.uint8)
