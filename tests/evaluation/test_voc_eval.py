"""eval_map / eval_recalls: MMDetection 2.x's VOC metrics, checked on cases computed by hand and
against a plain per-detection loop of the same rule."""

import logging

import numpy as np
import pytest

from detlab.evaluation import average_precision, bbox_overlaps, eval_map, eval_recalls
from detlab.evaluation.voc import map_table
from detlab.structures import DetResult


def _ann(boxes, labels, ignore=(), ignore_labels=()):
    return dict(bboxes=np.array(boxes, np.float32).reshape(-1, 4),
                labels=np.array(labels, np.int64),
                bboxes_ignore=np.array(ignore, np.float32).reshape(-1, 4),
                labels_ignore=np.array(ignore_labels, np.int64))


def _dets(*rows):
    """One class's ``(n, 5)`` [x1, y1, x2, y2, score]."""
    return np.array(rows, np.float32).reshape(-1, 5)


def test_bbox_overlaps_iou_iof_and_legacy_pixels():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(bbox_overlaps(a, b), [[50 / 150, 0]], rtol=1e-6)
    np.testing.assert_allclose(bbox_overlaps(a, b, mode="iof"), [[0.5, 0]], rtol=1e-6)
    # pixel-inclusive: 11 x 11 boxes overlapping on 6 x 11
    np.testing.assert_allclose(bbox_overlaps(a, b, use_legacy_coordinate=True),
                               [[66 / (121 + 121 - 66), 0]], rtol=1e-6)
    assert bbox_overlaps(a, np.zeros((0, 4))).shape == (1, 0)


def test_average_precision_area_and_11_points_by_hand():
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 2 / 3])
    # the envelope is 1 up to recall .5 and 2/3 up to 1
    assert average_precision(recall, precision) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # recall >= 0, .1 ... .5 reaches precision 1 (6 points); .6 ... 1 reaches 2/3 (5 points)
    assert average_precision(recall, precision, "11points") == pytest.approx(
        (6 + 5 * 2 / 3) / 11, rel=1e-6)
    both = average_precision(np.stack([recall, recall]), np.stack([precision, precision]))
    assert both.shape == (2,)
    assert average_precision(np.zeros(0), np.zeros(0)) == 0


