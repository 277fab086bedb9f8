"""Bookkeeping shared by the transforms that move, clip or drop boxes.

Each box field has companion keys holding one entry per box, in the same order; when a transform
drops boxes, the companions lose the same rows:

- ``gt_bboxes``: ``gt_labels``, ``gt_masks`` and ``gt_instance_ids``;
- ``gt_bboxes_ignore``: ``gt_labels_ignore`` and ``gt_masks_ignore``.

``gt_instance_ids`` (``(n,)`` int64) is optional: whoever wants to follow boxes through a pipeline
(``detlab.data.browse``) sets it to ``arange(n)`` and reads which ids are left; every detlab
transform keeps it in step with ``gt_bboxes``. Boxes are ``(n, 4)`` float32 xyxy pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

INSTANCE_KEYS: dict[str, tuple[str, ...]] = {
    "gt_bboxes": ("gt_labels", "gt_masks", "gt_instance_ids"),
    "gt_bboxes_ignore": ("gt_labels_ignore", "gt_masks_ignore"),
}
MASK_OF_BOXES = {"gt_bboxes": "gt_masks", "gt_bboxes_ignore": "gt_masks_ignore"}


def bbox_fields(results: dict[str, Any]) -> list[str]:
    """The box keys of ``results`` (its ``bbox_fields``, only those present)."""
    return [key for key in results.get("bbox_fields", []) if key in results]


def companions(results: dict[str, Any], box_key: str) -> Iterator[str]:
    """The keys of ``results`` that hold one entry per box of ``box_key``."""
    for key in INSTANCE_KEYS.get(box_key, ()):
        if results.get(key) is not None:
            yield key


def select_instances(results: dict[str, Any], box_key: str, keep: Any) -> None:
    """Keep the boxes ``keep`` (a boolean mask or indices) of ``results[box_key]`` and the same
    rows of its companions (labels, masks, instance ids), in place."""
    keep = np.asarray(keep)
    index = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64).reshape(-1)
    results[box_key] = results[box_key][index]
    for key in companions(results, box_key):
        results[key] = results[key][index]


def nondegenerate(boxes: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: positive width and height."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def inside_image(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """``(n,)`` bool: the box overlaps the ``height x width`` image (MMDetection's
    ``find_inside_bboxes``)."""
    return ((boxes[:, 0] < width) & (boxes[:, 2] > 0)
            & (boxes[:, 1] < height) & (boxes[:, 3] > 0))


def clip_to_image(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """A copy of ``boxes`` clipped to the ``height x width`` image."""
    out = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out


def box_candidates(before: np.ndarray, after: np.ndarray, min_bbox_size: float,
                   min_area_ratio: float, max_aspect_ratio: float) -> np.ndarray:
    """``(n,)`` bool: boxes worth keeping after an augmentation shrank or squeezed them, by
    MMDetection's (and YOLOX's) rule: wider and taller than ``min_bbox_size``, keeping more than
    ``min_area_ratio`` of their area ``before`` (the box under the same scaling, unclipped),
    and less elongated than ``max_aspect_ratio``."""
    w0, h0 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w1, h1 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(w1 / (h1 + 1e-16), h1 / (w1 + 1e-16))
    return ((w1 > min_bbox_size) & (h1 > min_bbox_size)
            & (w1 * h1 / (w0 * h0 + 1e-16) > min_area_ratio) & (aspect < max_aspect_ratio))


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The ``(n, 4)`` xyxy boxes enclosing the four corners of each box under the ``3 x 3``
    projective ``matrix``."""
    n = len(boxes)
    if n == 0:
        return np.zeros((0, 4), dtype=np.float32)
    xs = boxes[:, [0, 0, 2, 2]].reshape(-1)
    ys = boxes[:, [1, 3, 3, 1]].reshape(-1)
    points = np.asarray(matrix, dtype=np.float64) @ np.stack([xs, ys, np.ones_like(xs)])
    xs = (points[0] / points[2]).reshape(n, 4)
    ys = (points[1] / points[2]).reshape(n, 4)
    return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1).astype(np.float32)


def check_single_image(results: dict[str, Any], name: str) -> None:
    """Raise if the sample carries several images (``img_fields``), which ``name`` cannot
    handle consistently (as MMDetection asserts)."""
    fields = results.get("img_fields", ["img"])
    if list(fields) != ["img"]:
        raise ValueError(f"{name} handles one image per sample ('img'); this sample has "
                         f"img_fields={list(fields)}")


def new_instance_ids(start: int, count: int) -> np.ndarray:
    """``count`` fresh ids from ``start`` (boxes that another image brought in)."""
    return np.arange(start, start + count, dtype=np.int64)
