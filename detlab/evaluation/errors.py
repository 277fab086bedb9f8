"""Where the AP goes: TIDE's error breakdown and COCO's error analysis.

- :func:`tide_errors` / :func:`tide_errors_per_class`: the six error types of TIDE (Bolya et
  al., "TIDE: A General Toolbox for Identifying Object Detection Errors", ECCV 2020) counted
  from the ``error`` column of a match table, and the AP@50 each would add if fixed alone by
  TIDE's oracle, plus the FalsePos / FalseNeg oracles.
- :func:`coco_error_analysis`: the precision-recall breakdown of the COCO ``analyze()`` tool as
  MMDetection 2.x's ``tools/analysis_tools/coco_error_analysis.py`` computes it (C75, C50,
  Loc, Sim, Oth, BG, FN), per class and area range, on detlab's vectorized COCO engine.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from detlab.evaluation.cocoeval import (
    REC_THRS,
    Instances,
    accumulate,
    detections,
    ground_truth,
    match,
)
from detlab.evaluation.curves import (
    gt_counts,
    mean_of_precision,
    segment_precision,
    table_classes,
)
from detlab.evaluation.matching import (
    ERROR_TYPES,
    EvalData,
    load_eval_data,
    match_detections,
    table_thresholds,
    tp_column,
)

if TYPE_CHECKING:
    import pandas as pd
    from pycocotools.coco import COCO

SPECIAL_TYPES = ("FalsePos", "FalseNeg")
ANALYSIS_TYPES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
ANALYSIS_AREAS = ("all", "small", "medium", "large")


# --------------------------------------------------------------------------------------------
# TIDE
# --------------------------------------------------------------------------------------------


def _tide_table(data: Any, dt: Any, fg_iou: float, bg_iou: float,
                match_kwargs: dict[str, Any]) -> pd.DataFrame:
    """The match table to analyse: ``data`` itself, or matched from ``data`` (gt) and ``dt``."""
    import pandas as pd

    if not isinstance(data, pd.DataFrame):
        if dt is None:
            raise TypeError("pass a match table, or the ground truth and the detections")
        return match_detections(data, dt, iou_thrs=[fg_iou], bg_iou=bg_iou, **match_kwargs)
    first = min(table_thresholds(data))
    if abs(first - fg_iou) > 1e-9 or abs(data.attrs.get("bg_iou", bg_iou) - bg_iou) > 1e-9:
        raise ValueError(f"the table's errors were typed at foreground IoU {first} and "
                         f"background IoU {data.attrs.get('bg_iou')}, not {fg_iou} / {bg_iou}: "
                         f"match again with iou_thrs starting at {fg_iou} and bg_iou={bg_iou}")
    return data


class _TideData:
    """The counted detections and ground truths of a match table, as arrays."""

    def __init__(self, table: pd.DataFrame) -> None:
        self.cat_ids, self.names = table_classes(table)
        first = tp_column(min(table_thresholds(table)))
        dets = table[(table["kind"] == "det") & ~table["ignored"].astype(bool)]
        self.pos = np.searchsorted(self.cat_ids, dets["category_id"].to_numpy(np.int64))
        self.score = dets["score"].to_numpy(np.float64)
        self.image_id = dets["image_id"].to_numpy(np.int64)
        self.det_id = dets["det_id"].to_numpy(np.int64)
        self.tp = dets[first].to_numpy(bool)
        self.error = dets["error"].to_numpy(object)
        self.npig = gt_counts(table, "category_id").reindex(self.cat_ids, fill_value=0)
        self.npig = self.npig.to_numpy(np.int64)
        misses = table[table["kind"] == "miss"]
        miss_pos = np.searchsorted(self.cat_ids, misses["category_id"].to_numpy(np.int64))
        is_miss = misses["error"].to_numpy(object) == "Miss"
        self.n_miss = np.bincount(miss_pos[is_miss], minlength=len(self.cat_ids))
        self.fix_target = _fix_targets(dets, misses, self.cat_ids)

    def precision(self, keep: np.ndarray, pos: np.ndarray, tp: np.ndarray,
                  npig: np.ndarray) -> np.ndarray:
        """(K, R) precision of the kept detections; 0 for a class left without ground
        truth."""
        precision = segment_precision(pos[keep], self.score[keep], self.image_id[keep],
                                      self.det_id[keep], tp[keep], npig)
        return np.nan_to_num(precision, nan=0.0)


def _fix_targets(dets: pd.DataFrame, misses: pd.DataFrame, cat_ids: np.ndarray) -> np.ndarray:
    """(D,) for each Cls / Loc error that TIDE's oracle turns into a true positive: the class
    position it becomes a true positive of; -1 for every other detection.

    The oracle fixes an error only when the gt it points at is still unmatched (it then is a
    missed gt), and only the highest-scoring of the Cls / Loc errors pointing at that gt."""
    import pandas as pd

    fixable = dets["error"].isin(["Cls", "Loc"]).to_numpy()
    cand = pd.DataFrame({"row": np.arange(len(dets)), "image_id": dets["image_id"].to_numpy(),
                         "gt_id": dets["error_gt_id"].to_numpy(),
                         "score": dets["score"].to_numpy(),
                         "det_id": dets["det_id"].to_numpy()})[fixable]
    targets = misses[["image_id", "gt_id", "category_id"]]
    cand = cand.merge(targets, on=["image_id", "gt_id"], how="inner")  # untaken gts only
    cand = cand.sort_values(["image_id", "gt_id", "score", "det_id"],
                            ascending=[True, True, False, True], kind="mergesort")
    best = cand.drop_duplicates(["image_id", "gt_id"])
    out = np.full(len(dets), -1, dtype=np.int64)
    out[best["row"].to_numpy()] = np.searchsorted(cat_ids, best["category_id"].to_numpy())
    return out


def _oracle(data: _TideData, kind: str) -> np.ndarray:
    """(K, R) class precisions after TIDE's oracle fixes the errors of ``kind`` only."""
    keep, pos, tp, npig = np.ones(len(data.pos), bool), data.pos, data.tp, data.npig
    if kind in ("Cls", "Loc"):
        mine = data.error == kind
        fixed = mine & (data.fix_target >= 0)
        keep = ~mine | fixed
        tp = tp | fixed
        if kind == "Cls":  # relabelled to the class of the gt it overlaps
            pos = np.where(fixed, data.fix_target, pos)
    elif kind in ("Both", "Dupe", "Bkg"):
        keep = data.error != kind
    elif kind == "Miss":
        npig = npig - data.n_miss
    elif kind == "FalsePos":
        keep = tp
    elif kind == "FalseNeg":
        npig = np.bincount(pos[tp], minlength=len(npig))
    return data.precision(keep, pos, tp, npig)


