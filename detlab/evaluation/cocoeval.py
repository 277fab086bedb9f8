"""A vectorized COCO evaluation engine that gives pycocotools' numbers, bit for bit.

It follows ``pycocotools.cocoeval.COCOeval`` step by step -- the same detection budget per image
and class, the same IoU arithmetic (crowd regions by intersection over the detection's area),
the same greedy matching (detections by score, each taking the best free ground truth at or above
the threshold, regular ground truth before ignored ones, the last one among equal IoUs), the same
accumulation and summary -- but over whole arrays instead of Python loops per detection:

- IoUs are computed for all same-image, same-class pairs at once (``pycocotools.mask.iou`` per
  image and class for masks);
- the greedy matching runs one detection rank at a time over every image, class, area range and
  threshold together, and only over the detections and ground truths that have a candidate pair;
- precision and recall are accumulated per class, area range and budget with cumulative sums.

Ties (equal scores, equal IoUs) are broken in pycocotools' order, so the arrays -- and therefore
the 12 stats -- are identical, not just close.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

AREA_RANGES = np.array([[0.0, 1e10], [0.0, 32.0**2], [32.0**2, 96.0**2], [96.0**2, 1e10]])
AREA_LABELS = ("all", "small", "medium", "large")
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


@dataclass
class Instances:
    """Ground truths or detections of the evaluated images, as flat arrays.

    ``group`` numbers the (image, class) pair (image-major), ``order`` is pycocotools' order
    inside a group (ground truth: file order; detections: by score, then result order).
    """

    group: np.ndarray    # (N,) int64
    boxes: np.ndarray    # (N, 4) float64 xywh
    area: np.ndarray     # (N,) float64
    crowd: np.ndarray    # (N,) bool
    ids: np.ndarray      # (N,) int64 annotation ids
    scores: np.ndarray   # (N,) float64 (ground truth: zeros)
    rles: list | None = None  # masks (segm only)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


@dataclass
class ResultColumns:
    """Result rows as columns: ``image_id``, ``category_id``, ``score`` ``(N,)``, ``bbox``
    ``(N, 4)`` xywh (boxes) or ``segmentation`` (RLE dicts, masks)."""

    image_id: np.ndarray
    category_id: np.ndarray
    score: np.ndarray
    bbox: np.ndarray | None = None
    segmentation: list | None = None

    def __len__(self) -> int:
        return len(self.image_id)

    @classmethod
    def from_rows(cls, rows: list[dict], segm: bool) -> ResultColumns:
        """Columns of COCO result rows; raises KeyError/ValueError/TypeError on a bad row (the
        caller finds and names it)."""
        image_id = np.array([r["image_id"] for r in rows], dtype=np.int64)
        category_id = np.array([r["category_id"] for r in rows], dtype=np.int64)
        # a mask scored apart from its box (Mask Scoring R-CNN) ranks by its mask_score
        score = np.array([r.get("mask_score", r["score"]) if segm else r["score"]
                          for r in rows], dtype=np.float64)
        if segm:
            masks = [r["segmentation"] for r in rows]
            if not all(isinstance(m, dict) for m in masks):
                raise TypeError("segm results must be RLE dicts")
            return cls(image_id, category_id, score, None, masks)
        bbox = np.array([r["bbox"] for r in rows], dtype=np.float64).reshape(len(rows), 4)
        return cls(image_id, category_id, score, bbox)

    def to_rows(self) -> list[dict]:
        """Fresh COCO result rows (pycocotools writes into the rows it is given)."""
        rows = [dict(image_id=int(i), category_id=int(c), score=float(s))
                for i, c, s in zip(self.image_id, self.category_id, self.score, strict=True)]
        if self.segmentation is not None:
            for row, mask in zip(rows, self.segmentation, strict=True):
                row["segmentation"] = dict(mask)
        else:
            for row, box in zip(rows, self.bbox.tolist(), strict=True):
                row["bbox"] = box
        return rows


def _positions(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of each value in ``keys`` (sorted, unique); -1 where absent."""
    pos = np.searchsorted(keys, values)
    pos = np.clip(pos, 0, max(len(keys) - 1, 0))
    found = keys[pos] == values if len(keys) else np.zeros(len(values), bool)
    return np.where(found, pos, -1)


