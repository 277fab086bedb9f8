"""Loading transforms: read the image file, copy the annotations (boxes, labels, masks, semantic
maps, proposals) into the sample, and filter annotations that are too small."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detlab.data.masks import bitmaps_from_segmentations, polygons_from_segmentations
from detlab.data.transforms.instances import select_instances
from detlab.registry import TRANSFORMS

COLOR_TYPES = ("color", "grayscale", "unchanged", "color_ignore_orientation",
               "grayscale_ignore_orientation")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_MAX_SHAPE_WARNINGS = 5


class ImageReadError(OSError):
    """An image file that exists but cannot be decoded (damaged, truncated, not an image)."""


def _check_file_client(file_client_args: Mapping[str, Any]) -> None:
    backend = dict(file_client_args).get("backend", "disk")
    if backend != "disk":
        raise ValueError(f"file_client_args backend {backend!r} is not supported; detlab reads "
                         "images from disk (backend='disk')")


def _eight_bit(image: Image.Image, gray: bool) -> np.ndarray:
    """``image`` as uint8, ``H x W`` (``gray``) or ``H x W x 3`` RGB, converted as OpenCV's
    ``IMREAD_COLOR`` / ``IMREAD_GRAYSCALE`` do: 16-bit values are divided by 256, an alpha
    channel is dropped (not blended), grey is repeated into three channels."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        values = np.asarray(image)
        if image.mode == "F":
            plane = np.rint(values.clip(0, 255)).astype(np.uint8)
        else:
            plane = (values.astype(np.int64).clip(0, 65535) >> 8).astype(np.uint8)
        return plane if gray else np.repeat(plane[..., None], 3, axis=2)
    if image.mode in ("P", "PA"):  # palette: through RGBA so transparency is not warned about
        image = image.convert("RGBA")
    return np.asarray(image.convert("L" if gray else "RGB"))


def imread(path: str, color_type: str = "color", channel_order: str = "bgr") -> np.ndarray:
    """An image file as an array, with mmcv's flags.

    ``'color'``: ``H x W x 3`` uint8 -- grey, palette, RGBA (alpha dropped) and 16-bit files
    (scaled to 8 bits) included -- turned upright by its EXIF orientation; ``'grayscale'``:
    ``H x W`` uint8, turned likewise; ``'unchanged'``: the file's own channels and depth, not
    turned; ``*_ignore_orientation``: like ``'color'`` / ``'grayscale'`` without the turn.
    ``channel_order`` ``'bgr'`` (mmcv's default, undone by ``Normalize(to_rgb=True)``) or
    ``'rgb'``.
    """
    if color_type not in COLOR_TYPES:
        raise ValueError(f"color_type must be one of {COLOR_TYPES}, got {color_type!r}")
    with Image.open(path) as image:
        if color_type in ("color", "grayscale"):
            image = ImageOps.exif_transpose(image)
        if color_type == "unchanged":
            array = np.asarray(image.convert("RGBA") if image.mode in ("P", "PA") else image)
        else:
            array = _eight_bit(image, gray=color_type.startswith("grayscale"))
    if channel_order == "bgr" and array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[..., [2, 1, 0] + list(range(3, array.shape[2]))]
    return np.ascontiguousarray(array)


def _image_id(results: Mapping[str, Any]) -> Any:
    info = results.get("img_info") or {}
    return info.get("id", results.get("img_id", "unknown"))


def _size_mismatch(img: np.ndarray, info: Mapping[str, Any], filename: str) -> str | None:
    """A warning when the annotation file's size of an image is not the size read -- a sign
    of an EXIF turn the annotations did not see, or of a wrong file -- else None."""
    if "width" not in info or "height" not in info:
        return None
    expected, got = (int(info["height"]), int(info["width"])), tuple(img.shape[:2])
    if expected == got:
        return None
    hint = (" The sides are swapped: the file has an EXIF orientation. Boxes are taken in the "
            "turned (displayed) frame; if your annotations were made on the raw pixels, load "
            "with color_type='color_ignore_orientation'." if expected == got[::-1] else "")
    return (f"image {filename!r} (image id {info.get('id', 'unknown')}) is {got[0]} x "
            f"{got[1]} (h x w) but the annotation file says {expected[0]} x {expected[1]}."
            f"{hint}")


