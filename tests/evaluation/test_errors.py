"""TIDE's error types and oracles on constructed cases, and COCO's error analysis against the
pycocotools recipe of MMDetection's coco_error_analysis.py."""

import contextlib
import copy
import io
from collections import Counter

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval
from test_matching import coco, pycocotools_eval, random_case

from detlab.evaluation.coco import coco_evaluate
from detlab.evaluation.errors import (
    coco_error_analysis,
    tide_errors,
    tide_errors_per_class,
)
from detlab.evaluation.matching import match_detections

A, B, C, D = 1, 2, 3, 4
SUPER = {A: "animal", B: "animal", C: "vehicle", D: "vehicle"}
SQUARE = [0.0, 0.0, 100.0, 100.0]
R = 101


def shifted(box, dx):
    """The box moved right by ``dx``: IoU (100 - dx) / (100 + dx) with a 100-pixel square."""
    return [box[0] + dx, box[1], box[2], box[3]]


def case(gts, dets):
    """One image: ``gts`` [(xywh, category)], ``dets`` [(xywh, category, score)]."""
    anns = [dict(id=i + 1, image_id=1, category_id=c, bbox=list(b), area=b[2] * b[3],
                 iscrowd=0) for i, (b, c) in enumerate(gts)]
    cats = [dict(id=c, name=f"c{c}", supercategory=SUPER[c]) for c in (A, B, C, D)]
    gt = dict(images=[dict(id=1, width=640, height=480)], annotations=anns, categories=cats)
    rows = [dict(image_id=1, category_id=c, bbox=list(b), score=s) for b, c, s in dets]
    return gt, rows


def errors_of(gt, rows):
    table = match_detections(gt, rows, iou_thrs=[0.5])
    return Counter(table["error"].dropna()), table


def mean(*aps):
    return sum(aps) / len(aps)


HALF = 51 / R                        # one true positive of two gts, precision 1
TP_FP_TP = (51 + 50 * 2 / 3) / R     # ranked TP, FP, TP with two gts


# --------------------------------------------------------------------------------------------
# one constructed case per TIDE type
# --------------------------------------------------------------------------------------------


def test_cls_error():
    gt, rows = case([(SQUARE, A)], [(SQUARE, B, 0.9)])
    counts, table = errors_of(gt, rows)
    assert counts == {"Cls": 1}  # the missed gt is explained by the Cls error: no Miss
    det = table[table["kind"] == "det"].iloc[0]
    assert det["error_gt_id"] == 1 and det["gt_id"] == 1 and det["iou"] == 1.0
    tide = tide_errors(table)
    assert tide["ap"] == 0.0 and tide["dap"]["Cls"] == pytest.approx(1.0)
    assert all(tide["dap"][k] == 0 for k in ("Loc", "Both", "Dupe", "Bkg", "Miss"))


def test_loc_error():
    gt, rows = case([(SQUARE, A)], [(shifted(SQUARE, 54), A, 0.9)])  # IoU 0.30
    counts, table = errors_of(gt, rows)
    assert counts == {"Loc": 1}
    tide = tide_errors(table)
    assert tide["dap"]["Loc"] == pytest.approx(1.0) and tide["dap"]["Cls"] == 0


def test_both_error():
    far_a, far_b = [300.0, 0.0, 60.0, 60.0], [300.0, 300.0, 50.0, 50.0]
    gt, rows = case([(SQUARE, A), (far_a, A), (far_b, B)],
                    [(shifted(SQUARE, 54), B, 0.9), (far_a, A, 0.8), (far_b, B, 0.5)])
    counts, table = errors_of(gt, rows)
    assert counts == {"Both": 1, "Miss": 1}  # Both does not explain the missed square
    tide = tide_errors(table)
    assert tide["ap"] == pytest.approx(mean(HALF, 0.5))
    assert tide["dap"]["Both"] == pytest.approx(mean(HALF, 1) - mean(HALF, 0.5))
    assert tide["dap"]["Miss"] == pytest.approx(mean(1, 0.5) - mean(HALF, 0.5))
    assert tide["special"]["FalsePos"] == pytest.approx(tide["dap"]["Both"])
    assert tide["special"]["FalseNeg"] == pytest.approx(tide["dap"]["Miss"])


def test_dupe_error():
    right = [300.0, 0.0, 100.0, 100.0]
    gt, rows = case([(SQUARE, A), (right, A)],
                    [(SQUARE, A, 0.9), (shifted(SQUARE, 10), A, 0.8), (right, A, 0.7)])
    counts, table = errors_of(gt, rows)
    assert counts == {"Dupe": 1}
    dupe = table[table["error"] == "Dupe"].iloc[0]
    assert dupe["error_gt_id"] == 1  # the gt the higher-scoring detection took
    tide = tide_errors(table)
    assert tide["ap"] == pytest.approx(TP_FP_TP)
    assert tide["dap"]["Dupe"] == pytest.approx(1 - TP_FP_TP)
    assert tide["dap"]["Bkg"] == 0