def _group_of(img: np.ndarray, cat: np.ndarray, img_ids: np.ndarray, cat_order: np.ndarray,
              use_cats: bool) -> np.ndarray:
    """(image position) x K + (class position), or -1 outside the evaluated images/classes."""
    img_pos = _positions(img, img_ids)
    cat_pos = _positions(cat, np.sort(cat_order)) if use_cats else _cat_rank(cat, cat_order)
    k = len(cat_order) if use_cats else 1
    keep = (img_pos >= 0) & (cat_pos >= 0)
    return np.where(keep, img_pos * k + (cat_pos if use_cats else 0), -1)


def _cat_rank(cat: np.ndarray, cat_order: np.ndarray) -> np.ndarray:
    """Position of each class in the order given (pooled evaluation keeps that order)."""
    rank = {int(c): i for i, c in enumerate(cat_order)}
    return np.array([rank.get(int(c), -1) for c in cat], dtype=np.int64)


def ground_truth(coco_gt: Any, img_ids: np.ndarray, cat_ids: np.ndarray, use_cats: bool,
                 with_masks: bool) -> Instances:
    """The evaluated annotations of a pycocotools ``COCO``, in pycocotools' order."""
    anns = [a for a in coco_gt.dataset.get("annotations", [])]
    img = np.array([a["image_id"] for a in anns], dtype=np.int64)
    cat = np.array([a["category_id"] for a in anns], dtype=np.int64)
    group = _group_of(img, cat, img_ids, cat_ids, use_cats)
    cat_rank = _cat_rank(cat, cat_ids) if not use_cats else np.zeros(len(anns), np.int64)
    # pycocotools walks images in order, each image's annotations in file order (pooled: by
    # class in the order given, then file order)
    keep = np.flatnonzero(group >= 0)
    keep = keep[np.lexsort((keep, cat_rank[keep], group[keep]))]
    chosen = [anns[i] for i in keep]
    for a in chosen:
        if "area" not in a:
            raise ValueError(f"ground-truth annotation {a.get('id')} of image {a['image_id']} has "
                             f"no 'area', which COCO evaluation needs (area ranges)")
    rles = [coco_gt.annToRLE(a) for a in chosen] if with_masks else None
    return Instances(
        group=group[keep],
        boxes=np.array([a["bbox"] for a in chosen], dtype=np.float64).reshape(-1, 4),
        area=np.array([a["area"] for a in chosen], dtype=np.float64),
        crowd=np.array([bool(a.get("iscrowd", 0)) for a in chosen], dtype=bool),
        ids=np.array([a["id"] for a in chosen], dtype=np.int64),
        scores=np.zeros(len(chosen)), rles=rles)


def _det_areas_and_boxes(dets: ResultColumns) -> tuple[np.ndarray, np.ndarray]:
    if dets.segmentation is None:
        return dets.bbox[:, 2] * dets.bbox[:, 3], dets.bbox
    from pycocotools import mask as mask_utils

    rles = dets.segmentation
    # pycocotools' area() overflows on lists longer than 255 under NumPy 2: go in chunks
    chunks = [rles[i:i + 255] for i in range(0, len(rles), 255)]
    area = np.concatenate([np.asarray(mask_utils.area(c), dtype=np.float64) for c in chunks]
                          or [np.zeros(0)])
    boxes = np.concatenate([np.asarray(mask_utils.toBbox(c), dtype=np.float64).reshape(-1, 4)
                            for c in chunks] or [np.zeros((0, 4))])
    return area, boxes


