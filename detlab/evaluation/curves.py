"""Precision-recall and score-threshold curves, per-class AP and a worst-first image ranking,
all read from a match table (:func:`detlab.evaluation.matching.match_detections`).

AP is COCO's: detections of a class ranked by score (ties: image, then result order, as
pycocotools ranks them), precision made monotone from the right, sampled at 101 recall points
(0, 0.01 ... 1) and averaged. The arithmetic follows pycocotools' ``accumulate`` exactly, so the
curves and APs equal ``COCOeval.eval['precision']`` for the same matching.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from detlab.evaluation.cocoeval import REC_THRS
from detlab.evaluation.matching import (
    ERROR_TYPES,
    find_tp_column,
    ignored_column,
    table_thresholds,
    tp_column,
)

if TYPE_CHECKING:
    import pandas as pd


# --------------------------------------------------------------------------------------------
# COCO interpolated precision over many segments (classes, or image and class pairs) at once
# --------------------------------------------------------------------------------------------


def evaluation_order(segment: np.ndarray, score: np.ndarray, image_id: np.ndarray,
                     det_id: np.ndarray) -> np.ndarray:
    """pycocotools' ranking: by segment, then score (descending), image id, result id."""
    return np.lexsort((det_id, image_id, -score, segment))


def _reverse_running_max(values: np.ndarray, segment: np.ndarray, num: int) -> np.ndarray:
    """``max(values[i:end of i's segment])`` for each ``i`` (rows sorted by segment), exact:
    done on integer ranks so that segments can be offset without rounding."""
    if not len(values):
        return values
    uniq, rank = np.unique(values, return_inverse=True)
    offset = (num - 1 - segment) * len(uniq)  # grows along the reversed walk: segments restart
    key = np.maximum.accumulate((rank + offset)[::-1])[::-1]
    return uniq[key - offset]


def _count_below(values: np.ndarray, segment: np.ndarray, starts: np.ndarray,
                 queries: np.ndarray) -> np.ndarray:
    """``(S, Q)``: how many values of each segment are below each query (``np.searchsorted``
    side='left' per segment, on values non-decreasing inside their segment)."""
    num, nq = len(starts), len(queries)
    q_seg = np.repeat(np.arange(num), nq)
    seg = np.r_[segment, q_seg]
    val = np.r_[values, np.tile(queries, num)]
    is_value = np.r_[np.ones(len(values), np.int64), np.zeros(num * nq, np.int64)]
    order = np.lexsort((is_value, val, seg))  # a query goes before values equal to it
    before = np.cumsum(is_value[order]) - is_value[order]
    out = np.empty(len(order), np.int64)
    out[order] = before
    return (out[len(values):] - starts[q_seg]).reshape(num, nq)


def interpolated_precision(segment: np.ndarray, tp: np.ndarray, npig: np.ndarray,
                           scores: np.ndarray | None = None
                           ) -> tuple[np.ndarray, np.ndarray | None]:
    """COCO's precision at the 101 recall points of each segment.

    Args:
        segment: ``(N,)`` segment of each counted detection, sorted, each segment in
            :func:`evaluation_order`.
        tp: ``(N,)`` bool, true positive (else false positive).
        npig: ``(S,)`` counted ground truths of each segment.
        scores: ``(N,)`` optional; then also the score at each recall point.

    Returns:
        precision ``(S, 101)`` (NaN for segments without ground truth) and scores ``(S, 101)``
        (or None), as pycocotools' ``accumulate`` computes them.
    """
    num, n = len(npig), len(segment)
    starts = np.searchsorted(segment, np.arange(num))
    sizes = np.searchsorted(segment, np.arange(num), side="right") - starts
    tp_cum = np.cumsum(tp.astype(np.int64))
    fp_cum = np.cumsum(1 - tp.astype(np.int64))
    tps = (tp_cum - np.r_[0, tp_cum][starts[segment]]).astype(np.float64)
    fps = (fp_cum - np.r_[0, fp_cum][starts[segment]]).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rc = tps / npig[segment]
    pr = _reverse_running_max(tps / (fps + tps + np.spacing(1)), segment, num)
    count = _count_below(rc, segment, starts, REC_THRS)
    ok = count < sizes[:, None]
    pick = np.minimum(starts[:, None] + count, max(n - 1, 0))
    precision = np.where(ok, pr[pick], 0.0) if n else np.zeros((num, len(REC_THRS)))
    precision[npig == 0] = np.nan
    if scores is None:
        return precision, None
    score = np.where(ok, scores[pick], 0.0) if n else np.zeros((num, len(REC_THRS)))
    return precision, score


