"""YOLODataset: an Ultralytics / YOLOv5-style tree of images and txt labels.

Each image ``.../images/<sub>/x.jpg`` has its labels in ``.../labels/<sub>/x.txt`` (the last
``images`` folder of the path replaced by ``labels``; without one, the txt sits next to the
image), one object a line: ``class cx cy w h``, normalized by the image's width and height, or a
polygon ``class x1 y1 x2 y2 ...`` (normalized; its box is the polygon's extent and the polygon
goes to ``masks``). A missing or empty txt means no objects.

Image sizes are read from the image headers (PIL does not decode the pixels), turned by the EXIF
orientation as the loaders turn the pixels; headers are read in threads.

Bad input: a label line that is not 5 numbers or a polygon, a class number outside the class
list, or coordinates that are not normalized (beyond [0, 1] by more than 1%; within that they are
clipped) are errors naming the txt file and the line. Images whose header cannot be read are
skipped with one warning naming the first few; their count is in ``skipped_images``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from detlab.data.datasets.custom import CustomDataset, _remap_labels, empty_ann
from detlab.registry import DATASETS

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp")
_TOLERANCE = 0.01  # normalized coordinates this far outside [0, 1] are clipped, not refused
_YAML = (".yaml", ".yml")


# --------------------------------------------------------------------------------------------
# the data yaml and the image lists
# --------------------------------------------------------------------------------------------


def read_data_yaml(path: str) -> dict:
    """An Ultralytics data yaml as a dict, with ``names`` as a list in class order."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ValueError(f"data yaml {path!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict) or "names" not in data:
        raise ValueError(f"data yaml {path!r} has no 'names' (the class names, a list or a "
                         "dict {index: name})")
    names = data["names"]
    if isinstance(names, dict):
        keys = sorted(int(k) for k in names)
        if keys != list(range(len(keys))):
            raise ValueError(f"data yaml {path!r}: 'names' must number the classes 0..K-1, "
                             f"got {keys}")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list):
        raise ValueError(f"data yaml {path!r}: 'names' must be a list or a dict, got "
                         f"{type(names).__name__}")
    return dict(data, names=[str(n) for n in names])


def _yaml_root(data: dict, yaml_path: str) -> str:
    """The dataset root of a data yaml: its ``path`` (relative to the yaml's folder, else to
    the current directory), or the yaml's folder."""
    here = os.path.dirname(os.path.abspath(yaml_path))
    root = data.get("path")
    if not root:
        return here
    root = os.path.expanduser(str(root))
    if os.path.isabs(root):
        return root
    beside = os.path.normpath(os.path.join(here, root))
    return beside if os.path.exists(beside) else os.path.abspath(root)


def _split_entries(data: dict, yaml_path: str, split: str) -> list[str]:
    """The folders / txt lists of ``split``, resolved as Ultralytics resolves them (a
    ``../`` that leads nowhere is tried without it)."""
    entry = data.get(split)
    if not entry:
        found = [k for k in ("train", "val", "test") if data.get(k)]
        raise ValueError(f"data yaml {yaml_path!r} has no {split!r} split (it has {found}); "
                         "choose one with split=...")
    root = _yaml_root(data, yaml_path)
    paths = []
    for item in entry if isinstance(entry, list) else [entry]:
        path = os.path.normpath(os.path.join(root, str(item)))
        if not os.path.exists(path) and str(item).startswith("../"):
            path = os.path.normpath(os.path.join(root, str(item)[3:]))
        paths.append(path)
    return paths


