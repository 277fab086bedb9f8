"""CustomDataset: what every detection dataset shares, and MMDetection's "middle format".

A dataset is a list of image dicts (``data_infos``), each with ``filename``, ``width``,
``height`` and, for the middle format, ``ann``::

    dict(filename='a.jpg', width=640, height=480,
         ann=dict(bboxes=(n, 4) float32 xyxy, labels=(n,) int64 0-based,
                  bboxes_ignore=(k, 4) float32 xyxy, labels_ignore=(k,) int64))

``CustomDataset`` itself reads that list from a pickle or json file. Any other format is
supported by subclassing it and overriding :meth:`CustomDataset.load_annotations` (the image
dicts of a file) and, if the annotations are not in ``info['ann']``,
:meth:`CustomDataset.get_ann_info`; the subclass may be defined in a notebook cell and registered
with ``@DATASETS.register_module()``. Everything else -- joining ``data_root``, picking
``classes``, dropping small or unannotated images at training time, the aspect-ratio group
``flag``, the pipeline, the COCO export (:meth:`CustomDataset.to_coco`) and the metrics
(:meth:`CustomDataset.evaluate`: VOC ``mAP`` / ``recall``, COCO ``bbox`` through ``to_coco``)
-- lives here.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from detlab import safe_pickle
from detlab.data.transforms.compose import Compose
from detlab.registry import DATASETS
from detlab.safe_pickle import UnsafePickleError

_MAX_REDRAWS = 100  # samples tried in a row before concluding the pipeline drops everything
_BOX_KEYS = (("bboxes", "labels"), ("bboxes_ignore", "labels_ignore"))


def _join_root(data_root: str | None, path: str | None) -> str | None:
    """``path`` under ``data_root`` unless it is absolute (or either is unset)."""
    if data_root is None or path is None or os.path.isabs(path):
        return path
    return os.path.join(data_root, path)


# --------------------------------------------------------------------------------------------
# annotations of one image
# --------------------------------------------------------------------------------------------


def empty_ann() -> dict[str, np.ndarray]:
    """The annotations of an image without objects."""
    return dict(bboxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                bboxes_ignore=np.zeros((0, 4), np.float32), labels_ignore=np.zeros(0, np.int64))


def _checked_boxes(boxes: Any, key: str, where: str) -> np.ndarray:
    """``(n, 4)`` float32 xyxy boxes, or an error naming the image and the first bad box."""
    try:
        array = np.asarray(boxes, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: ann[{key!r}] is not an (n, 4) array of numbers ({err})") \
            from None
    if array.size == 0:
        return np.zeros((0, 4), np.float32)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{where}: ann[{key!r}] must be (n, 4) xyxy boxes, got shape "
                         f"{array.shape}")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1)
                         | (array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1]))
    if bad.size:
        raise ValueError(f"{where}: ann[{key!r}][{bad[0]}] = {array[bad[0]].tolist()} is not an "
                         f"[x1, y1, x2, y2] box with x1 <= x2 and y1 <= y2 ({bad.size} such "
                         "boxes; boxes are xyxy in pixels, not xywh)")
    return array


def _checked_labels(labels: Any, count: int, key: str, num_classes: int | None,
                    where: str) -> np.ndarray:
    """``(n,)`` int64 labels in ``0..num_classes-1``, or an error naming the image."""
    array = np.asarray(labels if labels is not None else np.zeros(0)).reshape(-1)
    if array.size and not np.all(np.mod(array, 1) == 0):
        raise ValueError(f"{where}: ann[{key!r}] must hold integer class indices, got "
                         f"{array[:5].tolist()}")
    array = array.astype(np.int64)
    if len(array) != count:
        raise ValueError(f"{where}: {count} boxes but {len(array)} {key}")
    if array.size and (array.min() < 0 or (num_classes is not None
                                           and array.max() >= num_classes)):
        bad = array[(array < 0) | (array >= (num_classes or 0))]
        raise ValueError(f"{where}: {key} {sorted(set(bad.tolist()))} are not class indices "
                         f"0..{(num_classes or 0) - 1} of the {num_classes} classes")
    return array


def check_ann(ann: Mapping[str, Any], num_classes: int | None = None,
              where: str = "annotations") -> dict[str, Any]:
    """``ann`` with its boxes and labels as checked arrays: ``bboxes`` ``(n, 4)`` float32 xyxy,
    ``labels`` ``(n,)`` int64, ``bboxes_ignore`` ``(k, 4)`` and, when given, ``labels_ignore``
    ``(k,)``. Other keys (``masks``, ``seg_map``) are kept as they are.

    Raises ``ValueError`` naming ``where`` (file and image) and the first bad box: not
    ``(n, 4)``, not finite, ``x2 < x1`` or ``y2 < y1``, a label outside the classes, or as
    many labels as boxes missing.
    """
    if not isinstance(ann, Mapping) or "bboxes" not in ann:
        raise ValueError(f"{where}: the annotations must be a dict with 'bboxes' and 'labels', "
                         f"got {type(ann).__name__}")
    out = dict(ann)
    for box_key, label_key in _BOX_KEYS:
        if box_key not in ann and box_key == "bboxes_ignore":
            out[box_key] = np.zeros((0, 4), np.float32)
            continue
        out[box_key] = _checked_boxes(ann[box_key], box_key, where)
        if label_key == "labels" or ann.get(label_key) is not None:
            out[label_key] = _checked_labels(ann.get(label_key), len(out[box_key]), label_key,
                                             num_classes, where)
    return out


def _copy_ann(ann: Mapping[str, Any]) -> dict[str, Any]:
    """A copy whose arrays a transform may change in place without touching the dataset."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in ann.items()}


