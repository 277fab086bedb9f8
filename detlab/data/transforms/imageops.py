"""Image operations on ``H x W (x C)`` NumPy arrays through PIL: resize, flip, pad.

They follow mmcv's rules for sizes (``rescale_size``, ``impad_to_multiple``) so that detlab's
pipelines give MMDetection 2.x's shapes and scale factors; pixels come from PIL's resampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}


def _scale_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(w, h)`` times ``scale``, rounded half up as mmcv does."""
    return int(size[0] * float(scale) + 0.5), int(size[1] * float(scale) + 0.5)


def rescale_size(old_size: tuple[int, int], scale: float | Sequence[int]) -> tuple[
        tuple[int, int], float]:
    """New ``(w, h)`` of an image of ``old_size`` ``(w, h)`` resized keeping its aspect ratio,
    and the factor used.

    ``scale`` is a factor, or an edge pair (in any order) that the image must fit: the long edge
    at most ``max(scale)``, the short edge at most ``min(scale)``.
    """
    w, h = old_size
    if isinstance(scale, (int, float)):
        if scale <= 0:
            raise ValueError(f"the scale factor must be positive, got {scale}")
        factor = float(scale)
    else:
        long_edge, short_edge = max(scale), min(scale)
        factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return _scale_size((w, h), factor), factor


def imresize(img: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """``img`` (``H x W`` or ``H x W x C``, uint8 or float) resized to ``size`` ``(w, h)``."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, "
                         f"got {interpolation!r}")
    size = (int(size[0]), int(size[1]))
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"cannot resize an image of shape {img.shape} to {size} (w, h)")
    method = INTERPOLATIONS[interpolation]
    if img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] in (3, 4)):
        return np.asarray(Image.fromarray(img).resize(size, method))
    # PIL holds float images one channel at a time (mode 'F')
    planes = img[..., None] if img.ndim == 2 else img
    out = np.stack([np.asarray(Image.fromarray(planes[..., c].astype(np.float32)).resize(
        size, method)) for c in range(planes.shape[2])], axis=-1)
    if np.issubdtype(img.dtype, np.integer):
        limits = np.iinfo(img.dtype)
        out = np.rint(out).clip(limits.min, limits.max)
    out = out.astype(img.dtype, copy=False)
    return out[..., 0] if img.ndim == 2 else out


def imflip(img: np.ndarray, direction: str = "horizontal") -> np.ndarray:
    """``img`` mirrored ``'horizontal'``-ly, ``'vertical'``-ly or both (``'diagonal'``); a
    contiguous copy, so tensors can be made from it."""
    axes = {"horizontal": (1,), "vertical": (0,), "diagonal": (0, 1)}
    if direction not in axes:
        raise ValueError(f"flip direction must be one of {list(axes)}, got {direction!r}")
    return np.ascontiguousarray(np.flip(img, axis=axes[direction]))


def impad(img: np.ndarray, shape: tuple[int, int], pad_val: float = 0) -> np.ndarray:
    """``img`` padded at the bottom and right to ``shape`` ``(h, w)`` with ``pad_val``."""
    h, w = img.shape[:2]
    if shape[0] < h or shape[1] < w:
        raise ValueError(f"cannot pad an image of {h} x {w} to the smaller {shape[0]} x "
                         f"{shape[1]} (h x w)")
    out = np.full((int(shape[0]), int(shape[1])) + img.shape[2:], pad_val, dtype=img.dtype)
    out[:h, :w] = img
    return out


def impad_to_multiple(img: np.ndarray, divisor: int, pad_val: float = 0) -> np.ndarray:
    """``img`` padded at the bottom and right so that both sides are multiples of ``divisor``."""
    h, w = img.shape[:2]
    return impad(img, (-(-h // divisor) * divisor, -(-w // divisor) * divisor), pad_val)


def imrescale(img: np.ndarray, scale: float | Sequence[int],
              interpolation: str = "bilinear") -> np.ndarray:
    """``img`` resized keeping its aspect ratio by ``scale`` (a factor, or an edge pair it must
    fit; see :func:`rescale_size`)."""
    h, w = img.shape[:2]
    (new_w, new_h), _ = rescale_size((w, h), scale)
    return imresize(img, (new_w, new_h), interpolation)


_WARP_METHODS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                 "bicubic": Image.Resampling.BICUBIC}


def _pil_transform_args(matrix: np.ndarray) -> tuple[Image.Transform, tuple[float, ...]]:
    """PIL's transform kind and data for the projective ``matrix`` (source -> output); PIL
    wants the inverse map (output -> source)."""
    inverse = np.linalg.inv(np.asarray(matrix, dtype=np.float64))
    inverse = inverse / inverse[2, 2]
    if np.allclose(inverse[2, :2], 0):
        return Image.Transform.AFFINE, tuple(inverse[:2].reshape(-1).tolist())
    return Image.Transform.PERSPECTIVE, tuple(inverse.reshape(-1)[:8].tolist())


def imwarp(img: np.ndarray, matrix: np.ndarray, size: tuple[int, int],
           border_value: float | Sequence[float] = 0,
           interpolation: str = "bilinear") -> np.ndarray:
    """``img`` under the ``3 x 3`` projective ``matrix`` (source -> output pixels) on a canvas
    of ``size`` ``(w, h)``, the uncovered area filled with ``border_value`` (one value or one
    per channel). Like ``cv2.warpPerspective``, but points are continuous pixel coordinates
    (pixel ``j`` covers ``[j, j + 1)``), the convention of boxes, so a warped box drawn in the
    image stays on its warped coordinates."""
    if interpolation not in _WARP_METHODS:
        raise ValueError(f"interpolation must be one of {sorted(_WARP_METHODS)}, "
                         f"got {interpolation!r}")
    size = (int(size[0]), int(size[1]))
    method, data = _pil_transform_args(matrix)
    resample = _WARP_METHODS[interpolation]
    planes = img[..., None] if img.ndim == 2 else img
    fills = np.broadcast_to(np.asarray(border_value, dtype=np.float64).reshape(-1),
                            (planes.shape[2],))
    if img.dtype == np.uint8 and planes.shape[2] in (1, 3):
        fill = tuple(int(round(f)) for f in fills)
        image = Image.fromarray(planes if planes.shape[2] == 3 else planes[..., 0])
        out = np.asarray(image.transform(size, method, data, resample,
                                         fillcolor=fill if len(fill) == 3 else fill[0]))
        return out if img.ndim == 2 or out.ndim == 3 else out[..., None]
    out = np.stack([np.asarray(Image.fromarray(planes[..., c].astype(np.float32)).transform(
        size, method, data, resample, fillcolor=float(fills[c])))
        for c in range(planes.shape[2])], axis=-1)
    if np.issubdtype(img.dtype, np.integer):
        limits = np.iinfo(img.dtype)
        out = np.rint(out).clip(limits.min, limits.max)
    out = out.astype(img.dtype, copy=False)
    return out[..., 0] if img.ndim == 2 else out
