"""Curves and APs of a match table against pycocotools' accumulate, and hand-checked counts."""

import numpy as np
import pytest
from test_matching import pycocotools_eval, random_case

from detlab.evaluation.cocoeval import REC_THRS
from detlab.evaluation.curves import (
    best_f1_thresholds,
    class_average_precision,
    image_ranking,
    interpolated_precision,
    mean_average_precision,
    pr_curves,
    threshold_curves,
)
from detlab.evaluation.matching import match_detections


@pytest.mark.parametrize("seed", range(4))
def test_pr_curves_are_pycocotools_precision(seed):
    gt, rows = random_case(40 + seed)
    ref = pycocotools_eval(gt, rows)
    table = match_detections(gt, rows)
    cat_ids = sorted(c["id"] for c in gt["categories"])
    for t, iou in ((0, 0.5), (5, 0.75)):
        curves = pr_curves(table, iou)
        for k, cat in enumerate(cat_ids):
            mine = curves[curves["category_id"] == cat]
            expected = ref.eval["precision"][t, :, k, 0, 2]
            if (expected == -1).all():
                assert mine.empty
                continue
            np.testing.assert_array_equal(mine["precision"], expected)
            np.testing.assert_array_equal(mine["score"], ref.eval["scores"][t, :, k, 0, 2])
            np.testing.assert_array_equal(mine["recall"], REC_THRS)
    assert mean_average_precision(table, None) == ref.stats[0]
    assert mean_average_precision(table, 0.5) == ref.stats[1]
    assert mean_average_precision(table, 0.75) == ref.stats[2]
    per_class = class_average_precision(table, 0.5)
    assert (per_class["tp"] + per_class["fn"] == per_class["n_gt"]).all()


def naive_precision(tp, npig):
    """pycocotools' accumulate for one class, written plainly."""
    tps, fps = np.cumsum(tp).astype(float), np.cumsum(~tp).astype(float)
    rc, pr = tps / npig, list(tps / (fps + tps + np.spacing(1)))
    for i in range(len(pr) - 1, 0, -1):
        pr[i - 1] = max(pr[i - 1], pr[i])
    q = np.zeros(len(REC_THRS))
    for r, i in enumerate(np.searchsorted(rc, REC_THRS, side="left")):
        if i < len(pr):
            q[r] = pr[i]
    return q


def test_segmented_precision_is_per_segment_precision():
    rng = np.random.default_rng(0)
    sizes = rng.choice([0, 1, 3, 20, 150], 40)
    segment = np.repeat(np.arange(40), sizes)
    tp = rng.random(len(segment)) < 0.4
    npig = np.array([max(int(tp[segment == s].sum()) + int(rng.integers(0, 4)), 0)
                     for s in range(40)])
    precision, _ = interpolated_precision(segment, tp, npig)
    for s in range(40):
        if npig[s] == 0:
            assert np.isnan(precision[s]).all()
        else:
            np.testing.assert_array_equal(precision[s], naive_precision(tp[segment == s], npig[s]))


def one_image_case(gts, dets, num_images=1):
    """``gts`` [(image, xywh)], ``dets`` [(image, xywh, score)], one class."""
    anns = [dict(id=i + 1, image_id=img, category_id=1, bbox=list(b), area=b[2] * b[3],
                 iscrowd=0) for i, (img, b) in enumerate(gts)]
    gt = dict(images=[dict(id=i + 1, width=640, height=480) for i in range(num_images)],
              annotations=anns, categories=[dict(id=1, name="cat")])
    rows = [dict(image_id=img, category_id=1, bbox=list(b), score=s) for img, b, s in dets]
    return gt, rows


G1, G2, FAR = [0.0, 0.0, 100.0, 100.0], [300.0, 0.0, 100.0, 100.0], [500.0, 400.0, 50.0, 50.0]


def test_threshold_curves_by_hand():
    gt, rows = one_image_case([(1, G1), (1, G2)], [(1, G1, 0.9), (1, FAR, 0.6), (1, G2, 0.4)])
    curves = threshold_curves(match_detections(gt, rows), thresholds=[0.3, 0.5, 0.95])
    cat = curves[curves["class"] == "cat"].set_index("score_thr")
    assert cat.loc[0.5, ["tp", "fp", "fn"]].tolist() == [1, 1, 1]
    assert cat.loc[0.5, ["precision", "recall", "f1"]].tolist() == [0.5, 0.5, 0.5]
    assert cat.loc[0.3, "f1"] == pytest.approx(0.8)
    assert cat.loc[0.95, "f1"] == 0 and np.isnan(cat.loc[0.95, "precision"])
    pooled = curves[curves["class"] == "all"]
    np.testing.assert_array_equal(pooled["tp"], cat["tp"])
    best = best_f1_thresholds(curves).set_index("class")
    assert best.loc["cat", "score_thr"] == 0.3
    default = threshold_curves(match_detections(gt, rows))
    assert len(default) == 2 * 101  # cat and all, 0.00 ... 1.00


def test_image_ranking_puts_the_worst_first():
    gt, rows = one_image_case(
        [(1, G1), (2, G1), (3, G1), (3, G2)],
        [(1, G1, 0.9), (2, G1, 0.9), (2, FAR, 0.8), (2, G2, 0.1)], num_images=4)
    ranking = image_ranking(match_detections(gt, rows), score_thr=0.3)
    assert ranking["image_id"].tolist() == [3, 2, 1, 4]
    by_id = ranking.set_index("image_id")
    assert by_id.loc[3, ["n_gt", "tp", "fp", "fn", "errors"]].tolist() == [2, 0, 0, 2, 2]
    assert by_id.loc[2, ["n_det", "tp", "fp", "errors"]].tolist() == [2, 1, 1, 1]
    assert by_id.loc[2, "Bkg"] == 2  # the low-scoring one counts as an error type too
    assert by_id.loc[1, "AP"] == pytest.approx(1.0, abs=1e-12) and np.isnan(by_id.loc[4, "AP"])
    assert by_id.loc[3, "Miss"] == 2 and by_id.loc[3, "AP"] == 0