def segment_precision(segment: np.ndarray, score: np.ndarray, image_id: np.ndarray,
                      det_id: np.ndarray, tp: np.ndarray, npig: np.ndarray) -> np.ndarray:
    """``(S, 101)`` COCO interpolated precision of each segment (NaN rows without ground
    truth) from counted detections in any order: ``segment`` (e.g. class position),
    ``score``, ``image_id``, ``det_id``, ``tp``."""
    order = evaluation_order(segment, score, image_id, det_id)
    precision, _ = interpolated_precision(segment[order], tp[order], np.asarray(npig))
    return precision


def average_precisions(segment: np.ndarray, score: np.ndarray, image_id: np.ndarray,
                       det_id: np.ndarray, tp: np.ndarray, npig: np.ndarray) -> np.ndarray:
    """``(S,)`` COCO AP of each segment (NaN without ground truth); arguments as
    :func:`segment_precision`."""
    return segment_precision(segment, score, image_id, det_id, tp, npig).mean(axis=1)


def mean_of_precision(precision: np.ndarray) -> float:
    """COCO's mAP of ``(..., K, 101)`` precision: the mean of the defined values, taken in
    pycocotools' order (recall-major) so that it is bit-identical; NaN when none."""
    values = np.moveaxis(precision, -1, -2).ravel()
    values = values[~np.isnan(values)]
    return float(np.mean(values)) if values.size else float("nan")


# --------------------------------------------------------------------------------------------
# reading a match table
# --------------------------------------------------------------------------------------------


