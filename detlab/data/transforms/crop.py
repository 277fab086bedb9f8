"""Crops: RandomCrop and SSD's MinIoURandomCrop, with boxes, masks and maps cut alike.

Boxes are ``(n, 4)`` float32 xyxy in pixels of the current image. A box that ends up outside the
crop, or with no width or height, is dropped together with its label, mask and instance id
(see :mod:`detlab.data.transforms.instances`). Random numbers come from NumPy's global generator
in MMDetection's order, so a seed gives MMDetection's crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detlab.data.transforms.instances import (
    MASK_OF_BOXES,
    bbox_fields,
    check_single_image,
    clip_to_image,
    inside_image,
    nondegenerate,
    select_instances,
)
from detlab.registry import TRANSFORMS

CROP_TYPES = ("absolute", "absolute_range", "relative", "relative_range")


def crop_sample(results: dict[str, Any], window: Sequence[int], clip: bool = True
                ) -> dict[str, np.ndarray]:
    """Cut every image, map and mask of ``results`` to ``window`` ``[x1, y1, x2, y2]`` (whole
    pixels inside the image) and return each box field moved into the crop (clipped when
    ``clip``), without dropping any box yet: the caller decides which to keep."""
    x1, y1, x2, y2 = (int(v) for v in window)
    for key in results.get("img_fields", ["img"]):
        results[key] = results[key][y1:y2, x1:x2]
    results["img_shape"] = results["img"].shape
    for key in results.get("seg_fields", []):
        results[key] = results[key][y1:y2, x1:x2]
    for key in results.get("mask_fields", []):
        if results.get(key) is not None:
            results[key] = results[key].crop(np.array([x1, y1, x2, y2]))
    moved = {}
    for key in bbox_fields(results):
        boxes = results[key] - np.array([x1, y1, x1, y1], dtype=np.float32)
        moved[key] = clip_to_image(boxes, y2 - y1, x2 - x1) if clip else boxes
    return moved


@TRANSFORMS.register_module()
class RandomCrop:
    """Cut a random window of the image; boxes, masks and semantic maps follow.

    The window size ``(h, w)`` comes from ``crop_size`` by ``crop_type``:

    - ``'absolute'``: ``crop_size`` pixels ``(h, w)`` (at most the image);
    - ``'absolute_range'``: ``h`` and ``w`` drawn in ``[crop_size[0], crop_size[1]]`` pixels;
    - ``'relative'``: ``crop_size`` fractions ``(h, w)`` of the image;
    - ``'relative_range'``: fractions drawn in ``[crop_size[0], 1]`` (h) and
      ``[crop_size[1], 1]`` (w).

    Boxes are shifted into the crop and clipped (``bbox_clip_border``); those left without
    area, or entirely outside the crop, are dropped with their labels, masks and ids. When no
    box of ``gt_bboxes`` is left the sample is dropped (None) unless ``allow_negative_crop``.
    ``recompute_bbox`` replaces each ``gt_bboxes`` box by the box of its cropped mask.

    Updates ``img``, ``img_shape``, every key of ``bbox_fields`` with its companions
    (``gt_labels``, ``gt_masks``, ``gt_instance_ids``; ``gt_labels_ignore``,
    ``gt_masks_ignore``), ``mask_fields`` and ``seg_fields``.

    Args:
        crop_size: ``(h, w)`` in pixels or fractions, see above.
        crop_type: one of ``'absolute'``, ``'absolute_range'``, ``'relative'``,
            ``'relative_range'``.
        allow_negative_crop: keep a crop with no box left.
        recompute_bbox: take ``gt_bboxes`` from the cropped ``gt_masks``.
        bbox_clip_border: clip boxes to the crop.
    """

    def __init__(self, crop_size: Sequence[float], crop_type: str = "absolute",
                 allow_negative_crop: bool = False, recompute_bbox: bool = False,
                 bbox_clip_border: bool = True) -> None:
        if crop_type not in CROP_TYPES:
            raise ValueError(f"crop_type must be one of {CROP_TYPES}, got {crop_type!r}")
        if len(crop_size) != 2:
            raise ValueError(f"crop_size is a pair (h, w), got {crop_size!r}")
        if crop_type.startswith("absolute"):
            if not all(isinstance(v, (int, np.integer)) and v > 0 for v in crop_size):
                raise ValueError(f"crop_type={crop_type!r} takes positive whole pixels, "
                                 f"got crop_size={tuple(crop_size)}")
            if crop_type == "absolute_range" and crop_size[0] > crop_size[1]:
                raise ValueError(f"absolute_range crop_size is (min, max), got "
                                 f"{tuple(crop_size)}")
        elif not all(0 < v <= 1 for v in crop_size):
            raise ValueError(f"crop_type={crop_type!r} takes fractions in (0, 1], "
                             f"got crop_size={tuple(crop_size)}")
        self.crop_size = tuple(crop_size)
        self.crop_type = crop_type
        self.allow_negative_crop = allow_negative_crop
        self.recompute_bbox = recompute_bbox
        self.bbox_clip_border = bbox_clip_border

    def _get_crop_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The absolute ``(h, w)`` of the crop of an image of ``image_size`` ``(h, w)``."""
        h, w = image_size
        low, high = self.crop_size
        if self.crop_type == "absolute":
            return min(int(low), h), min(int(high), w)
        if self.crop_type == "absolute_range":
            crop_h = np.random.randint(min(h, low), min(h, high) + 1)
            crop_w = np.random.randint(min(w, low), min(w, high) + 1)
            return int(crop_h), int(crop_w)
        if self.crop_type == "relative":
            return int(h * low + 0.5), int(w * high + 0.5)
        fractions = np.asarray(self.crop_size, dtype=np.float32)
        crop_h, crop_w = fractions + np.random.rand(2) * (1 - fractions)
        return int(h * crop_h + 0.5), int(w * crop_w + 0.5)

    def _window(self, image_size: tuple[int, int], crop_size: tuple[int, int]) -> list[int]:
        margin_h = max(image_size[0] - crop_size[0], 0)
        margin_w = max(image_size[1] - crop_size[1], 0)
        top = int(np.random.randint(0, margin_h + 1))
        left = int(np.random.randint(0, margin_w + 1))
        return [left, top, left + crop_size[1], top + crop_size[0]]

    def __call__(self, results: dict[str, Any]) -> dict[str, Any] | None:
        image_size = results["img"].shape[:2]
        window = self._window(image_size, self._get_crop_size(image_size))
        moved = crop_sample(results, window, self.bbox_clip_border)
        crop_h, crop_w = results["img"].shape[:2]
        for key, boxes in moved.items():
            keep = nondegenerate(boxes) & inside_image(boxes, crop_h, crop_w)
            if key == "gt_bboxes" and not keep.any() and not self.allow_negative_crop:
                return None
            results[key] = boxes
            select_instances(results, key, keep)
            mask_key = MASK_OF_BOXES.get(key)
            if self.recompute_bbox and results.get(mask_key) is not None:
                results[key] = results[mask_key].get_bboxes()
        return results

    def __repr__(self) -> str:
        return (f"RandomCrop(crop_size={self.crop_size}, crop_type={self.crop_type!r}, "
                f"allow_negative_crop={self.allow_negative_crop}, recompute_bbox="
                f"{self.recompute_bbox}, bbox_clip_border={self.bbox_clip_border})")


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """``(n, m)`` IoU of xyxy boxes."""
    lt = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (rb - lt).clip(0).prod(axis=2)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clip(0).prod(axis=1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clip(0).prod(axis=1)
    union = area1[:, None] + area2[None, :] - inter
    return inter / np.maximum(union, 1e-6)


def centers_inside(boxes: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: the box centre lies strictly inside ``patch`` ``[x1, y1, x2, y2]``."""
    center = (boxes[:, :2] + boxes[:, 2:]) / 2
    return ((center[:, 0] > patch[0]) & (center[:, 1] > patch[1])
            & (center[:, 0] < patch[2]) & (center[:, 1] < patch[3]))


@TRANSFORMS.register_module()
class MinIoURandomCrop:
    """SSD's crop: a random window whose IoU with every box is at least a threshold drawn from
    ``min_ious`` (or the whole image, or any window).

    Each try draws a mode among ``1`` (keep the image), the ``min_ious`` and ``0`` (no
    constraint), then up to 50 windows with sides in ``[min_crop_size, 1]`` of the image and an
    aspect ratio ``h / w`` in ``[0.5, 2]``, until one has IoU >= the threshold with all boxes
    (of every box field) and at least one box centre inside. Boxes whose centre lies outside
    the window are dropped with their labels, masks and ids; the others are clipped
    (``bbox_clip_border``) and moved into the window.

    Updates ``img``, ``img_shape``, every key of ``bbox_fields`` with its companions,
    ``mask_fields`` and ``seg_fields``.

    Args:
        min_ious: the IoU thresholds to draw from.
        min_crop_size: the smallest side of a window, as a fraction of the image's.
        bbox_clip_border: clip boxes to the window.
    """

    def __init__(self, min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
                 min_crop_size: float = 0.3, bbox_clip_border: bool = True) -> None:
        if not 0 < min_crop_size <= 1:
            raise ValueError(f"min_crop_size must be in (0, 1], got {min_crop_size}")
        self.min_ious = tuple(min_ious)
        self.sample_mode = (1, *self.min_ious, 0)
        self.min_crop_size = min_crop_size
        self.bbox_clip_border = bbox_clip_border

    def _draw_patch(self, h: int, w: int) -> np.ndarray | None:
        """A window ``[x1, y1, x2, y2]`` of whole pixels, or None when its shape is refused."""
        new_w = np.random.uniform(self.min_crop_size * w, w)
        new_h = np.random.uniform(self.min_crop_size * h, h)
        if not 0.5 <= new_h / new_w <= 2:
            return None
        # one-argument uniform(low) draws from [low, 1): MMDetection's exact draws
        left = np.random.uniform(w - new_w)
        top = np.random.uniform(h - new_h)
        patch = np.array([int(left), int(top), int(left + new_w), int(top + new_h)])
        if patch[2] == patch[0] or patch[3] == patch[1]:
            return None
        return patch

    def _find_patch(self, results: dict[str, Any]) -> np.ndarray | None:
        """A window meeting a drawn mode's constraint; None for mode 1 (keep the image)."""
        h, w = results["img"].shape[:2]
        fields = bbox_fields(results)
        boxes = np.concatenate([results[k] for k in fields]) if fields else np.zeros((0, 4))
        while True:
            mode = np.random.choice(self.sample_mode)
            if mode == 1:
                return None
            for _ in range(50):
                patch = self._draw_patch(h, w)
                if patch is None:
                    continue
                if len(boxes) and box_iou(patch[None], boxes).min() < mode:
                    continue
                if len(boxes) and not centers_inside(boxes, patch).any():
                    continue
                return patch

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        check_single_image(results, "MinIoURandomCrop")
        patch = self._find_patch(results)
        if patch is None:
            return results
        keeps = {key: centers_inside(results[key], patch) for key in bbox_fields(results)}
        moved = crop_sample(results, patch, self.bbox_clip_border)
        for key, boxes in moved.items():
            results[key] = boxes
            select_instances(results, key, keeps[key] & nondegenerate(boxes))
        return results

    def __repr__(self) -> str:
        return (f"MinIoURandomCrop(min_ious={self.min_ious}, min_crop_size="
                f"{self.min_crop_size}, bbox_clip_border={self.bbox_clip_border})")
