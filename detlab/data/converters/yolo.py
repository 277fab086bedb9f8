"""YOLO <-> COCO: ``coco2yolo`` writes an Ultralytics-style folder, ``yolo2coco`` reads one.

A YOLO dataset is a folder of images and, beside it, a folder of labels: the label file of
``<root>/images/<split>/a.jpg`` is ``<root>/labels/<split>/a.txt``, one object a line
``class cx cy w h`` in ``0..1`` (fractions of the image width and height), ``class`` the
0-based index into ``names`` of ``data.yaml``. COCO boxes are ``xywh`` in pixels.

``coco2yolo`` also writes the COCO category id of each class into ``data.yaml``
(``coco_category_ids``, which YOLO tools ignore), so that ``yolo2coco`` gives the original ids
back; without it, class ``k`` becomes category id ``k + 1``.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from detlab.data.converters._common import write_json, write_text

# 8 decimals keep a box to 5e-9 of the image size: well under 1e-3 px for any real image
_DECIMALS = 8
COPY_MODES = (False, True, "copy", "symlink")
_SPLIT_NAMES = ("train", "val", "test")
_NAME_FILES = ("classes.txt", "obj.names")
_YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml")


def _label_lines(boxes: np.ndarray, classes: np.ndarray, width: float, height: float) -> str:
    """The label file text of ``boxes`` ``(n, 4)`` COCO xywh in pixels, ``classes`` ``(n,)``."""
    if not len(boxes):
        return ""
    x1 = np.clip(boxes[:, 0], 0, width)
    y1 = np.clip(boxes[:, 1], 0, height)
    x2 = np.clip(boxes[:, 0] + boxes[:, 2], 0, width)
    y2 = np.clip(boxes[:, 1] + boxes[:, 3], 0, height)
    rows = np.stack([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height,
                     (x2 - x1) / width, (y2 - y1) / height], axis=1)
    fmt = f"{{}} {{:.{_DECIMALS}f}} {{:.{_DECIMALS}f}} {{:.{_DECIMALS}f}} {{:.{_DECIMALS}f}}"
    return "".join(fmt.format(int(c), *row) + "\n" for c, row in zip(classes, rows, strict=True))


def _image_boxes(anns: Sequence[dict], cat_index: dict[Any, int], include_crowd: bool,
                 skipped: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 4)`` float64 COCO xywh boxes and ``(n,)`` class indices of one image's
    annotations; counts what it leaves out in ``skipped``."""
    kept = []
    for ann in anns:
        bbox = ann.get("bbox")
        if ann.get("iscrowd", 0) and not include_crowd:
            skipped["crowd"] += 1
        elif ann.get("category_id") not in cat_index:
            skipped["unknown category"] += 1
        elif not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or bbox[2] <= 0 \
                or bbox[3] <= 0:
            skipped["empty or malformed bbox"] += 1
        else:
            kept.append(ann)
    boxes = np.asarray([a["bbox"] for a in kept], dtype=np.float64).reshape(-1, 4)
    classes = np.asarray([cat_index[a["category_id"]] for a in kept], dtype=np.int64)
    return boxes, classes


def _place_image(src: str, dst: str, mode: bool | str) -> bool:
    """Copy or link ``src`` to ``dst`` (``mode`` from ``COPY_MODES``); False if ``src`` is
    missing."""
    if not mode:
        return True
    if not os.path.isfile(src):
        return False
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.lexists(dst):
        os.remove(dst)
    if mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
    else:
        shutil.copy2(src, dst)
    return True


def _yolo_relpath(file_name: str) -> str:
    """Where an image goes under ``images/``: its ``file_name`` (sub-folders kept), or its
    base name when ``file_name`` is absolute."""
    rel = os.path.basename(file_name) if os.path.isabs(file_name) else file_name
    return os.path.normpath(rel)


def names_list(names: Any) -> list[str]:
    """``names`` of a data.yaml (a list, or a dict ``{index: name}``) as a list."""
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    return [str(n) for n in names or []]


def _update_data_yaml(out_dir: str, split: str | None, names: list[str],
                      cat_ids: list[Any]) -> str:
    """Write (or extend, one split at a time) ``out_dir/data.yaml``; its path."""
    import yaml

    path = os.path.join(out_dir, "data.yaml")
    data: dict[str, Any] = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        old = names_list(data.get("names"))
        if old and old != names:
            raise ValueError(f"{path} already lists the classes {old}, but this file has "
                             f"{names}; write the split into another out_dir")
    data["path"] = os.path.abspath(out_dir)
    if split is None:
        data.update(train="images", val="images")
    else:
        data[split] = f"images/{split}"
    data.update(nc=len(names), names=list(names), coco_category_ids=list(cat_ids))
    return write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), path)