def _tide_aps(table: pd.DataFrame) -> tuple[_TideData, np.ndarray, dict[str, np.ndarray]]:
    """The (K, R) class precisions as they are, and after each oracle."""
    data = _TideData(table)
    base = data.precision(np.ones(len(data.pos), bool), data.pos, data.tp, data.npig)
    return data, base, {kind: _oracle(data, kind) for kind in ERROR_TYPES + SPECIAL_TYPES}


def tide_errors(data: Any, dt: Any = None, fg_iou: float = 0.5, bg_iou: float = 0.1,
                **match_kwargs: Any) -> dict[str, Any]:
    """TIDE's error breakdown: how many errors of each type, and the AP@``fg_iou`` each type
    costs (``dAP``: the AP gained when TIDE's oracle fixes that type alone).

    Args:
        data: a match table (:func:`match_detections` whose first IoU threshold is
            ``fg_iou``), or the ground truth (then ``dt`` holds the detections).
        dt: the detections, when ``data`` is the ground truth.
        fg_iou, bg_iou: TIDE's foreground and background IoU thresholds.
        **match_kwargs: more arguments of :func:`match_detections` (``img_ids``, ``cat_ids``,
            ``max_dets``, ``class_names``) when matching here.

    The oracles: Cls and Loc turn the detection into a true positive of the overlapped gt's
    class (only when that gt is unmatched, and only the highest-scoring error pointing at it;
    the others are dropped); Both, Dupe and Bkg drop their detections; Miss removes the missed
    gts; FalsePos drops every false positive; FalseNeg removes every unmatched gt. AP is COCO's
    101-point AP at ``fg_iou``, averaged over the classes with ground truth (pycocotools' AP50
    for ``fg_iou=0.5``); a class an oracle leaves without ground truth counts 0. As TIDE does,
    the six main dAPs are floored at 0, the two special ones are not.

    Returns:
        ``ap``, ``dap`` (type -> dAP), ``special`` (``FalsePos`` / ``FalseNeg`` -> dAP),
        ``counts`` (type -> number of errors), ``summary`` (a DataFrame: ``type``, ``count``,
        ``dAP``), ``fg_iou``, ``bg_iou``. APs are fractions (TIDE prints them times 100).
    """
    import pandas as pd

    table = _tide_table(data, dt, fg_iou, bg_iou, match_kwargs)
    tide, base, fixed = _tide_aps(table)
    classes = tide.npig > 0
    ap = mean_of_precision(base[classes])
    gain = {k: mean_of_precision(v[classes]) - ap for k, v in fixed.items()}
    dap = {k: max(gain[k], 0.0) for k in ERROR_TYPES}
    counts = table["error"].value_counts()
    counts = {k: int(counts.get(k, 0)) for k in ERROR_TYPES}
    summary = pd.DataFrame({"type": list(ERROR_TYPES) + list(SPECIAL_TYPES),
                            "count": [counts[k] for k in ERROR_TYPES] + [np.nan, np.nan],
                            "dAP": [dap[k] for k in ERROR_TYPES]
                            + [gain[k] for k in SPECIAL_TYPES]})
    return {"ap": ap, "dap": dap, "special": {k: gain[k] for k in SPECIAL_TYPES},
            "counts": counts, "summary": summary, "fg_iou": fg_iou, "bg_iou": bg_iou}


