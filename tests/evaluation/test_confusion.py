"""Confusion matrices checked by hand, in both countings."""

import numpy as np
import pytest
from test_matching import random_case

from detlab.evaluation.confusion import confusion_matrix, greedy_pairs

A, B = 1, 2


def case(gts, dets):
    """One image: ``gts`` [(xywh, category, crowd)], ``dets`` [(xywh, category, score)]."""
    anns = [dict(id=i + 1, image_id=1, category_id=c, bbox=list(b), area=b[2] * b[3],
                 iscrowd=int(crowd)) for i, (b, c, crowd) in enumerate(gts)]
    gt = dict(images=[dict(id=1, width=640, height=480)], annotations=anns,
              categories=[dict(id=A, name="cat"), dict(id=B, name="dog")])
    rows = [dict(image_id=1, category_id=c, bbox=list(b), score=s) for b, c, s in dets]
    return gt, rows


G1, G2, G3, CROWD = ([0.0, 0.0, 100.0, 100.0], [300.0, 0.0, 100.0, 100.0],
                     [0.0, 300.0, 100.0, 100.0], [300.0, 300.0, 100.0, 100.0])
FAR = [500.0, 400.0, 50.0, 50.0]
GTS = [(G1, A, False), (G2, A, False), (G3, B, False), (CROWD, A, True)]
DETS = [(G1, A, 0.9), (G2, B, 0.8), (FAR, A, 0.7), (G3, B, 0.1), (CROWD, A, 0.6)]


def test_one_to_one_counting():
    gt, rows = case(GTS, DETS)
    matrix = confusion_matrix(gt, rows, score_thr=0.3)
    expected = [[1, 1, 0],   # cat: found as cat, found as dog
                [0, 0, 1],   # dog: its detection scores below 0.3, so it is missed
                [2, 0, 0]]   # background: the far cat and the cat on a crowd region
    np.testing.assert_array_equal(matrix.to_numpy(), expected)
    assert list(matrix.index) == ["cat", "dog", "background"] == list(matrix.columns)
    assert matrix.index.name == "ground truth" and matrix.columns.name == "prediction"
    # every gt once in its row, every detection once in its column
    assert matrix.sum(axis=1).tolist()[:2] == [2, 1]
    assert matrix.sum(axis=0).tolist()[:2] == [3, 1]


def test_mmdetection_counting():
    gt, rows = case(GTS, DETS)
    matrix = confusion_matrix(gt, rows, score_thr=0.3, method="mmdet")
    expected = [[1, 1, 1],   # the cat found only as a dog also counts as missed
                [0, 0, 1],
                [2, 0, 0]]
    np.testing.assert_array_equal(matrix.to_numpy(), expected)


def test_a_detection_on_two_gts():
    gt, rows = case([(G1, A, False), (G1, B, False)], [(G1, A, 0.9)])
    mmdet = confusion_matrix(gt, rows, method="mmdet").to_numpy()
    np.testing.assert_array_equal(mmdet, [[1, 0, 0], [1, 0, 1], [0, 0, 0]])
    best = confusion_matrix(gt, rows).to_numpy()
    np.testing.assert_array_equal(best, [[1, 0, 0], [0, 0, 1], [0, 0, 0]])


def test_thresholds_and_normalize():
    gt, rows = case(GTS, DETS)
    low = confusion_matrix(gt, rows, score_thr=0.05)
    assert low.loc["dog", "dog"] == 1 and low.loc["dog", "background"] == 0
    shifted = [(G1, A, False)]
    gt2, rows2 = case(shifted, [([30.0, 0.0, 100.0, 100.0], A, 0.9)])  # IoU 70/130 = 0.54
    assert confusion_matrix(gt2, rows2, iou_thr=0.5).loc["cat", "cat"] == 1
    assert confusion_matrix(gt2, rows2, iou_thr=0.6).loc["cat", "background"] == 1
    norm = confusion_matrix(gt, rows, normalize=True)
    np.testing.assert_allclose(norm.loc["cat"], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(norm.sum(axis=1), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="method must be one of"):
        confusion_matrix(gt, rows, method="hungarian")


def sequential_greedy(det, gt, iou):
    order = np.lexsort((gt, det, -iou))
    used_d, used_g, kept = set(), set(), np.zeros(len(det), bool)
    for p in order:
        if det[p] not in used_d and gt[p] not in used_g:
            kept[p] = True
            used_d.add(det[p])
            used_g.add(gt[p])
    return kept


@pytest.mark.parametrize("seed", range(5))
def test_vectorized_greedy_is_the_sequential_greedy(seed):
    rng = np.random.default_rng(seed)
    n = 300
    det, gt = rng.integers(0, 40, n), rng.integers(0, 30, n)
    iou = np.round(rng.random(n), 1)  # ties
    np.testing.assert_array_equal(greedy_pairs(det, gt, iou, 40, 30),
                                  sequential_greedy(det, gt, iou))


def test_counts_add_up_on_random_cases():
    gt, rows = random_case(3)
    matrix = confusion_matrix(gt, rows, score_thr=0.3).to_numpy()
    n_gt = np.bincount([sorted(c["id"] for c in gt["categories"]).index(a["category_id"])
                        for a in gt["annotations"] if not a["iscrowd"]], minlength=4)
    cats = sorted(c["id"] for c in gt["categories"])
    n_det = np.bincount([cats.index(r["category_id"]) for r in rows if r["score"] >= 0.3],
                        minlength=4)
    np.testing.assert_array_equal(matrix[:-1].sum(axis=1), n_gt)
    np.testing.assert_array_equal(matrix[:, :-1].sum(axis=0), n_det)
