"""Photometric transforms: pixel values change, geometry does not (Normalize,
PhotoMetricDistortion, YOLOXHSVRandomAug, CutOut)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detlab.data.transforms.colorspace import (
    bgr_to_hsv,
    bgr_to_hsv_uint8,
    hsv_to_bgr,
    hsv_to_bgr_uint8,
)
from detlab.data.transforms.instances import check_single_image
from detlab.registry import TRANSFORMS


@TRANSFORMS.register_module()
class Normalize:
    """``(img - mean) / std`` per channel, as float32, after turning BGR into RGB (``to_rgb``).

    Updates every key of ``img_fields``; adds ``img_norm_cfg`` (``mean``, ``std`` float32
    arrays and ``to_rgb``), which inference and drawing use to undo it.

    Args:
        mean, std: per channel, in the channel order after ``to_rgb``.
        to_rgb: swap the first and third channels first (images load as BGR, as in mmcv).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], to_rgb: bool = True) -> None:
        self.mean = np.array(mean, dtype=np.float32)
        self.std = np.array(std, dtype=np.float32)
        if self.mean.shape != self.std.shape or self.mean.ndim != 1:
            raise ValueError(f"mean and std must be lists of one value per channel, got "
                             f"{list(mean)} and {list(std)}")
        if np.any(self.std == 0):
            raise ValueError(f"std must not contain 0, got {list(std)}")
        self.to_rgb = to_rgb

    def _normalize(self, img: np.ndarray) -> np.ndarray:
        if img.ndim != 3 or img.shape[2] != self.mean.size:
            raise ValueError(f"Normalize has {self.mean.size} channel means but the image has "
                             f"shape {img.shape}; load it with color_type='color'")
        img = img.astype(np.float32)
        if self.to_rgb:
            img = img[..., ::-1]
        return np.ascontiguousarray((img - self.mean) / self.std, dtype=np.float32)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        for key in results.get("img_fields", ["img"]):
            results[key] = self._normalize(results[key])
        results["img_norm_cfg"] = dict(mean=self.mean, std=self.std, to_rgb=self.to_rgb)
        return results

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()}, " \
               f"to_rgb={self.to_rgb})"


@TRANSFORMS.register_module()
class PhotoMetricDistortion:
    """SSD's colour jitter on the BGR image, each step with chance 1/2, in MMDetection's order:

    1. brightness: add a value drawn in ``[-brightness_delta, brightness_delta]``;
    2. contrast (here or at step 7, chosen at random): multiply by ``contrast_range``;
    3. BGR -> HSV (float: hue in degrees, saturation in ``[0, 1]``, as OpenCV);
    4. saturation: multiply by ``saturation_range``;
    5. hue: add ``[-hue_delta, hue_delta]`` degrees, wrapped into ``[0, 360]``;
    6. HSV -> BGR;
    7. contrast, if not done at step 2;
    8. shuffle the channels.

    The image becomes float32 and is not clipped (as MMDetection: ``Normalize`` follows).
    Updates ``img``.

    Args:
        brightness_delta: the largest brightness change.
        contrast_range: ``(low, high)`` contrast factors.
        saturation_range: ``(low, high)`` saturation factors.
        hue_delta: the largest hue change, in degrees.
    """

    def __init__(self, brightness_delta: float = 32,
                 contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: float = 18) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_lower, self.contrast_upper = (float(v) for v in contrast_range)
        self.saturation_lower, self.saturation_upper = (float(v) for v in saturation_range)
        self.hue_delta = hue_delta

    def _contrast(self, img: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            img = img * np.float32(np.random.uniform(self.contrast_lower, self.contrast_upper))
        return img

    def _hsv_jitter(self, img: np.ndarray) -> np.ndarray:
        hsv = bgr_to_hsv(img)
        if np.random.randint(2):
            hsv[..., 1] *= np.random.uniform(self.saturation_lower, self.saturation_upper)
        if np.random.randint(2):
            hue = hsv[..., 0] + np.random.uniform(-self.hue_delta, self.hue_delta)
            hsv[..., 0] = np.where(hue > 360, hue - 360, np.where(hue < 0, hue + 360, hue))
        return hsv_to_bgr(hsv)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        check_single_image(results, "PhotoMetricDistortion")
        img = results["img"]
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"PhotoMetricDistortion needs a 3-channel image, got shape "
                             f"{img.shape}; load it with color_type='color'")
        img = img.astype(np.float32)
        if np.random.randint(2):
            img = img + np.float32(np.random.uniform(-self.brightness_delta,
                                                     self.brightness_delta))
        contrast_first = np.random.randint(2) == 1
        if contrast_first:
            img = self._contrast(img)
        img = self._hsv_jitter(img)
        if not contrast_first:
            img = self._contrast(img)
        if np.random.randint(2):
            img = img[..., np.random.permutation(3)]
        results["img"] = np.ascontiguousarray(img, dtype=np.float32)
        return results

    def __repr__(self) -> str:
        return (f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, "
                f"contrast_range={(self.contrast_lower, self.contrast_upper)}, "
                f"saturation_range={(self.saturation_lower, self.saturation_upper)}, "
                f"hue_delta={self.hue_delta})")