def test_bkg_error():
    right = [300.0, 0.0, 100.0, 100.0]
    gt, rows = case([(SQUARE, A), (right, A)],
                    [(SQUARE, A, 0.9), ([500.0, 400.0, 50.0, 50.0], A, 0.8), (right, A, 0.7)])
    counts, table = errors_of(gt, rows)
    assert counts == {"Bkg": 1}
    tide = tide_errors(table)
    assert tide["dap"]["Bkg"] == pytest.approx(1 - TP_FP_TP)
    assert tide["special"]["FalsePos"] == pytest.approx(1 - TP_FP_TP)


def test_miss_error():
    gt, rows = case([(SQUARE, A), ([300.0, 0.0, 100.0, 100.0], A)], [(SQUARE, A, 0.9)])
    counts, table = errors_of(gt, rows)
    assert counts == {"Miss": 1}
    tide = tide_errors(table)
    assert tide["ap"] == pytest.approx(HALF)
    assert tide["dap"]["Miss"] == pytest.approx(1 - HALF)
    assert tide["special"]["FalseNeg"] == pytest.approx(1 - HALF)


# --------------------------------------------------------------------------------------------
# TIDE's rules
# --------------------------------------------------------------------------------------------


def test_loc_is_tested_before_cls():
    """A detection that is both badly placed on its own class and on another class's gt is a
    Loc error, as TIDE tests Loc first."""
    other = [40.0, 0.0, 100.0, 100.0]
    gt, rows = case([(SQUARE, A), (other, B)], [(other, A, 0.9)])  # IoU .43 with A, 1 with B
    counts, table = errors_of(gt, rows)
    assert counts == {"Loc": 1, "Miss": 1}  # the B gt is missed: the error is about the A gt
    assert table.loc[table["error"] == "Loc", "error_gt_id"].tolist() == [1]


def test_one_fix_per_gt_goes_to_the_highest_scoring_error():
    """Cls and Loc errors on the same unmatched gt: only the highest-scoring one (here the Loc
    error) is fixed; fixing Cls alone then gains nothing."""
    gt, rows = case([(SQUARE, A)], [(shifted(SQUARE, 54), A, 0.9), (SQUARE, B, 0.8)])
    counts, table = errors_of(gt, rows)
    assert counts == {"Loc": 1, "Cls": 1}
    tide = tide_errors(table)
    assert tide["dap"]["Loc"] == pytest.approx(1.0) and tide["dap"]["Cls"] == 0


def test_cls_error_on_a_matched_gt_is_dropped_by_the_fix():
    far_b = [300.0, 300.0, 100.0, 100.0]
    gt, rows = case([(SQUARE, A), (far_b, B)],
                    [(SQUARE, B, 0.95), (SQUARE, A, 0.9), (far_b, B, 0.5)])
    counts, table = errors_of(gt, rows)
    assert counts == {"Cls": 1}
    tide = tide_errors(table)
    assert tide["ap"] == pytest.approx(mean(1, 0.5))
    assert tide["dap"]["Cls"] == pytest.approx(0.25)
    per_class = tide_errors_per_class(table).set_index("category_id")
    assert per_class.loc[B, "Cls"] == pytest.approx(0.5) and per_class.loc[A, "Cls"] == 0
    assert per_class.loc[B, "n_Cls"] == 1 and np.isnan(per_class.loc[C, "AP"])


@pytest.mark.parametrize("seed", range(3))
def test_tide_ap_is_pycocotools_ap50(seed):
    gt, rows = random_case(seed)
    tide = tide_errors(gt, rows)
    assert tide["ap"] == pycocotools_eval(gt, rows).stats[1]
    metrics = coco_evaluate(gt, rows, proposal_nums=(1, 10, 100))
    assert tide["ap"] == metrics["bbox_mAP_50"]
    assert sum(tide["counts"].values()) > 0
    assert all(v >= 0 for v in tide["dap"].values())
    assert tide["special"]["FalsePos"] >= 0 and tide["special"]["FalseNeg"] >= 0
    per_class = tide_errors_per_class(gt, rows)
    for kind, count in tide["counts"].items():
        assert per_class[f"n_{kind}"].sum() == count
    assert np.nanmean(per_class["AP"]) == pytest.approx(tide["ap"])


