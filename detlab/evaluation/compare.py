"""Comparing runs on the same images: per-image differences and a bootstrap confidence interval
for the difference in mAP.

The interval resamples images (with replacement, the same draw for every run, so the
comparison is paired) and recomputes each run's COCO mAP on each resample. An image drawn
``w`` times counts its detections and ground truths ``w`` times; the precision-recall curve of
a resample equals that of the duplicated image set up to the order of equal scores.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from detlab.evaluation.cocoeval import REC_THRS
from detlab.evaluation.curves import (
    counted_detections,
    evaluation_order,
    gt_counts,
    mean_average_precision,
    table_classes,
)
from detlab.evaluation.matching import table_thresholds

if TYPE_CHECKING:
    import pandas as pd


def _named(match_tables: Mapping[str, pd.DataFrame] | Sequence[pd.DataFrame]
           ) -> dict[str, pd.DataFrame]:
    if isinstance(match_tables, Mapping):
        named = {str(k): v for k, v in match_tables.items()}
    else:
        named = {f"run{i}": t for i, t in enumerate(match_tables)}
    if len(named) < 2:
        raise ValueError(f"compare_runs needs at least two match tables, got {len(named)}")
    return named


def _image_index(tables: dict[str, pd.DataFrame]) -> np.ndarray:
    """The images the runs were evaluated on (their ``img_ids``, else every image seen)."""
    ids = [np.asarray(t.attrs["img_ids"]) if "img_ids" in t.attrs
           else t["image_id"].to_numpy() for t in tables.values()]
    return np.unique(np.concatenate(ids).astype(np.int64))


def per_image_counts(table: pd.DataFrame, images: np.ndarray, iou: float,
                     score_thr: float) -> pd.DataFrame:
    """``tp``, ``fp``, ``fn`` per image at ``iou``, counting detections scoring at least
    ``score_thr``."""
    import pandas as pd

    dets = counted_detections(table, iou)
    dets = dets[dets["score"] >= score_thr]
    index = pd.Index(images, name="image_id")
    n_gt = gt_counts(table, "image_id").reindex(index, fill_value=0)
    tp = dets.groupby("image_id")["tp"].sum().reindex(index, fill_value=0).astype(int)
    n_det = dets.groupby("image_id").size().reindex(index, fill_value=0)
    return pd.DataFrame({"tp": tp, "fp": n_det - tp, "fn": n_gt - tp})


def _per_image_table(tables: dict[str, pd.DataFrame], images: np.ndarray, iou: float,
                     score_thr: float) -> pd.DataFrame:
    """Counts of every run side by side, and each run's change from the first
    (``d_tp_<run>`` ...); rows sorted by the largest change of errors first."""
    import pandas as pd

    names = list(tables)
    counts = {n: per_image_counts(t, images, iou, score_thr) for n, t in tables.items()}
    out = pd.concat({n: c for n, c in counts.items()}, axis=1)
    out.columns = [f"{col}_{run}" for run, col in out.columns]
    base = counts[names[0]]
    for n in names[1:]:
        for col in ("tp", "fp", "fn"):
            out[f"d_{col}_{n}"] = counts[n][col] - base[col]
        out[f"d_errors_{n}"] = out[f"d_fp_{n}"] + out[f"d_fn_{n}"]
    change = sum(out[f"d_errors_{n}"].abs() for n in names[1:])
    order = np.argsort(-change.to_numpy(), kind="stable")
    return out.iloc[order].reset_index()


# --------------------------------------------------------------------------------------------
# mAP of weighted images (the bootstrap)
# --------------------------------------------------------------------------------------------


class _RunArrays:
    """One run's counted detections in evaluation order, per class, with image positions."""

    def __init__(self, table: pd.DataFrame, images: np.ndarray, iou: float) -> None:
        self.cat_ids, _ = table_classes(table)
        dets = counted_detections(table, iou)
        pos = np.searchsorted(self.cat_ids, dets["category_id"].to_numpy(np.int64))
        order = evaluation_order(pos, dets["score"].to_numpy(), dets["image_id"].to_numpy(),
                                 dets["det_id"].to_numpy())
        self.pos = pos[order]
        self.image = np.searchsorted(images, dets["image_id"].to_numpy(np.int64)[order])
        self.tp = dets["tp"].to_numpy(bool)[order]
        n_gt = gt_counts(table, ["category_id", "image_id"])
        self.gt = np.zeros((len(self.cat_ids), len(images)))  # (K, I) gts per class and image
        if len(n_gt):
            k = np.searchsorted(self.cat_ids, n_gt.index.get_level_values(0).to_numpy())
            i = np.searchsorted(images, n_gt.index.get_level_values(1).to_numpy())
            self.gt[k, i] = n_gt.to_numpy()