# --------------------------------------------------------------------------------------------
# the middle-format file
# --------------------------------------------------------------------------------------------


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"annotation file {path!r} is not valid JSON: {err.msg} at line "
                         f"{err.lineno}, column {err.colno}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"annotation file {path!r} is not UTF-8 text: {err}") from None


# what to do with an annotation pickle that names code (safe_pickle refuses it)
_PICKLE_ADVICE = ("If the file comes from a trusted source, read it in the load_annotations of "
                  "a CustomDataset subclass (pickle.load), or convert it to a .json file.")


def read_annotation_file(path: str) -> Any:
    """The content of a ``.pkl`` / ``.pickle`` or ``.json`` (or ``.yaml``) file, with errors
    that name it (and the line, for json and yaml). A pickle is read with
    :func:`detlab.safe_pickle.load`: lists, dicts, numbers, strings and numpy arrays load, and
    one that names anything else (code it would run) is refused with an
    :class:`~detlab.safe_pickle.UnsafePickleError`."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".pkl", ".pickle"):
            return safe_pickle.load(path, advice=_PICKLE_ADVICE)
        if ext in (".yaml", ".yml"):
            import yaml

            with open(path, encoding="utf-8") as f:
                return yaml.safe_load(f)
        return _read_json(path)
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError) as err:
        raise ValueError(f"annotation file {path!r} is not a readable pickle: {err}") from None
    except PermissionError as err:
        raise PermissionError(f"annotation file {path!r} cannot be read: {err.strerror}") \
            from None
    except Exception as err:
        if type(err).__module__.startswith("yaml"):
            raise ValueError(f"annotation file {path!r} is not valid YAML: {err}") from None
        raise


def _middle_format_list(data: Any, path: str) -> tuple[list, tuple[str, ...] | None]:
    """The image dicts of a middle-format file (a list, or ``dict(classes, data_infos)``) and
    the class names the file names, if any."""
    classes = None
    if isinstance(data, Mapping):
        if "images" in data and "categories" in data:
            raise ValueError(f"{path!r} is a COCO file: read it with CocoDataset")
        if "data_infos" not in data:
            raise ValueError(f"{path!r}: a middle-format file is a list of image dicts, or a "
                             f"dict with 'data_infos' (and 'classes'); got keys {list(data)}")
        classes = tuple(data["classes"]) if data.get("classes") is not None else None
        data = data["data_infos"]
    if not isinstance(data, list):
        raise ValueError(f"{path!r}: expected a list of image dicts (filename, width, height, "
                         f"ann), got {type(data).__name__}")
    return data, classes


def _checked_info(info: Any, index: int, path: str) -> dict:
    """One image dict with ``width`` and ``height`` as ints, or an error naming it."""
    if not isinstance(info, Mapping):
        raise ValueError(f"{path!r}: entry {index} is a {type(info).__name__}, not a dict with "
                         "filename, width, height")
    missing = [k for k in ("filename", "width", "height") if k not in info]
    if missing:
        raise ValueError(f"{path!r}: image {info.get('filename', f'#{index}')!r} has no "
                         f"{', '.join(missing)}")
    width, height = info["width"], info["height"]
    if not all(isinstance(v, (int, np.integer)) and v > 0 for v in (width, height)):
        raise ValueError(f"{path!r}: image {info['filename']!r} has width={width!r}, "
                         f"height={height!r}; both must be positive integers (pixels)")
    return dict(info, width=int(width), height=int(height))


def _remap_labels(ann: dict, lookup: np.ndarray) -> dict:
    """Labels of the file's classes turned into labels of the chosen ones; boxes of classes
    not chosen (``lookup`` -1) are dropped."""
    out = dict(ann)
    for box_key, label_key in _BOX_KEYS:
        if out.get(label_key) is None:
            continue
        new = lookup[out[label_key]]
        keep = new >= 0
        out[box_key], out[label_key] = out[box_key][keep], new[keep]
        if box_key == "bboxes" and isinstance(out.get("masks"), list):
            out["masks"] = [m for m, k in zip(out["masks"], keep, strict=True) if k]
    return out


# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------


@DATASETS.register_module()
class CustomDataset(Dataset):
    """A detection dataset: MMDetection's middle format, and the base of every other format.

    Args:
        ann_file: annotation file (relative paths are taken under ``data_root``); for
            ``CustomDataset`` a ``.pkl`` / ``.json`` holding a list of image dicts (see the
            module docstring), or ``dict(classes=[...], data_infos=[...])``.
        pipeline: transforms run on each sample: config dicts or callables.
        classes: names of the classes to use: a list, a text file of one name a line, or None
            for the class's ``CLASSES`` (or the names the file holds). When the file names its
            classes, a subset picks and reorders them (other boxes are dropped).
        data_root: folder that relative ``ann_file``, ``img_prefix``, ``seg_prefix`` and
            ``proposal_file`` are joined to.
        img_prefix: folder of the images (joined to each image's ``filename``).
        seg_prefix: folder of semantic segmentation maps.
        proposal_file: precomputed proposals: a ``.pkl`` of one ``(n, 4)`` or ``(n, 5)``
            array per image of the annotation file, in its order (what ``detlab test --out``
            writes for an RPN); each sample then carries its ``proposals`` for the
            ``LoadProposals`` transform (Fast R-CNN).
        test_mode: keep every image and skip annotations in samples.
        filter_empty_gt: at training time, drop images without any box (ignored ones count) of
            the classes. Images whose shorter side is under 32 pixels are dropped at training
            time either way. A training set left empty is an error naming the filters.

    Attributes:
        cat_ids: the category id of each label in :meth:`to_coco` (``1..K``).
        eval_mode: AP of ``metric='mAP'``: ``'area'`` or ``'11points'`` (VOC2007).
        legacy_coordinate: ``metric='mAP'`` / ``'recall'`` measure boxes as ``x2 - x1 + 1``.
        default_metric: the metric of ``evaluate`` when none is named.
    """

    CLASSES: tuple[str, ...] | None = None
    eval_mode: str = "area"
    legacy_coordinate: bool = False
    default_metric: str = "mAP"

    def __init__(self, ann_file: str, pipeline: Sequence[Mapping | Callable],
                 classes: str | Sequence[str] | None = None, data_root: str | None = None,
                 img_prefix: str = "", seg_prefix: str | None = None,
                 proposal_file: str | None = None, test_mode: bool = False,
                 filter_empty_gt: bool = True) -> None:
        if isinstance(ann_file, (list, tuple)):
            raise TypeError(
                f"{type(self).__name__} reads one ann_file; for a list ({len(ann_file)} files) "
                "build it with build_dataset(dict(type=..., ann_file=[...], img_prefix=[...])) "
                "or wrap one dataset per file in ConcatDataset")
        self.data_root = data_root
        self.ann_file = _join_root(data_root, os.fspath(ann_file))
        self.img_prefix = _join_root(data_root, img_prefix)
        self.seg_prefix = _join_root(data_root, seg_prefix)
        self.proposal_file = _join_root(data_root, proposal_file)
        self.test_mode = test_mode
        self.filter_empty_gt = filter_empty_gt
        self.CLASSES = self.get_classes(classes)
        if not os.path.exists(self.ann_file):
            raise FileNotFoundError(self._missing_ann_file_message())
        self.data_infos: list[dict] = self.load_annotations(self.ann_file)
        self.proposals = None if self.proposal_file is None \
            else self.load_proposals(self.proposal_file)
        if getattr(self, "cat_ids", None) is None:
            # the category ids of to_coco(); a format with ids of its own (COCO) sets them
            self.cat_ids = list(range(1, len(self.CLASSES or ()) + 1))
        if not test_mode:
            self._drop_untrainable()
        self._set_group_flag()
        self.pipeline = Compose(pipeline)

    def _missing_ann_file_message(self) -> str:
        hint = (f" (data_root={self.data_root!r} was joined to it)" if self.data_root
                else " (relative paths start from the current directory "
                     f"{os.getcwd()!r}; set data_root or give an absolute path)")
        return f"annotation file {self.ann_file!r} does not exist{hint}"

    # ---- what a subclass provides --------------------------------------------------------

    def load_annotations(self, ann_file: str) -> list[dict]:
        """The image dicts of ``ann_file`` (``filename``, ``width``, ``height``, ``ann``).

        Reads the middle format; a subclass overrides this for its own format, returning
        image dicts with at least ``filename``, ``width`` and ``height``.
        """
        if os.path.isdir(ann_file):
            raise ValueError(f"{type(self).__name__} reads a .pkl or .json file, and "
                             f"{ann_file!r} is a folder")
        entries, file_classes = _middle_format_list(read_annotation_file(ann_file), ann_file)
        infos = [_checked_info(info, i, ann_file) for i, info in enumerate(entries)]
        if self.CLASSES is None:
            self.CLASSES = file_classes
        if self.CLASSES is None:
            raise ValueError(f"{type(self).__name__} needs the class names: pass classes=[...] "
                             f"(label k is classes[k]); {ann_file!r} does not name them")
        lookup = self._label_lookup(file_classes, ann_file)
        for info in infos:
            where = f"{ann_file!r}, image {info['filename']!r}"
            ann = info.get("ann")
            ann = empty_ann() if ann is None else check_ann(
                ann, len(file_classes or self.CLASSES), where)
            info["ann"] = ann if lookup is None else _remap_labels(ann, lookup)
        return infos

    def _label_lookup(self, file_classes: tuple[str, ...] | None,
                      ann_file: str) -> np.ndarray | None:
        """``lookup[file_label]`` = label among ``CLASSES`` (-1: not chosen), or None when
        the labels are the file's as they are."""
        if file_classes is None or tuple(file_classes) == tuple(self.CLASSES):
            return None
        unknown = [c for c in self.CLASSES if c not in file_classes]
        if unknown:
            raise ValueError(f"classes {unknown} are not classes of {ann_file!r}; it has "
                             f"{list(file_classes)}")
        position = {name: i for i, name in enumerate(self.CLASSES)}
        return np.array([position.get(name, -1) for name in file_classes], dtype=np.int64)

    def get_ann_info(self, idx: int) -> dict[str, Any]:
        """Annotations of image ``idx``: ``bboxes`` ``(n, 4)`` float32 xyxy, ``labels`` ``(n,)``
        int64, ``bboxes_ignore`` ``(k, 4)`` float32 xyxy, ``labels_ignore`` ``(k,)`` int64
        (a copy of ``data_infos[idx]['ann']``; empty when the image has none)."""
        ann = self.data_infos[idx].get("ann")
        return empty_ann() if ann is None else _copy_ann(ann)

    def get_cat_ids(self, idx: int) -> list[int]:
        """The labels (0-based) present in image ``idx``."""
        return self.get_ann_info(idx)["labels"].astype(np.int64).tolist()

    def get_cat2imgs(self) -> dict[int, list[int]]:
        """``{label: [indices of the images with a box of that label]}`` for every label
        ``0..len(CLASSES)-1`` (ascending indices; an empty list for a class without images),
        what class-aware sampling draws from. The labels are those of :meth:`get_ann_info`'s
        ``labels`` (ignored boxes do not count), whatever the file's category ids."""
        if self.CLASSES is None:
            raise ValueError(f"{type(self).__name__}.get_cat2imgs needs the class names; pass "
                             "classes=[...] to the dataset")
        num_classes = len(self.CLASSES)
        per_image = [np.unique(np.asarray(self.get_ann_info(i)["labels"], dtype=np.int64))
                     for i in range(len(self))]
        images = np.repeat(np.arange(len(per_image)), [len(u) for u in per_image])  # (pairs,)
        labels = np.concatenate([np.zeros(0, np.int64), *per_image])  # (pairs,)
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if len(bad):
            image = self.data_infos[images[bad[0]]].get("filename")
            raise ValueError(f"{type(self).__name__}: image {image!r} has label "
                             f"{labels[bad[0]]}, not one of the {num_classes} classes "
                             f"0..{num_classes - 1}")
        order = np.argsort(labels, kind="stable")  # by label; images stay ascending
        ends = np.cumsum(np.bincount(labels, minlength=num_classes))[:-1]
        groups = np.split(images[order], ends)[:num_classes]
        return {label: group.tolist() for label, group in enumerate(groups)}

    # ---- classes, filtering, groups --------------------------------------------------------

    @classmethod
    def get_classes(cls, classes: str | Sequence[str] | None = None) -> tuple[str, ...] | None:
        """Class names from ``classes`` (a sequence, or a text file of one name a line), or
        the class's ``CLASSES`` when it is None."""
        if classes is None:
            return cls.CLASSES
        if isinstance(classes, (str, os.PathLike)):
            if not os.path.isfile(classes):
                raise FileNotFoundError(f"classes file {os.fspath(classes)!r} does not exist "
                                        "(give a list of names or a file of one name a line)")
            with open(classes, encoding="utf-8") as f:
                return tuple(line.strip() for line in f if line.strip())
        if not isinstance(classes, Sequence) or not all(isinstance(c, str) for c in classes):
            raise TypeError(f"classes must be a list of names or a file path, got {classes!r}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes has repeated names: {list(classes)}")
        return tuple(classes)

    def _image_sizes_ok(self, min_size: int) -> np.ndarray:
        """``(N,)`` whether each image's shorter side is at least ``min_size``."""
        sides = np.array([min(info["width"], info["height"]) for info in self.data_infos])
        return sides.reshape(-1) >= min_size

    def _has_annotations(self) -> np.ndarray:
        """``(N,)`` whether each image has a box of the classes (ignored boxes count, as
        MMDetection counts difficult VOC objects and COCO crowds)."""
        counts = []
        for idx in range(len(self.data_infos)):
            where = f"{self.ann_file!r}, image {self.data_infos[idx].get('filename')!r}"
            ann = check_ann(self.get_ann_info(idx), len(self.CLASSES or ()) or None, where)
            counts.append(len(ann["bboxes"]) + len(ann["bboxes_ignore"]))
        return np.asarray(counts, dtype=np.int64).reshape(-1) > 0

    def _filter_imgs(self, min_size: int = 32) -> list[int]:
        """Indices of the images to train on: shorter side at least ``min_size`` and, with
        ``filter_empty_gt``, an annotation of the classes. Records what each filter removed
        in ``filter_stats``."""
        sizes_ok = self._image_sizes_ok(min_size)
        has_gt = (self._has_annotations() if self.filter_empty_gt
                  else np.ones(len(sizes_ok), dtype=bool))
        self.filter_stats = dict(images=len(sizes_ok), too_small=int((~sizes_ok).sum()),
                                 no_annotations=int((sizes_ok & ~has_gt).sum()),
                                 min_size=min_size)
        return np.flatnonzero(sizes_ok & has_gt).tolist()

    def _drop_untrainable(self) -> None:
        """Keep the images of :meth:`_filter_imgs` (and their proposals); an error if none is
        left."""
        keep = self._filter_imgs()
        self.data_infos = [self.data_infos[i] for i in keep]
        if self.proposals is not None:
            self.proposals = [self.proposals[i] for i in keep]
        if not self.data_infos:
            raise ValueError(self._empty_message())

    def _empty_message(self) -> str:
        stats = getattr(self, "filter_stats", {})
        total = stats.get("images", 0)
        if not total:
            return (f"{type(self).__name__}: {self.ann_file!r} holds no image, so there is "
                    "nothing to train on")
        classes = list(self.CLASSES or ())
        shown = classes[:10] + (["..."] if len(classes) > 10 else [])
        return (f"{type(self).__name__}: no image of {self.ann_file!r} is left for training: of "
                f"{total} images, {stats.get('too_small', 0)} have a side under "
                f"{stats.get('min_size', 32)} pixels and {stats.get('no_annotations', 0)} have no "
                f"box of the classes {shown} (filter_empty_gt={self.filter_empty_gt}). Check "
                "`classes` against the file's class names, set filter_empty_gt=False, or build "
                "the dataset with test_mode=True to keep every image")

    def _set_group_flag(self) -> None:
        """``self.flag[i]`` = 1 for images wider than tall, else 0 (batches group by it)."""
        ratios = np.array([info["width"] / info["height"] for info in self.data_infos],
                          dtype=np.float64).reshape(-1)
        self.flag = (ratios > 1).astype(np.uint8)

    # ---- export and metrics ----------------------------------------------------------------

    def coco_image_ids(self) -> list[int]:
        """The COCO image id of each image: ``info['id']`` when every image has a distinct
        integer id, else ``1..N`` in dataset order."""
        ids = [info.get("id") for info in self.data_infos]
        if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids) \
                and len(set(ids)) == len(ids):
            return [int(i) for i in ids]
        return list(range(1, len(ids) + 1))

    def to_coco(self) -> dict[str, Any]:
        """The dataset as a COCO detection dict, built from ``data_infos`` and
        :meth:`get_ann_info` (what training sees: chosen classes, filtered images).

        ``images`` (``id`` from :meth:`coco_image_ids`, ``file_name``, ``width``,
        ``height``), ``categories`` (ids ``1..K`` in ``CLASSES`` order), ``annotations``
        (``bbox`` ``[x, y, w, h]``, ``area`` = w * h, ``iscrowd`` 1 for ignored boxes,
        ``segmentation`` when the dataset has polygons, ids ``1..M``).
        """
        from detlab.data.datasets.export import dataset_to_coco

        return dataset_to_coco(self, self.cat_ids)

    def evaluate(self, results: Sequence[Any], metric: str | Sequence[str] | None = None,
                 logger: Any = None, proposal_nums: Sequence[int] = (100, 300, 1000),
                 iou_thr: float | Sequence[float] = 0.5,
                 scale_ranges: Sequence[tuple[float, float]] | None = None,
                 classwise: bool = False, iou_thrs: Sequence[float] | None = None,
                 metric_items: str | Sequence[str] | None = None) -> dict[str, Any]:
        """Metrics of ``results`` (one ``DetResult`` per image, in dataset order).

        ``metric`` (default ``default_metric``) is one or a list of: ``'mAP'`` (VOC-style AP
        at each ``iou_thr``, per ``scale_ranges`` too, with ``eval_mode`` 'area' or
        '11points'), ``'recall'`` (at ``proposal_nums`` x ``iou_thr``), ``'bbox'`` /
        ``'proposal'`` / ``'segm'`` (COCO metrics of :meth:`to_coco`, with ``iou_thrs``,
        ``metric_items``). ``classwise`` adds a per-class table (pandas). See
        :func:`detlab.data.datasets.export.evaluate_dataset` for the names of the numbers.
        """
        from detlab.data.datasets.export import evaluate_dataset

        return evaluate_dataset(self, results, metric or self.default_metric, logger=logger,
                                proposal_nums=proposal_nums, iou_thr=iou_thr,
                                scale_ranges=scale_ranges, classwise=classwise,
                                iou_thrs=iou_thrs, metric_items=metric_items)

    def load_proposals(self, proposal_file: str) -> list[np.ndarray]:
        """The precomputed proposals of ``proposal_file`` (``data.*.proposal_file``): one
        ``(n, 4)`` or ``(n, 5)`` float32 array per image of the annotation file. The pickle is
        read with :func:`detlab.safe_pickle.load` (lists and arrays only)."""
        where = f"proposal_file={proposal_file!r}"
        if not os.path.isfile(proposal_file):
            raise FileNotFoundError(f"{where} does not exist; write one with detlab test "
                                    f"<rpn config> <checkpoint> --out {proposal_file}")
        raw = safe_pickle.load(proposal_file)
        if not isinstance(raw, (list, tuple)) or len(raw) != len(self.data_infos):
            count = len(raw) if isinstance(raw, (list, tuple)) else type(raw).__name__
            raise ValueError(f"{where} must hold one array of proposals per image of "
                             f"{self.ann_file!r} ({len(self.data_infos)}), got {count}")
        proposals = []
        for i, found in enumerate(raw):
            array = np.asarray(found, dtype=np.float32)
            if array.ndim != 2 or array.shape[1] not in (4, 5):
                raise ValueError(f"{where}: image {i}'s proposals must be (n, 4) or (n, 5), "
                                 f"got shape {array.shape}")
            proposals.append(array)
        return proposals

    # ---- samples ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.data_infos)

    def pre_pipeline(self, results: dict) -> None:
        """Add the keys every pipeline expects: prefixes and the empty field lists."""
        results["img_prefix"] = self.img_prefix
        results["seg_prefix"] = self.seg_prefix
        results["proposal_file"] = self.proposal_file
        results["bbox_fields"] = []
        results["mask_fields"] = []
        results["seg_fields"] = []
        if "id" in results["img_info"]:
            results["img_id"] = results["img_info"]["id"]

    def prepare_train_img(self, idx: int) -> dict | None:
        """Image ``idx`` with its annotations (checked: a malformed box is reported here with
        its image, not deep inside the model) through the pipeline (None if it dropped it)."""
        info = self.data_infos[idx]
        where = f"{self.ann_file!r}, image {info.get('filename')!r}"
        ann = check_ann(self.get_ann_info(idx), len(self.CLASSES or ()) or None, where)
        results = dict(img_info=info, ann_info=ann)
        if self.proposals is not None:
            results["proposals"] = self.proposals[idx]
        self.pre_pipeline(results)
        return self.pipeline(results)

    def prepare_test_img(self, idx: int) -> dict | None:
        """Image ``idx`` through the pipeline, without annotations."""
        results = dict(img_info=self.data_infos[idx])
        if self.proposals is not None:
            results["proposals"] = self.proposals[idx]
        self.pre_pipeline(results)
        return self.pipeline(results)

    def _rand_another(self, idx: int) -> int:
        """A random image of the same aspect-ratio group as ``idx``."""
        pool = np.flatnonzero(self.flag == self.flag[idx])
        return int(np.random.choice(pool))

    def __getitem__(self, idx: int) -> dict:
        """Sample ``idx`` through the pipeline. In training, a sample that the pipeline drops
        (e.g. a crop without boxes) is replaced by a random one of the same group."""
        if self.test_mode:
            return self.prepare_test_img(idx)
        first = idx
        for _ in range(_MAX_REDRAWS):
            data = self.prepare_train_img(idx)
            if data is not None:
                return data
            idx = self._rand_another(idx)
        raise RuntimeError(
            f"the pipeline dropped {_MAX_REDRAWS} samples in a row (starting from index {first}, "
            f"image {self.data_infos[first].get('filename')!r}); check that its transforms can "
            "keep a sample")

    def __repr__(self) -> str:
        mode = "test" if self.test_mode else "train"
        return (f"{type(self).__name__}({mode}, {len(self)} images, "
                f"{len(self.CLASSES or ())} classes, ann_file={self.ann_file!r})")

