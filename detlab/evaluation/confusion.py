"""A detection confusion matrix with a background row and column.

Rows are ground-truth classes (plus ``background``: detections that match no gt), columns are
predicted classes (plus ``background``: gts that no detection matches), as MMDetection's
``tools/analysis_tools/confusion_matrix.py`` lays it out. Two ways of counting:

- ``'best'`` (default): one-to-one. Each gt is matched to at most one detection and each
  detection to at most one gt, among pairs of the same image with IoU >= ``iou_thr`` and
  detections scoring >= ``score_thr``: first same-class pairs, then any remaining pairs, each
  time the highest IoU first. Every gt is counted once in its row, every detection once in its
  column, so the diagonal holds the true positives.
- ``'mmdet'``: MMDetection's counting. A detection adds one to ``[gt class, det class]`` for
  every gt it overlaps at ``iou_thr`` (so one detection may count several times), or one to
  ``[background, det class]`` when it overlaps none; a gt that no detection of its own class
  overlaps adds one to ``[gt class, background]``.

Crowd gts are left out in both (MMDetection's ``gt_bboxes_ignore``), so detections on crowd
regions count as background.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from detlab.evaluation.cocoeval import Instances, detections, ground_truth
from detlab.evaluation.matching import image_pairs, load_eval_data

if TYPE_CHECKING:
    import pandas as pd
    from pycocotools.coco import COCO

METHODS = ("best", "mmdet")


def greedy_pairs(det: np.ndarray, gt: np.ndarray, iou: np.ndarray, num_dets: int,
                 num_gts: int) -> np.ndarray:
    """(P,) bool: the pairs a greedy one-to-one assignment keeps, taking pairs by decreasing
    IoU (ties: lower detection, then lower gt index) and skipping any whose detection or gt is
    already used.

    Vectorized as rounds: a pair that is the first remaining pair of both its detection and its
    gt is kept (the sequential greedy would keep it too), then the pairs of used detections and
    gts are dropped, until none is left."""
    rank = np.empty(len(det), np.int64)
    rank[np.lexsort((gt, det, -iou))] = np.arange(len(det))
    kept = np.zeros(len(det), bool)
    alive = np.ones(len(det), bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        first_d = np.full(num_dets, len(det))
        first_g = np.full(num_gts, len(det))
        np.minimum.at(first_d, det[idx], rank[idx])
        np.minimum.at(first_g, gt[idx], rank[idx])
        win = idx[(rank[idx] == first_d[det[idx]]) & (rank[idx] == first_g[gt[idx]])]
        kept[win] = True
        used_d = np.zeros(num_dets, bool)
        used_d[det[win]] = True
        used_g = np.zeros(num_gts, bool)
        used_g[gt[win]] = True
        alive &= ~used_d[det] & ~used_g[gt]
    return kept


def _one_to_one(pairs: Any, ok: np.ndarray, num_dets: int,
                num_gts: int) -> tuple[np.ndarray, np.ndarray]:
    """Same-class pairs first, then any class: (matched detection, matched gt) index arrays."""
    same = np.flatnonzero(ok & pairs.same_class)
    first = same[greedy_pairs(pairs.det[same], pairs.gt[same], pairs.iou[same], num_dets,
                              num_gts)]
    used_d = np.isin(np.arange(num_dets), pairs.det[first])
    used_g = np.isin(np.arange(num_gts), pairs.gt[first])
    rest = np.flatnonzero(ok & ~used_d[pairs.det] & ~used_g[pairs.gt])
    second = rest[greedy_pairs(pairs.det[rest], pairs.gt[rest], pairs.iou[rest], num_dets,
                               num_gts)]
    chosen = np.r_[first, second]
    return pairs.det[chosen], pairs.gt[chosen]


def _count_best(pairs: Any, ok: np.ndarray, dt_cls: np.ndarray, gt_cls: np.ndarray,
                bg: int) -> np.ndarray:
    matrix = np.zeros((bg + 1, bg + 1), np.int64)
    d, g = _one_to_one(pairs, ok, len(dt_cls), len(gt_cls))
    np.add.at(matrix, (gt_cls[g], dt_cls[d]), 1)
    free_g = np.ones(len(gt_cls), bool)
    free_g[g] = False
    free_d = np.ones(len(dt_cls), bool)
    free_d[d] = False
    np.add.at(matrix, (gt_cls[free_g], bg), 1)
    np.add.at(matrix, (bg, dt_cls[free_d]), 1)
    return matrix


def _count_mmdet(pairs: Any, ok: np.ndarray, dt_cls: np.ndarray, gt_cls: np.ndarray,
                 bg: int) -> np.ndarray:
    matrix = np.zeros((bg + 1, bg + 1), np.int64)
    np.add.at(matrix, (gt_cls[pairs.gt[ok]], dt_cls[pairs.det[ok]]), 1)
    overlapping = np.zeros(len(dt_cls), bool)
    overlapping[pairs.det[ok]] = True
    np.add.at(matrix, (bg, dt_cls[~overlapping]), 1)
    found = np.zeros(len(gt_cls), bool)
    found[pairs.gt[ok & pairs.same_class]] = True
    np.add.at(matrix, (gt_cls[~found], bg), 1)
    return matrix


def _kept_detections(dt: Instances, score_thr: float) -> Instances:
    keep = dt.scores >= score_thr
    return Instances(dt.group[keep], dt.boxes[keep], dt.area[keep], dt.crowd[keep],
                     dt.ids[keep], dt.scores[keep])


def confusion_matrix(gt: str | os.PathLike | dict | COCO, dt: Any, score_thr: float = 0.3,
                     iou_thr: float = 0.5, img_ids: Sequence[int] | None = None,
                     cat_ids: Sequence[int] | None = None,
                     class_names: Sequence[str] | None = None, method: str = "best",
                     normalize: bool = False) -> pd.DataFrame:
    """The confusion matrix of detections against ground truth (see the module docstring).

    Args:
        gt, dt, img_ids, cat_ids, class_names: as :func:`match_detections` (``bbox`` xywh
            rows, or ``DetResult`` with boxes ``(N, 4)`` xyxy in original pixels).
        score_thr: detections scoring below are left out (all others count: no budget).
        iou_thr: the IoU a detection needs with a gt to match it.
        method: ``'best'`` (one-to-one) or ``'mmdet'`` (MMDetection's counting).
        normalize: divide each row by its sum (rows that sum to 0 stay 0).

    Returns:
        A ``(K + 1, K + 1)`` DataFrame indexed by ground-truth class (``index.name`` ``'ground
        truth'``) with predicted classes as columns (``'prediction'``), ``background`` last in
        both; counts (int) or, with ``normalize``, row fractions.
    """
    import pandas as pd

    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    data = load_eval_data(gt, dt, img_ids, cat_ids, class_names)
    K = len(data.cat_ids)
    gts = ground_truth(data.coco_gt, data.img_ids, data.cat_ids, True, False)
    regular = ~gts.crowd
    gts = dataclasses.replace(gts, group=gts.group[regular], boxes=gts.boxes[regular],
                              area=gts.area[regular], crowd=gts.crowd[regular],
                              ids=gts.ids[regular], scores=gts.scores[regular])
    dts, _ = detections(data.dets, data.img_ids, data.cat_ids, True, len(data.dets) + 1)
    dts = _kept_detections(dts, score_thr)
    pairs = image_pairs(dts, gts, K, len(data.img_ids))
    ok = pairs.iou >= iou_thr
    count = _count_best if method == "best" else _count_mmdet
    matrix = count(pairs, ok, dts.group % K, gts.group % K, K)
    labels = [*data.names, "background"]
    frame = pd.DataFrame(matrix, index=pd.Index(labels, name="ground truth"),
                         columns=pd.Index(labels, name="prediction"))
    if normalize:
        sums = frame.sum(axis=1).replace(0, 1)
        frame = frame.div(sums, axis=0)
    return frame