@TRANSFORMS.register_module()
class YOLOXHSVRandomAug:
    """YOLOX's HSV jitter on the uint8 BGR image: each of hue, saturation and value is shifted,
    with chance 1/2, by a whole number drawn in ``[-delta, delta]`` (hue in OpenCV's
    ``[0, 180)`` range, wrapped; saturation and value clipped to ``[0, 255]``).

    A float image is clipped to ``[0, 255]`` and rounded first, and keeps its dtype.
    Updates ``img``.

    Args:
        hue_delta, saturation_delta, value_delta: the largest shifts.
    """

    def __init__(self, hue_delta: int = 5, saturation_delta: int = 30,
                 value_delta: int = 30) -> None:
        self.hue_delta = hue_delta
        self.saturation_delta = saturation_delta
        self.value_delta = value_delta

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        img = results["img"]
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"YOLOXHSVRandomAug needs a 3-channel image, got shape {img.shape}")
        gains = np.random.uniform(-1, 1, 3) * [self.hue_delta, self.saturation_delta,
                                              self.value_delta]
        gains = (gains * np.random.randint(0, 2, 3)).astype(np.int16)
        pixels = img if img.dtype == np.uint8 else np.rint(img.clip(0, 255)).astype(np.uint8)
        hsv = bgr_to_hsv_uint8(pixels).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + gains[0]) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] + gains[1], 0, 255)
        hsv[..., 2] = np.clip(hsv[..., 2] + gains[2], 0, 255)
        results["img"] = hsv_to_bgr_uint8(hsv.astype(np.uint8)).astype(img.dtype)
        return results

    def __repr__(self) -> str:
        return (f"YOLOXHSVRandomAug(hue_delta={self.hue_delta}, saturation_delta="
                f"{self.saturation_delta}, value_delta={self.value_delta})")


@TRANSFORMS.register_module()
class CutOut:
    """Fill random rectangles of the image with ``fill_in`` (Cutout); boxes are unchanged.

    ``n_holes`` (or a number drawn in ``[n_holes[0], n_holes[1]]``) holes, each with its
    top-left corner anywhere in the image and a size ``(w, h)`` picked from ``cutout_shape``
    (pixels) or ``cutout_ratio`` (fractions of the image), cut by the image border.
    Updates ``img``.

    Args:
        n_holes: a count, or ``(low, high)``.
        cutout_shape: one ``(w, h)`` or a list to pick from.
        cutout_ratio: one ``(w, h)`` fraction pair or a list (instead of ``cutout_shape``).
        fill_in: the fill colour, in the image's channel order.
    """

    def __init__(self, n_holes: int | Sequence[int],
                 cutout_shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
                 cutout_ratio: Sequence[float] | Sequence[Sequence[float]] | None = None,
                 fill_in: Sequence[float] = (0, 0, 0)) -> None:
        if (cutout_shape is None) == (cutout_ratio is None):
            raise ValueError("CutOut needs exactly one of cutout_shape and cutout_ratio")
        holes = (n_holes, n_holes) if isinstance(n_holes, (int, np.integer)) else tuple(n_holes)
        if len(holes) != 2 or not 0 <= holes[0] <= holes[1]:
            raise ValueError(f"n_holes is a count or (low, high) with 0 <= low <= high, "
                             f"got {n_holes!r}")
        candidates = cutout_ratio if cutout_ratio is not None else cutout_shape
        pairs = [tuple(candidates)] if np.ndim(candidates) == 1 else [tuple(c) for c in candidates]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError(f"cutout sizes are (w, h) pairs or a list of them, got "
                             f"{candidates!r}")
        self.n_holes = holes
        self.with_ratio = cutout_ratio is not None
        self.candidates = pairs
        self.fill_in = tuple(fill_in)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        img = results["img"].copy()  # the caller's array stays as it was
        h, w = img.shape[:2]
        for _ in range(np.random.randint(self.n_holes[0], self.n_holes[1] + 1)):
            x1, y1 = np.random.randint(0, w), np.random.randint(0, h)
            cut_w, cut_h = self.candidates[np.random.randint(0, len(self.candidates))]
            if self.with_ratio:
                cut_w, cut_h = int(cut_w * w), int(cut_h * h)
            img[y1:min(y1 + int(cut_h), h), x1:min(x1 + int(cut_w), w)] = self.fill_in
        results["img"] = img
        return results

    def __repr__(self) -> str:
        kind = "cutout_ratio" if self.with_ratio else "cutout_shape"
        return f"CutOut(n_holes={self.n_holes}, {kind}={self.candidates}, fill_in={self.fill_in})"