def tide_errors_per_class(data: Any, dt: Any = None, fg_iou: float = 0.5, bg_iou: float = 0.1,
                          **match_kwargs: Any) -> pd.DataFrame:
    """:func:`tide_errors` class by class: one row per class with ``class``, ``category_id``,
    ``n_gt``, ``AP`` (NaN without ground truth), the number of errors of each type
    (``n_Cls`` ...) and the change of the class's AP under each oracle (``Cls`` ... ``Miss``,
    ``FalsePos``, ``FalseNeg``; not floored). A Cls fix moves a detection to another class,
    so it changes two classes' APs."""
    import pandas as pd

    table = _tide_table(data, dt, fg_iou, bg_iou, match_kwargs)
    tide, base, fixed = _tide_aps(table)
    has_gt = tide.npig > 0
    out = pd.DataFrame({"class": tide.names, "category_id": tide.cat_ids, "n_gt": tide.npig,
                        "AP": np.where(has_gt, base.mean(axis=1), np.nan)})
    counts = pd.crosstab(table["category_id"], table["error"]) if table["error"].notna().any() \
        else pd.DataFrame()
    counts = counts.reindex(index=tide.cat_ids, columns=list(ERROR_TYPES), fill_value=0)
    for kind in ERROR_TYPES:
        out[f"n_{kind}"] = counts[kind].to_numpy()
    for kind, aps in fixed.items():
        # a class without ground truth has no AP to change, even when a Cls fix adds to it
        out[kind] = np.where(has_gt, aps.mean(axis=1) - base.mean(axis=1), np.nan)
    return out


# --------------------------------------------------------------------------------------------
# COCO error analysis
# --------------------------------------------------------------------------------------------