def detections(dets: ResultColumns, img_ids: np.ndarray, cat_ids: np.ndarray, use_cats: bool,
               max_det: int) -> tuple[Instances, np.ndarray]:
    """The evaluated detections, each (image, class) group sorted by score (stable) and cut to
    ``max_det``; also each one's rank in its group."""
    img, cat, scores = dets.image_id, dets.category_id, dets.score
    area, boxes = _det_areas_and_boxes(dets)
    rles = dets.segmentation
    segm = rles is not None
    group = _group_of(img, cat, img_ids, cat_ids, use_cats)
    cat_rank = _cat_rank(cat, cat_ids) if not use_cats else np.zeros(len(dets), np.int64)
    ids = np.arange(1, len(dets) + 1)  # loadRes numbers results from 1 in their order
    keep = np.flatnonzero(group >= 0)
    # pycocotools: group list in (class order when pooled) then result order, then a stable
    # sort by descending score
    keep = keep[np.lexsort((keep, cat_rank[keep], group[keep]))]
    keep = keep[np.lexsort((np.arange(len(keep)), -scores[keep], group[keep]))]
    rank = _rank_in_group(group[keep])
    keep, rank = keep[rank < max_det], rank[rank < max_det]
    inst = Instances(group[keep], boxes[keep], area[keep], np.zeros(len(keep), bool), ids[keep],
                     scores[keep], [rles[i] for i in keep] if segm else None)
    return inst, rank


def _rank_in_group(group: np.ndarray) -> np.ndarray:
    """0, 1, 2 ... within each run of equal (sorted) group numbers."""
    if not len(group):
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    lengths = np.diff(np.r_[starts, len(group)])
    return np.arange(len(group)) - np.repeat(starts, lengths)


# --------------------------------------------------------------------------------------------
# IoU of every same-group pair
# --------------------------------------------------------------------------------------------