def test_a_table_typed_at_another_threshold_is_refused():
    gt, rows = random_case(4, num_images=4)
    table = match_detections(gt, rows)  # first threshold 0.5: fine
    assert tide_errors(table)["ap"] == tide_errors(gt, rows)["ap"]
    with pytest.raises(ValueError, match="foreground IoU 0.5"):
        tide_errors(table, fg_iou=0.75)


# --------------------------------------------------------------------------------------------
# COCO error analysis
# --------------------------------------------------------------------------------------------


def mmdet_recipe(gt, rows):
    """precision (7, R, K, A) the way MMDetection 2.x's coco_error_analysis.py computes it
    (before it sets -1 to 0), with pycocotools."""
    with contextlib.redirect_stdout(io.StringIO()):
        cocoGt = coco(gt)
        cocoDt = cocoGt.loadRes([dict(r) for r in rows])
        ev = COCOeval(copy.deepcopy(cocoGt), copy.deepcopy(cocoDt), "bbox")
        ev.params.iouThrs, ev.params.maxDets = [0.75, 0.5, 0.1], [100]
        ev.evaluate()
        ev.accumulate()
        ps = np.concatenate([ev.eval["precision"][..., 0], np.zeros((2, R, *ev.eval[
            "precision"].shape[2:4]))])
        cat_ids = sorted(cocoGt.getCatIds())
        for k, cat in enumerate(cat_ids):
            dt = copy.deepcopy(cocoDt)
            dt.dataset["annotations"] = [a for a in dt.dataset["annotations"]
                                         if a["category_id"] == cat]
            dt.createIndex()
            sup = cocoGt.loadCats(cat)[0]["supercategory"]
            for t, confusable in ((3, cocoGt.getCatIds(supNms=[sup])), (4, cat_ids)):
                g = copy.deepcopy(cocoGt)
                for ann in g.dataset["annotations"]:
                    if ann["category_id"] in confusable and ann["category_id"] != cat:
                        ann.update(ignore=1, iscrowd=1, category_id=cat)
                e = COCOeval(g, copy.deepcopy(dt), "bbox")
                e.params.maxDets, e.params.iouThrs = [100], [0.1]
                e.evaluate()
                e.accumulate()
                ps[t, :, k] = e.eval["precision"][0, :, k, :, 0]
    return ps


@pytest.mark.parametrize("seed", range(2))
def test_coco_error_analysis_equals_the_mmdetection_recipe(seed):
    gt, rows = random_case(30 + seed, num_images=10)
    ref = mmdet_recipe(gt, rows)
    ours = coco_error_analysis(gt, rows)
    valid = ref[0] > -1
    for t in range(5):  # C75 C50 Loc Sim Oth
        np.testing.assert_array_equal(np.where(valid, ours["precision"][t], -1), ref[t])
    np.testing.assert_array_equal(ours["precision"][5][valid], (ref[4] > 0)[valid])
    assert (ours["precision"][6][valid] == 1).all() and np.isnan(ours["precision"][:, ~valid]).all()
    summary = ours["summary"]
    overall = summary[(summary["class"] == "all") & (summary["area"] == "all")].iloc[0]
    np.testing.assert_allclose(overall[["C75", "C50", "Loc", "Sim", "Oth", "BG", "FN"]].to_numpy(
        float), ours["overall"][:, 0])


def test_sim_removes_supercategory_confusions_and_oth_all():
    far = {B: [300.0, 0.0, 100.0, 100.0], C: [300.0, 300.0, 100.0, 100.0]}
    gt, rows = case([(SQUARE, A), (far[B], B), (far[C], C)],
                    [(SQUARE, A, 0.8), (SQUARE, B, 0.9), (far[B], B, 0.5), (SQUARE, C, 0.9),
                     (far[C], C, 0.5)])
    result = coco_error_analysis(gt, rows)
    ap = result["summary"].set_index(["class", "area"])
    np.testing.assert_allclose(ap.loc[("c1", "all")], [1, 1, 1, 1, 1, 1, 1])
    # B confuses the A square (same supercategory): removed from Sim on
    np.testing.assert_allclose(ap.loc[("c2", "all")], [0.5, 0.5, 0.5, 1, 1, 1, 1])
    # C confuses it too, across supercategories: removed only from Oth on
    np.testing.assert_allclose(ap.loc[("c3", "all")], [0.5, 0.5, 0.5, 0.5, 1, 1, 1])
    assert ap.loc[("c4", "all")].isna().all()  # no ground truth
    assert ap.loc[("all", "all"), "C50"] == pytest.approx((1 + 0.5 + 0.5) / 3)
