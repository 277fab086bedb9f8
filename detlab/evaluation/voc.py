"""Pascal VOC metrics the way MMDetection 2.x computes them: ``eval_map`` and ``eval_recalls``.

``eval_map`` is MMDetection's ``mmdet.core.evaluation.eval_map`` with the default TP/FP rule: a
detection matches the ground-truth box it overlaps most (of its class, ignored boxes included);
above ``iou_thr`` it is a true positive if that box is a normal one not matched yet by a
higher-scoring detection, a false positive if it was already matched, and neither when the box
is ignored (``difficult``) or outside the area range being scored. AP is the area under the
interpolated precision/recall curve (``'area'``, VOC2010+) or the 11-point average
(``'11points'``, VOC2007).

Everything is vectorized over boxes: one IoU matrix per image (all classes at once, pairs of
different classes masked out), then one sort and cumulative sum per class.

Boxes are ``(N, 4)`` ``xyxy``. With ``use_legacy_coordinate`` widths and heights are
``x2 - x1 + 1`` (the VOC devkit's pixel-inclusive convention, which MMDetection's
``VOCDataset.evaluate`` uses), else ``x2 - x1``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

_EPS = np.finfo(np.float32).eps


# --------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------


def _areas(boxes: np.ndarray, extra: float) -> np.ndarray:
    """``(N,)`` areas of ``(N, 4)`` xyxy boxes; ``extra`` is 1 for pixel-inclusive boxes."""
    return (boxes[:, 2] - boxes[:, 0] + extra) * (boxes[:, 3] - boxes[:, 1] + extra)


def bbox_overlaps(bboxes1: np.ndarray, bboxes2: np.ndarray, mode: str = "iou",
                  eps: float = 1e-6, use_legacy_coordinate: bool = False) -> np.ndarray:
    """``(N, M)`` float32 IoU (``mode='iou'``) or intersection over the area of ``bboxes1``
    (``'iof'``) of ``(N, 4)`` and ``(M, 4)`` xyxy boxes, in float32 as MMDetection's numpy
    version computes it."""
    if mode not in ("iou", "iof"):
        raise ValueError(f"mode must be 'iou' or 'iof', got {mode!r}")
    extra = 1.0 if use_legacy_coordinate else 0.0
    b1 = np.asarray(bboxes1, dtype=np.float32).reshape(-1, 4)
    b2 = np.asarray(bboxes2, dtype=np.float32).reshape(-1, 4)
    if not len(b1) or not len(b2):
        return np.zeros((len(b1), len(b2)), dtype=np.float32)
    # (N, M) corners of the intersections
    lt = np.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = np.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = np.maximum(rb - lt + np.float32(extra), 0)
    overlap = wh[..., 0] * wh[..., 1]
    area1 = _areas(b1, extra)
    if mode == "iou":
        union = area1[:, None] + _areas(b2, extra)[None, :] - overlap
    else:
        union = np.broadcast_to(area1[:, None], overlap.shape)
    return (overlap / np.maximum(union, np.float32(eps))).astype(np.float32)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def _dets_of(result: Any, num_classes: int | None) -> np.ndarray:
    """``(D, 6)`` float64 ``[x1, y1, x2, y2, score, label]`` of one image's detections: a
    ``DetResult`` or MMDetection's list of per-class ``(n, 5)`` arrays."""
    from detlab.structures import DetResult

    if isinstance(result, DetResult):
        boxes = result.boxes.detach().cpu().numpy().astype(np.float64)
        scores = result.scores.detach().cpu().numpy().astype(np.float64)
        labels = result.labels.detach().cpu().numpy().astype(np.float64)
        return np.concatenate([boxes, scores[:, None], labels[:, None]], axis=1)
    if not isinstance(result, (list, tuple)):
        raise TypeError(f"a detection result must be a DetResult or a list of per-class (n, 5) "
                        f"arrays, got {type(result).__name__}")
    if num_classes is not None and len(result) != num_classes:
        raise ValueError(f"a result has {len(result)} per-class arrays for {num_classes} classes")
    arrays = [np.asarray(a, dtype=np.float64).reshape(-1, 5) for a in result]
    labels = [np.full((len(a), 1), c, dtype=np.float64) for c, a in enumerate(arrays)]
    if not arrays:
        return np.zeros((0, 6))
    return np.concatenate([np.concatenate([a, lab], axis=1)
                           for a, lab in zip(arrays, labels, strict=True)])


