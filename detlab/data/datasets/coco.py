"""CocoDataset: COCO-format detection files through pycocotools, as MMDetection 2.x reads them.

Boxes leave the file as ``xywh`` and enter detlab as ``xyxy`` with ``x2 = x + w`` (MMDetection 2.x,
no ``- 1``). Labels are ``0..K-1`` in the order of ``CLASSES``; ``cat_ids[label]`` is the file's
category id.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from detlab.data.datasets.custom import CustomDataset
from detlab.data.datasets.export import as_det_results
from detlab.registry import DATASETS

METRICS = ("bbox", "segm", "proposal", "proposal_fast")
_IMAGE_KEYS = ("id", "file_name", "width", "height")


def _read_json(path: str) -> dict:
    if os.path.isdir(path):
        raise ValueError(f"annotation file {path!r} is a folder; CocoDataset reads a COCO json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"annotation file {path!r} is not valid JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"annotation file {path!r} is not valid JSON (not UTF-8 text: "
                         f"{err.reason} at byte {err.start})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise ValueError(f"annotation file {path!r} is not a COCO detection file: it needs "
                         "'images' and 'categories' lists (and 'annotations')")
    return data


def _check_coco_dict(data: dict, path: str) -> None:
    """Errors that name the file and the image or annotation, before pycocotools indexes it."""
    for i, image in enumerate(data["images"]):
        missing = [k for k in _IMAGE_KEYS if not isinstance(image, dict) or k not in image]
        if missing:
            name = image.get("id", f"#{i}") if isinstance(image, dict) else f"#{i}"
            raise ValueError(f"{path!r}: image {name} has no {', '.join(missing)} "
                             f"(every image needs {', '.join(_IMAGE_KEYS)})")
    image_ids = {image["id"] for image in data["images"]}
    if len(image_ids) != len(data["images"]):
        raise ValueError(f"{path!r}: image ids are not unique")
    anns = data.setdefault("annotations", [])
    ann_ids = [ann.get("id") for ann in anns]
    if len(set(ann_ids)) != len(ann_ids):
        raise ValueError(f"{path!r}: annotation ids are not unique")
    orphans = [ann.get("id") for ann in anns if ann.get("image_id") not in image_ids]
    if orphans:
        raise ValueError(f"{path!r}: annotations {orphans[:5]} refer to image ids that are not "
                         "in 'images'")
    names = [cat.get("name") for cat in data["categories"]]
    if len(set(names)) != len(names):
        raise ValueError(f"{path!r}: category names are not unique: {names}")


def load_coco(path: str) -> Any:
    """A ``pycocotools.coco.COCO`` of ``path``, checked, without pycocotools' printing."""
    from pycocotools.coco import COCO

    data = _read_json(path)
    _check_coco_dict(data, path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _as_boxes(anns: Sequence[dict], where: str) -> np.ndarray:
    """``(n, 4)`` float32 ``xywh`` of ``anns``; an error naming the image if one is malformed."""
    try:
        boxes = np.asarray([ann["bbox"] for ann in anns], dtype=np.float32).reshape(-1, 4)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: an annotation has no valid 'bbox' [x, y, w, h] "
                         f"({err})") from None
    if len(boxes) != len(anns):
        raise ValueError(f"{where}: every 'bbox' must be [x, y, w, h]")
    return boxes


def _box_problems(data: dict) -> tuple[list[tuple], list[tuple]]:
    """``(image id, annotation id, bbox)`` of the boxes with a negative or non-finite size, and
    of those reaching more than a pixel past their image (``[x1, y1, x2, y2]`` written where
    COCO wants ``[x, y, w, h]`` looks like this). Malformed boxes are left to
    ``get_ann_info``, which names them."""
    sizes = {image["id"]: (image["width"], image["height"]) for image in data["images"]}
    anns = [a for a in data["annotations"] if isinstance(a.get("bbox"), (list, tuple))
            and len(a["bbox"]) == 4 and all(isinstance(v, (int, float)) for v in a["bbox"])]
    if not anns:
        return [], []
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64)  # (M, 4) xywh
    limits = np.array([sizes[a["image_id"]] for a in anns], dtype=np.float64)  # (M, 2)
    negative = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    past = ~negative & ((boxes[:, :2] + boxes[:, 2:] > limits + 1).any(axis=1))

    def described(mask: np.ndarray) -> list[tuple]:
        return [(anns[i]["image_id"], anns[i].get("id"), anns[i]["bbox"])
                for i in np.flatnonzero(mask)]

    return described(negative), described(past)