def _weighted_precision(tp: np.ndarray, weights: np.ndarray, npig: np.ndarray) -> np.ndarray:
    """(B, R) COCO precision of one class for B image weightings: ``weights`` (B, n) of its
    ranked detections (true positive or not: ``tp`` (n,)) and ``npig`` (B,) its weighted
    gts (> 0)."""
    B, n = weights.shape
    # float32 counts stay exact (below 2**24) and halve the memory traffic
    tps = np.cumsum(weights * tp, axis=1, dtype=np.float32)
    fps = np.cumsum(weights, axis=1, dtype=np.float32) - tps
    # a detection drawn 0 times repeats the point before it (or precision 0 before any):
    # neither changes the envelope nor is found first by the recall search
    rc = (tps / npig[:, None].astype(np.float32)).astype(np.float64)
    pr = tps / (fps + tps + np.float32(1e-12))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    # one searchsorted for all rows: each row (recall in [0, 1]) offset to keep rows apart
    offset = 3.0 * np.arange(B)[:, None]
    idx = np.searchsorted((rc + offset).ravel(), (REC_THRS[None] + offset).ravel())
    idx = idx.reshape(B, -1) - np.arange(B)[:, None] * n
    ok = idx < n
    return np.where(ok, np.take_along_axis(pr, np.minimum(idx, n - 1), axis=1), 0.0)


def _weighted_map(run: _RunArrays, counts: np.ndarray) -> np.ndarray:
    """(B,) mAP of a run for each row of image ``counts`` (B, I); NaN without ground truth."""
    B, K = len(counts), len(run.cat_ids)
    precision = np.full((B, K, len(REC_THRS)), np.nan)
    npig = counts @ run.gt.T                                   # (B, K)
    for k in range(K):
        has = npig[:, k] > 0
        rows = np.flatnonzero(run.pos == k)
        # detections ranked after the class's last true positive cannot raise its precision
        # at any reached recall: leave them out
        last_tp = np.flatnonzero(run.tp[rows])
        rows = rows[:last_tp[-1] + 1] if len(last_tp) else rows[:0]
        if not has.any() or not len(rows):
            precision[has, k] = 0.0
            continue
        precision[has, k] = _weighted_precision(run.tp[rows], counts[has][:, run.image[rows]],
                                                npig[has, k])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without any ground truth
        return np.nanmean(precision.reshape(B, -1), axis=1)


