"""Loading transforms: read the image file and copy the annotations into the sample."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detlab.registry import TRANSFORMS

COLOR_TYPES = ("color", "grayscale", "unchanged", "color_ignore_orientation",
               "grayscale_ignore_orientation")


def _check_file_client(file_client_args: Mapping[str, Any]) -> None:
    backend = dict(file_client_args).get("backend", "disk")
    if backend != "disk":
        raise ValueError(f"file_client_args backend {backend!r} is not supported; detlab reads "
                         "images from disk (backend='disk')")


def imread(path: str, color_type: str = "color", channel_order: str = "bgr") -> np.ndarray:
    """An image file as an array, with mmcv's flags.

    ``'color'``: ``H x W x 3`` uint8 (grayscale files too), turned by its EXIF orientation;
    ``'grayscale'``: ``H x W`` uint8; ``'unchanged'``: the file's own channels and depth;
    ``*_ignore_orientation``: without the EXIF turn. ``channel_order`` ``'bgr'`` (mmcv's
    default, undone by ``Normalize(to_rgb=True)``) or ``'rgb'``.
    """
    with Image.open(path) as image:
        if color_type in ("color", "grayscale"):
            image = ImageOps.exif_transpose(image)
        if color_type.startswith("color"):
            array = np.asarray(image.convert("RGB"))
        elif color_type.startswith("grayscale"):
            array = np.asarray(image.convert("L"))
        else:
            array = np.asarray(image)
    if channel_order == "bgr" and array.ndim == 3 and array.shape[2] in (3, 4):
        array = np.ascontiguousarray(array[..., [2, 1, 0] + list(range(3, array.shape[2]))])
    return array


@TRANSFORMS.register_module()
class LoadImageFromFile:
    """Read ``img_prefix/img_info['filename']``.

    Adds ``img`` (``H x W x 3`` uint8, BGR by default; float32 with ``to_float32``),
    ``img_shape`` and ``ori_shape`` (``(h, w, c)``), ``filename``, ``ori_filename`` and
    ``img_fields`` (``['img']``).

    Args:
        to_float32: return a float32 image.
        color_type: ``'color'``, ``'grayscale'``, ``'unchanged'`` (and the
            ``*_ignore_orientation`` variants), as mmcv.
        channel_order: ``'bgr'`` (MMDetection's default) or ``'rgb'``.
        file_client_args: only ``dict(backend='disk')``.
    """

    def __init__(self, to_float32: bool = False, color_type: str = "color",
                 channel_order: str = "bgr",
                 file_client_args: Mapping[str, Any] | None = None) -> None:
        if color_type not in COLOR_TYPES:
            raise ValueError(f"color_type must be one of {COLOR_TYPES}, got {color_type!r}")
        if channel_order not in ("bgr", "rgb"):
            raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
        _check_file_client(file_client_args or {})
        self.to_float32 = to_float32
        self.color_type = color_type
        self.channel_order = channel_order

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        info = results["img_info"]
        prefix = results.get("img_prefix")
        filename = os.path.join(prefix, info["filename"]) if prefix else info["filename"]
        img = self._read(filename, info)
        if self.to_float32:
            img = img.astype(np.float32)
        results["filename"] = filename
        results["ori_filename"] = info["filename"]
        results["img"] = img
        results["img_shape"] = img.shape
        results["ori_shape"] = img.shape
        results["img_fields"] = ["img"]
        return results

    def _read(self, filename: str, info: Mapping[str, Any]) -> np.ndarray:
        which = f"image {filename!r} (image id {info.get('id', '?')})"
        try:
            return imread(filename, self.color_type, self.channel_order)
        except FileNotFoundError:
            raise FileNotFoundError(f"{which} does not exist; check img_prefix / data_root and "
                                    "the file_name in the annotation file") from None
        except (UnidentifiedImageError, OSError) as err:
            raise OSError(f"{which} cannot be read as an image: {err}") from None

    def __repr__(self) -> str:
        return (f"LoadImageFromFile(to_float32={self.to_float32}, "
                f"color_type={self.color_type!r}, channel_order={self.channel_order!r})")


@TRANSFORMS.register_module()
class LoadAnnotations:
    """Copy the annotations of ``ann_info`` into the sample.

    Adds ``gt_bboxes`` ``(n, 4)`` float32 xyxy and ``gt_bboxes_ignore`` ``(k, 4)`` (both named
    in ``bbox_fields``) with ``with_bbox``, ``gt_labels`` ``(n,)`` int64 with ``with_label``.
    Instance masks and semantic maps are not supported yet.

    Args:
        with_bbox, with_label: load boxes, labels.
        with_mask, with_seg: load instance masks, semantic maps (not supported yet).
        poly2mask: turn polygon masks into bitmaps (with ``with_mask``).
        file_client_args: only ``dict(backend='disk')``.
    """

    def __init__(self, with_bbox: bool = True, with_label: bool = True, with_mask: bool = False,
                 with_seg: bool = False, poly2mask: bool = True,
                 file_client_args: Mapping[str, Any] | None = None) -> None:
        if with_mask or with_seg:
            raise NotImplementedError("LoadAnnotations(with_mask=True / with_seg=True): masks "
                                      "and semantic maps are not supported yet")
        _check_file_client(file_client_args or {})
        self.with_bbox = with_bbox
        self.with_label = with_label
        self.with_mask = with_mask
        self.with_seg = with_seg
        self.poly2mask = poly2mask

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        if "ann_info" not in results:
            raise KeyError("LoadAnnotations needs 'ann_info' in the sample: datasets add it in "
                           "training mode only (test_mode=False); remove LoadAnnotations from a "
                           "test pipeline")
        ann = results["ann_info"]
        fields = list(results.get("bbox_fields", []))  # a new list: samples may share the old
        if self.with_bbox:
            results["gt_bboxes"] = np.array(ann["bboxes"], dtype=np.float32).reshape(-1, 4)
            fields.append("gt_bboxes")
            if ann.get("bboxes_ignore") is not None:
                results["gt_bboxes_ignore"] = np.array(
                    ann["bboxes_ignore"], dtype=np.float32).reshape(-1, 4)
                fields.append("gt_bboxes_ignore")
        results["bbox_fields"] = fields
        if self.with_label:
            results["gt_labels"] = np.array(ann["labels"], dtype=np.int64).reshape(-1)
        return results

    def __repr__(self) -> str:
        return f"LoadAnnotations(with_bbox={self.with_bbox}, with_label={self.with_label})"