def _warn_box_problems(data: dict, path: str) -> None:
    """Warn (once per file, counted) about boxes that cannot be ``[x, y, w, h]`` and about
    annotations of categories the file does not define (both are skipped)."""
    negative, past = _box_problems(data)
    first = "image id {}, annotation id {}, bbox {}"
    known = {cat.get("id") for cat in data["categories"]}
    strays = [a for a in data["annotations"] if a.get("category_id") not in known]
    if strays:
        warnings.warn(f"{path!r}: {len(strays)} annotations have a category_id that is not in "
                      f"'categories' and are skipped (first: image id {strays[0].get('image_id')}"
                      f", annotation id {strays[0].get('id')}, category_id "
                      f"{strays[0].get('category_id')!r})", UserWarning, stacklevel=5)
    if negative:
        warnings.warn(f"{path!r}: {len(negative)} boxes have a negative or non-finite width or "
                      f"height and are skipped (first: {first.format(*negative[0])}); COCO "
                      "boxes are [x, y, w, h]", UserWarning, stacklevel=5)
    if past:
        warnings.warn(f"{path!r}: {len(past)} boxes reach more than a pixel past their image "
                      f"(first: {first.format(*past[0])}); are they [x1, y1, x2, y2] instead of "
                      "COCO's [x, y, w, h]?", UserWarning, stacklevel=5)


