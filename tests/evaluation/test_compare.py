"""Comparing runs: per-image deltas and the paired bootstrap interval of the mAP difference."""

import numpy as np
import pytest
from test_matching import random_case

from detlab.evaluation.compare import _RunArrays, _weighted_map, compare_runs
from detlab.evaluation.curves import mean_average_precision
from detlab.evaluation.matching import match_detections


def runs(seed=0, num_images=30):
    """A ground truth, a noisy run and a clearly better one (most gts found, high scores)."""
    gt, noisy = random_case(seed, num_images=num_images)
    rng = np.random.default_rng(seed)
    good = [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"],
                 score=float(rng.uniform(0.5, 1.0)))
            for a in gt["annotations"] if rng.random() < 0.9]
    good += [dict(r, score=r["score"] * 0.5) for r in noisy[::4]]
    return gt, noisy, good


def test_identical_runs_have_an_interval_around_zero():
    gt, noisy, _ = runs()
    table = match_detections(gt, noisy)
    result = compare_runs({"a": table, "b": table.copy()}, n_boot=100)
    assert result["diff"] == 0
    low, high = result["ci"]
    assert low <= 0 <= high
    assert not result["summary"]["better"].item()
    deltas = result["per_image"].filter(like="d_")
    assert (deltas == 0).all().all()


def test_a_clearly_better_run_has_an_interval_above_zero():
    gt, noisy, good = runs()
    result = compare_runs([match_detections(gt, noisy), match_detections(gt, good)],
                          n_boot=200, seed=1)
    assert result["names"] == ["run0", "run1"]
    assert result["diff"] > 0.3
    low, high = result["ci"]
    assert 0 < low <= result["diff"] <= high
    row = result["summary"].iloc[0]
    assert row["better"] and row["p_value"] < 0.05
    assert result["boot"].shape == (200, 2)


def test_bootstrap_of_all_images_once_is_the_map():
    gt, noisy, good = runs(seed=3)
    for rows in (noisy, good):
        table = match_detections(gt, rows)
        images = np.array(sorted(table.attrs["img_ids"]))
        weighted = _weighted_map(_RunArrays(table, images, 0.5), np.ones((1, len(images))))
        assert weighted[0] == pytest.approx(mean_average_precision(table, 0.5), abs=1e-5)


def test_coco_map_comparison_and_per_image_counts():
    gt, noisy, good = runs(seed=5, num_images=12)
    a, b = match_detections(gt, noisy), match_detections(gt, good)
    result = compare_runs({"noisy": a, "good": b}, iou=None, n_boot=50, score_thr=0.0)
    assert result["map"]["good"] == mean_average_precision(b, None)
    per_image = result["per_image"].set_index("image_id")
    dets = b[b["kind"] == "det"]
    first = per_image.index[0]
    n_gt = ((b["kind"] == "miss") | b["tp@0.50"]) & (b["image_id"] == first)
    tp_good = int(dets.loc[dets["image_id"] == first, "tp@0.50"].sum())
    assert per_image.loc[first, "tp_good"] == tp_good
    assert per_image.loc[first, "fn_good"] == n_gt.sum() - tp_good
    assert (per_image["d_tp_good"] == per_image["tp_good"] - per_image["tp_noisy"]).all()
    changes = (per_image["d_errors_good"].abs()).to_numpy()
    assert (np.diff(changes) <= 0).all()  # largest changes first


def test_one_table_is_not_a_comparison():
    gt, noisy, _ = runs(num_images=4)
    with pytest.raises(ValueError, match="at least two"):
        compare_runs([match_detections(gt, noisy)])