def test_one_class_duplicates_and_misses():
    # two boxes; the second detection repeats the first (a duplicate), the third finds nothing
    ann = _ann([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])
    dets = [[_dets([0, 0, 10, 10, 0.9], [0, 0, 10, 10, 0.8], [50, 50, 60, 60, 0.7])]]
    mean_ap, per_class = eval_map(dets, [ann], logger="silent")
    np.testing.assert_allclose(per_class[0]["recall"], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(per_class[0]["precision"], [1, 0.5, 1 / 3])
    assert mean_ap == pytest.approx(0.5)  # recall never passes .5, at precision 1
    assert per_class[0]["num_gts"] == 2 and per_class[0]["num_dets"] == 3
    # VOC2007: recall >= 0, .1 ... .5 (6 of 11 points) at precision 1
    assert eval_map(dets, [ann], dataset="voc07", logger="silent")[0] == pytest.approx(6 / 11)


def test_multi_point_curve():
    ann = _ann([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])
    dets = [[_dets([0, 0, 10, 10, 0.9], [40, 40, 50, 50, 0.8], [20, 20, 30, 30, 0.7])]]
    mean_ap, _ = eval_map(dets, [ann], logger="silent")
    assert mean_ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert eval_map(dets, [ann], mode="11points", logger="silent")[0] == pytest.approx(
        (6 + 5 * 2 / 3) / 11, rel=1e-6)


def test_detections_on_ignored_boxes_are_neither_right_nor_wrong():
    ann = _ann([[0, 0, 10, 10]], [0], ignore=[[20, 20, 30, 30]], ignore_labels=[0])
    dets = [[_dets([20, 20, 30, 30, 0.9], [0, 0, 10, 10, 0.8], [40, 40, 50, 50, 0.7])]]
    mean_ap, per_class = eval_map(dets, [ann], logger="silent")
    # in score order: nothing, a hit, a miss -> recall 0, 1, 1 and precision 0, 1, .5
    np.testing.assert_allclose(per_class[0]["recall"], [0, 1, 1])
    np.testing.assert_allclose(per_class[0]["precision"], [0, 1, 0.5])
    assert per_class[0]["num_gts"] == 1 and mean_ap == pytest.approx(1.0)
    # without labels_ignore, ignored boxes do not count (MMDetection): the first is a miss
    plain = dict(ann)
    plain.pop("labels_ignore")
    assert eval_map(dets, [plain], logger="silent")[0] == pytest.approx(0.5)


def test_classes_without_ground_truth_are_left_out_of_the_mean():
    anns = [_ann([[0, 0, 10, 10]], [0]), _ann([], [])]
    dets = [[_dets([0, 0, 10, 10, 0.9]), _dets([1, 1, 5, 5, 0.5])],
            [_dets(), _dets([1, 1, 5, 5, 0.5])]]
    mean_ap, per_class = eval_map(dets, anns, logger="silent")
    assert mean_ap == pytest.approx(1.0)
    assert per_class[1]["num_gts"] == 0 and per_class[1]["ap"] == 0
    assert per_class[1]["num_dets"] == 2


def test_a_detection_only_matches_boxes_of_its_class():
    ann = _ann([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 1])
    dets = [[_dets([0, 0, 10, 10, 0.9]), _dets([0, 0, 10, 10, 0.8])]]
    mean_ap, per_class = eval_map(dets, [ann], logger="silent")
    assert mean_ap == pytest.approx(1.0)
    assert [r["ap"] for r in per_class] == [pytest.approx(1.0), pytest.approx(1.0)]


def test_scale_ranges_by_hand():
    small, large = [0, 0, 4, 4], [0, 0, 20, 20]  # areas 16 and 400
    ann = _ann([small, large], [0, 0])
    dets = [[_dets([50, 50, 55, 55, 0.95],  # a small miss
                   small + [0.9], large + [0.8],
                   [60, 60, 80, 80, 0.6])]]  # a large miss
    mean_ap, per_class = eval_map(dets, [ann], scale_ranges=[(0, 10), (10, 100)],
                                  logger="silent")
    # small range: miss, hit, (large hit: out of range), (large miss: out of range)
    #   recall 0, 1, 1, 1; precision 0, .5, .5, .5 -> AP .5
    # large range: (small miss: out), (small hit: out), hit, miss -> AP 1
    assert mean_ap == [pytest.approx(0.5), pytest.approx(1.0)]
    np.testing.assert_array_equal(per_class[0]["num_gts"], [1, 1])
    np.testing.assert_allclose(per_class[0]["precision"][0], [0, 0.5, 0.5, 0.5])


def test_legacy_coordinates_count_pixels_inclusively():
    ann = _ann([[0, 0, 9, 9]], [0])
    dets = [[_dets([0, 0, 9, 4, 0.9])]]
    # 10 x 5 of 10 x 10 pixels: IoU .5 (a hit); as continuous boxes 9 x 4 of 9 x 9 (a miss)
    assert eval_map(dets, [ann], use_legacy_coordinate=True, logger="silent")[0] == 1.0
    assert eval_map(dets, [ann], logger="silent")[0] == 0.0


def test_detresults_and_mmdetection_results_agree():
    anns = [_ann([[0, 0, 10, 10], [5, 5, 30, 30]], [0, 1]), _ann([[3, 3, 9, 9]], [1])]
    mmdet = [[_dets([0, 0, 10, 10, 0.9]), _dets([5, 5, 25, 30, 0.6], [0, 0, 3, 3, 0.7])],
             [_dets([1, 1, 2, 2, 0.3]), _dets([3, 3, 9, 8, 0.8])]]
    ours = [DetResult.from_mmdet(r) for r in mmdet]
    a, per_a = eval_map(mmdet, anns, logger="silent")
    b, per_b = eval_map(ours, anns, logger="silent", num_classes=2)
    assert a == pytest.approx(b)
    for x, y in zip(per_a, per_b, strict=True):
        assert x["ap"] == pytest.approx(y["ap"])


def test_bad_labels_and_lengths_are_reported():
    ann = _ann([[0, 0, 10, 10]], [0])
    with pytest.raises(ValueError, match="image 0 have labels \\[3\\]"):
        eval_map([DetResult([[0, 0, 1, 1]], [1.0], [3])], [ann], num_classes=2, logger="silent")
    with pytest.raises(ValueError, match="2 detection results for 1 annotations"):
        eval_map([[_dets()], [_dets()]], [ann], logger="silent")


def test_summary_goes_to_print_logger_or_nowhere(capsys, caplog):
    ann = _ann([[0, 0, 10, 10]], [0])
    dets = [[_dets([0, 0, 10, 10, 0.9])]]
    eval_map(dets, [ann], dataset=["cat"])
    assert "cat" in capsys.readouterr().out
    eval_map(dets, [ann], logger="silent")
    assert capsys.readouterr().out == ""
    with caplog.at_level(logging.INFO, logger="voc-test"):
        eval_map(dets, [ann], dataset=["cat"], logger="voc-test")
    assert "mAP: 1.000" in caplog.text


def test_map_table():
    ann = _ann([[0, 0, 10, 10]], [0])
    _, per_class = eval_map([[_dets([0, 0, 10, 10, 0.9]), _dets()]], [ann], logger="silent")
    table = map_table(per_class, ["cat", "dog"])
    assert table["class"].tolist() == ["cat", "dog"]
    assert table["gts"].tolist() == [1, 0] and table["ap"].tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------------------------
# the vectorized rule against a loop over detections
# --------------------------------------------------------------------------------------------


def _loop_ap(dets, anns, iou_thr):
    """Per class, per image, detections in score order: the best-overlapping box (ignored ones
    last) decides; the first to claim a normal box is a hit."""
    aps = []
    for c in range(2):
        scores, hits, misses, total = [], [], [], 0
        for per_image, ann in zip(dets, anns, strict=True):
            d = per_image[c]
            gts = ann["bboxes"][ann["labels"] == c]
            ign = ann["bboxes_ignore"][ann["labels_ignore"] == c]
            total += len(gts)
            boxes = np.concatenate([gts, ign])
            taken = set()
            for i in np.argsort(-d[:, 4], kind="stable"):
                ious = bbox_overlaps(d[i:i + 1, :4], boxes)[0] if len(boxes) else np.zeros(0)
                best = int(ious.argmax()) if ious.size else -1
                hit = miss = 0
                if ious.size and ious[best] >= iou_thr:
                    if best < len(gts):
                        hit, miss = (0, 1) if best in taken else (1, 0)
                        taken.add(best)
                else:
                    miss = 1
                scores.append(d[i, 4])
                hits.append(hit)
                misses.append(miss)
        order = np.argsort(-np.array(scores), kind="stable")
        tp = np.cumsum(np.array(hits)[order])
        fp = np.cumsum(np.array(misses)[order])
        eps = np.finfo(np.float32).eps
        if total:
            aps.append(average_precision(tp / max(total, eps), tp / np.maximum(tp + fp, eps)))
    return float(np.mean(aps)) if aps else 0.0


def _random_case(rng):
    def boxes(n):
        xy = rng.integers(0, 40, (n, 2))
        wh = rng.integers(4, 20, (n, 2))
        return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)

    anns, dets = [], []
    for _ in range(4):
        n, k = rng.integers(0, 5), rng.integers(0, 2)
        anns.append(_ann(boxes(n), rng.integers(0, 2, n), boxes(k), rng.integers(0, 2, k)))
        per_class = []
        for _c in range(2):
            m = rng.integers(0, 6)
            jitter = boxes(m)
            if n and m:  # some detections near the real boxes
                near = anns[-1]["bboxes"][rng.integers(0, n, m)] + rng.integers(-3, 4, (m, 4))
                jitter = np.where(rng.random((m, 1)) < 0.6, near, jitter)
            per_class.append(np.concatenate([jitter, rng.random((m, 1))], axis=1))
        dets.append(per_class)
    return dets, anns


