"""What every dataset does the same way through its annotations: the COCO export (``to_coco``)
and the metrics of ``evaluate``.

Both only read ``len(dataset)``, ``dataset.CLASSES``, ``dataset.data_infos`` /
``dataset.get_ann_info(idx)`` and ``dataset.to_coco()``, so dataset wrappers reuse them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

COCO_METRICS = ("bbox", "segm", "proposal")
VOC_METRICS = ("mAP", "recall")


# --------------------------------------------------------------------------------------------
# COCO export
# --------------------------------------------------------------------------------------------


def _annotation_rows(ann: dict, image_id: int, cat_ids: Sequence[int],
                     first_id: int) -> tuple[list[dict], int]:
    """COCO annotation rows of one image (normal boxes, then ignored ones as crowds) and the
    number of ignored boxes left out for want of ``labels_ignore``."""
    boxes, labels = ann["bboxes"].reshape(-1, 4), ann["labels"].reshape(-1)
    ignored = ann.get("bboxes_ignore", np.zeros((0, 4))).reshape(-1, 4)
    dropped = 0
    if ann.get("labels_ignore") is None:
        dropped, ignored = len(ignored), ignored[:0]
        ignore_labels = np.zeros(0, np.int64)
    else:
        ignore_labels = np.asarray(ann["labels_ignore"]).reshape(-1)
    all_boxes = np.concatenate([boxes, ignored]).astype(np.float64)
    all_labels = np.concatenate([labels, ignore_labels]).astype(np.int64)
    # (n, 4) xyxy -> xywh, rounded to a thousandth of a pixel (float32 noise otherwise)
    xywh = np.round(np.concatenate([all_boxes[:, :2], all_boxes[:, 2:] - all_boxes[:, :2]],
                                   axis=1), 3)
    areas = np.round(xywh[:, 2] * xywh[:, 3], 3)
    masks = list(ann.get("masks") or [None] * len(boxes)) + [None] * len(ignored)
    rows = []
    for i, (box, area, label, mask) in enumerate(zip(xywh.tolist(), areas.tolist(),
                                                     all_labels.tolist(), masks, strict=True)):
        row = dict(id=first_id + i, image_id=int(image_id), category_id=int(cat_ids[label]),
                   bbox=box, area=area, iscrowd=int(i >= len(boxes)))
        if mask is not None:
            row["segmentation"] = mask
        rows.append(row)
    return rows, dropped


def dataset_to_coco(dataset: Any, cat_ids: Sequence[int],
                    image_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """A COCO detection dict of ``dataset`` (see ``CustomDataset.to_coco``); ``cat_ids[k]``
    is the category id of label ``k``, ``image_ids[i]`` the id of image ``i`` (default
    ``dataset.coco_image_ids()``)."""
    classes = tuple(dataset.CLASSES or ())
    if len(cat_ids) != len(classes):
        raise ValueError(f"{len(cat_ids)} category ids for {len(classes)} classes")
    image_ids = dataset.coco_image_ids() if image_ids is None else list(image_ids)
    images, annotations, dropped = [], [], 0
    for idx, info in enumerate(dataset.data_infos):
        images.append(dict(id=int(image_ids[idx]), file_name=info["filename"],
                           width=int(info["width"]), height=int(info["height"])))
        rows, lost = _annotation_rows(dataset.get_ann_info(idx), image_ids[idx], cat_ids,
                                      len(annotations) + 1)
        annotations += rows
        dropped += lost
    if dropped:
        warnings.warn(f"to_coco: {dropped} ignored boxes have no labels_ignore, so no category; "
                      "they are left out", UserWarning, stacklevel=3)
    categories = [dict(id=int(c), name=name, supercategory="none")
                  for c, name in zip(cat_ids, classes, strict=True)]
    description = f"{type(dataset).__name__} of {getattr(dataset, 'ann_file', None)}"
    return dict(info=dict(description=description), licenses=[], images=images,
                annotations=annotations, categories=categories)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def as_det_results(results: Sequence[Any], count: int,
                   classes: Sequence[str] | None) -> list[Any]:
    """``results`` as ``DetResult``s: accepts DetResult, MMDetection's per-class ``(n, 5)``
    lists and ``(n, 4|5)`` proposal arrays; checks there is one per image."""
    from detlab.structures import DetResult

    if not isinstance(results, Sequence) or len(results) != count:
        got = len(results) if isinstance(results, Sequence) else type(results).__name__
        raise ValueError(f"evaluate needs one result per image of the dataset, in its order: "
                         f"{count} images, got {got} results")
    out = []
    for i, result in enumerate(results):
        if isinstance(result, DetResult):
            out.append(result)
        elif isinstance(result, (list, tuple)):
            out.append(DetResult.from_mmdet(result, classes))
        elif isinstance(result, np.ndarray) and result.ndim == 2 and result.shape[1] in (4, 5):
            scores = result[:, 4] if result.shape[1] == 5 else np.ones(len(result))
            out.append(DetResult(result[:, :4], scores, np.zeros(len(result), np.int64)))
        else:
            raise TypeError(f"result {i} is a {type(result).__name__}, not a DetResult (or a "
                            "list of per-class (n, 5) arrays)")
    return out


def _voc_map(dataset: Any, results: list, annotations: list, iou_thrs: list[float],
             scale_ranges: Any, logger: Any, classwise: bool) -> dict[str, Any]:
    """``AP50``-style keys per IoU threshold (and per scale range), ``mAP`` their mean."""
    from detlab.evaluation.voc import eval_map, map_table

    names = list(dataset.CLASSES or ())
    common = dict(dataset=names, logger=logger, mode=dataset.eval_mode,
                  use_legacy_coordinate=dataset.legacy_coordinate, num_classes=len(names))
    out: dict[str, Any] = {}
    means, tables = [], []
    for thr in iou_thrs:
        key = f"AP{int(round(thr * 100)):02d}"
        mean_ap, per_class = eval_map(results, annotations, iou_thr=thr, **common)
        out[key] = float(mean_ap)
        means.append(float(mean_ap))
        tables.append(map_table(per_class, names).rename(columns={"ap": key}))
        if scale_ranges is not None:
            per_range, _ = eval_map(results, annotations, scale_ranges, thr, **common)
            for (low, high), value in zip(scale_ranges, per_range, strict=True):
                out[f"{key}_{low}-{high}"] = float(value)
    metrics = {"mAP": float(np.mean(means)), **out}
    if classwise:
        table = tables[0]
        for extra in tables[1:]:
            table[extra.columns[-1]] = extra[extra.columns[-1]]
        metrics["classwise"] = table
    return metrics


def _voc_recall(dataset: Any, results: list, annotations: list, iou_thrs: list[float],
                proposal_nums: Sequence[int], logger: Any) -> dict[str, float]:
    """``recall@{num}@{iou}`` for each pair, and ``AR@{num}`` over several IoUs."""
    from detlab.evaluation.voc import eval_recalls

    recalls = eval_recalls([a["bboxes"] for a in annotations], results, list(proposal_nums),
                           iou_thrs, logger, dataset.legacy_coordinate)
    out = {f"recall@{num}@{thr}": float(recalls[i, j])
           for i, num in enumerate(proposal_nums) for j, thr in enumerate(iou_thrs)}
    if recalls.shape[1] > 1:
        out.update({f"AR@{num}": float(recalls[i].mean()) for i, num in enumerate(proposal_nums)})
    return out


def _coco_metrics(dataset: Any, results: list, iou_type: str, **options: Any) -> dict[str, Any]:
    """COCO metrics of the in-memory export of ``dataset``."""
    from detlab.evaluation.coco import coco_evaluate

    coco = dataset.to_coco()
    if iou_type == "segm" and any("segmentation" not in a for a in coco["annotations"]):
        raise ValueError(f"metric 'segm' needs a mask for every box, and {type(dataset).__name__}"
                         " has boxes without one")
    cat_ids = [c["id"] for c in coco["categories"]]
    img_ids = [image["id"] for image in coco["images"]]
    return coco_evaluate(coco, results, iou_type=iou_type, cat_ids=cat_ids, img_ids=img_ids,
                         class_names=list(dataset.CLASSES or ()), **options)


def evaluate_dataset(dataset: Any, results: Sequence[Any], metric: str | Sequence[str],
                     logger: Any = None, proposal_nums: Sequence[int] = (100, 300, 1000),
                     iou_thr: float | Sequence[float] = 0.5, scale_ranges: Any = None,
                     classwise: bool = False, iou_thrs: Sequence[float] | None = None,
                     metric_items: Any = None) -> dict[str, Any]:
    """The metrics of ``dataset.evaluate``.

    ``'mAP'``: ``mAP`` (mean over ``iou_thr``), ``AP50`` ... per threshold,
    ``AP50_{low}-{high}`` per scale range; ``'recall'``: ``recall@{num}@{iou}`` (and
    ``AR@{num}``); ``'bbox'`` / ``'segm'`` / ``'proposal'``: the keys of
    :func:`detlab.evaluation.coco.coco_evaluate`. A key two metrics share keeps the first
    metric's value; the later one gets the metric name as a prefix.
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    allowed = VOC_METRICS + COCO_METRICS
    bad = [m for m in metrics if m not in allowed]
    if bad:
        raise ValueError(f"metric {bad[0]!r} is not supported; choose from {allowed}")
    results = as_det_results(results, len(dataset), dataset.CLASSES)
    thrs = [float(iou_thr)] if np.isscalar(iou_thr) else [float(t) for t in iou_thr]
    annotations = ([dataset.get_ann_info(i) for i in range(len(dataset))]
                   if set(metrics) & set(VOC_METRICS) else [])
    out: dict[str, Any] = {}
    for name in metrics:
        if name == "mAP":
            values = _voc_map(dataset, results, annotations, thrs, scale_ranges, logger,
                              classwise)
        elif name == "recall":
            values = _voc_recall(dataset, results, annotations, thrs, proposal_nums, logger)
        else:
            values = _coco_metrics(dataset, results, name, classwise=classwise,
                                   proposal_nums=proposal_nums, iou_thrs=iou_thrs,
                                   metric_items=metric_items, logger=logger)
        out.update({(f"{name}_{key}" if key in out else key): value
                    for key, value in values.items()})
    return out


def merge_coco(parts: Sequence[dict]) -> dict[str, Any]:
    """One COCO dict of several: images and annotations renumbered ``1..N`` in order, the
    first part's categories (the others' matched to them by name). ``file_name`` s stay
    relative to each part's own image folder."""
    categories = [dict(c) for c in parts[0]["categories"]]
    by_name = {c["name"]: c["id"] for c in categories}
    images: list[dict] = []
    annotations: list[dict] = []
    for k, part in enumerate(parts):
        missing = [c["name"] for c in part["categories"] if c["name"] not in by_name]
        if missing:
            raise ValueError(f"dataset {k} has categories {missing} that dataset 0 does not")
        cat_map = {c["id"]: by_name[c["name"]] for c in part["categories"]}
        img_map = {}
        for image in part["images"]:
            img_map[image["id"]] = len(images) + 1
            images.append(dict(image, id=len(images) + 1))
        annotations += [dict(ann, id=len(annotations) + i + 1, image_id=img_map[ann["image_id"]],
                             category_id=cat_map[ann["category_id"]])
                        for i, ann in enumerate(part["annotations"])]
    return dict(info=dict(description=f"{len(parts)} datasets concatenated"), licenses=[],
                images=images, annotations=annotations, categories=categories)