def list_images(source: str) -> list[str]:
    """The image paths of a folder (recursively, sorted) or of a txt list (one a line,
    relative to the txt's folder)."""
    if os.path.isdir(source):
        found = [os.path.join(d, n) for d, _, names in os.walk(source) for n in names
                 if n.lower().endswith(IMAGE_EXTENSIONS)]
        return sorted(found)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"image folder or list {source!r} does not exist")
    base = os.path.dirname(os.path.abspath(source))
    with open(source, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    return [os.path.normpath(os.path.join(base, line)) for line in lines]


def label_path(image_path: str) -> str:
    """The txt of an image: the last ``images`` folder of the path becomes ``labels``."""
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, sep, tail = image_path.rpartition(images)
    path = f"{head}{labels}{tail}" if sep else image_path
    return os.path.splitext(path)[0] + ".txt"


# --------------------------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------------------------


def image_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` as displayed (EXIF orientation applied) from the header, or None
    when the file cannot be read as an image."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)  # the EXIF Orientation tag
    except (OSError, ValueError, SyntaxError):
        return None
    # orientations 5-8 turn the image a quarter: width and height swap
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _label_rows(path: str) -> list[tuple[int, list[float]]]:
    """``(line number, numbers)`` of the non-empty lines of a label txt (none if missing)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as err:
        raise ValueError(f"label file {path!r} is not text: {err}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, [float(v) for v in line.split()]))
        except ValueError:
            raise ValueError(f"label file {path!r}, line {number}: {line.strip()!r} is not "
                             "numbers ('class cx cy w h', normalized to 0..1)") from None
    return rows


def _normalized(values: np.ndarray, path: str, number: int) -> np.ndarray:
    """Coordinates clipped to [0, 1], or an error when they are clearly not normalized."""
    if not np.isfinite(values).all() or (values < -_TOLERANCE).any() \
            or (values > 1 + _TOLERANCE).any():
        raise ValueError(f"label file {path!r}, line {number}: coordinates {values.tolist()} "
                         "are not normalized to 0..1 (YOLO labels divide by the image width "
                         "and height; pixel coordinates belong in another format)")
    return values.clip(0, 1)


def _object_of(row: list[float], path: str, number: int, width: int,
               height: int) -> tuple[list[float], list[float] | None]:
    """``([x1, y1, x2, y2] pixels, polygon in pixels or None)`` of one label line."""
    coords = np.asarray(row[1:], dtype=np.float64)
    scale = np.array([width, height], dtype=np.float64)
    if len(coords) == 4:
        cx, cy, w, h = _normalized(coords, path, number)
        if w <= 0 or h <= 0:
            raise ValueError(f"label file {path!r}, line {number}: width and height must be "
                             f"positive, got w={w}, h={h}")
        box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]).clip(0, 1)
        return (box.reshape(2, 2) * scale).reshape(-1).tolist(), None
    if len(coords) >= 6 and len(coords) % 2 == 0:
        points = _normalized(coords, path, number).reshape(-1, 2) * scale  # (P, 2) pixels
        box = np.concatenate([points.min(axis=0), points.max(axis=0)])
        return box.tolist(), points.reshape(-1).tolist()
    raise ValueError(f"label file {path!r}, line {number}: expected 'class cx cy w h' or "
                     f"'class x1 y1 x2 y2 x3 y3 ...', got {len(row)} numbers")


def parse_labels(path: str, width: int, height: int, num_classes: int) -> dict[str, Any]:
    """The ``ann`` of one label txt: ``bboxes`` ``(n, 4)`` float32 xyxy pixels, ``labels``
    ``(n,)`` int64 (the file's class numbers), ``masks`` (polygons, or None per box)."""
    boxes, labels, masks = [], [], []
    for number, row in _label_rows(path):
        cls = row[0]
        if cls != int(cls) or not 0 <= cls < num_classes:
            raise ValueError(f"label file {path!r}, line {number}: class {row[0]:g} is not one "
                             f"of the {num_classes} classes (0..{num_classes - 1})")
        box, polygon = _object_of(row, path, number, width, height)
        boxes.append(box)
        labels.append(int(cls))
        masks.append(None if polygon is None else [polygon])
    if not boxes:
        return dict(empty_ann(), masks=[])
    return dict(empty_ann(), bboxes=np.asarray(boxes, np.float32),
                labels=np.asarray(labels, np.int64), masks=masks)


# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------


@DATASETS.register_module()
class YOLODataset(CustomDataset):
    """A YOLO (Ultralytics) dataset: images, txt labels and class names.

    Args:
        ann_file: which images make this dataset (relative paths under ``data_root``):
            a data yaml (Ultralytics' ``data.yaml``: the folders or txt lists of its ``split``
            entry, under its ``path``, and its ``names``); or a folder of images (searched
            recursively, e.g. ``images/train``); or a txt list of image paths, one a line,
            relative to the txt's folder.
        pipeline: transforms run on each sample.
        classes: the class names of the label numbers: a list, a txt of one name a line, or a
            data yaml. With a data yaml as ``ann_file`` the names come from it, and ``classes``
            picks a subset by name (other objects are dropped).
        data_root, seg_prefix, proposal_file, test_mode, filter_empty_gt: as
            :class:`CustomDataset`.
        img_prefix: the folder the image ``filename`` s are relative to (default: the images
            folder, the txt list's folder, or the yaml's dataset root).
        split: the split of a data yaml: ``'train'``, ``'val'`` or ``'test'``.

    ``evaluate`` defaults to COCO metrics (``metric='bbox'``), as Ultralytics reports mAP50-95.
    See the module docstring for the layout, the label format and bad input.
    """

    default_metric = "bbox"

    def __init__(self, ann_file: str, pipeline: Sequence[Mapping | Callable],
                 classes: str | Sequence[str] | None = None, data_root: str | None = None,
                 img_prefix: str = "", seg_prefix: str | None = None,
                 proposal_file: str | None = None, test_mode: bool = False,
                 filter_empty_gt: bool = True, split: str = "train") -> None:
        self.split = split
        self.skipped_images: list[str] = []
        super().__init__(ann_file, pipeline, classes=classes, data_root=data_root,
                         img_prefix=img_prefix, seg_prefix=seg_prefix,
                         proposal_file=proposal_file, test_mode=test_mode,
                         filter_empty_gt=filter_empty_gt)

    @classmethod
    def get_classes(cls, classes: str | Sequence[str] | None = None) -> tuple[str, ...] | None:
        """Class names from a list, a txt of one name a line, or a data yaml's ``names``."""
        if isinstance(classes, (str, os.PathLike)) and os.fspath(classes).endswith(_YAML):
            return tuple(read_data_yaml(os.fspath(classes))["names"])
        return super().get_classes(classes)

    def _image_paths(self, ann_file: str) -> tuple[list[str], str, tuple[str, ...] | None]:
        """The image paths, the default image root and the class names of a data yaml."""
        if ann_file.endswith(_YAML):
            data = read_data_yaml(ann_file)
            paths = [p for entry in _split_entries(data, ann_file, self.split)
                     for p in list_images(entry)]
            return paths, _yaml_root(data, ann_file), tuple(data["names"])
        root = ann_file if os.path.isdir(ann_file) else os.path.dirname(ann_file)
        return list_images(ann_file), root, None

    def load_annotations(self, ann_file: str) -> list[dict]:
        """Image dicts (``filename`` relative to ``img_prefix``, ``width``, ``height``,
        ``ann``) of the images of ``ann_file``, labels read and checked."""
        paths, root, file_classes = self._image_paths(ann_file)
        names = self._resolve_classes(file_classes, ann_file)
        if not self.img_prefix:
            self.img_prefix = root
        with ThreadPoolExecutor(max_workers=8) as pool:  # header reads wait on the disk
            sizes = list(pool.map(image_size, paths))
        self._report_unreadable([p for p, s in zip(paths, sizes, strict=True) if s is None])
        lookup = self._label_lookup(file_classes, ann_file) if file_classes else None
        infos = []
        for path, size in zip(paths, sizes, strict=True):
            if size is None:
                continue
            ann = parse_labels(label_path(path), size[0], size[1], len(names))
            infos.append(dict(filename=os.path.relpath(path, self.img_prefix), width=size[0],
                              height=size[1],
                              ann=ann if lookup is None else _remap_labels(ann, lookup)))
        return infos

    def _resolve_classes(self, file_classes: tuple[str, ...] | None,
                         ann_file: str) -> tuple[str, ...]:
        """The names of the label numbers; sets ``CLASSES`` when ``classes`` was not given."""
        if self.CLASSES is None:
            self.CLASSES = file_classes
        if self.CLASSES is None:
            raise ValueError(f"YOLO labels hold class numbers only: pass classes=[...] (a list, "
                             f"a txt of one name a line, or the data yaml) for {ann_file!r}")
        return file_classes or self.CLASSES

    def _report_unreadable(self, paths: list[str]) -> None:
        self.skipped_images = paths
        if paths:
            shown = ", ".join(repr(p) for p in paths[:3])
            warnings.warn(f"YOLODataset: {len(paths)} images cannot be read and are skipped "
                          f"(e.g. {shown}); their paths are in dataset.skipped_images",
                          UserWarning, stacklevel=4)