@TRANSFORMS.register_module()
class LoadImageFromFile:
    """Read ``img_prefix/img_info['filename']``.

    Adds ``img`` (``H x W x 3`` uint8, BGR by default; float32 with ``to_float32``),
    ``img_shape`` and ``ori_shape`` (``(h, w, c)``), ``filename``, ``ori_filename`` and
    ``img_fields`` (``['img']``).

    With ``'color'`` (the default) every file becomes ``H x W x 3`` uint8: grey and palette
    images are expanded, an alpha channel is dropped, 16-bit images are divided by 256, and
    the EXIF orientation is applied. That is what mmcv's ``'color'`` flag does: it decodes with
    OpenCV's ``IMREAD_COLOR``, which turns JPEGs by their EXIF orientation unless
    ``IMREAD_IGNORE_ORIENTATION`` is set (mmcv's ``'color_ignore_orientation'``). Box and mask
    annotations are therefore taken to be in the turned frame -- the one image viewers and
    the COCO tools display. A warning says when the annotation file's ``width`` / ``height``
    disagree with the image read.

    A missing, unreadable, damaged or truncated file raises an error naming the file and the
    image id (``img_info['id']``), and saying what to check.

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
        self._size_warnings = 0  # mismatches reported, at most _MAX_SHAPE_WARNINGS

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        info = results["img_info"]
        prefix = results.get("img_prefix")
        filename = os.path.join(prefix, info["filename"]) if prefix else info["filename"]
        img = self._read(filename, results)
        self._check_size(img, info, filename)
        if self.to_float32:
            img = img.astype(np.float32)
        results["filename"] = filename
        results["ori_filename"] = info["filename"]
        results["img"] = img
        results["img_shape"] = img.shape
        results["ori_shape"] = img.shape
        results["img_fields"] = ["img"]
        return results

    def _check_size(self, img: np.ndarray, info: Mapping[str, Any], filename: str) -> None:
        if self._size_warnings >= _MAX_SHAPE_WARNINGS:
            return
        message = _size_mismatch(img, info, filename)
        if message is not None:
            self._size_warnings += 1
            if self._size_warnings == _MAX_SHAPE_WARNINGS:
                message += " (further size mismatches are not reported)"
            warnings.warn(message, stacklevel=3)

    def _read(self, filename: str, results: Mapping[str, Any]) -> np.ndarray:
        which = f"image {filename!r} (image id {_image_id(results)})"
        try:
            return imread(filename, self.color_type, self.channel_order)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{which} does not exist; check img_prefix / data_root in the config and the "
                "file_name of this image in the annotation file") from None
        except IsADirectoryError:
            raise ImageReadError(f"{which} is a folder, not an image file; check the file_name "
                                 "of this image in the annotation file") from None
        except PermissionError:
            raise ImageReadError(f"{which} cannot be opened: permission denied") from None
        except Image.DecompressionBombError as err:
            raise ImageReadError(f"{which} is larger than PIL allows ({err}); raise "
                                 "PIL.Image.MAX_IMAGE_PIXELS if the file is trusted") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ImageReadError(
                f"{which} cannot be read as an image ({type(err).__name__}: {err}): the file "
                "is damaged, truncated or not an image. Open it in an image viewer; re-export "
                "or re-download it, or remove this image from the annotation file (to read "
                "what is left of truncated files, set PIL.ImageFile.LOAD_TRUNCATED_IMAGES = "
                "True)") from None

    def __repr__(self) -> str:
        return (f"LoadImageFromFile(to_float32={self.to_float32}, "
                f"color_type={self.color_type!r}, channel_order={self.channel_order!r})")


@TRANSFORMS.register_module()
class LoadAnnotations:
    """Copy the annotations of ``ann_info`` into the sample.

    - ``with_bbox``: adds ``gt_bboxes`` ``(n, 4)`` float32 xyxy and, when the dataset gives
      them, ``gt_bboxes_ignore`` ``(k, 4)``; both are named in ``bbox_fields``.
    - ``with_label``: adds ``gt_labels`` ``(n,)`` int64.
    - ``with_mask``: adds ``gt_masks``, one mask per box from ``ann_info['masks']`` (COCO
      ``segmentation``: polygons, or RLE -- compressed or not), named in ``mask_fields``:
      :class:`~detlab.data.masks.BitmapMasks` with ``poly2mask`` (decoded by pycocotools),
      else :class:`~detlab.data.masks.PolygonMasks` (polygons of fewer than 3 points left
      out; RLE masks then raise). Masks take the size of the loaded image (``img_shape``),
      else ``img_info``'s ``height`` and ``width``.
    - ``with_seg``: adds ``gt_semantic_seg`` (``H x W``, the file's values) read from
      ``seg_prefix/ann_info['seg_map']``, named in ``seg_fields``.

    Args:
        with_bbox, with_label, with_mask, with_seg: what to load.
        poly2mask: masks as bitmaps (True) or polygons.
        denorm_bbox: the boxes are fractions of the image size; multiply them by it.
        file_client_args: only ``dict(backend='disk')``.
    """

    def __init__(self, with_bbox: bool = True, with_label: bool = True, with_mask: bool = False,
                 with_seg: bool = False, poly2mask: bool = True, denorm_bbox: bool = False,
                 file_client_args: Mapping[str, Any] | None = None) -> None:
        _check_file_client(file_client_args or {})
        self.with_bbox = with_bbox
        self.with_label = with_label
        self.with_mask = with_mask
        self.with_seg = with_seg
        self.poly2mask = poly2mask
        self.denorm_bbox = denorm_bbox

    def _load_bboxes(self, results: dict[str, Any], ann: Mapping[str, Any]) -> None:
        fields = list(results.get("bbox_fields", []))  # a new list: samples may share the old
        boxes = np.array(ann["bboxes"], dtype=np.float32).reshape(-1, 4)
        if self.denorm_bbox:
            h, w = _mask_size(results)
            boxes = boxes * np.array([w, h, w, h], dtype=np.float32)
        results["gt_bboxes"] = boxes
        fields.append("gt_bboxes")
        if ann.get("bboxes_ignore") is not None:
            results["gt_bboxes_ignore"] = np.array(
                ann["bboxes_ignore"], dtype=np.float32).reshape(-1, 4)
            fields.append("gt_bboxes_ignore")
        results["bbox_fields"] = fields

    def _load_masks(self, results: dict[str, Any], ann: Mapping[str, Any]) -> None:
        where = f"image id {_image_id(results)}"
        segmentations = ann.get("masks")
        if segmentations is None:
            raise KeyError(f"LoadAnnotations(with_mask=True): the annotations of {where} have "
                           "no 'masks'; the dataset must give one segmentation per box")
        missing = [i for i, s in enumerate(segmentations) if s is None]
        if missing:
            raise ValueError(f"boxes {missing} of {where} have no segmentation; with_mask=True "
                             "needs one per box (fix the file, or load boxes only)")
        boxes = results.get("gt_bboxes")
        if boxes is not None and len(boxes) != len(segmentations):
            raise ValueError(f"{where} has {len(boxes)} boxes but {len(segmentations)} masks")
        h, w = _mask_size(results)
        try:
            masks = (bitmaps_from_segmentations(segmentations, h, w) if self.poly2mask
                     else polygons_from_segmentations(segmentations, h, w))
        except (ValueError, TypeError) as err:
            raise ValueError(f"a segmentation of {where} cannot be read: {err}") from None
        results["gt_masks"] = masks
        results["mask_fields"] = [*results.get("mask_fields", []), "gt_masks"]

    def _load_semantic_seg(self, results: dict[str, Any], ann: Mapping[str, Any]) -> None:
        prefix = results.get("seg_prefix")
        filename = os.path.join(prefix, ann["seg_map"]) if prefix else ann["seg_map"]
        try:
            seg = imread(filename, "unchanged", "rgb")
        except FileNotFoundError:
            raise FileNotFoundError(f"semantic map {filename!r} (image id {_image_id(results)}) "
                                    "does not exist; check seg_prefix in the config") from None
        results["gt_semantic_seg"] = seg.squeeze()
        results["seg_fields"] = [*results.get("seg_fields", []), "gt_semantic_seg"]

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        if "ann_info" not in results:
            raise KeyError("LoadAnnotations needs 'ann_info' in the sample: datasets add it in "
                           "training mode only (test_mode=False); remove LoadAnnotations from a "
                           "test pipeline")
        ann = results["ann_info"]
        if self.with_bbox:
            self._load_bboxes(results, ann)
        if self.with_label:
            results["gt_labels"] = np.array(ann["labels"], dtype=np.int64).reshape(-1)
        if self.with_mask:
            self._load_masks(results, ann)
        if self.with_seg:
            self._load_semantic_seg(results, ann)
        return results

    def __repr__(self) -> str:
        return (f"LoadAnnotations(with_bbox={self.with_bbox}, with_label={self.with_label}, "
                f"with_mask={self.with_mask}, with_seg={self.with_seg}, "
                f"poly2mask={self.poly2mask})")


def _mask_size(results: Mapping[str, Any]) -> tuple[int, int]:
    """``(h, w)`` of the sample's image: the loaded one, else the annotation file's."""
    if "img" in results:
        return tuple(int(v) for v in results["img"].shape[:2])
    info = results.get("img_info") or {}
    if "height" not in info or "width" not in info:
        raise KeyError(f"image id {_image_id(results)}: put LoadImageFromFile before "
                       "LoadAnnotations, or give height and width in img_info")
    return int(info["height"]), int(info["width"])


@TRANSFORMS.register_module()
class LoadProposals:
    """Use precomputed ``proposals`` (``(n, 4)`` or ``(n, 5)`` with scores) as a box field.

    Keeps the first ``num_max_proposals`` (all when None) and their ``xyxy`` columns; an empty
    set becomes one ``[0, 0, 0, 0]`` box, as MMDetection. Updates ``proposals`` and
    ``bbox_fields``.

    Args:
        num_max_proposals: how many to keep.
    """

    def __init__(self, num_max_proposals: int | None = None) -> None:
        self.num_max_proposals = num_max_proposals

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        if "proposals" not in results:
            raise KeyError(f"LoadProposals: image id {_image_id(results)} has no 'proposals'; "
                           "the dataset adds them from its proposal_file")
        proposals = np.asarray(results["proposals"], dtype=np.float32)
        if proposals.ndim != 2 or proposals.shape[1] not in (4, 5):
            raise ValueError(f"proposals must be (n, 4) or (n, 5), got shape {proposals.shape} "
                             f"for image id {_image_id(results)}")
        proposals = proposals[:self.num_max_proposals, :4]
        if len(proposals) == 0:
            proposals = np.zeros((1, 4), dtype=np.float32)
        results["proposals"] = proposals
        results["bbox_fields"] = [*results.get("bbox_fields", []), "proposals"]
        return results

    def __repr__(self) -> str:
        return f"LoadProposals(num_max_proposals={self.num_max_proposals})"


@TRANSFORMS.register_module()
class FilterAnnotations:
    """Drop ground truth that is too small: boxes no wider than ``min_gt_bbox_wh[0]`` or no
    taller than ``min_gt_bbox_wh[1]`` (``by_box``), masks of fewer than ``min_gt_mask_area``
    pixels (``by_mask``), with their labels, masks and ids.

    ``keep_empty`` is MMDetection 2.x's flag with MMDetection 2.x's meaning, despite its name:
    when every box is filtered out, ``keep_empty=True`` returns None (the dataset then draws
    another image) and ``keep_empty=False`` keeps the sample with no box. A sample that had no
    box to begin with is always kept. Updates ``gt_bboxes``, ``gt_labels``, ``gt_masks``,
    ``gt_instance_ids``.

    Args:
        min_gt_bbox_wh: ``(w, h)`` a box must exceed.
        min_gt_mask_area: the pixels a mask must have.
        by_box, by_mask: which rules to apply.
        keep_empty: see above.
    """

    def __init__(self, min_gt_bbox_wh: Sequence[float] = (1.0, 1.0), min_gt_mask_area: int = 1,
                 by_box: bool = True, by_mask: bool = False, keep_empty: bool = True) -> None:
        if not (by_box or by_mask):
            raise ValueError("FilterAnnotations needs by_box or by_mask")
        self.min_gt_bbox_wh = tuple(min_gt_bbox_wh)
        self.min_gt_mask_area = min_gt_mask_area
        self.by_box = by_box
        self.by_mask = by_mask
        self.keep_empty = keep_empty

    def _keep(self, results: dict[str, Any]) -> np.ndarray:
        for wanted, key, rule in ((self.by_box, "gt_bboxes", "by_box"),
                                  (self.by_mask, "gt_masks", "by_mask")):
            if wanted and results.get(key) is None:
                raise KeyError(f"FilterAnnotations({rule}=True) needs {key!r} in the sample; "
                               "load it with LoadAnnotations first")
        count = len(results["gt_bboxes"] if self.by_box else results["gt_masks"])
        keep = np.ones(count, dtype=bool)
        if self.by_box:
            boxes = results["gt_bboxes"]
            keep &= ((boxes[:, 2] - boxes[:, 0] > self.min_gt_bbox_wh[0])
                     & (boxes[:, 3] - boxes[:, 1] > self.min_gt_bbox_wh[1]))
        if self.by_mask:
            keep &= np.asarray(results["gt_masks"].areas) >= self.min_gt_mask_area
        return keep

    def __call__(self, results: dict[str, Any]) -> dict[str, Any] | None:
        keep = self._keep(results)
        if len(keep) == 0:
            return results
        if "gt_bboxes" in results:
            select_instances(results, "gt_bboxes", keep)
        else:
            for key in ("gt_labels", "gt_masks", "gt_instance_ids"):
                if results.get(key) is not None:
                    results[key] = results[key][np.flatnonzero(keep)]
        if not keep.any() and self.keep_empty:
            return None
        return results

    def __repr__(self) -> str:
        return (f"FilterAnnotations(min_gt_bbox_wh={self.min_gt_bbox_wh}, min_gt_mask_area="
                f"{self.min_gt_mask_area}, by_box={self.by_box}, by_mask={self.by_mask}, "
                f"keep_empty={self.keep_empty})")
