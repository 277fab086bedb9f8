"""Transforms that mix several images: Mosaic (four images) and MixUp (two), as in YOLOX.

Both read ``results['mix_results']``: a list of other samples, already loaded (``img``,
``gt_bboxes``, ``gt_labels``, and ``gt_masks`` when the sample has masks). The dataset wrapper
``MultiImageMixDataset`` fills it: before calling a transform that has ``get_indexes``, it calls
``transform.get_indexes(dataset)`` (a list of indices into the wrapped dataset), loads those
samples through the wrapped dataset's pipeline, stores them as ``mix_results`` and removes the
key after the transform. Without the wrapper, build ``mix_results`` by hand.

Boxes from the other images get fresh ``gt_instance_ids`` (after the largest id of the sample)
when the sample carries ids. Masks of the mixed samples must all be of one kind or are turned
into bitmaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detlab.data.masks import BitmapMasks, PolygonMasks
from detlab.data.transforms.imageops import imresize
from detlab.data.transforms.instances import (
    box_candidates,
    clip_to_image,
    inside_image,
    new_instance_ids,
    nondegenerate,
)
from detlab.registry import TRANSFORMS

_CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def _mix_results(results: dict[str, Any], count: int, name: str) -> list[dict[str, Any]]:
    mix = results.get("mix_results")
    if not isinstance(mix, (list, tuple)) or len(mix) < count:
        got = "no 'mix_results'" if mix is None else f"{len(mix)} mix_results"
        raise ValueError(
            f"{name} needs results['mix_results'] with {count} more loaded sample(s), got "
            f"{got}. Wrap the dataset in MultiImageMixDataset (it fills mix_results through "
            f"{name}.get_indexes) and keep the loading steps in the wrapped dataset's pipeline")
    for sample in mix[:count]:
        missing = [k for k in ("img", "gt_bboxes", "gt_labels") if k not in sample]
        if missing:
            raise ValueError(f"{name}: a sample of mix_results has no {missing}; load it with "
                             "LoadImageFromFile and LoadAnnotations")
    return list(mix[:count])


def cat_masks(masks: Sequence[Any]) -> Any:
    """One mask structure of ``masks`` (same size): polygons if all are, else bitmaps."""
    if all(isinstance(m, PolygonMasks) for m in masks):
        return PolygonMasks.cat(masks)
    return BitmapMasks.cat([m if isinstance(m, BitmapMasks) else m.to_bitmap() for m in masks])


def _fresh_ids(results: dict[str, Any], counts: Sequence[int]) -> list[np.ndarray]:
    """New ids for boxes of other images, after the largest id of ``results``."""
    ids = results["gt_instance_ids"]
    start = int(ids.max()) + 1 if len(ids) else 0
    out = []
    for count in counts:
        out.append(new_instance_ids(start, count))
        start += count
    return out


def _check_masks(results: dict[str, Any], mix: Sequence[dict[str, Any]], name: str) -> bool:
    """Whether masks are mixed too: when the sample has ``gt_masks``, every other one must."""
    if results.get("gt_masks") is None:
        return False
    if any(sample.get("gt_masks") is None for sample in mix):
        raise ValueError(f"{name}: the sample has gt_masks but a sample of mix_results has "
                         "none; load every image with LoadAnnotations(with_mask=True)")
    return True


def _check_no_maps(results: dict[str, Any], name: str) -> None:
    if results.get("seg_fields"):
        raise ValueError(f"{name} does not mix semantic maps (seg_fields="
                         f"{results['seg_fields']}); remove with_seg or the transform")


# --------------------------------------------------------------------------------------------
# Mosaic
# --------------------------------------------------------------------------------------------


@TRANSFORMS.register_module()
class Mosaic:
    """Four images in one ``2 * img_scale`` canvas around a random centre (YOLOX).

    The sample and the three of ``mix_results`` are each resized to fit ``img_scale`` (keeping
    their aspect ratio) and placed with a corner on the centre -- the sample top left, then top
    right, bottom left, bottom right -- cut by the canvas, which is filled with ``pad_val``.
    The centre is ``center_ratio_range`` times ``img_scale``, drawn per axis.

    Boxes follow their image (scaled by the size actually reached) and are clipped with
    ``bbox_clip_border``; boxes outside the canvas or without area are dropped, as are boxes no
    larger than ``min_bbox_size`` unless ``skip_filter``. Labels, masks (``gt_masks``, placed
    like the images) and instance ids follow; ``gt_bboxes_ignore`` of the four are mixed the
    same way when the sample has them.

    Reads ``mix_results``; updates ``img`` (``2 * img_scale`` high and wide), ``img_shape``,
    ``gt_bboxes``, ``gt_labels``, ``gt_masks``, ``gt_instance_ids``, ``gt_bboxes_ignore``.

    Args:
        img_scale: ``(h, w)`` of one cell; the output is twice that (MMDetection 2.x order).
        center_ratio_range: the range of the centre, as fractions of ``img_scale``.
        min_bbox_size: boxes must be wider and taller than this (with ``skip_filter=False``).
        bbox_clip_border: clip boxes to the canvas.
        skip_filter: do not apply ``min_bbox_size``.
        pad_val: the canvas colour.
        prob: the chance to make a mosaic; otherwise the sample passes unchanged.
    """

    def __init__(self, img_scale: Sequence[int] = (640, 640),
                 center_ratio_range: Sequence[float] = (0.5, 1.5), min_bbox_size: float = 0,
                 bbox_clip_border: bool = True, skip_filter: bool = True,
                 pad_val: float = 114, prob: float = 1.0) -> None:
        if len(img_scale) != 2 or min(img_scale) <= 0:
            raise ValueError(f"img_scale is a positive (h, w) pair, got {img_scale!r}")
        if not 0 <= prob <= 1:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        self.img_scale = (int(img_scale[0]), int(img_scale[1]))
        self.center_ratio_range = tuple(center_ratio_range)
        self.min_bbox_size = min_bbox_size
        self.bbox_clip_border = bbox_clip_border
        self.skip_filter = skip_filter
        self.pad_val = pad_val
        self.prob = prob

    def get_indexes(self, dataset: Any) -> list[int]:
        """Three random indices of ``dataset`` (the images to mix in)."""
        return [int(np.random.randint(0, len(dataset))) for _ in range(3)]

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        if np.random.uniform(0, 1) > self.prob:
            return results
        mix = _mix_results(results, 3, "Mosaic")
        _check_no_maps(results, "Mosaic")
        return self._mosaic(results, mix)

    def _canvas(self, img: np.ndarray) -> np.ndarray:
        shape = (2 * self.img_scale[0], 2 * self.img_scale[1]) + img.shape[2:]
        return np.full(shape, self.pad_val, dtype=img.dtype)

    def _place(self, canvas: np.ndarray, patch: dict[str, Any], corner: str,
               center: tuple[int, int], with_masks: bool) -> dict[str, Any]:
        """Paste ``patch``'s image into ``canvas`` at ``corner``; its boxes and masks moved."""
        img = patch["img"]
        h, w = img.shape[:2]
        ratio = min(self.img_scale[0] / h, self.img_scale[1] / w)
        img = imresize(img, (int(w * ratio), int(h * ratio)))
        new_h, new_w = img.shape[:2]
        if img.shape[2:] != canvas.shape[2:]:
            raise ValueError(f"Mosaic: images of shapes {img.shape} and {canvas.shape} do not "
                             "have the same channels")
        # the image's top-left corner in the canvas, and its part inside the canvas
        x0 = center[0] - new_w if corner.endswith("left") else center[0]
        y0 = center[1] - new_h if corner.startswith("top") else center[1]
        x1, y1 = max(x0, 0), max(y0, 0)
        x2, y2 = min(x0 + new_w, canvas.shape[1]), min(y0 + new_h, canvas.shape[0])
        canvas[y1:y2, x1:x2] = img[y1 - y0:y2 - y0, x1 - x0:x2 - x0]
        factor = np.array([new_w / w, new_h / h] * 2, dtype=np.float32)
        offset = np.array([x0, y0, x0, y0], dtype=np.float32)
        moved = dict(gt_bboxes=patch["gt_bboxes"] * factor + offset,
                     gt_labels=np.asarray(patch["gt_labels"]),
                     gt_bboxes_ignore=patch.get("gt_bboxes_ignore", np.zeros((0, 4), np.float32))
                     * factor + offset)
        if with_masks:
            moved["gt_masks"] = patch["gt_masks"].resize((new_h, new_w)).place(
                (x0, y0), canvas.shape[:2])
        return moved

    def _keep(self, boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        if self.bbox_clip_border:
            boxes = clip_to_image(boxes, height, width)
        keep = inside_image(boxes, height, width) & nondegenerate(boxes)
        if not self.skip_filter:
            keep &= ((boxes[:, 2] - boxes[:, 0] > self.min_bbox_size)
                     & (boxes[:, 3] - boxes[:, 1] > self.min_bbox_size))
        return boxes, keep

    def _mosaic(self, results: dict[str, Any], mix: list[dict[str, Any]]) -> dict[str, Any]:
        canvas = self._canvas(results["img"])
        center = (int(np.random.uniform(*self.center_ratio_range) * self.img_scale[1]),
                  int(np.random.uniform(*self.center_ratio_range) * self.img_scale[0]))
        with_masks = _check_masks(results, mix, "Mosaic")
        parts = [self._place(canvas, patch, corner, center, with_masks)
                 for corner, patch in zip(_CORNERS, [results, *mix], strict=True)]
        height, width = canvas.shape[:2]
        boxes, keep = self._keep(np.concatenate([p["gt_bboxes"] for p in parts]), height, width)
        results["img"], results["img_shape"] = canvas, canvas.shape
        results["gt_bboxes"] = boxes[keep].astype(np.float32)
        results["gt_labels"] = np.concatenate([p["gt_labels"] for p in parts]).astype(
            np.int64)[keep]
        if with_masks:
            results["gt_masks"] = cat_masks([p["gt_masks"] for p in parts])[keep]
        if results.get("gt_instance_ids") is not None:
            fresh = _fresh_ids(results, [len(p["gt_bboxes"]) for p in parts[1:]])
            results["gt_instance_ids"] = np.concatenate([results["gt_instance_ids"], *fresh])[keep]
        if "gt_bboxes_ignore" in results:
            ignore, kept = self._keep(np.concatenate([p["gt_bboxes_ignore"] for p in parts]),
                                      height, width)
            results["gt_bboxes_ignore"] = ignore[kept].astype(np.float32)
        return results

    def __repr__(self) -> str:
        return (f"Mosaic(img_scale={self.img_scale}, center_ratio_range="
                f"{self.center_ratio_range}, min_bbox_size={self.min_bbox_size}, "
                f"bbox_clip_border={self.bbox_clip_border}, skip_filter={self.skip_filter}, "
                f"pad_val={self.pad_val}, prob={self.prob})")


# --------------------------------------------------------------------------------------------
# MixUp
# --------------------------------------------------------------------------------------------


@TRANSFORMS.register_module()
class MixUp:
    """Blend the sample half and half with another image (YOLOX's MixUp).

    The other image (``mix_results[0]``) is resized to fit ``img_scale`` and pasted top left on
    a ``img_scale`` canvas of ``pad_val``; the canvas is scaled by a factor drawn from
    ``ratio_range``, mirrored with chance ``1 - flip_ratio`` (MMDetection flips when a uniform
    draw exceeds ``flip_ratio``), zero-padded to at least the sample's size and cut to it at a
    random offset. The result is ``0.5 * sample + 0.5 * that``, as uint8. When the other
    image has no box the sample is returned unchanged.

    The other image's boxes follow it (clipped with ``bbox_clip_border``; unless
    ``skip_filter`` those failing the size / area / aspect rules are dropped) and are appended
    to the sample's, with their labels, masks and fresh instance ids; boxes outside the image
    are dropped.

    Reads ``mix_results``; updates ``img``, ``img_shape``, ``gt_bboxes``, ``gt_labels``,
    ``gt_masks``, ``gt_instance_ids``.

    Args:
        img_scale: ``(h, w)`` of the canvas (MMDetection 2.x order); ``dynamic_scale`` is the
            same value, which MMDetection's mode-switching hooks overwrite.
        ratio_range: the range of the scale jitter.
        flip_ratio: a flip happens when a uniform draw exceeds it.
        pad_val: the canvas colour.
        max_iters: how many random images ``get_indexes`` tries to find one with boxes.
        min_bbox_size, min_area_ratio, max_aspect_ratio: the filter rules.
        bbox_clip_border: clip boxes.
        skip_filter: do not apply the filter rules.
    """

    def __init__(self, img_scale: Sequence[int] = (640, 640),
                 ratio_range: Sequence[float] = (0.5, 1.5), flip_ratio: float = 0.5,
                 pad_val: float = 114, max_iters: int = 15, min_bbox_size: float = 5,
                 min_area_ratio: float = 0.2, max_aspect_ratio: float = 20,
                 bbox_clip_border: bool = True, skip_filter: bool = True) -> None:
        if len(img_scale) != 2 or min(img_scale) <= 0:
            raise ValueError(f"img_scale is a positive (h, w) pair, got {img_scale!r}")
        self.dynamic_scale = (int(img_scale[0]), int(img_scale[1]))
        self.ratio_range = tuple(ratio_range)
        self.flip_ratio = flip_ratio
        self.pad_val = pad_val
        self.max_iters = max_iters
        self.min_bbox_size = min_bbox_size
        self.min_area_ratio = min_area_ratio
        self.max_aspect_ratio = max_aspect_ratio
        self.bbox_clip_border = bbox_clip_border
        self.skip_filter = skip_filter

    @property
    def img_scale(self) -> tuple[int, int]:
        """The canvas ``(h, w)`` (an alias of ``dynamic_scale``)."""
        return self.dynamic_scale

    def get_indexes(self, dataset: Any) -> list[int]:
        """One random index of ``dataset``, of an image with boxes if one is found in
        ``max_iters`` draws (through ``dataset.get_ann_info``)."""
        index = int(np.random.randint(0, len(dataset)))
        for _ in range(self.max_iters - 1):
            if not hasattr(dataset, "get_ann_info") or len(
                    dataset.get_ann_info(index)["bboxes"]):
                break
            index = int(np.random.randint(0, len(dataset)))
        return [index]

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        other = _mix_results(results, 1, "MixUp")[0]
        _check_no_maps(results, "MixUp")
        if len(other["gt_bboxes"]) == 0:
            return results
        return self._mixup(results, other)

    def _jittered(self, img: np.ndarray, jit: float, flip: bool
                  ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """The other image on its canvas, scaled by ``jit`` and maybe flipped; the x and y
        factors from the original image, and its resized size ``(h, w)`` before ``jit``."""
        dh, dw = self.dynamic_scale
        canvas = np.full((dh, dw) + img.shape[2:], self.pad_val, dtype=img.dtype)
        h, w = img.shape[:2]
        ratio = min(dh / h, dw / w)
        resized = imresize(img, (int(w * ratio), int(h * ratio)))
        rh, rw = resized.shape[:2]
        canvas[:rh, :rw] = resized
        canvas = imresize(canvas, (int(dw * jit), int(dh * jit)))
        if flip:
            canvas = np.ascontiguousarray(canvas[:, ::-1])
        factor = np.array([rw / w * canvas.shape[1] / dw, rh / h * canvas.shape[0] / dh])
        return canvas, factor, (rh, rw)

    def _cut(self, canvas: np.ndarray, target: tuple[int, int]) -> tuple[np.ndarray, int, int]:
        """``canvas`` zero-padded to at least ``target`` ``(h, w)`` and cut to it at a random
        offset (y then x, as MMDetection draws them)."""
        th, tw = target
        ch, cw = canvas.shape[:2]
        padded = np.zeros((max(ch, th), max(cw, tw)) + canvas.shape[2:], dtype=np.uint8)
        padded[:ch, :cw] = np.clip(canvas, 0, 255)
        y_off = int(np.random.randint(0, padded.shape[0] - th)) if padded.shape[0] > th else 0
        x_off = int(np.random.randint(0, padded.shape[1] - tw)) if padded.shape[1] > tw else 0
        return padded[y_off:y_off + th, x_off:x_off + tw], x_off, y_off

    def _other_boxes(self, boxes: np.ndarray, factor: np.ndarray, canvas_shape: tuple,
                     flip: bool, offset: tuple[int, int], target: tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray]:
        """The other image's boxes on its canvas, then cut at ``offset``; and which to keep."""
        ch, cw = canvas_shape[:2]
        boxes = boxes * np.tile(factor, 2).astype(np.float32)
        if self.bbox_clip_border:
            boxes = clip_to_image(boxes, ch, cw)
        if flip:
            boxes = np.stack([cw - boxes[:, 2], boxes[:, 1], cw - boxes[:, 0], boxes[:, 3]], 1)
        cut = boxes - np.array([offset[0], offset[1]] * 2, dtype=np.float32)
        if self.bbox_clip_border:
            cut = clip_to_image(cut, *target)
        keep = np.ones(len(cut), dtype=bool)
        if not self.skip_filter:
            keep = box_candidates(boxes, cut, self.min_bbox_size, self.min_area_ratio,
                                  self.max_aspect_ratio)
        return cut.astype(np.float32), keep

    def _other_masks(self, masks: Any, resized: tuple[int, int], canvas_shape: tuple,
                     flip: bool, offset: tuple[int, int], target: tuple[int, int]) -> Any:
        masks = masks.resize(resized).place((0, 0), self.dynamic_scale).resize(canvas_shape[:2])
        if flip:
            masks = masks.flip("horizontal")
        return masks.place((-offset[0], -offset[1]), target)

    def _mixup(self, results: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
        jit = np.random.uniform(*self.ratio_range)
        flip = np.random.uniform(0, 1) > self.flip_ratio
        canvas, factor, resized = self._jittered(other["img"], jit, flip)
        target = results["img"].shape[:2]
        cut, x_off, y_off = self._cut(canvas, target)
        boxes, keep = self._other_boxes(other["gt_bboxes"], factor, canvas.shape, flip,
                                        (x_off, y_off), target)
        mixed = 0.5 * results["img"].astype(np.float32) + 0.5 * cut.astype(np.float32)
        results["img"] = mixed.clip(0, 255).astype(np.uint8)
        results["img_shape"] = results["img"].shape
        labels = np.asarray(other["gt_labels"], dtype=np.int64)[keep]
        all_boxes = np.concatenate([results["gt_bboxes"], boxes[keep]]).astype(np.float32)
        inside = inside_image(all_boxes, *target) & nondegenerate(all_boxes)
        results["gt_bboxes"] = all_boxes[inside]
        results["gt_labels"] = np.concatenate([results["gt_labels"], labels])[inside]
        if _check_masks(results, [other], "MixUp"):
            moved = self._other_masks(other["gt_masks"], resized, canvas.shape, flip,
                                      (x_off, y_off), target)
            results["gt_masks"] = cat_masks([results["gt_masks"], moved[keep]])[inside]
        if results.get("gt_instance_ids") is not None:
            fresh = _fresh_ids(results, [len(boxes)])[0][keep]
            results["gt_instance_ids"] = np.concatenate([results["gt_instance_ids"],
                                                         fresh])[inside]
        return results

    def __repr__(self) -> str:
        return (f"MixUp(img_scale={self.dynamic_scale}, ratio_range={self.ratio_range}, "
                f"flip_ratio={self.flip_ratio}, pad_val={self.pad_val}, max_iters="
                f"{self.max_iters}, min_bbox_size={self.min_bbox_size}, min_area_ratio="
                f"{self.min_area_ratio}, max_aspect_ratio={self.max_aspect_ratio}, "
                f"skip_filter={self.skip_filter})")