@pytest.mark.parametrize("seed", range(12))
def test_vectorized_rule_matches_the_loop(seed):
    dets, anns = _random_case(np.random.default_rng(seed))
    for thr in (0.3, 0.5):
        expected = _loop_ap(dets, anns, thr)
        assert eval_map(dets, anns, iou_thr=thr, logger="silent")[0] == pytest.approx(
            expected, abs=1e-6)


# --------------------------------------------------------------------------------------------
# recall
# --------------------------------------------------------------------------------------------


def test_eval_recalls_by_hand():
    gts = [np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32),
           np.array([[0, 0, 10, 10]], np.float32)]
    # in score order: A exactly, B at IoU .5, B at IoU .9 (given lowest score on purpose)
    proposals = [np.array([[20, 0, 30, 5, 0.8], [0, 0, 10, 10, 0.9], [21, 0, 30, 10, 0.7]],
                          np.float32), np.zeros((0, 5), np.float32)]
    recalls = eval_recalls(gts, proposals, [1, 2, 3], [0.5, 0.8], logger="silent")
    np.testing.assert_allclose(recalls, [[1 / 3, 1 / 3], [2 / 3, 1 / 3], [2 / 3, 2 / 3]])
    one = eval_recalls(gts, proposals, 3, 0.5, logger="silent")
    assert one.shape == (1, 1) and one[0, 0] == pytest.approx(2 / 3)


def test_eval_recalls_pairs_each_proposal_once():
    gts = [np.array([[0, 0, 10, 10], [0, 0, 10, 9]], np.float32)]
    # one proposal covering both boxes: only one of them is found
    recalls = eval_recalls(gts, [np.array([[0, 0, 10, 10]], np.float32)], [1], [0.5],
                           logger="silent")
    assert recalls[0, 0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no ground-truth box"):
        eval_recalls([np.zeros((0, 4))], [np.zeros((0, 4))], [1], logger="silent")
