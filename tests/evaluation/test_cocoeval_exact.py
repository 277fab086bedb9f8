"""detlab's COCO engine against pycocotools on randomized cases: every array and stat equal.

The cases draw what makes COCO evaluation subtle: crowd regions, images without ground truth or
without detections, non-contiguous category ids, more than 100 detections per image, ties in
scores and IoUs, tiny and huge boxes, custom IoU thresholds (0 and 1 included), class-agnostic
proposals, and masks.
"""

import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detlab.evaluation.coco import coco_evaluate
from detlab.evaluation.cocoeval import evaluate


def _boxes(rng, n):
    """xywh boxes from tiny (under a pixel) to larger than the image."""
    scale = rng.choice([0.5, 8, 40, 150, 900], n)
    wh = rng.uniform(0.2, 1.0, (n, 2)) * scale[:, None]
    xy = rng.uniform(-20, 600, (n, 2))
    return np.c_[xy, wh]


def random_case(seed, num_images=30, with_masks=False):
    rng = np.random.default_rng(seed)
    cat_ids = sorted(rng.choice(np.arange(1, 500), rng.integers(1, 6), replace=False).tolist())
    images, anns, rows = [], [], []
    for i in range(num_images):
        img_id = int(rng.integers(1, 10**7)) if seed % 2 else i + 1
        while any(im["id"] == img_id for im in images):
            img_id += 1
        images.append(dict(id=img_id, width=640, height=480, file_name=f"{img_id}.jpg"))
        n_gt = int(rng.choice([0, 0, 1, 3, 8]))
        gt_boxes, gt_cats = _boxes(rng, n_gt), rng.choice(cat_ids, n_gt)
        for box, cat in zip(gt_boxes, gt_cats, strict=True):
            ann = dict(id=len(anns) + int(rng.integers(0, 2)) + 1 + len(anns), image_id=img_id,
                       category_id=int(cat), bbox=box.tolist(),
                       area=float(box[2] * box[3] * rng.uniform(0.3, 1.2)),
                       iscrowd=int(rng.random() < 0.15))
            if with_masks:
                ann["segmentation"] = [_polygon(box)]
            anns.append(ann)
        rows += _detections(rng, img_id, gt_boxes, gt_cats, cat_ids, with_masks)
    categories = [dict(id=c, name=f"c{c}") for c in cat_ids]
    return dict(images=images, annotations=anns, categories=categories), rows


def _polygon(box):
    x, y, w, h = box
    return [x, y, x + w, y, x + w * 0.5, y + h]  # a triangle inside the box


def _detections(rng, img_id, gt_boxes, gt_cats, cat_ids, with_masks):
    n = int(rng.choice([0, 5, 40, 130]))  # 130: beyond the 100 budget
    boxes = _boxes(rng, n)
    cats = rng.choice(cat_ids, n)
    if len(gt_boxes):
        pick = rng.integers(0, len(gt_boxes), n)
        near = rng.random(n) < 0.6
        boxes[near] = gt_boxes[pick][near] * (1 + rng.normal(0, 0.1, (near.sum(), 4)))
        boxes[near, 2:] = np.abs(boxes[near, 2:])
        same = near & (rng.random(n) < 0.8)
        cats[same] = gt_cats[pick][same]
        exact = near & (rng.random(n) < 0.1)  # duplicates: equal IoUs
        boxes[exact] = gt_boxes[pick][exact]
    scores = np.round(rng.random(n), 1)  # many ties
    rows = []
    for box, cat, score in zip(boxes, cats, scores, strict=True):
        row = dict(image_id=img_id, category_id=int(cat), bbox=box.tolist(), score=float(score))
        if with_masks:
            rle = mask_utils.frPyObjects([_polygon(box)], 480, 640)[0]
            row["segmentation"] = dict(size=rle["size"], counts=rle["counts"].decode())
        rows.append(row)
    return rows


def _coco(gt):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
    return coco


def reference(gt, rows, iou_type, iou_thrs=None, max_dets=(1, 10, 100)):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = _coco(gt)
        dt = coco.loadRes([dict(r) for r in rows]) if rows else None
        evaluator = COCOeval(coco, dt or _coco(dict(gt, annotations=[])),
                             "segm" if iou_type == "segm" else "bbox")
        if iou_thrs is not None:
            evaluator.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
        evaluator.params.maxDets = list(max_dets)
        evaluator.params.useCats = int(iou_type != "proposal")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def assert_identical(gt, rows, iou_type="bbox", iou_thrs=None, max_dets=(1, 10, 100)):
    if iou_type == "segm":  # (loadRes would take a row's box area over its mask's)
        rows = [{k: v for k, v in r.items() if k != "bbox"} for r in rows]
    ref = reference(gt, rows, iou_type, iou_thrs, max_dets)
    cat_ids = sorted(c["id"] for c in gt["categories"])  # accumulate() resets params.catIds
    acc, stats, text = evaluate(_coco(gt), rows, ref.params.imgIds, cat_ids,
                                list(max_dets), ref.params.iouThrs, iou_type)
    np.testing.assert_array_equal(acc.precision, ref.eval["precision"])
    np.testing.assert_array_equal(acc.recall, ref.eval["recall"])
    np.testing.assert_array_equal(acc.scores, ref.eval["scores"])
    np.testing.assert_array_equal(stats, ref.stats)
    return text


@pytest.mark.parametrize("seed", range(12))
def test_bbox_identical(seed):
    gt, rows = random_case(seed)
    assert_identical(gt, rows)


@pytest.mark.parametrize("seed", range(6))
def test_proposals_identical(seed):
    gt, rows = random_case(100 + seed)
    assert_identical(gt, rows, "proposal", max_dets=(10, 50, 300))


@pytest.mark.parametrize("seed", range(4))
def test_segm_identical(seed):
    gt, rows = random_case(200 + seed, num_images=12, with_masks=True)
    assert_identical(gt, rows, "segm")


@pytest.mark.parametrize("thrs", [[0.5], [0.0, 0.3, 1.0], [0.1, 0.9], [0.55, 0.65, 0.999]])
def test_custom_iou_thresholds_identical(thrs):
    gt, rows = random_case(300 + len(thrs))
    assert_identical(gt, rows, iou_thrs=thrs)


def test_budgets_below_the_detections_identical():
    gt, rows = random_case(400)
    assert_identical(gt, rows, max_dets=(3, 7, 20))


def test_no_detections_and_no_ground_truth():
    gt, rows = random_case(500)
    assert_identical(gt, [])
    assert_identical(dict(gt, annotations=[]), rows)


def test_summary_text_is_pycocotools_text():
    gt, rows = random_case(600)
    ours = assert_identical(gt, rows)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        reference(gt, rows, "bbox").summarize()
    assert ours == out.getvalue()


def test_public_api_default_engine_equals_pycocotools_engine():
    gt, rows = random_case(700)
    ours = coco_evaluate(gt, rows, classwise=True)
    ref = coco_evaluate(gt, rows, classwise=True, backend="pycocotools")
    assert ours["stats"] == ref["stats"] and ours["summary"] == ref["summary"]
    assert ours["classwise"].equals(ref["classwise"])


def test_ap_at_09_is_readable_in_the_classwise_table():
    """pycocotools compares thresholds with ==, so 0.9 built by linspace is not found; the
    per-class table looks thresholds up with a tolerance."""
    gt, rows = random_case(800)
    table = coco_evaluate(gt, rows, classwise=True, iou_thrs=[0.5, 0.75, 0.9])["classwise"]
    assert table["AP50"].notna().any() and table["AP75"].notna().any()
