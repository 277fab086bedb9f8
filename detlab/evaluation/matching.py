"""Every detection accounted for: a per-detection match table built on COCO's matching.

``match_detections(gt, dt)`` runs the matching of :mod:`detlab.evaluation.cocoeval` (the same
detection budget per image and class, the same greedy matching, crowd regions and area ranges as
pycocotools) and returns a pandas DataFrame with one row per evaluated detection and one per missed
ground truth. Counting its ``tp@t`` column gives pycocotools' number of true positives at IoU
``t``; the ``error`` column names the TIDE error type (Bolya et al., ECCV 2020) of each false
positive and missed ground truth. :mod:`detlab.evaluation.errors`,
:mod:`detlab.evaluation.curves` and :mod:`detlab.evaluation.compare` read this table.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from detlab.evaluation.cocoeval import (
    Instances,
    box_iou_pairs,
    detections,
    ground_truth,
    match,
    same_group_pairs,
)

if TYPE_CHECKING:
    import pandas as pd
    from pycocotools.coco import COCO

    from detlab.evaluation.cocoeval import ResultColumns

AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2),
               "large": (96.0**2, 1e10)}
ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
TP_PREFIX = "tp@"
IGNORED_PREFIX = "ignored@"


class FrozenTuple(tuple):
    """A tuple that ``copy.deepcopy`` returns as it is (it is immutable and holds only
    immutable values): pandas deep-copies ``DataFrame.attrs`` on every operation."""

    __slots__ = ()

    def __deepcopy__(self, memo: dict) -> FrozenTuple:
        return self


def tp_column(iou: float) -> str:
    """The name of the true-positive column of IoU threshold ``iou`` (``'tp@0.50'``)."""
    return f"{TP_PREFIX}{_thr_text(iou)}"


def ignored_column(iou: float) -> str:
    """The name of the ignored-detection column of IoU threshold ``iou``."""
    return f"{IGNORED_PREFIX}{_thr_text(iou)}"


def _thr_text(iou: float) -> str:
    text = f"{iou:.2f}"
    return text if abs(float(text) - iou) < 1e-9 else f"{iou:g}"


def table_thresholds(table: pd.DataFrame) -> list[float]:
    """The IoU thresholds of a match table, from its ``tp@`` columns, in column order."""
    return [float(c[len(TP_PREFIX):]) for c in table.columns if str(c).startswith(TP_PREFIX)]


def find_tp_column(table: pd.DataFrame, iou: float) -> str:
    """The ``tp@`` column of ``table`` at ``iou``, or an error listing the thresholds it has."""
    thrs = table_thresholds(table)
    for thr in thrs:
        if abs(thr - iou) < 1e-6:
            return tp_column(thr)
    raise KeyError(f"the match table has no IoU threshold {iou} (it has {thrs}): pass iou_thrs "
                   f"with {iou} to match_detections")


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


@dataclass
class EvalData:
    """Checked inputs of an analysis.

    Attributes:
        coco_gt: the ground truth, a pycocotools ``COCO``.
        dets: the detections as columns (``bbox`` xywh).
        img_ids: ``(I,)`` the evaluated image ids, sorted.
        cat_ids: ``(K,)`` the evaluated category ids, sorted (pycocotools' class order).
        names: the class name of each of ``cat_ids``.
    """

    coco_gt: COCO
    dets: ResultColumns
    img_ids: np.ndarray
    cat_ids: np.ndarray
    names: list[str]


def load_eval_data(gt: str | os.PathLike | dict | COCO, dt: Any,
                   img_ids: Sequence[int] | None = None, cat_ids: Sequence[int] | None = None,
                   class_names: Sequence[str] | None = None) -> EvalData:
    """Load and check ground truth and detections as ``coco_evaluate`` takes them.

    Args:
        gt: a COCO json path, its content (a dict) or a pycocotools ``COCO``.
        dt: a results json path, COCO result rows (``bbox`` xywh) or ``DetResult`` (boxes
            ``(N, 4)`` xyxy in original pixels, label ``k`` is ``cat_ids[k]``).
        img_ids: the images to evaluate (default: those of a ``DetResult`` list, else all).
        cat_ids: the categories (default: all of ``gt``, file order: label order).
        class_names: a name per category of ``cat_ids`` (default: the ``gt`` names).
    """
    from detlab.evaluation import coco

    coco_gt = coco.load_coco_gt(gt)
    cats = list(coco_gt.getCatIds()) if cat_ids is None else [int(c) for c in cat_ids]
    rows, result_ids = coco._as_rows(dt, img_ids, cats)
    dets = coco._columns(rows, "bbox")
    images = coco._images_to_evaluate(coco_gt, img_ids, result_ids)
    coco._check_ids(coco_gt, dets, images, cats, "bbox")
    names = coco._class_names(coco_gt, cats, class_names)
    by_id = dict(zip(cats, names, strict=True))
    sorted_cats = np.unique(np.asarray(cats, dtype=np.int64))
    return EvalData(coco_gt, dets, np.unique(np.asarray(images, dtype=np.int64)), sorted_cats,
                    [by_id[int(c)] for c in sorted_cats])


def default_iou_thrs(iou_thrs: Sequence[float] | float | None) -> np.ndarray:
    """Sorted unique IoU thresholds; default COCO's 0.50:0.05:0.95 (built as pycocotools)."""
    if iou_thrs is None:
        return np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
    thrs = np.unique(np.atleast_1d(np.asarray(iou_thrs, dtype=np.float64)))
    if not thrs.size or thrs.min() < 0 or thrs.max() > 1:
        raise ValueError(f"iou_thrs must be IoU values in [0, 1], got {iou_thrs!r}")
    return thrs


def area_bounds(area_rng: str | Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` object area bounds of a COCO area range name or a pair of numbers."""
    if isinstance(area_rng, str):
        if area_rng not in AREA_RANGES:
            raise ValueError(f"area_rng must be one of {list(AREA_RANGES)} or (low, high), got "
                             f"{area_rng!r}")
        return AREA_RANGES[area_rng]
    low, high = (float(v) for v in area_rng)
    return low, high


def area_labels(area: np.ndarray) -> np.ndarray:
    """``'small'`` (below 32²), ``'medium'`` (below 96²) or ``'large'`` for each area."""
    return np.where(area < 32.0**2, "small", np.where(area < 96.0**2, "medium", "large"))


# --------------------------------------------------------------------------------------------
# the relations between detections and ground truths of one image
# --------------------------------------------------------------------------------------------


@dataclass
class ImagePairs:
    """Every (detection, ground truth) pair of the same image, whatever their classes.

    ``det`` is sorted; ``iou`` uses pycocotools' arithmetic (crowd: intersection over the
    detection's area)."""

    det: np.ndarray         # (P,) index into the detections
    gt: np.ndarray          # (P,) index into the ground truths
    iou: np.ndarray         # (P,) float64
    same_class: np.ndarray  # (P,) bool


def image_pairs(dt: Instances, gt: Instances, num_cats: int, num_images: int) -> ImagePairs:
    """All same-image pairs of ``dt`` and ``gt`` (grouped by (image, class), image-major)."""
    by_image = [dataclasses.replace(inst, group=inst.group // num_cats) for inst in (dt, gt)]
    pair_dt, pair_gt = same_group_pairs(by_image[0], by_image[1], num_images)
    iou = box_iou_pairs(dt.boxes[pair_dt], gt.boxes[pair_gt], gt.crowd[pair_gt])
    return ImagePairs(pair_dt, pair_gt, iou, dt.group[pair_dt] == gt.group[pair_gt])


def best_per_owner(owner: np.ndarray, values: np.ndarray, mask: np.ndarray,
                   num: int) -> tuple[np.ndarray, np.ndarray]:
    """For each owner ``0..num-1``: the highest of its masked pair values (-1 when it has none)
    and the first pair holding it (-1 when none)."""
    value = np.where(mask, values, -1.0)
    best = np.full(num, -1.0)
    np.maximum.at(best, owner, value)
    hit = np.flatnonzero(mask & (value == best[owner]))
    pair = np.full(num, -1, dtype=np.int64)
    owners, first = np.unique(owner[hit], return_index=True)
    pair[owners] = hit[first]
    return best, pair


def take(values: np.ndarray, index: np.ndarray, fill: Any) -> np.ndarray:
    """``values[index]``, ``fill`` where ``index`` is -1."""
    out = np.full(len(index), fill, dtype=values.dtype)
    ok = index >= 0
    out[ok] = values[index[ok]]
    return out


@dataclass
class Links:
    """What each detection overlaps, over the regular (not ignored) ground truths."""

    same: np.ndarray        # (D,) best IoU with a same-class gt, -1 without any
    same_gt: np.ndarray     # (D,) that gt's index, -1 without any
    other: np.ndarray       # (D,) best IoU with a gt of another class
    other_gt: np.ndarray
    taken: np.ndarray       # (D,) best IoU with a same-class gt matched at the first threshold
    taken_gt: np.ndarray


def detection_links(pairs: ImagePairs, gt_regular: np.ndarray, gt_taken: np.ndarray,
                    num_dets: int) -> Links:
    """The TIDE overlaps of every detection (see :class:`Links`)."""
    regular = gt_regular[pairs.gt]
    same, same_gt = best_per_owner(pairs.det, pairs.iou, regular & pairs.same_class, num_dets)
    other, other_gt = best_per_owner(pairs.det, pairs.iou, regular & ~pairs.same_class,
                                     num_dets)
    taken, taken_gt = best_per_owner(pairs.det, pairs.iou,
                                     regular & pairs.same_class & gt_taken[pairs.gt], num_dets)
    return Links(same, take(pairs.gt, same_gt, -1), other, take(pairs.gt, other_gt, -1), taken,
                 take(pairs.gt, taken_gt, -1))


def tide_types(false_pos: np.ndarray, links: Links, fg: float,
               bg: float) -> tuple[np.ndarray, np.ndarray]:
    """The TIDE type of each false positive and the ground truth it is about (-1: none).

    Tested in TIDE's order: Loc (right class, ``bg <= IoU < fg``), Cls (``IoU >= fg`` with a
    gt of another class), Dupe (right class, ``IoU >= fg`` with a gt already matched by a
    higher-scoring detection), Bkg (``IoU < bg`` with every gt), and Both for the rest (which
    is: wrong class with ``bg <= IoU < fg``, the right class below ``bg``)."""
    loc = false_pos & (links.same >= bg) & (links.same < fg)
    cls = false_pos & ~loc & (links.other >= fg)
    dupe = false_pos & ~loc & ~cls & (links.taken >= fg)
    bkg = false_pos & ~loc & ~cls & ~dupe & (np.maximum(links.same, links.other) < bg)
    both = false_pos & ~(loc | cls | dupe | bkg)
    kinds = np.select([loc, cls, dupe, bkg, both], ["Loc", "Cls", "Dupe", "Bkg", "Both"],
                      default="")
    target = np.select([loc, cls | both, dupe], [links.same_gt, links.other_gt, links.taken_gt],
                       default=-1)
    return kinds.astype(object), target


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------


@dataclass
class Matching:
    """The matching of one evaluation, in the engine's arrays."""

    data: EvalData
    dt: Instances
    gt: Instances
    thrs: np.ndarray        # (T,)
    matched: np.ndarray     # (T, D) matched gt id, 0: none
    ignored: np.ndarray     # (T, D) bool: ignored detection at each threshold
    gt_regular: np.ndarray  # (G,) bool: counted ground truth (not crowd, in the area range)
    pairs: ImagePairs


def run_matching(data: EvalData, thrs: np.ndarray, max_dets: int,
                 bounds: tuple[float, float]) -> Matching:
    """pycocotools' matching of ``data`` at ``thrs`` in one area range and budget."""
    num_cats = len(data.cat_ids)
    gt = ground_truth(data.coco_gt, data.img_ids, data.cat_ids, True, False)
    dt, _ = detections(data.dets, data.img_ids, data.cat_ids, True, int(max_dets))
    low, high = bounds
    gt_ignore = gt.crowd | (gt.area < low) | (gt.area > high)
    det_out = (dt.area < low) | (dt.area > high)
    found = match(dt, gt, len(data.img_ids) * num_cats, thrs, gt_ignore[None])
    matched = found.gt_id[0]
    # pycocotools ignores a detection matched to an ignored gt, or unmatched and out of range
    ignored = found.ignored[0] | ((matched == 0) & det_out[None])
    pairs = image_pairs(dt, gt, num_cats, len(data.img_ids))
    return Matching(data, dt, gt, thrs, matched, ignored, ~gt_ignore, pairs)


def _matched_pair(m: Matching) -> np.ndarray:
    """(P,) whether each pair is the detection's match at the first threshold."""
    p = m.pairs
    return p.same_class & (m.matched[0][p.det] != 0) & (m.gt.ids[p.gt] == m.matched[0][p.det])


def _gt_taken(m: Matching) -> np.ndarray:
    """(G,) whether each regular ground truth is matched at the first threshold."""
    hit = _matched_pair(m) & ~m.ignored[0][m.pairs.det]
    taken = np.zeros(len(m.gt.group), bool)
    taken[m.pairs.gt[hit]] = True
    return taken & m.gt_regular


def _xyxy(boxes: np.ndarray) -> np.ndarray:
    return np.c_[boxes[:, :2], boxes[:, :2] + boxes[:, 2:]] if len(boxes) else boxes


def _common_columns(m: Matching, group: np.ndarray, boxes: np.ndarray) -> dict[str, Any]:
    num_cats = len(m.data.cat_ids)
    cat_pos = group % num_cats
    xyxy = _xyxy(boxes)
    return {"image_id": m.data.img_ids[group // num_cats], "category_id": m.data.cat_ids[cat_pos],
            "class": np.asarray(m.data.names, dtype=object)[cat_pos],
            "x1": xyxy[:, 0], "y1": xyxy[:, 1], "x2": xyxy[:, 2], "y2": xyxy[:, 3]}


def _det_columns(m: Matching, links: Links,
                 bg: float) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    dt, pairs = m.dt, m.pairs
    num = len(dt.group)
    matched_iou = np.zeros(num)
    hit = _matched_pair(m)
    matched_iou[pairs.det[hit]] = pairs.iou[hit]
    any_iou, any_pair = best_per_owner(pairs.det, pairs.iou, m.gt_regular[pairs.gt], num)
    fallback = np.where(any_iou > 0, take(m.gt.ids, take(pairs.gt, any_pair, -1), 0), 0)
    is_match = m.matched[0] != 0
    tp = (m.matched != 0) & ~m.ignored
    kinds, target = tide_types(~tp[0] & ~m.ignored[0], links, float(m.thrs[0]), bg)
    cols = _common_columns(m, dt.group, dt.boxes)
    cols.update(kind="det", score=dt.scores, area=dt.area, det_id=dt.ids,
                gt_id=np.where(is_match, m.matched[0], fallback),
                iou=np.where(is_match, matched_iou, np.maximum(any_iou, 0.0)))
    cols.update(_threshold_columns(m.thrs, tp, m.ignored))
    cols.update(ignored=m.ignored[0], error=np.where(kinds == "", None, kinds),
                error_gt_id=take(m.gt.ids, target, 0))
    return cols, kinds, target


def _threshold_columns(thrs: np.ndarray, tp: np.ndarray, ignored: np.ndarray) -> dict:
    cols = {tp_column(t): tp[i] for i, t in enumerate(thrs)}
    cols.update({ignored_column(t): ignored[i] for i, t in enumerate(thrs)})
    return cols


def _miss_columns(m: Matching, taken: np.ndarray, explained: np.ndarray) -> dict[str, Any]:
    gt, pairs = m.gt, m.pairs
    missed = np.flatnonzero(m.gt_regular & ~taken)
    best_iou = np.zeros(len(gt.group))
    np.maximum.at(best_iou, pairs.gt, pairs.iou)
    n = len(missed)
    cols = _common_columns(m, gt.group[missed], gt.boxes[missed])
    cols.update(kind="miss", score=np.full(n, np.nan), area=gt.area[missed],
                det_id=np.zeros(n, np.int64), gt_id=gt.ids[missed], iou=best_iou[missed])
    cols.update(_threshold_columns(m.thrs, np.zeros((len(m.thrs), n), bool),
                                   np.zeros((len(m.thrs), n), bool)))
    cols.update(ignored=np.zeros(n, bool),
                error=np.where(explained[missed], None, "Miss").astype(object),
                error_gt_id=np.zeros(n, np.int64))
    return cols


def match_table(m: Matching, bg_iou: float) -> pd.DataFrame:
    """The match table of a :class:`Matching` (see :func:`match_detections`)."""
    import pandas as pd

    taken = _gt_taken(m)
    links = detection_links(m.pairs, m.gt_regular, taken, len(m.dt.group))
    det_cols, kinds, target = _det_columns(m, links, bg_iou)
    # a missed gt that a Cls or Loc error points at is explained by that error (TIDE)
    explained = np.zeros(len(m.gt.group), bool)
    explained[target[((kinds == "Cls") | (kinds == "Loc")) & (target >= 0)]] = True
    frames = [pd.DataFrame(det_cols), pd.DataFrame(_miss_columns(m, taken, explained))]
    table = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    table["area_range"] = area_labels(table["area"].to_numpy(dtype=np.float64))
    order = np.argsort(np.searchsorted(m.data.img_ids, table["image_id"].to_numpy()),
                       kind="stable")
    table = table.iloc[order].reset_index(drop=True)
    return table[_column_order(m.thrs)]


def _column_order(thrs: np.ndarray) -> list[str]:
    return (["image_id", "category_id", "class", "kind", "score", "x1", "y1", "x2", "y2",
             "area", "area_range", "det_id", "gt_id", "iou"]
            + [tp_column(t) for t in thrs] + ["ignored"] + [ignored_column(t) for t in thrs]
            + ["error", "error_gt_id"])


def match_detections(gt: str | os.PathLike | dict | COCO, dt: Any,
                     iou_thrs: Sequence[float] | float | None = None,
                     img_ids: Sequence[int] | None = None, cat_ids: Sequence[int] | None = None,
                     max_dets: int = 100, area_rng: str | Sequence[float] = "all",
                     class_names: Sequence[str] | None = None,
                     bg_iou: float = 0.1) -> pd.DataFrame:
    """One row per evaluated detection and per missed ground truth, matched as pycocotools
    matches them (same budget, greedy, crowd regions and area range).

    Args:
        gt: a COCO json path, its content (a dict) or a pycocotools ``COCO``.
        dt: a results json path, COCO result rows (``bbox`` xywh), or ``DetResult`` (boxes
            ``(N, 4)`` xyxy in original pixels; label ``k`` is category ``cat_ids[k]``).
        iou_thrs: IoU thresholds (sorted; default 0.50:0.05:0.95). The first one decides
            ``kind``, ``gt_id``, ``ignored`` and ``error`` (TIDE's foreground IoU).
        img_ids, cat_ids, class_names: as ``coco_evaluate``.
        max_dets: detections kept per image and class (the highest-scoring, as pycocotools).
        area_rng: ``'all'``, ``'small'``, ``'medium'``, ``'large'`` or ``(low, high)``.
        bg_iou: TIDE's background IoU.

    Returns:
        A DataFrame, rows by image (detections by class and score, then misses). Columns:
        ``image_id``, ``category_id``, ``class``, ``kind`` (``'det'`` / ``'miss'``),
        ``score`` (NaN for misses), ``x1 y1 x2 y2`` (xyxy pixels of the detection or the missed
        gt), ``area`` (box area; a gt's annotated area), ``area_range``, ``det_id`` (the
        result's 1-based position, as ``loadRes`` numbers it; 0 for misses), ``gt_id`` (the
        matched gt, else the regular gt of the image with the best IoU, 0 when none overlaps;
        a miss's own id), ``iou`` (with ``gt_id``; crowd: over the detection's area; for a miss
        the best IoU any detection of the image has with it), ``tp@t`` (matched, not ignored,
        at each threshold), ``ignored`` and ``ignored@t`` (matched a crowd / out-of-range gt,
        or unmatched and out of range: not counted), ``error`` (TIDE type of each false
        positive and missed gt, None otherwise; a missed gt that a Cls or Loc error points at
        has none: that error explains it) and ``error_gt_id`` (the gt an error is about: Cls
        and Both the other-class gt, Loc the same-class gt, Dupe the gt already taken).
        Detections beyond the budget are left out (as pycocotools does); ``table.attrs`` holds
        ``iou_thrs``, ``img_ids``, ``cat_ids``, ``class_names``, ``bg_iou``, ``max_dets``,
        ``area_rng`` and ``over_budget`` (how many detections were left out).
    """
    data = load_eval_data(gt, dt, img_ids, cat_ids, class_names)
    thrs = default_iou_thrs(iou_thrs)
    m = run_matching(data, thrs, max_dets, area_bounds(area_rng))
    table = match_table(m, float(bg_iou))
    evaluated = np.isin(data.dets.image_id, data.img_ids) & np.isin(data.dets.category_id,
                                                                     data.cat_ids)
    table.attrs.update(iou_thrs=FrozenTuple(float(t) for t in thrs),
                       img_ids=FrozenTuple(int(i) for i in data.img_ids),
                       cat_ids=FrozenTuple(int(c) for c in data.cat_ids),
                       class_names=FrozenTuple(data.names),
                       bg_iou=float(bg_iou), max_dets=int(max_dets), area_rng=str(area_rng),
                       over_budget=int(evaluated.sum() - len(m.dt.group)))
    return table