def coco2yolo(ann_file: str, img_prefix: str, out_dir: str, copy_images: bool | str = False,
              split: str | None = None, include_crowd: bool = False) -> str:
    """Write a COCO detection file as a YOLO dataset; returns the path of ``data.yaml``.

    Writes ``out_dir/images[/split]/<file_name>`` (sub-folders kept), the label file of each
    image where YOLO looks for it (``labels`` in place of the last ``images`` folder of its
    path: ``labels[/split]/<file_name stem>.txt``; ``class cx cy w h``, normalized, 8
    decimals; empty for an image without boxes) and ``out_dir/data.yaml`` (``names`` in the
    order of the file's ``categories``, which is detlab's label order, and
    ``coco_category_ids``).

    Args:
        ann_file: COCO json (boxes ``xywh`` in pixels).
        img_prefix: folder the images' ``file_name`` are relative to.
        out_dir: the YOLO dataset root (created).
        copy_images: False to write labels only (put the images into ``images/`` yourself),
            ``'symlink'`` to link them, True or ``'copy'`` to copy them.
        split: write into ``images/<split>``, ``labels/<split>`` and set ``<split>:`` in
            ``data.yaml`` (call once per split with the same ``out_dir``); None writes
            ``images/`` and ``labels/`` and uses them for both ``train`` and ``val``.
        include_crowd: also write ``iscrowd`` boxes (YOLO has no notion of crowd regions, so
            they are left out by default).

    Boxes are clipped to the image; empty boxes and unknown categories are left out, with a
    warning that counts them.
    """
    from detlab.data.datasets.coco import load_coco
    from detlab.data.datasets.yolo import label_path

    if copy_images not in COPY_MODES:
        raise ValueError(f"copy_images must be one of {COPY_MODES}, got {copy_images!r}")
    coco = load_coco(os.fspath(ann_file))
    cats = coco.dataset["categories"]
    cat_index = {cat["id"]: i for i, cat in enumerate(cats)}
    sub = (lambda d: os.path.join(out_dir, d, split)) if split else (
        lambda d: os.path.join(out_dir, d))
    skipped = dict.fromkeys(("crowd", "unknown category", "empty or malformed bbox"), 0)
    missing = []
    for image in coco.dataset["images"]:
        dst = os.path.join(sub("images"), _yolo_relpath(image["file_name"]))
        boxes, classes = _image_boxes(coco.imgToAnns.get(image["id"], []), cat_index,
                                      include_crowd, skipped)
        text = _label_lines(boxes, classes, float(image["width"]), float(image["height"]))
        # the reader's own rule, so that a file_name with an 'images' folder still matches
        write_text(text, label_path(dst))
        src = os.path.join(img_prefix, image["file_name"])
        if not _place_image(src, dst, copy_images):
            missing.append(src)
    _warn_left_out(ann_file, skipped, missing)
    return _update_data_yaml(out_dir, split, [c["name"] for c in cats], [c["id"] for c in cats])


def _warn_left_out(ann_file: str, skipped: dict[str, int], missing: list[str]) -> None:
    left_out = ", ".join(f"{n} {why}" for why, n in skipped.items() if n)
    if left_out:
        warnings.warn(f"coco2yolo {ann_file}: boxes left out: {left_out}", stacklevel=3)
    if missing:
        warnings.warn(f"coco2yolo {ann_file}: {len(missing)} images were not found, e.g. "
                      f"{missing[0]!r}; their labels are written but not the images",
                      stacklevel=3)


def _folder_splits(root: str, splits: Sequence[str]) -> dict[str, str]:
    """``{split: images folder or image list}`` of a YOLO folder without a data yaml:
    ``images/<split>/``, ``<split>.txt``, or a flat ``images/`` taken as ``'train'``."""
    found = {}
    for split in splits:
        if os.path.isdir(os.path.join(root, "images", split)):
            found[split] = os.path.join(root, "images", split)
        elif os.path.isfile(os.path.join(root, f"{split}.txt")):
            found[split] = os.path.join(root, f"{split}.txt")
    has_split_dirs = any(os.path.isdir(os.path.join(root, "images", s)) for s in _SPLIT_NAMES)
    if not found and not has_split_dirs and "train" in splits \
            and os.path.isdir(os.path.join(root, "images")):
        found["train"] = os.path.join(root, "images")
    return found


