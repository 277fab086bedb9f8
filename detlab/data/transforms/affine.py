"""RandomAffine (YOLOX): rotation, scaling, shear and translation in one warp."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from detlab.data.transforms.imageops import imwarp
from detlab.data.transforms.instances import (
    bbox_fields,
    box_candidates,
    check_single_image,
    clip_to_image,
    inside_image,
    nondegenerate,
    select_instances,
    transform_boxes,
)
from detlab.registry import TRANSFORMS


def rotation_matrix(degrees: float) -> np.ndarray:
    """``3 x 3`` rotation about the origin (the top-left corner)."""
    radian = math.radians(degrees)
    cos, sin = math.cos(radian), math.sin(radian)
    return np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)


def scaling_matrix(ratio: float) -> np.ndarray:
    """``3 x 3`` uniform scaling about the origin."""
    return np.array([[ratio, 0.0, 0.0], [0.0, ratio, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)


def shear_matrix(x_degrees: float, y_degrees: float) -> np.ndarray:
    """``3 x 3`` shear: x moves by ``tan(x_degrees) * y``, y by ``tan(y_degrees) * x``."""
    return np.array([[1.0, math.tan(math.radians(x_degrees)), 0.0],
                     [math.tan(math.radians(y_degrees)), 1.0, 0.0],
                     [0.0, 0.0, 1.0]], dtype=np.float32)


def translation_matrix(x: float, y: float) -> np.ndarray:
    """``3 x 3`` translation by ``(x, y)``."""
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]], dtype=np.float32)


@TRANSFORMS.register_module()
class RandomAffine:
    """A random warp ``translate @ shear @ rotate @ scale`` (about the top-left corner, as
    MMDetection 2.x), for YOLOX-style training after ``Mosaic``.

    The output is the input size plus ``2 * border`` (``border`` ``(h, w)``, negative to shrink:
    YOLOX passes ``(-img_scale[0] // 2, -img_scale[1] // 2)`` to bring a mosaic back to
    ``img_scale``). Boxes become the boxes of their warped corners, clipped with
    ``bbox_clip_border``; boxes outside the output, left without area, or (unless
    ``skip_filter``) failing the size / area / aspect rules are dropped with their labels, masks
    and ids. Masks are warped with the same matrix (MMDetection refuses masks here).

    The image is resampled by PIL with pixel-edge coordinates (those of boxes), where OpenCV's
    ``warpPerspective`` puts pixel centres on whole numbers: a warped image matches its warped
    boxes exactly, while MMDetection's is off by up to half a pixel times the scale change.

    Updates ``img``, ``img_shape``, every key of ``bbox_fields`` with its companions, of
    ``mask_fields`` and of ``seg_fields`` (nearest neighbour, filled with 255).

    Args:
        max_rotate_degree: rotation drawn in ``[-max, max]`` degrees.
        max_translate_ratio: translation drawn in ``[-max, max]`` times the output size.
        scaling_ratio_range: ``(low, high)`` scale factors.
        max_shear_degree: shear angles drawn in ``[-max, max]`` degrees.
        border: ``(h, w)`` pixels added on each side of the output.
        border_val: the colour of the uncovered area (image channel order).
        min_bbox_size, min_area_ratio, max_aspect_ratio: the filter rules (see
            :func:`~detlab.data.transforms.instances.box_candidates`).
        bbox_clip_border: clip boxes to the output.
        skip_filter: do not apply the filter rules.
    """

    def __init__(self, max_rotate_degree: float = 10.0, max_translate_ratio: float = 0.1,
                 scaling_ratio_range: Sequence[float] = (0.5, 1.5),
                 max_shear_degree: float = 2.0, border: Sequence[int] = (0, 0),
                 border_val: Sequence[float] = (114, 114, 114), min_bbox_size: float = 2,
                 min_area_ratio: float = 0.2, max_aspect_ratio: float = 20,
                 bbox_clip_border: bool = True, skip_filter: bool = True) -> None:
        if not 0 <= max_translate_ratio <= 1:
            raise ValueError(f"max_translate_ratio must be in [0, 1], got {max_translate_ratio}")
        low, high = scaling_ratio_range
        if not 0 < low <= high:
            raise ValueError(f"scaling_ratio_range must be (low, high) with 0 < low <= high, "
                             f"got {tuple(scaling_ratio_range)}")
        self.max_rotate_degree = max_rotate_degree
        self.max_translate_ratio = max_translate_ratio
        self.scaling_ratio_range = (low, high)
        self.max_shear_degree = max_shear_degree
        self.border = (int(border[0]), int(border[1]))
        self.border_val = tuple(border_val)
        self.min_bbox_size = min_bbox_size
        self.min_area_ratio = min_area_ratio
        self.max_aspect_ratio = max_aspect_ratio
        self.bbox_clip_border = bbox_clip_border
        self.skip_filter = skip_filter

    def draw_matrix(self, height: int, width: int) -> tuple[np.ndarray, float]:
        """A random warp for an output of ``height x width``, and its scaling ratio (draws in
        MMDetection's order)."""
        rotation = rotation_matrix(np.random.uniform(-self.max_rotate_degree,
                                                     self.max_rotate_degree))
        ratio = float(np.random.uniform(*self.scaling_ratio_range))
        scaling = scaling_matrix(ratio)
        shear = shear_matrix(np.random.uniform(-self.max_shear_degree, self.max_shear_degree),
                             np.random.uniform(-self.max_shear_degree, self.max_shear_degree))
        limit = self.max_translate_ratio
        translation = translation_matrix(np.random.uniform(-limit, limit) * width,
                                         np.random.uniform(-limit, limit) * height)
        return translation @ shear @ rotation @ scaling, ratio

    def _warp_boxes(self, results: dict[str, Any], matrix: np.ndarray, ratio: float,
                    height: int, width: int) -> None:
        for key in bbox_fields(results):
            boxes = results[key]
            warped = transform_boxes(boxes, matrix)
            if self.bbox_clip_border:
                warped = clip_to_image(warped, height, width)
            keep = inside_image(warped, height, width) & nondegenerate(warped)
            if not self.skip_filter:
                keep &= box_candidates(boxes * ratio, warped, self.min_bbox_size,
                                       self.min_area_ratio, self.max_aspect_ratio)
            results[key] = warped
            select_instances(results, key, keep)

    def apply(self, results: dict[str, Any], matrix: np.ndarray, ratio: float = 1.0
              ) -> dict[str, Any]:
        """Warp ``results`` by ``matrix`` (no randomness); ``ratio`` is the scaling the filter
        rules compare areas with."""
        check_single_image(results, "RandomAffine")
        img = results["img"]
        height = img.shape[0] + self.border[0] * 2
        width = img.shape[1] + self.border[1] * 2
        results["img"] = imwarp(img, matrix, (width, height), self.border_val)
        results["img_shape"] = results["img"].shape
        self._warp_boxes(results, matrix, ratio, height, width)
        for key in results.get("mask_fields", []):
            if results.get(key) is not None:
                results[key] = results[key].warp(matrix, (height, width))
        for key in results.get("seg_fields", []):
            results[key] = imwarp(results[key], matrix, (width, height), 255, "nearest")
        return results

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        height = results["img"].shape[0] + self.border[0] * 2
        width = results["img"].shape[1] + self.border[1] * 2
        matrix, ratio = self.draw_matrix(height, width)
        return self.apply(results, matrix, ratio)

    def __repr__(self) -> str:
        return (f"RandomAffine(max_rotate_degree={self.max_rotate_degree}, "
                f"max_translate_ratio={self.max_translate_ratio}, scaling_ratio_range="
                f"{self.scaling_ratio_range}, max_shear_degree={self.max_shear_degree}, "
                f"border={self.border}, border_val={self.border_val}, min_bbox_size="
                f"{self.min_bbox_size}, min_area_ratio={self.min_area_ratio}, "
                f"max_aspect_ratio={self.max_aspect_ratio}, skip_filter={self.skip_filter})")