def _spans(group: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and count of each group number in a sorted ``group`` array."""
    counts = np.bincount(group, minlength=num_groups)
    return np.cumsum(counts) - counts, counts


def same_group_pairs(dt: Instances, gt: Instances, num_groups: int) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Every (detection, ground truth) pair of the same group, detections in order."""
    gt_start, gt_count = _spans(gt.group, num_groups)
    per_det = gt_count[dt.group]
    pair_dt = np.repeat(np.arange(len(dt.group)), per_det)
    run_start = np.repeat(np.cumsum(per_det) - per_det, per_det)
    pair_gt = np.repeat(gt_start[dt.group], per_det) + np.arange(len(pair_dt)) - run_start
    return pair_dt, pair_gt


def box_iou_pairs(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of xywh box pairs with pycocotools' arithmetic (crowd: intersection / det area)."""
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    inter = w * h
    det_area = d[:, 2] * d[:, 3]
    union = np.where(crowd, det_area, det_area + g[:, 2] * g[:, 3] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def mask_iou_pairs(dt: Instances, gt: Instances, pair_dt: np.ndarray,
                   pair_gt: np.ndarray) -> np.ndarray:
    """IoU of mask pairs, one ``pycocotools.mask.iou`` call per group that has pairs."""
    from pycocotools import mask as mask_utils

    iou = np.zeros(len(pair_dt))
    if not len(pair_dt):
        return iou
    starts = np.r_[0, np.flatnonzero(np.diff(dt.group[pair_dt])) + 1, len(pair_dt)]
    for lo, hi in zip(starts[:-1], starts[1:], strict=True):
        dets = np.unique(pair_dt[lo:hi])
        gts = np.unique(pair_gt[lo:hi])
        block = mask_utils.iou([dt.rles[i] for i in dets], [gt.rles[j] for j in gts],
                               gt.crowd[gts].astype(np.uint8).tolist())
        iou[lo:hi] = np.asarray(block).reshape(len(dets), len(gts)).ravel()
    return iou


# --------------------------------------------------------------------------------------------
# greedy matching, all groups at once
# --------------------------------------------------------------------------------------------


def _pad_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


@dataclass
class Matches:
    """Per area range ``a``, threshold ``t`` and detection ``d``: the matched ground truth's id
    (0: none, as pycocotools' ``dtMatches``) and whether that ground truth is ignored."""

    gt_id: np.ndarray    # (A, T, D) int64
    ignored: np.ndarray  # (A, T, D) bool


def _candidates(dt: Instances, gt: Instances, num_groups: int, thr_min: float,
                segm: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pair_dt, pair_gt = same_group_pairs(dt, gt, num_groups)
    if segm:
        iou = mask_iou_pairs(dt, gt, pair_dt, pair_gt)
    else:
        iou = box_iou_pairs(dt.boxes[pair_dt], gt.boxes[pair_gt], gt.crowd[pair_gt])
    keep = iou >= thr_min
    return pair_dt[keep], pair_gt[keep], iou[keep]


def match(dt: Instances, gt: Instances, num_groups: int, iou_thrs: np.ndarray,
          gt_ignore: np.ndarray) -> Matches:
    """pycocotools' greedy matching for every group, area range (``gt_ignore`` (A, G)) and
    threshold, vectorized over all of them, one detection rank at a time."""
    A, T, D = len(gt_ignore), len(iou_thrs), len(dt.group)
    out = Matches(np.zeros((A, T, D), np.int64), np.zeros((A, T, D), bool))
    thr = np.minimum(iou_thrs, 1 - 1e-10)
    pair_dt, pair_gt, iou = _candidates(dt, gt, num_groups, float(thr.min()),
                                        dt.rles is not None)
    if not len(pair_dt):
        return out
    # compact each group to its candidate detections and ground truths, keeping their order
    dets = np.unique(pair_dt)
    gts = np.unique(pair_gt)
    det_slot = _rank_in_group(dt.group[dets])
    gt_slot = _rank_in_group(gt.group[gts])
    groups, group_of_det = np.unique(dt.group[dets], return_inverse=True)
    n_det = np.bincount(group_of_det, minlength=len(groups))
    n_gt = np.bincount(np.searchsorted(groups, gt.group[gts]), minlength=len(groups))
    slot_d = np.zeros(len(dt.group), np.int64)
    slot_d[dets] = det_slot
    slot_g = np.zeros(len(gt.group), np.int64)
    slot_g[gts] = gt_slot
    buckets = {}
    for gi, (nd, ng) in enumerate(zip(n_det, n_gt, strict=True)):
        buckets.setdefault((_pad_pow2(nd), _pad_pow2(ng)), []).append(gi)
    pair_group = np.searchsorted(groups, dt.group[pair_dt])
    for (dmax, gmax), members in buckets.items():
        _match_bucket(np.array(members), dmax, gmax, groups, pair_group, pair_dt, pair_gt, iou,
                      slot_d, slot_g, gt, gt_ignore, thr, out)
    return out


def _match_bucket(members: np.ndarray, dmax: int, gmax: int, groups: np.ndarray,
                  pair_group: np.ndarray, pair_dt: np.ndarray, pair_gt: np.ndarray,
                  iou: np.ndarray, slot_d: np.ndarray, slot_g: np.ndarray, gt: Instances,
                  gt_ignore: np.ndarray, thr: np.ndarray, out: Matches) -> None:
    """Dense greedy matching of the groups ``members`` (at most ``dmax`` candidate detections
    and ``gmax`` candidate ground truths each)."""
    N, A, T = len(members), len(gt_ignore), len(thr)
    row = np.full(len(groups), -1)
    row[members] = np.arange(N)
    sel = row[pair_group] >= 0
    r, ds, gs = row[pair_group[sel]], slot_d[pair_dt[sel]], slot_g[pair_gt[sel]]
    ious = np.full((N, dmax, gmax), -1.0)       # -1: not a candidate pair
    ious[r, ds, gs] = iou[sel]
    det_index = np.full((N, dmax), -1)
    det_index[r, ds] = pair_dt[sel]
    gt_index = np.full((N, gmax), -1)
    gt_index[r, gs] = pair_gt[sel]
    valid_gt = gt_index >= 0
    crowd = np.where(valid_gt, gt.crowd[gt_index], False)                 # (N, G)
    ignore = np.where(valid_gt[None], gt_ignore[:, gt_index], False)      # (A, N, G)
    taken = np.zeros((A, N, T, gmax), bool)
    for d in range(dmax):
        has = det_index[:, d] >= 0
        if not has.any():
            continue
        chosen, m = _choose(ious[:, d, :], taken, crowd, ignore, thr)
        chosen &= has[None, :, None]
        a, n, t = np.nonzero(chosen)
        g = m[a, n, t]
        taken[a, n, t, g] = True
        det = det_index[n, d]
        out.gt_id[a, t, det] = gt.ids[gt_index[n, g]]
        out.ignored[a, t, det] = ignore[a, n, g]


def _choose(iou_d: np.ndarray, taken: np.ndarray, crowd: np.ndarray, ignore: np.ndarray,
            thr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For one detection rank: whether each (area, group, threshold) matches, and the ground
    truth slot: the best IoU among free regular ground truths, else among ignored ones; the
    last slot among equal IoUs (pycocotools' ``>=`` walk)."""
    free = ~(taken & ~crowd[None, :, None, :])                              # (A, N, T, G)
    ok = free & (iou_d[None, :, None, :] >= thr[None, None, :, None])
    regular = ok & ~ignore[:, :, None, :]
    use = np.where(regular.any(-1, keepdims=True), regular, ok & ignore[:, :, None, :])
    score = np.where(use, iou_d[None, :, None, :], -np.inf)
    best = score.max(-1, keepdims=True)
    last = use & (score == best)
    m = last.shape[-1] - 1 - np.argmax(last[..., ::-1], axis=-1)
    return use.any(-1), m


# --------------------------------------------------------------------------------------------
# accumulation and summary
# --------------------------------------------------------------------------------------------


@dataclass
class Accumulated:
    """``COCOeval.eval``'s arrays: precision and scores ``(T, R, K, A, M)``, recall
    ``(T, K, A, M)``; -1 where undefined."""

    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray


def _curve(tps: np.ndarray, fps: np.ndarray, npig: int, scores: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interpolated precision (T, R), recall (T,) and scores (T, R) of one class, area and
    budget from its score-sorted true/false positives (T, n), as pycocotools computes them."""
    tp = np.cumsum(tps, axis=1).astype(np.float64)
    fp = np.cumsum(fps, axis=1).astype(np.float64)
    n = tp.shape[1]
    rc = tp / npig
    pr = tp / (fp + tp + np.spacing(1))
    recall = rc[:, -1] if n else np.zeros(len(tp))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope
    precision = np.zeros((len(tp), len(REC_THRS)))
    score = np.zeros((len(tp), len(REC_THRS)))
    for t in range(len(tp)):
        inds = np.searchsorted(rc[t], REC_THRS, side="left")
        ok = inds < n
        precision[t, ok] = pr[t, inds[ok]]
        score[t, ok] = scores[inds[ok]]
    return precision, recall, score


def _split_by(values: np.ndarray, num: int) -> list[np.ndarray]:
    """Indices of ``values == k`` for each ``k < num``, each in increasing order."""
    order = np.argsort(values, kind="stable")
    bounds = np.searchsorted(values[order], np.arange(num + 1))
    return [order[bounds[k]:bounds[k + 1]] for k in range(num)]


def accumulate(dt: Instances, rank: np.ndarray, gt: Instances, matches: Matches,
               gt_ignore: np.ndarray, det_out_of_area: np.ndarray, num_cats: int,
               max_dets: list[int]) -> Accumulated:
    """pycocotools' ``accumulate``: per class, area range and budget, the precision at each
    recall threshold over all images (their detections by score)."""
    A, T = gt_ignore.shape[0], matches.gt_id.shape[1]
    K, M, R = num_cats, len(max_dets), len(REC_THRS)
    out = Accumulated(-np.ones((T, R, K, A, M)), -np.ones((T, K, A, M)), -np.ones((T, R, K, A, M)))
    npig = np.stack([np.bincount(gt.group[~ignore] % K, minlength=K) for ignore in gt_ignore])
    for k, in_k in enumerate(_split_by(dt.group % K, K)):   # in (image, score) order
        if not npig[:, k].any():
            continue
        order = in_k[np.argsort(-dt.scores[in_k], kind="mergesort")]  # pycocotools' order
        hit = matches.gt_id[:, :, order] != 0                          # (A, T, n)
        ignored = matches.ignored[:, :, order] | (~hit & det_out_of_area[:, None, order])
        det_rank, scores = rank[order], dt.scores[order]
        for m, max_det in enumerate(max_dets):
            sel = det_rank < max_det
            for a in range(A):
                if npig[a, k] == 0:
                    continue
                h, ign = hit[a][:, sel], ignored[a][:, sel]
                p, r, s = _curve(h & ~ign, ~h & ~ign, int(npig[a, k]), scores[sel])
                out.precision[:, :, k, a, m], out.recall[:, k, a, m] = p, r
                out.scores[:, :, k, a, m] = s
    return out


def _summarize(acc: Accumulated, iou_thrs: np.ndarray, max_dets: list[int], ap: bool,
               iou_thr: float | None = None, area: str = "all", max_det: int = 100
               ) -> tuple[float, str]:
    aind = [i for i, label in enumerate(AREA_LABELS) if label == area]
    mind = [i for i, m in enumerate(max_dets) if m == max_det]
    s = acc.precision if ap else acc.recall
    if iou_thr is not None:
        s = s[np.where(iou_thr == iou_thrs)[0]]  # exact comparison, as pycocotools
    s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
    mean = -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))
    iou_str = (f"{iou_thrs[0]:0.2f}:{iou_thrs[-1]:0.2f}" if iou_thr is None
               else f"{iou_thr:0.2f}")
    title, kind = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
    line = (f" {title:<18} {kind} @[ IoU={iou_str:<9} | area={area:>6s} | "
            f"maxDets={max_det:>3d} ] = {mean:0.3f}")
    return mean, line


def summarize(acc: Accumulated, iou_thrs: np.ndarray, max_dets: list[int]
              ) -> tuple[np.ndarray, str]:
    """The 12 stats of ``COCOeval.summarize`` (same order, same lookups) and its text."""
    big = max_dets[2]
    plan = [(True, None, "all", 100), (True, 0.5, "all", big), (True, 0.75, "all", big),
            (True, None, "small", big), (True, None, "medium", big), (True, None, "large", big),
            (False, None, "all", max_dets[0]), (False, None, "all", max_dets[1]),
            (False, None, "all", big), (False, None, "small", big),
            (False, None, "medium", big), (False, None, "large", big)]
    stats, lines = np.zeros(12), []
    for i, (ap, thr, area, max_det) in enumerate(plan):
        stats[i], line = _summarize(acc, iou_thrs, max_dets, ap, thr, area, max_det)
        lines.append(line)
    return stats, "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------


def evaluate(coco_gt: Any, dets: ResultColumns | list[dict], img_ids: list[int],
             cat_ids: list[int], max_dets: list[int], iou_thrs: np.ndarray,
             iou_type: str = "bbox") -> tuple[Accumulated, np.ndarray, str]:
    """COCO evaluation of results (rows or columns) against ``coco_gt`` (a pycocotools
    ``COCO``).

    ``iou_type`` is ``'bbox'``, ``'segm'`` or ``'proposal'`` (boxes, classes pooled). Returns
    ``COCOeval.eval``'s arrays, ``COCOeval.stats`` and the summary text, identical to
    pycocotools with the same parameters.
    """
    use_cats = iou_type != "proposal"
    segm = iou_type == "segm"
    if not isinstance(dets, ResultColumns):
        dets = ResultColumns.from_rows(list(dets), segm)
    img_arr = np.unique(np.asarray(img_ids, dtype=np.int64))
    cats = np.asarray(cat_ids, dtype=np.int64)
    cats_sorted = np.unique(cats) if use_cats else cats
    max_dets = sorted(int(m) for m in max_dets)
    iou_thrs = np.asarray(iou_thrs, dtype=np.float64)
    num_cats = len(cats_sorted) if use_cats else 1
    num_groups = len(img_arr) * num_cats
    gt = ground_truth(coco_gt, img_arr, cats_sorted if use_cats else cats, use_cats, segm)
    dt, rank = detections(dets, img_arr, cats_sorted if use_cats else cats, use_cats,
                          max_dets[-1])
    gt_ignore = gt.crowd[None] | (gt.area[None] < AREA_RANGES[:, :1]) \
        | (gt.area[None] > AREA_RANGES[:, 1:])
    det_out = (dt.area[None] < AREA_RANGES[:, :1]) | (dt.area[None] > AREA_RANGES[:, 1:])
    matches = match(dt, gt, num_groups, iou_thrs, gt_ignore)
    acc = accumulate(dt, rank, gt, matches, gt_ignore, det_out, num_cats, max_dets)
    stats, text = summarize(acc, iou_thrs, max_dets)
    return acc, stats, text