def table_classes(table: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """The evaluated category ids (sorted) and class names of a match table."""
    if "cat_ids" in table.attrs and "class_names" in table.attrs:
        return np.asarray(table.attrs["cat_ids"], np.int64), list(table.attrs["class_names"])
    pairs = table[["category_id", "class"]].drop_duplicates("category_id")
    pairs = pairs.sort_values("category_id")
    return pairs["category_id"].to_numpy(np.int64), pairs["class"].tolist()


def counted_detections(table: pd.DataFrame, iou: float) -> pd.DataFrame:
    """The detections counted at ``iou`` (not ignored there), with a bool ``tp`` column."""
    col = find_tp_column(table, iou)
    thr = float(col[3:])
    dets = table[(table["kind"] == "det") & ~table[ignored_column(thr)].astype(bool)]
    return dets.assign(tp=dets[col].astype(bool))


def gt_counts(table: pd.DataFrame, by: str | list[str]) -> pd.Series:
    """Counted ground truths per ``by`` (e.g. ``'category_id'``): matched at the first
    threshold plus missed."""
    first = tp_column(min(table_thresholds(table)))
    counted = (table["kind"] == "miss") | ((table["kind"] == "det") & table[first].astype(bool))
    return table[counted].groupby(by).size()


def _class_arrays(table: pd.DataFrame, iou: float
                  ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[str], np.ndarray]:
    cat_ids, names = table_classes(table)
    dets = counted_detections(table, iou)
    pos = np.searchsorted(cat_ids, dets["category_id"].to_numpy(np.int64))
    npig = gt_counts(table, "category_id").reindex(cat_ids, fill_value=0).to_numpy()
    return dets, pos, cat_ids, names, npig


def class_precision(table: pd.DataFrame, iou: float = 0.5) -> np.ndarray:
    """``(K, 101)`` COCO interpolated precision of each class at ``iou`` (NaN rows for classes
    without ground truth); ``pycocotools``' ``eval['precision'][t, :, :, area, budget].T``."""
    dets, pos, _, _, npig = _class_arrays(table, iou)
    order = evaluation_order(pos, dets["score"].to_numpy(), dets["image_id"].to_numpy(),
                             dets["det_id"].to_numpy())
    precision, _ = interpolated_precision(pos[order], dets["tp"].to_numpy()[order], npig)
    return precision


def class_average_precision(table: pd.DataFrame, iou: float = 0.5) -> pd.DataFrame:
    """Per class: ``AP`` at ``iou`` (COCO's, NaN without ground truth), ``n_gt``, ``n_det``
    (counted detections), ``tp``, ``fp``, ``fn`` (counting every detection in the budget)."""
    import pandas as pd

    dets, pos, cat_ids, names, npig = _class_arrays(table, iou)
    ap = class_precision(table, iou).mean(axis=1)
    tp = np.bincount(pos, weights=dets["tp"].to_numpy(), minlength=len(cat_ids)).astype(int)
    n_det = np.bincount(pos, minlength=len(cat_ids))
    return pd.DataFrame({"class": names, "category_id": cat_ids, "AP": ap, "n_gt": npig,
                         "n_det": n_det, "tp": tp, "fp": n_det - tp, "fn": npig - tp})


def mean_average_precision(table: pd.DataFrame, iou: float | None = 0.5) -> float:
    """COCO mAP of a match table: at ``iou``, or (``None``) averaged over its thresholds;
    classes without ground truth do not count. Equal to pycocotools' number (same averaging
    order)."""
    thrs = table_thresholds(table) if iou is None else [iou]
    return mean_of_precision(np.stack([class_precision(table, t) for t in thrs]))


def pr_curves(table: pd.DataFrame, iou: float = 0.5) -> pd.DataFrame:
    """Per-class precision-recall curves at ``iou``: COCO's 101-point interpolated precision.

    Returns a long DataFrame: ``class``, ``category_id``, ``recall`` (0, 0.01 ... 1),
    ``precision`` and ``score`` (the score reaching that recall; 0 beyond the last). Classes
    without ground truth are left out.
    """
    import pandas as pd

    dets, pos, cat_ids, names, npig = _class_arrays(table, iou)
    order = evaluation_order(pos, dets["score"].to_numpy(), dets["image_id"].to_numpy(),
                             dets["det_id"].to_numpy())
    precision, score = interpolated_precision(pos[order], dets["tp"].to_numpy()[order], npig,
                                              dets["score"].to_numpy()[order])
    keep = np.flatnonzero(npig > 0)
    num_r = len(REC_THRS)
    return pd.DataFrame({"class": np.repeat(np.asarray(names, dtype=object)[keep], num_r),
                         "category_id": np.repeat(cat_ids[keep], num_r),
                         "recall": np.tile(REC_THRS, len(keep)),
                         "precision": precision[keep].ravel(), "score": score[keep].ravel()})


# --------------------------------------------------------------------------------------------
# score thresholds
# --------------------------------------------------------------------------------------------


def _default_thresholds(scores: np.ndarray) -> np.ndarray:
    if not len(scores) or (scores.min() >= 0 and scores.max() <= 1):
        return np.round(np.linspace(0.0, 1.0, 101), 2)
    return np.linspace(scores.min(), scores.max(), 101)


def _counts_above(score: np.ndarray, tp: np.ndarray,
                  thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives scoring at least each threshold."""
    order = np.argsort(score)
    s, t = score[order], tp[order].astype(np.int64)
    tail_tp = np.r_[np.cumsum(t[::-1])[::-1], 0]   # true positives from position i on
    first = np.searchsorted(s, thresholds, side="left")
    n_above = len(s) - first
    return tail_tp[first], n_above - tail_tp[first]


def threshold_curves(table: pd.DataFrame, iou: float = 0.5,
                     thresholds: Sequence[float] | None = None) -> pd.DataFrame:
    """Precision, recall and F1 of the detections scoring at least each threshold, per class and
    over all classes (``class == 'all'``: counts summed over classes).

    Returns a DataFrame: ``class``, ``category_id`` (-1 for all), ``score_thr``, ``tp``, ``fp``,
    ``fn``, ``precision`` (NaN without detections), ``recall`` (NaN without ground truth),
    ``f1`` (0 when precision and recall are 0).
    """
    import pandas as pd

    dets, pos, cat_ids, names, npig = _class_arrays(table, iou)
    score, tp = dets["score"].to_numpy(np.float64), dets["tp"].to_numpy()
    thrs = (_default_thresholds(score) if thresholds is None
            else np.asarray(thresholds, np.float64))
    frames = []
    for k in range(len(cat_ids)):
        in_k = pos == k
        tps, fps = _counts_above(score[in_k], tp[in_k], thrs)
        frames.append(_pr_frame(names[k], int(cat_ids[k]), thrs, tps, fps, int(npig[k])))
    tps, fps = _counts_above(score, tp, thrs)
    frames.append(_pr_frame("all", -1, thrs, tps, fps, int(npig.sum())))
    return pd.concat(frames, ignore_index=True)


def _pr_frame(name: str, cat_id: int, thrs: np.ndarray, tps: np.ndarray, fps: np.ndarray,
              n_gt: int) -> pd.DataFrame:
    import pandas as pd

    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tps + fps > 0, tps / (tps + fps), np.nan)
        recall = np.full(len(thrs), np.nan) if n_gt == 0 else tps / n_gt
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall), nan=0.0)
    return pd.DataFrame({"class": name, "category_id": cat_id, "score_thr": thrs, "tp": tps,
                         "fp": fps, "fn": n_gt - tps, "precision": precision, "recall": recall,
                         "f1": f1})


def best_f1_thresholds(curves: pd.DataFrame) -> pd.DataFrame:
    """The row of :func:`threshold_curves` with the highest F1 of each class (the lowest such
    threshold)."""
    best = curves.sort_values(["class", "f1", "score_thr"], ascending=[True, False, True],
                              kind="mergesort")
    return best.drop_duplicates("class").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# images, worst first
# --------------------------------------------------------------------------------------------


def _image_class_ap(table: pd.DataFrame, iou: float) -> pd.Series:
    """Mean over its classes with ground truth of the COCO AP of each image."""
    import pandas as pd

    dets = counted_detections(table, iou)
    n_gt = gt_counts(table, ["image_id", "category_id"])
    if n_gt.empty:
        return pd.Series(dtype=np.float64)
    keys = pd.MultiIndex.from_frame(dets[["image_id", "category_id"]])
    seg = n_gt.index.get_indexer(keys)
    keep = seg >= 0   # detections of an (image, class) without ground truth: AP undefined
    ap = average_precisions(seg[keep], dets["score"].to_numpy()[keep],
                            dets["image_id"].to_numpy()[keep], dets["det_id"].to_numpy()[keep],
                            dets["tp"].to_numpy()[keep], n_gt.to_numpy())
    return pd.Series(ap, index=n_gt.index).groupby(level="image_id").mean()


def image_ranking(table: pd.DataFrame, iou: float = 0.5, score_thr: float = 0.3) -> pd.DataFrame:
    """Images worst first: by ``errors`` (false positives scoring at least ``score_thr`` plus
    ground truths that no such detection matches), then by per-image ``AP`` (ascending).

    Returns one row per image of the table: ``image_id``, ``n_gt``, ``n_det`` (counted
    detections scoring at least ``score_thr``), ``tp``, ``fp``, ``fn``, ``errors``, ``AP``
    (mean over the image's classes with ground truth of COCO AP at ``iou`` over all its
    detections; NaN without ground truth) and one column per TIDE error type counting the
    image's errors (all detections in the budget, at the table's first threshold).
    """
    import pandas as pd

    dets = counted_detections(table, iou)
    dets = dets[dets["score"] >= score_thr]
    images = pd.Index(pd.unique(table["image_id"]), name="image_id")
    if "img_ids" in table.attrs:
        images = pd.Index(table.attrs["img_ids"], name="image_id")
    out = pd.DataFrame(index=images)
    out["n_gt"] = gt_counts(table, "image_id").reindex(images, fill_value=0)
    out["n_det"] = dets.groupby("image_id").size().reindex(images, fill_value=0)
    out["tp"] = dets.groupby("image_id")["tp"].sum().reindex(images, fill_value=0).astype(int)
    out["fp"] = out["n_det"] - out["tp"]
    out["fn"] = out["n_gt"] - out["tp"]
    out["errors"] = out["fp"] + out["fn"]
    out["AP"] = _image_class_ap(table, iou).reindex(images)
    errors = table[table["error"].notna()]
    counts = pd.crosstab(errors["image_id"], errors["error"]) if len(errors) else pd.DataFrame()
    out[list(ERROR_TYPES)] = counts.reindex(index=images, columns=list(ERROR_TYPES),
                                            fill_value=0).to_numpy()
    out = out.reset_index()
    return out.sort_values(["errors", "AP"], ascending=[False, True], na_position="last",
                           kind="mergesort").reset_index(drop=True)