def bootstrap_maps(runs: list[_RunArrays], num_images: int, n_boot: int, seed: int,
                   chunk: int = 50) -> np.ndarray:
    """(n_boot, runs) mAP of each run on image resamples (paired: one draw for all runs)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, len(runs)))
    for lo in range(0, n_boot, chunk):
        b = min(chunk, n_boot - lo)
        draws = rng.integers(0, num_images, size=(b, num_images))
        counts = np.zeros((b, num_images), np.float32)
        np.add.at(counts, (np.repeat(np.arange(b), num_images), draws.ravel()), 1.0)
        for r, run in enumerate(runs):
            out[lo:lo + b, r] = _weighted_map(run, counts)
    return out


def _check_iou(tables: dict[str, pd.DataFrame], iou: float | None) -> list[float]:
    thrs = [table_thresholds(t) for t in tables.values()]
    if iou is None:
        if any(not np.allclose(t, thrs[0]) for t in thrs):
            raise ValueError(f"the runs were matched at different IoU thresholds {thrs}: "
                             f"match them with the same iou_thrs to compare their mAP")
        return list(thrs[0])
    return [float(iou)]


def compare_runs(match_tables: Mapping[str, pd.DataFrame] | Sequence[pd.DataFrame],
                 iou: float | None = 0.5, n_boot: int = 1000, seed: int = 0,
                 score_thr: float = 0.3, level: float = 0.95) -> dict[str, Any]:
    """Compare runs evaluated on the same images, each against the first.

    Args:
        match_tables: the match tables (:func:`match_detections`) by run name, or a list
            (named ``run0``, ``run1`` ...).
        iou: the IoU of the mAP compared (default mAP@50); ``None``: COCO's mAP averaged over
            the tables' thresholds.
        n_boot: bootstrap resamples of the images.
        seed: the seed of the resampling.
        score_thr: detections scoring below are not counted in the per-image TP/FP/FN.
        level: the confidence level of the interval.

    Returns:
        ``names``, ``map`` (run -> mAP on all images), ``per_image`` (a DataFrame: per image,
        ``tp_<run>``, ``fp_<run>``, ``fn_<run>`` at ``iou`` (the lowest threshold when
        ``iou`` is None), and ``d_tp_<run>``, ``d_fp_<run>``, ``d_fn_<run>``, ``d_errors_<run>``
        against the first run; largest changes first), ``summary`` (a DataFrame, one row per
        later run: ``run``, ``mAP``, ``diff`` (run minus first), ``ci_low``, ``ci_high``,
        ``p_value`` (two-sided bootstrap), ``better``: the interval excludes 0 above it),
        ``boot`` ((n_boot, runs) resampled mAPs), and for two runs ``diff`` and ``ci``.
    """
    import pandas as pd

    tables = _named(match_tables)
    names = list(tables)
    images = _image_index(tables)
    thrs = _check_iou(tables, iou)
    maps = {n: mean_average_precision(t, iou) for n, t in tables.items()}
    per_image = _per_image_table(tables, images, thrs[0] if iou is None else iou, score_thr)
    boot = np.zeros((n_boot, len(names)))
    for t in thrs:  # COCO mAP averages its thresholds
        runs = [_RunArrays(tables[n], images, t) for n in names]
        boot += bootstrap_maps(runs, len(images), n_boot, seed) / len(thrs)
    rows = [_interval(n, maps[n] - maps[names[0]], maps[n], boot[:, i] - boot[:, 0], level)
            for i, n in enumerate(names) if i > 0]
    out = {"names": names, "map": maps, "per_image": per_image, "boot": boot,
           "summary": pd.DataFrame(rows), "iou": iou, "level": level}
    if len(names) == 2:
        out["diff"] = rows[0]["diff"]
        out["ci"] = (rows[0]["ci_low"], rows[0]["ci_high"])
    return out


def _interval(name: str, diff: float, value: float, deltas: np.ndarray,
              level: float) -> dict[str, Any]:
    """Percentile interval and two-sided p-value of bootstrap differences."""
    deltas = deltas[~np.isnan(deltas)]
    alpha = (1 - level) / 2
    low, high = (np.quantile(deltas, [alpha, 1 - alpha]) if deltas.size else (np.nan, np.nan))
    p = 2 * min((deltas <= 0).mean(), (deltas >= 0).mean()) if deltas.size else np.nan
    return {"run": name, "mAP": value, "diff": diff, "ci_low": float(low),
            "ci_high": float(high), "p_value": float(min(p, 1.0)), "better": bool(low > 0)}
