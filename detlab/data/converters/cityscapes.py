"""Cityscapes -> COCO instance files, with the classes and rules of MMDetection's converter.

The layout is ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` for the images and
``gtFine/<split>/<city>/<name>_gtFine_instanceIds.png`` for the instance maps: a 16-bit PNG whose
pixel is ``label_id * 1000 + instance`` for a separated object of a class with instances, and
just ``label_id`` for a group of them (a crowd region) or for stuff. Only the 8 classes that
Cityscapes evaluates as instances become categories, with their Cityscapes label ids as COCO
category ids (caravan and trailer have instances but are ignored in evaluation, so left out).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from detlab.data.converters._common import write_json

# Cityscapes label id -> name of the classes evaluated as instances (cityscapesScripts labels)
THING_CLASSES: dict[int, str] = {24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus",
                                 31: "train", 32: "motorcycle", 33: "bicycle"}
MASK_FORMATS = ("rle", "polygon")
_IMG_SUFFIX = "_leftImg8bit.png"
_INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


def json_name(split: str) -> str:
    """The file name MMDetection's Cityscapes configs expect for ``split``."""
    return f"instancesonly_filtered_gtFine_{split}.json"


def _read_instance_map(path: str) -> np.ndarray:
    """``(H, W)`` int64 instance ids of an instanceIds PNG (16-bit, or 32-bit mode ``'I'``)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image).astype(np.int64)


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons (outer contours, 3 points or more) of a ``(H, W)`` uint8 mask."""
    try:
        import cv2
    except ImportError:
        raise ImportError("mask_format='polygon' traces contours with OpenCV; install "
                          "opencv-python-headless, or use mask_format='rle'") from None
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def instances_of(instance_map: np.ndarray, mask_format: str = "rle") -> list[dict[str, Any]]:
    """COCO annotations (without ids) of one ``(H, W)`` instance map: ``category_id``,
    ``bbox`` ``xywh`` and ``area`` from the mask, ``segmentation``, ``iscrowd``.

    Crowd regions (ids below 1000) always keep an RLE mask, as COCO stores them; with
    ``mask_format='polygon'`` the others become polygons.
    """
    from pycocotools import mask as mask_utils

    # ids below 24 are stuff or void; skipping them first saves most of the comparisons
    ids = np.unique(instance_map[instance_map >= min(THING_CLASSES)])
    annotations = []
    for inst_id in ids.tolist():
        label_id = inst_id // 1000 if inst_id >= 1000 else inst_id
        if label_id not in THING_CLASSES:
            continue
        mask = np.asfortranarray(instance_map == inst_id, dtype=np.uint8)
        rle = mask_utils.encode(mask)
        iscrowd = int(inst_id < 1000)
        segmentation: Any = dict(size=rle["size"], counts=rle["counts"].decode("ascii"))
        if mask_format == "polygon" and not iscrowd:
            segmentation = _polygons(np.ascontiguousarray(mask)) or segmentation
        annotations.append(dict(
            category_id=label_id, iscrowd=iscrowd, segmentation=segmentation,
            bbox=mask_utils.toBbox(rle).tolist(), area=float(mask_utils.area(rle))))
    return annotations


def _split_pairs(root: str, split: str, img_dir: str, gt_dir: str) -> list[tuple[str, str]]:
    """``(image file relative to img_dir/split, instance map path)`` of every image of a split,
    sorted."""
    img_root = os.path.join(root, img_dir, split)
    pairs = []
    for parent, _, names in os.walk(img_root):
        for name in names:
            if not name.endswith(_IMG_SUFFIX):
                continue
            rel = os.path.relpath(os.path.join(parent, name), img_root)
            gt = os.path.join(root, gt_dir, split, rel[:-len(_IMG_SUFFIX)] + _INSTANCE_SUFFIX)
            if not os.path.isfile(gt):
                raise FileNotFoundError(f"image {os.path.join(img_root, rel)!r} has no instance "
                                        f"map: {gt!r} does not exist")
            pairs.append((rel.replace(os.sep, "/"), gt))
    return sorted(pairs)


def convert_split(pairs: Sequence[tuple[str, str]], mask_format: str = "rle") -> dict[str, Any]:
    """The COCO dict of ``(file_name, instance map path)`` pairs (ids from 1)."""
    images, annotations = [], []
    for image_id, (file_name, gt_path) in enumerate(pairs, 1):
        instance_map = _read_instance_map(gt_path)
        height, width = instance_map.shape[:2]
        images.append(dict(id=image_id, file_name=file_name, width=int(width),
                           height=int(height),
                           segm_file=file_name[:-len(_IMG_SUFFIX)] + _LABEL_SUFFIX))
        for ann in instances_of(instance_map, mask_format):
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, **ann))
    categories = [dict(id=cid, name=name) for cid, name in THING_CLASSES.items()]
    return dict(images=images, annotations=annotations, categories=categories)


def cityscapes2coco(cityscapes_root: str, out_dir: str,
                    splits: Sequence[str] = ("train", "val"), mask_format: str = "rle",
                    img_dir: str = "leftImg8bit", gt_dir: str = "gtFine") -> dict[str, str]:
    """Convert Cityscapes' fine instance annotations to COCO files, one per split.

    Writes ``out_dir/instancesonly_filtered_gtFine_<split>.json`` (MMDetection's names): the
    images with ``file_name`` = ``<city>/<name>_leftImg8bit.png`` (relative to
    ``leftImg8bit/<split>/``, the ``img_prefix`` of MMDetection's Cityscapes configs) and
    ``segm_file``; one annotation per object of the 8 instance classes (person, rider, car,
    truck, bus, train, motorcycle, bicycle; category ids are Cityscapes label ids 24..33) with
    its mask (``mask_format`` ``'rle'`` or ``'polygon'``), its bounding box ``xywh`` and pixel
    area from the mask; group regions (ids below 1000) are ``iscrowd=1``.

    Returns ``{split: json path}``; a split without an image folder is skipped with a warning.
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    written = {}
    for split in splits:
        if not os.path.isdir(os.path.join(cityscapes_root, img_dir, split)):
            warnings.warn(f"{os.path.join(cityscapes_root, img_dir, split)} does not exist; "
                          f"split {split!r} skipped", stacklevel=2)
            continue
        pairs = _split_pairs(cityscapes_root, split, img_dir, gt_dir)
        coco = convert_split(pairs, mask_format)
        written[split] = write_json(coco, os.path.join(out_dir, json_name(split)))
    if not written:
        raise FileNotFoundError(f"{cityscapes_root!r} has none of the splits {list(splits)} "
                                f"under {img_dir}/")
    return written