def _file_positions(coco_gt: COCO, ids: np.ndarray) -> np.ndarray:
    """Position of each annotation id in the annotation file (pycocotools' order)."""
    all_ids = np.array([a["id"] for a in coco_gt.dataset.get("annotations", [])], np.int64)
    order = np.argsort(all_ids, kind="stable")
    found = np.searchsorted(all_ids[order], ids)
    return order[np.minimum(found, max(len(all_ids) - 1, 0))] if len(all_ids) else found


def _supercategory_pairs(coco_gt: COCO, cat_ids: np.ndarray) -> np.ndarray:
    """(K, K) bool: two different classes of the same (non-empty) supercategory."""
    cats = {c["id"]: c for c in coco_gt.dataset.get("categories", [])}
    sup = np.array([cats.get(int(c), {}).get("supercategory") or "" for c in cat_ids], object)
    same = (sup[:, None] == sup[None, :]) & (sup[:, None] != "")
    return same & ~np.eye(len(cat_ids), dtype=bool)


def _confusions_as_crowd(gt: Instances, dt: Instances, file_pos: np.ndarray, num_cats: int,
                         num_images: int, allowed: np.ndarray) -> Instances:
    """The ground truth plus, in each (image, class k) group with detections, a crowd copy of
    every gt of the image of class ``c`` with ``allowed[k, c]``: COCO analyze()'s way of
    not counting those confusions (the copies are ignored regions of class k)."""
    groups = np.unique(dt.group)
    gt_image = gt.group // num_cats
    counts = np.bincount(gt_image, minlength=num_images)
    starts = np.cumsum(counts) - counts
    per_group = counts[groups // num_cats]
    src = np.repeat(starts[groups // num_cats], per_group) + np.arange(per_group.sum()) \
        - np.repeat(np.cumsum(per_group) - per_group, per_group)
    into = np.repeat(groups, per_group)
    keep = allowed[into % num_cats, gt.group[src] % num_cats]
    src, into = src[keep], into[keep]
    group = np.r_[gt.group, into]
    order = np.lexsort((np.r_[file_pos, file_pos[src]], group))  # file order in each group
    pick = np.r_[np.arange(len(gt.group)), src][order]
    crowd = np.r_[gt.crowd, np.ones(len(src), bool)][order]
    return Instances(group[order], gt.boxes[pick], gt.area[pick], crowd, gt.ids[pick],
                     np.zeros(len(pick)))


def _area_table(areas: Sequence[float]) -> np.ndarray:
    """(4, 2) area ranges all / small / medium / large from MMDetection's three bounds."""
    a0, a1, a2 = (float(a) for a in areas)
    return np.array([[0.0, a2], [0.0, a0], [a0, a1], [a1, a2]])


def _precision_at(data: EvalData, gt: Instances, dt: Instances, rank: np.ndarray,
                  thrs: list[float], ranges: np.ndarray, max_dets: int) -> np.ndarray:
    """``(T, R, K, A)`` pycocotools' precision of ``dt`` against ``gt``."""
    gt_ignore = gt.crowd[None] | (gt.area[None] < ranges[:, :1]) | (gt.area[None] > ranges[:, 1:])
    det_out = (dt.area[None] < ranges[:, :1]) | (dt.area[None] > ranges[:, 1:])
    num_groups = len(data.img_ids) * len(data.cat_ids)
    found = match(dt, gt, num_groups, np.asarray(thrs, np.float64), gt_ignore)
    acc = accumulate(dt, rank, gt, found, gt_ignore, det_out, len(data.cat_ids), [max_dets])
    return acc.precision[..., 0]


def _analysis_curves(data: EvalData, areas: Sequence[float], max_dets: int) -> np.ndarray:
    """``(7, R, K, A)`` precision of C75, C50, Loc, Sim, Oth, BG, FN (NaN: no ground truth)."""
    K, num_images = len(data.cat_ids), len(data.img_ids)
    ranges = _area_table(areas)
    gt = ground_truth(data.coco_gt, data.img_ids, data.cat_ids, True, False)
    dt, rank = detections(data.dets, data.img_ids, data.cat_ids, True, int(max_dets))
    main = _precision_at(data, gt, dt, rank, [0.75, 0.5, 0.1], ranges, max_dets)
    file_pos = _file_positions(data.coco_gt, gt.ids)
    confusions = [_supercategory_pairs(data.coco_gt, data.cat_ids), ~np.eye(K, dtype=bool)]
    freed = [_precision_at(data, _confusions_as_crowd(gt, dt, file_pos, K, num_images, allowed),
                           dt, rank, [0.1], ranges, max_dets)[0] for allowed in confusions]
    ps = np.concatenate([main, np.stack(freed), np.zeros((2, *main.shape[1:]))])
    valid = main[0] > -1                               # (R, K, A): the class has ground truth
    ps[5] = ps[4] > 0                                  # BG: every background FP removed
    ps[6] = 1.0                                        # FN: every gt found
    return np.where(valid[None], ps, np.nan)


def coco_error_analysis(gt: str | os.PathLike | dict | COCO, dt: Any,
                        img_ids: Sequence[int] | None = None,
                        cat_ids: Sequence[int] | None = None,
                        class_names: Sequence[str] | None = None,
                        areas: Sequence[float] = (32**2, 96**2, 1e10),
                        max_dets: int = 100) -> dict[str, Any]:
    """COCO's error analysis (``analyze()``), computed as MMDetection 2.x's
    ``coco_error_analysis.py`` computes it, bounding boxes only.

    Each type is a precision-recall curve (101 recall points), each removing one more kind of
    error: ``C75`` (PR at IoU .75), ``C50`` (.5), ``Loc`` (.1: localization errors ignored),
    ``Sim`` (also confusions with classes of the same supercategory ignored), ``Oth`` (also
    every class confusion ignored), ``BG`` (also every background false positive removed:
    precision 1 wherever ``Oth`` has precision) and ``FN`` (also every false negative removed:
    precision 1). A confusion is ignored as COCO analyze() does: the other class's gts become
    crowd regions of the detection's class. Confusions count among the evaluated classes only.

    Args:
        gt, dt, img_ids, cat_ids, class_names: as :func:`match_detections`.
        areas: the upper bounds of small and medium objects and of all objects (MMDetection's
            ``--areas``).
        max_dets: detections per image and class.

    Returns:
        ``precision`` ``(7, 101, K, 4)`` (types, recall, class, area; NaN where the class has
        no ground truth in that area), ``ap`` ``(7, K, 4)``, ``curves`` ``(7, 101, 4)`` and
        ``overall`` ``(7, 4)`` (means over the classes with ground truth), ``recall`` the 101
        recall points, ``types``, ``areas``, ``classes``, ``cat_ids`` and ``summary``: a
        DataFrame with one row per (class or ``'all'``, area) and one AP column per type.
    """
    data = load_eval_data(gt, dt, img_ids, cat_ids, class_names)
    ps = _analysis_curves(data, areas, max_dets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # classes without ground truth: NaN
        ap = ps.mean(axis=1)                        # (7, K, A)
        curves = np.nanmean(ps, axis=2)             # (7, R, A)
        overall = np.nanmean(ap, axis=1)            # (7, A)
    return {"precision": ps, "ap": ap, "curves": curves, "overall": overall, "recall": REC_THRS,
            "types": ANALYSIS_TYPES, "areas": ANALYSIS_AREAS, "classes": list(data.names),
            "cat_ids": data.cat_ids, "summary": _analysis_summary(ap, overall, data.names)}


def _analysis_summary(ap: np.ndarray, overall: np.ndarray, names: list[str]) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for a, area in enumerate(ANALYSIS_AREAS):
        rows.append({"class": "all", "area": area,
                     **{t: overall[i, a] for i, t in enumerate(ANALYSIS_TYPES)}})
        for k, name in enumerate(names):
            rows.append({"class": name, "area": area,
                         **{t: ap[i, k, a] for i, t in enumerate(ANALYSIS_TYPES)}})
    return pd.DataFrame(rows, columns=["class", "area", *ANALYSIS_TYPES])
