"""The match table against pycocotools: per threshold, area range and budget, the true positives,
false positives and ignored detections it counts are those of ``COCOeval.evalImgs``."""

import contextlib
import io
import time

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detlab.evaluation.matching import (
    ERROR_TYPES,
    find_tp_column,
    ignored_column,
    match_detections,
    table_thresholds,
    tp_column,
)
from detlab.structures import DetResult


def random_case(seed, num_images=25, num_cats=4, crowd=0.1, max_dets=60):
    """A COCO ground truth and result rows with what matching must get right: crowd regions,
    class confusions, near and far boxes, duplicates, score ties, all object sizes, images
    without ground truth or without detections, one class past the 100 budget in an image."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(rng.choice(np.arange(1, 90), num_cats, replace=False).tolist())
    sups = ["animal", "vehicle"]
    images, anns, rows = [], [], []
    for i in range(num_images):
        img_id = int(rng.integers(1, 10**6)) if seed % 2 else i + 1
        while any(im["id"] == img_id for im in images):
            img_id += 1
        images.append(dict(id=img_id, width=640, height=480))
        n_gt = int(rng.choice([0, 1, 2, 5, 9]))
        boxes = _boxes(rng, n_gt)
        cats = rng.choice(cat_ids, n_gt)
        for box, cat in zip(boxes, cats, strict=True):
            anns.append(dict(id=len(anns) * 3 + 7, image_id=img_id, category_id=int(cat),
                             bbox=box.tolist(), area=float(box[2] * box[3]),
                             iscrowd=int(rng.random() < crowd)))
        n_det = 130 if i == 3 else int(rng.integers(0, max_dets))
        rows += _detections(rng, img_id, boxes, cats, cat_ids, n_det, one_class=(i == 3))
    categories = [dict(id=c, name=f"c{c}", supercategory=sups[i % 2])
                  for i, c in enumerate(cat_ids)]
    return dict(images=images, annotations=anns, categories=categories), rows


def _boxes(rng, n):
    scale = rng.choice([12.0, 50.0, 150.0], n)
    wh = rng.uniform(0.3, 1.0, (n, 2)) * scale[:, None]
    return np.c_[rng.uniform(0, 500, (n, 2)), wh]


def _detections(rng, img_id, gt_boxes, gt_cats, cat_ids, n, one_class=False):
    boxes = _boxes(rng, n)
    cats = rng.choice(cat_ids, n)
    if len(gt_boxes):
        pick = rng.integers(0, len(gt_boxes), n)
        near = rng.random(n) < 0.7
        boxes[near] = gt_boxes[pick][near] * (1 + rng.normal(0, 0.15, (near.sum(), 4)))
        boxes[near, 2:] = np.abs(boxes[near, 2:])
        same = near & (rng.random(n) < 0.7)
        cats[same] = gt_cats[pick][same]
        exact = near & (rng.random(n) < 0.1)
        boxes[exact] = gt_boxes[pick][exact]
    if one_class:
        cats[:] = cat_ids[0]
    scores = np.round(rng.random(n), 2)
    return [dict(image_id=img_id, category_id=int(c), bbox=b.tolist(), score=float(s))
            for b, c, s in zip(boxes, cats, scores, strict=True)]


def coco(gt):
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = gt
        c.createIndex()
    return c


def pycocotools_eval(gt, rows, iou_thrs=None, max_dets=(1, 10, 100), area=None):
    """``COCOeval`` after ``evaluate`` and ``accumulate`` (``area``: only that range)."""
    with contextlib.redirect_stdout(io.StringIO()):
        ground = coco(gt)
        evaluator = COCOeval(ground, ground.loadRes([dict(r) for r in rows]), "bbox")
        if iou_thrs is not None:
            evaluator.params.iouThrs = np.asarray(iou_thrs, np.float64)
        evaluator.params.maxDets = list(max_dets)
        if area is not None:
            evaluator.params.areaRng = [list(area)]
            evaluator.params.areaRngLbl = ["chosen"]
        evaluator.evaluate()
        evaluator.accumulate()
        if area is None:
            evaluator.summarize()
    return evaluator


def reference_counts(evaluator, area_index=0):
    """Per threshold: matched and not ignored, unmatched and not ignored, ignored, in the
    largest budget and one area range; and the counted ground truths."""
    p = evaluator.params
    rng = p.areaRng[area_index]
    evals = [e for e in evaluator.evalImgs if e is not None and e["aRng"] == rng]
    T = len(p.iouThrs)
    tp, fp, ign = np.zeros(T, int), np.zeros(T, int), np.zeros(T, int)
    for e in evals:
        m, i = np.asarray(e["dtMatches"]) > 0, np.asarray(e["dtIgnore"], bool)
        tp += (m & ~i).sum(axis=1)
        fp += (~m & ~i).sum(axis=1)
        ign += i.sum(axis=1)
    n_gt = sum(int((~np.asarray(e["gtIgnore"], bool)).sum()) for e in evals)
    return tp, fp, ign, n_gt


def table_counts(table):
    dets = table[table["kind"] == "det"]
    tp = np.array([int(dets[tp_column(t)].sum()) for t in table_thresholds(table)])
    ign = np.array([int(dets[ignored_column(t)].sum()) for t in table_thresholds(table)])
    return tp, len(dets) - tp - ign, ign


@pytest.mark.parametrize("seed", range(8))
def test_counts_per_threshold_equal_pycocotools(seed):
    gt, rows = random_case(seed)
    tp_ref, fp_ref, ign_ref, n_gt = reference_counts(pycocotools_eval(gt, rows))
    table = match_detections(gt, rows)
    tp, fp, ign = table_counts(table)
    np.testing.assert_array_equal(tp, tp_ref)
    np.testing.assert_array_equal(fp, fp_ref)
    np.testing.assert_array_equal(ign, ign_ref)
    # every counted gt is matched at the first threshold or has a miss row
    assert tp[0] + (table["kind"] == "miss").sum() == n_gt


@pytest.mark.parametrize("seed", range(3))
def test_counts_in_an_area_range_and_a_small_budget(seed):
    gt, rows = random_case(10 + seed)
    thrs = [0.3, 0.5, 0.8]
    for area, bounds in (("small", (0, 32**2)), ("medium", (32**2, 96**2)),
                         ((500.0, 4000.0), (500.0, 4000.0))):
        evaluator = pycocotools_eval(gt, rows, thrs, max_dets=[7], area=bounds)
        tp_ref, fp_ref, ign_ref, n_gt = reference_counts(evaluator)
        table = match_detections(gt, rows, iou_thrs=thrs, max_dets=7, area_rng=area)
        tp, fp, ign = table_counts(table)
        np.testing.assert_array_equal(tp, tp_ref)
        np.testing.assert_array_equal(fp, fp_ref)
        np.testing.assert_array_equal(ign, ign_ref)
        assert tp[0] + (table["kind"] == "miss").sum() == n_gt


def test_rows_and_columns():
    gt, rows = random_case(20)
    table = match_detections(gt, rows, iou_thrs=[0.75, 0.5])
    assert table_thresholds(table) == [0.5, 0.75]
    dets, misses = table[table["kind"] == "det"], table[table["kind"] == "miss"]
    # one row per detection in the budget; image 4 has 130 detections of one class
    assert len(dets) + table.attrs["over_budget"] == len(rows)
    assert table.attrs["over_budget"] == 30
    # det_id is the result's 1-based position; boxes are xyxy
    row = rows[int(dets["det_id"].iloc[0]) - 1]
    x, y, w, h = row["bbox"]
    np.testing.assert_allclose(dets[["x1", "y1", "x2", "y2"]].iloc[0], [x, y, x + w, y + h])
    assert dets["score"].iloc[0] == row["score"]
    assert misses["score"].isna().all() and (misses["det_id"] == 0).all()
    assert not misses[[tp_column(0.5), tp_column(0.75), "ignored"]].any().any()
    # the matched gt is one of the image, of the same class, with IoU >= 0.5
    anns = {a["id"]: a for a in gt["annotations"]}
    matched = dets[dets["tp@0.50"]]
    assert (matched["iou"] >= 0.5).all()
    assert all(anns[g]["category_id"] == c and anns[g]["image_id"] == i for g, c, i in
               zip(matched["gt_id"], matched["category_id"], matched["image_id"], strict=True))
    assert set(table["area_range"]) <= {"small", "medium", "large"}
    assert set(table["error"].dropna()) <= set(ERROR_TYPES)
    # every false positive at the first threshold has an error type, and nothing else does
    fp = (table["kind"] == "det") & ~table["tp@0.50"] & ~table["ignored"]
    assert table.loc[fp, "error"].notna().all()
    assert table.loc[(table["kind"] == "det") & ~fp, "error"].isna().all()
    assert find_tp_column(table, 0.75) == "tp@0.75"
    with pytest.raises(KeyError, match="no IoU threshold 0.6"):
        find_tp_column(table, 0.6)


def test_detresults_give_the_table_of_their_rows():
    gt, _ = random_case(21, num_images=4)
    cat_ids = [c["id"] for c in gt["categories"]]
    rng = np.random.default_rng(0)
    results, rows = [], []
    for image in gt["images"]:
        xy = rng.uniform(0, 300, (6, 2))
        boxes = np.c_[xy, xy + rng.uniform(5, 120, (6, 2))].round(3)
        labels, scores = rng.integers(0, len(cat_ids), 6), rng.random(6).round(3)
        results.append(DetResult(torch.tensor(boxes), torch.tensor(scores), torch.tensor(labels),
                                 meta=dict(img_id=image["id"])))
        rows += results[-1].to_coco(image["id"], cat_ids)
    ours = match_detections(gt, results)
    expected = match_detections(gt, rows)
    assert ours.equals(expected)


def test_no_detections_and_no_ground_truth():
    gt, rows = random_case(22, num_images=5)
    only_misses = match_detections(gt, [])
    assert (only_misses["kind"] == "miss").all()
    assert len(only_misses) == sum(not a["iscrowd"] for a in gt["annotations"])
    only_dets = match_detections(dict(gt, annotations=[]), rows)
    assert (only_dets["kind"] == "det").all() and (only_dets["error"] == "Bkg").all()


def test_bad_area_range_is_named():
    gt, rows = random_case(23, num_images=3)
    with pytest.raises(ValueError, match="area_rng must be one of"):
        match_detections(gt, rows, area_rng="tiny")


def test_match_table_of_500_images_is_fast():
    rng = np.random.default_rng(0)
    images = [dict(id=i + 1, width=640, height=480) for i in range(500)]
    anns, rows = [], []
    for image in images:
        boxes = _boxes(rng, 8)
        cats = rng.integers(1, 21, 8)
        anns += [dict(id=len(anns) + k + 1, image_id=image["id"], category_id=int(c),
                      bbox=b.tolist(), area=float(b[2] * b[3]), iscrowd=0)
                 for k, (b, c) in enumerate(zip(boxes, cats, strict=True))]
        rows += _detections(rng, image["id"], boxes, cats, list(range(1, 21)), 100)
    gt = dict(images=images, annotations=anns,
              categories=[dict(id=c, name=str(c)) for c in range(1, 21)])
    ground = coco(gt)
    start = time.perf_counter()
    table = match_detections(ground, rows)
    elapsed = time.perf_counter() - start
    assert (table["kind"] == "det").sum() == 50_000
    assert elapsed < 3.0, f"{elapsed:.2f}s"  # about 0.4 s on an idle core