def _folder_classes(root: str, classes: Sequence[str] | None) -> list[str]:
    if classes is not None:
        return list(classes)
    for name in _NAME_FILES:
        if os.path.isfile(os.path.join(root, name)):
            with open(os.path.join(root, name), encoding="utf-8") as f:
                return [line.strip() for line in f if line.strip()]
    raise FileNotFoundError(f"{root} has no data.yaml, {' or '.join(_NAME_FILES)}; pass "
                            "classes=[...] with the class names in YOLO index order")


def _find_data_yaml(source: str) -> str | None:
    """``source`` if it is a file, else the data yaml inside the folder ``source``, if any."""
    if os.path.isfile(source):
        return source
    return next((os.path.join(source, n) for n in _YAML_NAMES
                 if os.path.isfile(os.path.join(source, n))), None)


def _yolo_datasets(source: str, splits: Sequence[str],
                   classes: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``{split: YOLODataset arguments}`` of the splits ``source`` has; image file names are
    relative to the dataset root (YOLODataset's default for a data yaml)."""
    from detlab.data.datasets.yolo import read_data_yaml

    data_yaml = _find_data_yaml(source)
    if data_yaml is not None:
        data = read_data_yaml(data_yaml)
        return {split: dict(ann_file=os.path.abspath(data_yaml), split=split,
                            classes=list(classes) if classes is not None else None)
                for split in splits if data.get(split)}
    if not os.path.isdir(source):
        raise FileNotFoundError(f"YOLO dataset {source!r} does not exist")
    names = _folder_classes(source, classes)
    return {split: dict(ann_file=os.path.abspath(path), img_prefix=os.path.abspath(source),
                        classes=names)
            for split, path in _folder_splits(source, splits).items()}


def _category_ids(data_yaml: str | None) -> list[tuple[str, Any]] | None:
    """``(name, id)`` of the ``coco_category_ids`` that :func:`coco2yolo` wrote into the data
    yaml, if any."""
    import yaml

    if data_yaml is None:
        return None
    with open(data_yaml, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not isinstance(data.get("coco_category_ids"), list):
        return None
    names, ids = names_list(data.get("names")), data["coco_category_ids"]
    return list(zip(names, ids, strict=True)) if len(ids) == len(names) else None


def _restore_category_ids(coco: dict[str, Any], pairs: list[tuple[str, Any]] | None) -> None:
    """Give the categories (and annotations) of ``coco`` the ids of ``pairs`` (name, id)."""
    if not pairs:
        return
    by_name = dict(pairs)
    new_id = {c["id"]: by_name.get(c["name"], c["id"]) for c in coco["categories"]}
    for cat in coco["categories"]:
        cat["id"] = new_id[cat["id"]]
    for ann in coco["annotations"]:
        ann["category_id"] = new_id[ann["category_id"]]


def yolo2coco(yolo_root_or_data_yaml: str, out_dir: str,
              splits: Sequence[str] = ("train", "val", "test"),
              classes: Sequence[str] | None = None) -> dict[str, str]:
    """Convert a YOLO dataset to COCO files ``out_dir/instances_<split>.json``, reading it with
    :class:`~detlab.data.datasets.YOLODataset`.

    Args:
        yolo_root_or_data_yaml: a ``data.yaml`` (Ultralytics: ``path``, ``train``/``val``/
            ``test`` as folders, image lists or lists of them, ``names``), or a folder holding
            one, or a folder with ``images/<split>/`` (or ``<split>.txt`` image lists, or a flat
            ``images/`` converted as ``'train'``), the labels beside the images under
            ``labels/`` and the class names in ``classes.txt`` or ``obj.names``.
        out_dir: where the json files go (created).
        splits: the splits to convert; those the dataset does not have are skipped.
        classes: for a folder, the class names in YOLO index order (instead of its names
            file); for a data yaml, the subset of its names to keep.

    Returns ``{split: json path}``. ``file_name`` is relative to the dataset root (use it as
    ``img_prefix``); boxes are ``xywh`` in pixels of the size read from each image's header;
    category ids are those :func:`coco2yolo` recorded in the yaml, else ``1..K``.
    """
    from detlab.data.datasets.yolo import YOLODataset

    source = os.fspath(yolo_root_or_data_yaml)
    found = _yolo_datasets(source, splits, classes)
    if not found:
        raise FileNotFoundError(f"{source}: none of the splits {list(splits)} was found")
    pairs = _category_ids(_find_data_yaml(source))
    written = {}
    for split, args in found.items():
        coco = YOLODataset(pipeline=[], test_mode=True, **args).to_coco()
        _restore_category_ids(coco, pairs)
        written[split] = write_json(coco, os.path.join(out_dir, f"instances_{split}.json"))
    return written