@DATASETS.register_module()
class CocoDataset(CustomDataset):
    """A COCO-format detection dataset.

    ``CLASSES`` are the file's category names (in file order), or ``classes`` to use a subset in
    the given order. Images and annotations are read through pycocotools (``self.coco``).
    The arguments are :class:`CustomDataset`'s.

    Boxes MMDetection 2.x skips are skipped (see :meth:`_kept`); those that cannot be
    ``[x, y, w, h]`` (a negative size), that reach past their image (xyxy written as xywh?) and
    annotations of undefined categories are reported at loading, counted, in one warning each.
    ``to_coco`` keeps the file's ids; ``evaluate`` scores against the file itself.
    """

    def load_annotations(self, ann_file: str) -> list[dict]:
        """Index ``ann_file``; sets ``coco``, ``CLASSES``, ``cat_ids``, ``cat2label``,
        ``img_ids``; the image dicts with ``filename`` = ``file_name``."""
        self.coco = load_coco(ann_file)
        _warn_box_problems(self.coco.dataset, ann_file)
        self.cat_ids = self._resolve_cat_ids(ann_file)
        self.cat2label = {cat_id: label for label, cat_id in enumerate(self.cat_ids)}
        self.img_ids = list(self.coco.getImgIds())
        return [dict(self.coco.imgs[i], filename=self.coco.imgs[i]["file_name"])
                for i in self.img_ids]

    def _resolve_cat_ids(self, ann_file: str) -> list[int]:
        cats = self.coco.dataset["categories"]
        by_name = {cat["name"]: cat["id"] for cat in cats}
        if self.CLASSES is None:
            self.CLASSES = tuple(cat["name"] for cat in cats)
        unknown = [name for name in self.CLASSES if name not in by_name]
        if unknown:
            raise ValueError(f"classes {unknown} are not categories of {ann_file!r}; "
                             f"it has {list(by_name)}")
        return [by_name[name] for name in self.CLASSES]

    def _filter_imgs(self, min_size: int = 32) -> list[int]:
        """Indices of the images to train on: shorter side at least ``min_size`` and, with
        ``filter_empty_gt``, at least one annotation of the chosen classes (as MMDetection 2.x
        counts them: crowd and tiny boxes count too). Updates ``img_ids`` to match."""
        with_classes = set()
        for cat_id in self.cat_ids:
            with_classes.update(self.coco.catToImgs.get(cat_id, ()))
        sizes_ok = self._image_sizes_ok(min_size)
        has_gt = np.array([not self.filter_empty_gt or i in with_classes for i in self.img_ids],
                          dtype=bool).reshape(-1)
        self.filter_stats = dict(images=len(sizes_ok), too_small=int((~sizes_ok).sum()),
                                 no_annotations=int((sizes_ok & ~has_gt).sum()),
                                 min_size=min_size)
        keep = np.flatnonzero(sizes_ok & has_gt).tolist()
        self.img_ids = [self.img_ids[i] for i in keep]
        return keep

    def get_ann_info(self, idx: int) -> dict[str, Any]:
        """Annotations of image ``idx``: ``bboxes`` ``(n, 4)`` float32 xyxy, ``labels`` ``(n,)``
        int64, ``bboxes_ignore`` ``(k, 4)`` float32 xyxy (crowd boxes), ``masks`` (the
        ``segmentation`` of each box) and ``seg_map`` (file name of the semantic map)."""
        info = self.data_infos[idx]
        anns = self.coco.imgToAnns.get(info["id"], [])
        return self._parse_ann_info(info, anns)

    def get_cat_ids(self, idx: int) -> list[int]:
        """The category ids (the file's) of the annotations of image ``idx``."""
        anns = self.coco.imgToAnns.get(self.data_infos[idx]["id"], [])
        return [ann["category_id"] for ann in anns]

    def _kept(self, info: dict, anns: Sequence[dict]) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray, np.ndarray]:
        """``(n, 4)`` xyxy boxes and ``(n,)`` category ids of ``anns``, and the indices of
        those MMDetection 2.x keeps as normal boxes and as ignored (crowd) boxes: inside the
        image, ``w, h >= 1``, area > 0, a chosen category, not ``ignore``."""
        where = f"{self.ann_file!r}, image id {info['id']}"
        xywh = _as_boxes(anns, where)
        # a missing area counts as the box's, rather than failing as MMDetection does
        area = np.array([ann.get("area", np.nan) for ann in anns], dtype=np.float64)
        area = np.where(np.isnan(area), xywh[:, 2] * xywh[:, 3], area)
        cats = np.array([ann.get("category_id", -1) for ann in anns], dtype=np.int64)
        ignore = np.array([bool(ann.get("ignore", False)) for ann in anns], dtype=bool)
        crowd = np.array([bool(ann.get("iscrowd", False)) for ann in anns], dtype=bool)
        xyxy = xywh.copy()
        xyxy[:, 2:] += xywh[:, :2]
        inter_w = np.minimum(xyxy[:, 2], info["width"]) - np.maximum(xyxy[:, 0], 0)
        inter_h = np.minimum(xyxy[:, 3], info["height"]) - np.maximum(xyxy[:, 1], 0)
        valid = ((inter_w > 0) & (inter_h > 0) & (area > 0) & (xywh[:, 2] >= 1)
                 & (xywh[:, 3] >= 1) & np.isin(cats, self.cat_ids) & ~ignore)
        return xyxy, cats, np.flatnonzero(valid & ~crowd), np.flatnonzero(valid & crowd)

    def _parse_ann_info(self, info: dict, anns: Sequence[dict]) -> dict[str, Any]:
        """The kept boxes (see :meth:`_kept`); crowd ones go to ``bboxes_ignore``."""
        xyxy, cats, keep, keep_ignore = self._kept(info, anns)
        return dict(bboxes=xyxy[keep].reshape(-1, 4), labels=self._labels_of(cats[keep]),
                    bboxes_ignore=xyxy[keep_ignore].reshape(-1, 4),
                    masks=[anns[i].get("segmentation") for i in keep],
                    seg_map=os.path.splitext(info["filename"])[0] + ".png")

    def _labels_of(self, cat_ids: np.ndarray) -> np.ndarray:
        """``(n,)`` int64 labels of ``(n,)`` category ids (all among ``self.cat_ids``)."""
        known = np.asarray(self.cat_ids, dtype=np.int64)
        order = np.argsort(known)
        return order[np.searchsorted(known[order], cat_ids)].astype(np.int64)

    def coco_image_ids(self) -> list[int]:
        """The file's image id of each image."""
        return list(self.img_ids)

    def to_coco(self) -> dict[str, Any]:
        """The dataset as a COCO dict with the file's own image, category and annotation ids:
        the images of the dataset, the categories of ``CLASSES`` (in that order) and the
        annotations :meth:`get_ann_info` keeps (crowds as ``iscrowd=1``), each with its
        ``bbox``, ``area`` and ``segmentation`` from the file."""
        images, annotations = [], []
        for info in self.data_infos:
            images.append({k: v for k, v in info.items() if k != "filename"})
            anns = self.coco.imgToAnns.get(info["id"], [])
            _, _, keep, keep_ignore = self._kept(info, anns)
            for i in np.concatenate([keep, keep_ignore]).tolist():
                ann = anns[i]
                row = dict(id=ann["id"], image_id=ann["image_id"],
                           category_id=ann["category_id"], bbox=list(ann["bbox"]),
                           area=float(ann.get("area", ann["bbox"][2] * ann["bbox"][3])),
                           iscrowd=int(bool(ann.get("iscrowd", 0))))
                if ann.get("segmentation") is not None:
                    row["segmentation"] = ann["segmentation"]
                annotations.append(row)
        cats = {cat["id"]: cat for cat in self.coco.dataset["categories"]}
        return dict(info=dict(self.coco.dataset.get("info") or {}), licenses=list(
            self.coco.dataset.get("licenses") or []), images=images, annotations=annotations,
            categories=[dict(cats[c]) for c in self.cat_ids])

    def evaluate(self, results: Sequence[Any], metric: str | Sequence[str] = "bbox",
                 logger: Any = None, jsonfile_prefix: str | None = None,
                 classwise: bool = False, proposal_nums: Sequence[int] = (100, 300, 1000),
                 iou_thrs: Sequence[float] | None = None,
                 metric_items: str | Sequence[str] | None = None) -> dict[str, Any]:
        """COCO metrics of ``results`` (one ``DetResult`` per image, in dataset order) against
        the annotation file as it is (``self.coco``).

        ``metric`` is ``'bbox'``, ``'segm'``, ``'proposal'``, ``'proposal_fast'`` or a list of
        them; the other arguments are MMDetection 2.x's and go to
        :func:`detlab.evaluation.coco.coco_evaluate`; ``jsonfile_prefix`` also writes the
        results to ``{prefix}.bbox.json`` (and ``{prefix}.segm.json`` with masks).
        ``'proposal_fast'`` is MMDetection's quick recall of
        proposals, ``AR@{num}`` for each of ``proposal_nums`` averaged over ``iou_thrs``
        (default 0.5:0.95), see :func:`detlab.evaluation.proposals.fast_eval_recall`.
        """
        metrics = [metric] if isinstance(metric, str) else list(metric)
        bad = [m for m in metrics if m not in METRICS]
        if bad:
            raise ValueError(f"metric {bad[0]!r} is not supported; choose from {METRICS}")
        results = as_det_results(results, len(self), self.CLASSES)
        from detlab.evaluation.coco import coco_evaluate

        if jsonfile_prefix is not None:
            from detlab.evaluation.coco import dump_results

            dump_results(results, self.img_ids, self.cat_ids, f"{jsonfile_prefix}.bbox.json")
            if any(r.masks is not None for r in results):  # MMDetection writes both
                dump_results(results, self.img_ids, self.cat_ids,
                             f"{jsonfile_prefix}.segm.json")
        out: dict[str, Any] = {}
        for name in metrics:
            if name == "proposal_fast":
                from detlab.evaluation.proposals import coco_gt_boxes, fast_eval_recall

                metrics_of = fast_eval_recall(coco_gt_boxes(self.coco, self.img_ids), results,
                                              proposal_nums, iou_thrs, logger)
            else:
                metrics_of = coco_evaluate(
                    self.coco, list(results), iou_type=name, classwise=classwise,
                    cat_ids=self.cat_ids, img_ids=self.img_ids, class_names=self.CLASSES,
                    iou_thrs=iou_thrs, proposal_nums=proposal_nums, metric_items=metric_items,
                    logger=logger)
            # keys every metric has (e.g. a summary) keep the first; later ones get a prefix
            out.update({(f"{name}_{key}" if key in out else key): value
                        for key, value in metrics_of.items()})
        return out