def _gts_of(ann: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boxes ``(G, 4)``, labels ``(G,)``, ignored boxes ``(I, 4)`` and their labels of one
    image. Ignored boxes count only with ``labels_ignore``, as in MMDetection."""
    boxes = np.asarray(ann["bboxes"], dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(ann["labels"], dtype=np.int64).reshape(-1)
    if ann.get("labels_ignore") is None:
        return boxes, labels, np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    ignore = np.asarray(ann["bboxes_ignore"], dtype=np.float32).reshape(-1, 4)
    return boxes, labels, ignore, np.asarray(ann["labels_ignore"], dtype=np.int64).reshape(-1)


def _infer_num_classes(det_results: Sequence[Any], annotations: Sequence[dict],
                       dataset: Any) -> int:
    """The number of classes: from class names, else from MMDetection-style results, else the
    largest label seen."""
    if isinstance(dataset, (list, tuple)):
        return len(dataset)
    if det_results and isinstance(det_results[0], (list, tuple)):
        return len(det_results[0])
    seen = [np.asarray(a["labels"]).reshape(-1) for a in annotations]
    seen += [np.asarray(a.get("labels_ignore", [])).reshape(-1) for a in annotations]
    seen += [_dets_of(r, None)[:, 5] for r in det_results]
    top = max((int(s.max()) for s in seen if s.size), default=-1)
    return top + 1


# --------------------------------------------------------------------------------------------
# true and false positives
# --------------------------------------------------------------------------------------------


def _in_ranges(areas: np.ndarray, area_ranges: np.ndarray | None) -> np.ndarray:
    """``(S, N)`` whether each area lies in each ``[min, max)`` range (all True without
    ranges, S = 1)."""
    if area_ranges is None:
        return np.ones((1, len(areas)), dtype=bool)
    return (areas[None] >= area_ranges[:, :1]) & (areas[None] < area_ranges[:, 1:])


def tpfp_per_image(dets: np.ndarray, ann: dict, iou_thr: float,
                   area_ranges: np.ndarray | None = None,
                   use_legacy_coordinate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives ``(S, D)`` bool of one image's detections, for every class at
    once, with MMDetection's ``tpfp_default`` rule.

    Args:
        dets: ``(D, 6)`` ``[x1, y1, x2, y2, score, label]`` (xyxy).
        ann: ``bboxes`` ``(G, 4)`` xyxy, ``labels`` ``(G,)``, and ``bboxes_ignore`` /
            ``labels_ignore`` for boxes that are neither found nor missed.
        iou_thr: a detection overlapping its best box at least this much matches it.
        area_ranges: ``(S, 2)`` ``[min, max)`` areas to score separately, or None.
    """
    extra = 1.0 if use_legacy_coordinate else 0.0
    gt, gt_labels, ignore, ignore_labels = _gts_of(ann)
    boxes = np.concatenate([gt, ignore])
    labels = np.concatenate([gt_labels, ignore_labels])
    is_ignored = np.arange(len(boxes)) >= len(gt)
    det_labels = dets[:, 5].astype(np.int64)
    # (D, G + I); a detection only competes for boxes of its class
    ious = bbox_overlaps(dets[:, :4], boxes, use_legacy_coordinate=use_legacy_coordinate)
    ious = np.where(det_labels[:, None] == labels[None], ious, -np.inf)
    best = ious.max(axis=1) if boxes.size else np.full(len(dets), -np.inf)
    target = ious.argmax(axis=1) if boxes.size else np.zeros(len(dets), dtype=np.int64)
    matched = best >= iou_thr
    order = np.argsort(-dets[:, 4], kind="stable")
    box_in = _in_ranges(_areas(boxes.astype(np.float64), extra), area_ranges)
    det_in = _in_ranges(_areas(dets[:, :4], extra), area_ranges)
    tp = np.zeros(det_in.shape, dtype=bool)
    fp = np.zeros(det_in.shape, dtype=bool)
    for s in range(len(det_in)):  # a handful of area ranges
        counted = matched & ~is_ignored[target] & box_in[s][target] if boxes.size else matched
        ranked = order[counted[order]]
        # the highest-scoring detection of each box is the true positive, the others duplicates
        _, first = np.unique(target[ranked], return_index=True)
        tp[s, ranked[first]] = True
        fp[s] = (counted & ~tp[s]) | (~matched & det_in[s])
    return tp, fp


# --------------------------------------------------------------------------------------------
# average precision
# --------------------------------------------------------------------------------------------


def average_precision(recalls: np.ndarray, precisions: np.ndarray,
                      mode: str = "area") -> np.ndarray | np.floating:
    """AP of ``(N,)`` or ``(S, N)`` recall/precision curves (detections in score order).

    ``'area'``: area under the curve whose precision at each recall is the best precision at
    that recall or beyond (VOC2010+). ``'11points'``: mean of the best precision at recall at
    least 0, 0.1, ..., 1 (VOC2007). A float32 scalar for 1-D input, else ``(S,)``.
    """
    if mode not in ("area", "11points"):
        raise ValueError(f"mode must be 'area' or '11points', got {mode!r}")
    squeeze = np.ndim(recalls) == 1
    rec = np.atleast_2d(np.asarray(recalls, dtype=np.float64))
    prec = np.atleast_2d(np.asarray(precisions, dtype=np.float64))
    if mode == "area":
        zeros, ones = np.zeros((len(rec), 1)), np.ones((len(rec), 1))
        mrec = np.hstack([zeros, rec, ones])
        mpre = np.hstack([zeros, prec, zeros])
        # the envelope: best precision at this recall or any higher one
        mpre = np.maximum.accumulate(mpre[:, ::-1], axis=1)[:, ::-1]
        # steps where recall does not change add nothing
        ap = (np.diff(mrec, axis=1) * mpre[:, 1:]).sum(axis=1)
    else:
        thrs = np.arange(0, 1 + 1e-3, 0.1)
        reached = rec[:, None, :] >= thrs[None, :, None]  # (S, 11, N)
        best = np.where(reached, prec[:, None, :], 0.0)
        ap = (best.max(axis=2) if rec.shape[1] else np.zeros(best.shape[:2])).sum(axis=1) / 11
    ap = ap.astype(np.float32)
    return ap[0] if squeeze else ap


# --------------------------------------------------------------------------------------------
# mAP
# --------------------------------------------------------------------------------------------


def _count_gts(annotations: Sequence[dict], num_classes: int, area_ranges: np.ndarray | None,
               extra: float) -> np.ndarray:
    """``(K, S)`` number of normal (not ignored) boxes of each class in each area range."""
    counts = np.zeros((num_classes, 1 if area_ranges is None else len(area_ranges)), np.int64)
    for ann in annotations:
        boxes, labels, _, _ = _gts_of(ann)
        inside = _in_ranges(_areas(boxes.astype(np.float64), extra), area_ranges)  # (S, G)
        for s, keep in enumerate(inside):
            counts[:, s] += np.bincount(labels[keep], minlength=num_classes)[:num_classes]
    return counts


def _class_curve(scores: np.ndarray, tp: np.ndarray, fp: np.ndarray,
                 num_gts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision ``(S, D)`` of one class's detections over all images."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(tp[:, order], axis=1)
    fp = np.cumsum(fp[:, order], axis=1)
    recalls = tp / np.maximum(num_gts[:, None], _EPS)
    precisions = tp / np.maximum(tp + fp, _EPS)
    return recalls, precisions


def _check_labels(dets: Sequence[np.ndarray], num_classes: int) -> None:
    """Labels outside ``0..num_classes-1`` would silently score nothing: name the image."""
    for i, d in enumerate(dets):
        labels = d[:, 5]
        bad = labels[(labels < 0) | (labels >= num_classes) | (labels != np.floor(labels))]
        if bad.size:
            shown = sorted({int(b) if b == int(b) else b for b in bad.tolist()})
            raise ValueError(f"the detections of image {i} have labels {shown}, outside the "
                             f"{num_classes} classes 0..{num_classes - 1}")


def _map_mode(mode: str | None, dataset: Any) -> str:
    if mode is None:
        return "11points" if dataset == "voc07" else "area"
    if mode not in ("area", "11points"):
        raise ValueError(f"mode must be 'area' or '11points', got {mode!r}")
    return mode


def _mean_ap(results: list[dict], scales: bool) -> float | list[float]:
    """Mean AP over the classes with ground truth (per area range with ``scales``)."""
    aps = np.array([np.atleast_1d(r["ap"]) for r in results], dtype=np.float64).reshape(
        len(results), -1)
    gts = np.array([np.atleast_1d(r["num_gts"]) for r in results]).reshape(len(results), -1)
    means = [float(aps[gts[:, s] > 0, s].mean()) if (gts[:, s] > 0).any() else 0.0
             for s in range(aps.shape[1])]
    return means if scales else means[0]


def eval_map(det_results: Sequence[Any], annotations: Sequence[dict],
             scale_ranges: Sequence[tuple[float, float]] | None = None, iou_thr: float = 0.5,
             dataset: str | Sequence[str] | None = None,
             logger: logging.Logger | str | None = None, nproc: int = 1,
             mode: str | None = None, use_legacy_coordinate: bool = False,
             num_classes: int | None = None) -> tuple[float | list[float], list[dict]]:
    """VOC-style mean average precision, as MMDetection 2.x's ``eval_map``.

    Args:
        det_results: one per image: a ``DetResult`` (boxes ``(N, 4)`` xyxy) or MMDetection's
            list of per-class ``(n, 5)`` ``[x1, y1, x2, y2, score]`` arrays.
        annotations: one per image: ``bboxes`` ``(G, 4)`` xyxy, ``labels`` ``(G,)`` 0-based,
            and optionally ``bboxes_ignore`` with ``labels_ignore`` (difficult boxes: a
            detection on them is neither right nor wrong).
        scale_ranges: ``[(min_side, max_side), ...]``: score boxes whose area lies in
            ``[min_side**2, max_side**2)`` separately (None: all boxes at once).
        iou_thr: the IoU a detection needs with a box to find it.
        dataset: ``'voc07'`` (11-point AP, unless ``mode`` says otherwise) or the class names
            (used in the printed table).
        logger: where the per-class table goes: None prints it (as MMDetection does),
            ``'silent'`` drops it, a ``logging.Logger`` (or its name) logs it at INFO level.
        nproc: accepted for MMDetection's signature; the computation is vectorized instead.
        mode: ``'area'`` or ``'11points'``; default from ``dataset``.
        use_legacy_coordinate: widths and heights are ``x2 - x1 + 1`` (VOC devkit).
        num_classes: the number of classes, when neither ``dataset`` names nor MMDetection
            results tell it.

    Returns:
        ``(mean_ap, per_class)``: the mean of the APs of the classes that have ground truth (a
        list, one per scale range, with ``scale_ranges``), and one dict per class with
        ``num_gts``, ``num_dets``, ``recall``, ``precision`` (curves in score order) and
        ``ap``.
    """
    del nproc  # one vectorized pass is faster than a process pool here
    if len(det_results) != len(annotations):
        raise ValueError(f"{len(det_results)} detection results for {len(annotations)} "
                         "annotations: pass one of each per image, in the same order")
    mode = _map_mode(mode, dataset)
    extra = 1.0 if use_legacy_coordinate else 0.0
    area_ranges = (None if scale_ranges is None else
                   np.asarray([(lo ** 2, hi ** 2) for lo, hi in scale_ranges], np.float64))
    k = num_classes or _infer_num_classes(det_results, annotations, dataset)
    dets = [_dets_of(r, k) for r in det_results]
    _check_labels(dets, k)
    flags = [tpfp_per_image(d, a, iou_thr, area_ranges, use_legacy_coordinate)
             for d, a in zip(dets, annotations, strict=True)]
    all_dets = np.concatenate(dets) if dets else np.zeros((0, 6))
    tp = np.concatenate([f[0] for f in flags], axis=1) if flags else np.zeros((1, 0), bool)
    fp = np.concatenate([f[1] for f in flags], axis=1) if flags else np.zeros((1, 0), bool)
    num_gts = _count_gts(annotations, k, area_ranges, extra)
    labels = all_dets[:, 5].astype(np.int64)
    results = []
    for c in range(k):
        mine = labels == c
        recalls, precisions = _class_curve(all_dets[mine, 4], tp[:, mine], fp[:, mine],
                                           num_gts[c])
        if area_ranges is None:
            recalls, precisions = recalls[0], precisions[0]
        results.append(dict(num_gts=num_gts[c] if area_ranges is not None else int(num_gts[c, 0]),
                            num_dets=int(mine.sum()), recall=recalls, precision=precisions,
                            ap=average_precision(recalls, precisions, mode)))
    mean_ap = _mean_ap(results, area_ranges is not None)
    names = list(dataset) if isinstance(dataset, (list, tuple)) else None
    _report(map_summary(mean_ap, results, names, scale_ranges), logger)
    return mean_ap, results


def map_table(per_class: Sequence[dict], class_names: Sequence[str] | None = None,
              scale: int = 0):
    """The per-class results of :func:`eval_map` as a pandas DataFrame: ``class``, ``gts``,
    ``dets``, ``recall`` (at the last detection), ``ap`` (of area range ``scale``)."""
    import pandas as pd

    rows = []
    for c, result in enumerate(per_class):
        recall = np.atleast_2d(result["recall"])[scale]
        rows.append({"class": class_names[c] if class_names else str(c),
                     "gts": int(np.atleast_1d(result["num_gts"])[scale]),
                     "dets": int(result["num_dets"]),
                     "recall": float(recall[-1]) if recall.size else 0.0,
                     "ap": float(np.atleast_1d(result["ap"])[scale])})
    return pd.DataFrame(rows, columns=["class", "gts", "dets", "recall", "ap"])


def map_summary(mean_ap: float | Sequence[float], per_class: Sequence[dict],
                class_names: Sequence[str] | None = None,
                scale_ranges: Sequence[tuple[float, float]] | None = None) -> str:
    """The text table MMDetection prints after ``eval_map``: one row per class and the mAP,
    one table per area range."""
    means = list(mean_ap) if isinstance(mean_ap, (list, tuple)) else [mean_ap]
    tables = []
    for s, mean in enumerate(means):
        table = map_table(per_class, class_names, s)
        head = f"Scale range {scale_ranges[s]}\n" if scale_ranges is not None else ""
        body = table.to_string(index=False, float_format=lambda v: f"{v:.3f}")
        tables.append(f"{head}{body}\nmAP: {mean:.3f}")
    return "\n".join(tables) + "\n"


# --------------------------------------------------------------------------------------------
# recall of proposals
# --------------------------------------------------------------------------------------------


def _proposal_boxes(proposals: Any) -> np.ndarray:
    """``(P, 4)`` boxes of one image's proposals in score order: a DetResult, or an
    ``(P, 4)`` / ``(P, 5)`` array (the fifth column a score)."""
    from detlab.structures import DetResult

    if isinstance(proposals, DetResult):
        order = np.argsort(-proposals.scores.detach().cpu().numpy(), kind="stable")
        return proposals.boxes.detach().cpu().numpy()[order]
    array = np.asarray(proposals, dtype=np.float32)
    if array.ndim == 2 and array.shape[1] == 5:
        return array[np.argsort(-array[:, 4], kind="stable"), :4]
    return array.reshape(-1, 4)


def _greedy_ious(ious: np.ndarray) -> np.ndarray:
    """``(G,)`` IoU each box gets when pairs are taken in order of decreasing IoU, each box
    and proposal once (-1 for boxes left without a proposal; 0 for all with no proposals)."""
    g, p = ious.shape
    if not ious.size:
        return np.zeros(g, dtype=np.float32)
    ious = ious.copy()
    out = np.full(g, -1, dtype=np.float32)
    for j in range(min(g, p)):  # each step takes one pair; the argmax is over all pairs
        row, col = divmod(int(ious.argmax()), p)
        out[j] = ious[row, col]
        ious[row, :] = -1
        ious[:, col] = -1
    return out


def _as_array(values: Any, default: float | None = None) -> np.ndarray:
    if values is None:
        return np.array([default])
    return np.atleast_1d(np.asarray(values))


def eval_recalls(gts: Sequence[np.ndarray], proposals: Sequence[Any],
                 proposal_nums: int | Sequence[int] | None = None,
                 iou_thrs: float | Sequence[float] | None = 0.5,
                 logger: logging.Logger | str | None = None,
                 use_legacy_coordinate: bool = False) -> np.ndarray:
    """Recall of proposals, as MMDetection 2.x's ``eval_recalls``.

    Each image's ground-truth boxes and its first ``n`` proposals (in score order) are paired
    greedily by decreasing IoU, each used once; recall at ``(n, thr)`` is the fraction of all
    ground-truth boxes whose pair has IoU at least ``thr``.

    Args:
        gts: one ``(G, 4)`` xyxy array of ground-truth boxes per image (None for none).
        proposals: one per image: a DetResult, or ``(P, 4)`` / ``(P, 5)`` (with scores) xyxy.
        proposal_nums: the numbers of proposals to keep per image (default: all proposals,
            as one number).
        iou_thrs: one or more IoU thresholds (None: 0.5).
        logger: where the table goes (see :func:`eval_map`).

    Returns:
        ``(len(proposal_nums), len(iou_thrs))`` recalls.
    """
    if len(gts) != len(proposals):
        raise ValueError(f"{len(gts)} ground truths for {len(proposals)} proposal sets: pass "
                         "one of each per image")
    boxes = [_proposal_boxes(p) for p in proposals]
    nums = _as_array(proposal_nums, max((len(b) for b in boxes), default=0)).astype(np.int64)
    thrs = _as_array(iou_thrs, 0.5).astype(np.float64)
    ious = [bbox_overlaps(np.zeros((0, 4)) if gt is None else gt, b[:int(nums[-1])],
                          use_legacy_coordinate=use_legacy_coordinate)
            for gt, b in zip(gts, boxes, strict=True)]
    total = sum(len(i) for i in ious)
    if total == 0:
        raise ValueError("eval_recalls: there is no ground-truth box in any image, so recall "
                         "is undefined; check the annotations (and the classes)")
    best = np.stack([np.concatenate([_greedy_ious(i[:, :n]) for i in ious]) for n in nums])
    recalls = (best[:, :, None] >= thrs[None, None, :]).sum(axis=1) / float(total)
    _report(recall_summary(recalls, nums, thrs), logger)
    return recalls


def recall_summary(recalls: np.ndarray, proposal_nums: Sequence[int],
                   iou_thrs: Sequence[float]) -> str:
    """The table MMDetection prints after ``eval_recalls``: a row per proposal number, a
    column per IoU threshold."""
    head = "".join(f"{float(t):>8.2f}" for t in iou_thrs)
    rows = [f"{int(n):>6d}" + "".join(f"{v:>8.3f}" for v in row)
            for n, row in zip(proposal_nums, recalls, strict=True)]
    return "\n".join([f"{'':>6}{head}"] + rows) + "\n"


def _report(text: str, logger: logging.Logger | str | None) -> None:
    """MMDetection's ``print_log``: print without a logger, nothing for ``'silent'``."""
    if logger is None:
        print(text, end="")
    elif isinstance(logger, logging.Logger):
        logger.info("\n%s", text.rstrip("\n"))
    elif logger != "silent":
        logging.getLogger(logger).info("\n%s", text.rstrip("\n"))
