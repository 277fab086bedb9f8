"""Pascal VOC (VOCdevkit) -> COCO, with the boxes and file names of MMDetection's converter.

MMDetection's ``tools/dataset_converters/pascal_voc.py`` writes ``voc07_train.json`` ... with
the box ``[xmin - 1, ymin - 1, xmax - xmin, ymax - ymin]`` in whole pixels (VOC counts pixels
from 1, COCO from 0), ``difficult`` objects as ``iscrowd=1`` (so COCO evaluation ignores them),
``file_name`` ``VOC2007/JPEGImages/<id>.jpg`` relative to the devkit (the ``img_prefix``) and
the image size from the xml. The same is done here, reading the xml files with
:class:`~detlab.data.datasets.VOCDataset` (which reads boxes with that convention).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

from detlab.data.converters._common import write_json


def json_name(years: str | Sequence[str], split: str) -> str:
    """MMDetection's name of a converted file: ``voc07_train.json``, ``voc0712_trainval.json``."""
    years = [years] if isinstance(years, str) else list(years)
    return "voc" + "".join(str(y)[-2:] for y in years) + f"_{split}.json"


def _box_polygon(bbox: Sequence[float]) -> list[list[float]]:
    """The ``xywh`` box as a 4-corner polygon, the ``segmentation`` MMDetection's converter
    writes (tools that draw or rasterize masks then work on box-only data too)."""
    x1, y1, w, h = bbox
    x2, y2 = x1 + w, y1 + h
    return [[x1, y1, x1, y2, x2, y2, x2, y1]]


def voc_year_to_coco(devkit_root: str, year: str, split: str,
                     classes: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The COCO dict of ``VOC<year>/ImageSets/Main/<split>.txt`` read by
    :class:`~detlab.data.datasets.VOCDataset` (every listed image kept), ``file_name``
    relative to ``devkit_root``; None if the list does not exist."""
    from detlab.data.datasets.voc import VOCDataset

    year_dir = os.path.join(devkit_root, f"VOC{year}")
    listing = os.path.join(year_dir, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(listing):
        return None
    dataset = VOCDataset(listing, pipeline=[], classes=classes, img_prefix=year_dir,
                         test_mode=True)
    coco = dataset.to_coco()
    for image in coco["images"]:
        image["file_name"] = f"VOC{year}/" + image["file_name"].replace(os.sep, "/")
    for ann in coco["annotations"]:
        ann.setdefault("segmentation", _box_polygon(ann["bbox"]))
    return coco


def merge_coco(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One COCO dict of several with the same categories: image and annotation ids are
    renumbered from 1 in order."""
    images, annotations = [], []
    for part in parts:
        new_id = {}
        for image in part["images"]:
            new_id[image["id"]] = len(images) + 1
            images.append(dict(image, id=new_id[image["id"]]))
        annotations += [dict(ann, id=len(annotations) + i + 1, image_id=new_id[ann["image_id"]])
                        for i, ann in enumerate(part["annotations"])]
    return dict(parts[0], images=images, annotations=annotations)


def voc2coco(devkit_root: str, out_dir: str, years: Sequence[str | Sequence[str]] = ("2007",),
             splits: Sequence[str] = ("train", "val", "test"),
             classes: Sequence[str] | None = None) -> dict[str, str]:
    """Convert a VOCdevkit to COCO files, one per year (or group of years) and split.

    Args:
        devkit_root: the folder holding ``VOC2007/``, ``VOC2012/``.
        out_dir: where the json files go (created).
        years: ``'2007'``, ``'2012'``, or a group such as ``('2007', '2012')`` converted into
            one file (``voc0712_<split>.json``).
        splits: lists of ``VOC<year>/ImageSets/Main/`` to convert (``train``, ``val``,
            ``trainval``, ``test``); those a year lacks are skipped with a warning.
        classes: class names (default: the 20 VOC classes); objects of other classes are left
            out (names that are not VOC classes either are counted in a warning).

    Returns ``{'voc07_train': path, ...}`` (MMDetection's file names without ``.json``). The
    xml files are read by :class:`~detlab.data.datasets.VOCDataset`; boxes follow MMDetection's
    converter (see the module docstring); ids start at 1, category ``k + 1`` is
    ``classes[k]``; use ``devkit_root`` as ``img_prefix``.
    """
    if isinstance(years, str):
        years = (years,)
    written = {}
    for group in years:
        group_years = [group] if isinstance(group, str) else list(group)
        for split in splits:
            name = json_name(group_years, split)
            parts = [voc_year_to_coco(devkit_root, y, split, classes) for y in group_years]
            if any(part is None for part in parts):
                warnings.warn(f"{devkit_root}: no ImageSets/Main/{split}.txt for "
                              f"VOC{'+'.join(group_years)}; {name} skipped", stacklevel=2)
                continue
            coco = merge_coco(parts) if len(parts) > 1 else parts[0]
            written[name[:-len(".json")]] = write_json(coco, os.path.join(out_dir, name))
    if not written:
        raise FileNotFoundError(f"{devkit_root!r}: none of the splits {list(splits)} was found "
                                f"for the years {list(years)} (expected VOC<year>/ImageSets/"
                                "Main/<split>.txt)")
    return written
