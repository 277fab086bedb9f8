"""RandomCrop, MinIoURandomCrop, Expand, RandomShift: crop and shift arithmetic by hand, boxes
dropped with their labels, masks and ids, MMDetection's random draws."""

import numpy as np
import pytest
from transform_scenes import assert_consistent, make_sample

from detlab.data.transforms import Expand, MinIoURandomCrop, RandomCrop, RandomShift
from detlab.data.transforms.crop import box_iou

BOXES = [[5, 5, 20, 25], [40, 10, 70, 30], [10, 35, 35, 55]]  # in a 60 x 80 (h x w) image


def _sample(**kwargs):
    return make_sample((60, 80), BOXES, **kwargs)


# ---- RandomCrop ---------------------------------------------------------------------------


def test_random_crop_window_and_boxes_by_hand():
    np.random.seed(7)
    top, left = np.random.randint(0, 60 - 30 + 1), np.random.randint(0, 80 - 40 + 1)
    np.random.seed(7)
    out = RandomCrop(crop_size=(30, 40))(_sample(ignore=[[0, 0, 80, 60]]))
    assert out["img_shape"] == (30, 40, 3) and out["gt_masks"].masks.shape[1:] == (30, 40)
    shifted = np.array(BOXES, np.float32) - [left, top, left, top]
    clipped = np.clip(shifted, 0, [40, 30, 40, 30])
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    np.testing.assert_allclose(out["gt_bboxes"], clipped[keep])
    assert out["gt_labels"].tolist() == np.flatnonzero(keep).tolist()
    assert out["gt_instance_ids"].tolist() == np.flatnonzero(keep).tolist()
    np.testing.assert_allclose(out["gt_bboxes_ignore"], [[0, 0, 40, 30]])
    assert_consistent(out, tol=0, labels_seen=range(3))


@pytest.mark.parametrize("crop_type, crop_size, expected", [
    ("absolute", (30, 100), (30, 80)),  # at most the image
    ("relative", (0.5, 0.25), (30, 20)),  # int(60 * 0.5 + 0.5), int(80 * 0.25 + 0.5)
])
def test_crop_sizes(crop_type, crop_size, expected):
    assert RandomCrop(crop_size, crop_type)._get_crop_size((60, 80)) == expected


def test_random_crop_sizes_drawn_in_range():
    np.random.seed(0)
    for _ in range(20):
        h, w = RandomCrop((0.5, 0.25), "relative_range")._get_crop_size((60, 80))
        assert 30 <= h <= 60 and 20 <= w <= 80
        h, w = RandomCrop((10, 50), "absolute_range")._get_crop_size((60, 40))
        assert 10 <= h <= 50 and 10 <= w <= 40


def test_a_crop_without_boxes_drops_the_sample_unless_allowed():
    crop = RandomCrop((20, 20))

    def window(seed):
        np.random.seed(seed)
        return crop._window((60, 80), (20, 20))

    # a seed whose 20 x 20 window misses the box [0, 0, 10, 10]
    seed = next(s for s in range(100) if max(window(s)[:2]) >= 10)
    np.random.seed(seed)
    assert crop(make_sample((60, 80), [[0, 0, 10, 10]])) is None
    np.random.seed(seed)
    kept = RandomCrop((20, 20), allow_negative_crop=True)(make_sample((60, 80), [[0, 0, 10, 10]]))
    assert len(kept["gt_bboxes"]) == len(kept["gt_labels"]) == len(kept["gt_masks"]) == 0
    assert kept["gt_instance_ids"].shape == (0,)


def test_recompute_bbox_from_masks_and_no_clip():
    sample = make_sample((60, 80), [[0, 0, 30, 30]])
    sample["gt_masks"].masks[0, :, :] = 0
    sample["gt_masks"].masks[0, 5:9, 6:12] = 1  # the mask is smaller than the box
    np.random.seed(0)
    out = RandomCrop((60, 80), recompute_bbox=True)(sample)
    np.testing.assert_array_equal(out["gt_bboxes"], [[6, 5, 12, 9]])
    np.random.seed(0)
    out = RandomCrop((50, 70), bbox_clip_border=False, allow_negative_crop=True)(
        make_sample((60, 80), [[-5, -5, 20, 20], [75, 55, 90, 70]]))
    assert out["gt_bboxes"].shape[0] in (1, 2)  # unclipped, but those outside are gone
    assert np.all(out["gt_bboxes"][:, 0] < 70) and np.all(out["gt_bboxes"][:, 2] > 0)


def test_random_crop_arguments():
    with pytest.raises(ValueError, match="crop_type"):
        RandomCrop((1, 1), "sideways")
    with pytest.raises(ValueError, match="whole pixels"):
        RandomCrop((0.5, 0.5))
    with pytest.raises(ValueError, match=r"fractions in \(0, 1\]"):
        RandomCrop((2, 2), "relative")
    with pytest.raises(ValueError, match="min, max"):
        RandomCrop((50, 10), "absolute_range")


def test_random_crop_cuts_semantic_maps():
    sample = _sample()
    sample["gt_semantic_seg"] = np.arange(60 * 80, dtype=np.int32).reshape(60, 80)
    sample["seg_fields"] = ["gt_semantic_seg"]
    np.random.seed(3)
    out = RandomCrop((30, 40), allow_negative_crop=True)(sample)
    first = int(out["gt_semantic_seg"][0, 0])
    top, left = divmod(first, 80)
    assert out["gt_semantic_seg"].shape == (30, 40)
    np.testing.assert_array_equal(out["img"], _sample()["img"][top:top + 30, left:left + 40])


# ---- MinIoURandomCrop ---------------------------------------------------------------------


def test_box_iou_by_hand():
    iou = box_iou(np.array([[0, 0, 10, 10]], float), np.array([[5, 0, 15, 10], [20, 20, 30, 30]],
                                                             float))
    np.testing.assert_allclose(iou, [[50 / 150, 0]])


def test_min_iou_crop_meets_its_threshold():
    crop = MinIoURandomCrop(min_ious=(0.3,), min_crop_size=0.3)
    for seed in range(30):
        np.random.seed(seed)
        sample = _sample()
        out = crop(sample)
        if out["img_shape"] == (60, 80, 3):
            continue  # mode 1: the image as it is
        h, w = out["img_shape"][:2]
        assert 0.5 <= h / w <= 2 and h >= 0.3 * 60 - 1 and w >= 0.3 * 80 - 1
        assert_consistent(out, tol=0, dropped_invisible=False)
        assert len(out["gt_bboxes"]) >= 1  # a crop keeps at least one box centre


def test_min_iou_crop_mode_one_keeps_the_image(monkeypatch):
    monkeypatch.setattr(np.random, "choice", lambda modes: 1)
    sample = _sample()
    assert MinIoURandomCrop()(sample)["img_shape"] == (60, 80, 3)


def test_min_iou_crop_drops_boxes_by_centre(monkeypatch):
    # mode 0 (no IoU constraint) and a window of the left half: 40 x 60 at (0, 0)
    draws = iter([40.0, 60.0, 0.0, 0.0])
    monkeypatch.setattr(np.random, "choice", lambda modes: 0)
    monkeypatch.setattr(np.random, "uniform", lambda *args: next(draws))
    out = MinIoURandomCrop()(_sample())
    assert out["img_shape"] == (60, 40, 3)
    # box 1 [40, 10, 70, 30] has its centre at x = 55: out; the others are kept
    assert out["gt_labels"].tolist() == [0, 2] and out["gt_instance_ids"].tolist() == [0, 2]
    np.testing.assert_array_equal(out["gt_bboxes"], [BOXES[0], BOXES[2]])


# ---- Expand --------------------------------------------------------------------------------


def test_expand_by_hand():
    np.random.seed(5)
    _, ratio = np.random.uniform(0, 1), np.random.uniform(1, 3)
    left, top = int(np.random.uniform(0, 80 * ratio - 80)), int(np.random.uniform(0, 60 * ratio
                                                                                  - 60))
    np.random.seed(5)
    out = Expand(mean=(1, 2, 3), to_rgb=True, ratio_range=(1, 3), prob=1.0)(_sample())
    assert out["img_shape"] == (int(60 * ratio), int(80 * ratio), 3)
    np.testing.assert_allclose(out["gt_bboxes"], np.array(BOXES) + [left, top, left, top])
    assert out["img"][0, 0].tolist() == [3, 2, 1] or (left == 0 and top == 0)  # mean as BGR
    assert_consistent(out, tol=0)


def test_expand_probability_and_arguments():
    np.random.seed(0)
    unchanged = [Expand(prob=0.0)(_sample())["img_shape"] for _ in range(5)]
    assert unchanged == [(60, 80, 3)] * 5
    with pytest.raises(ValueError, match="1 <= low"):
        Expand(ratio_range=(0.5, 2))
    sample = _sample()
    sample["gt_semantic_seg"], sample["seg_fields"] = np.zeros((60, 80), np.uint8), [
        "gt_semantic_seg"]
    with pytest.raises(ValueError, match="seg_ignore_label"):
        Expand(prob=1.0)(sample)
    out = Expand(prob=1.0, seg_ignore_label=255, ratio_range=(2, 2))(sample)
    assert out["gt_semantic_seg"].shape == (120, 160) and (out["gt_semantic_seg"] == 255).sum() \
        == 120 * 160 - 60 * 80


# ---- RandomShift ----------------------------------------------------------------------------


def test_random_shift_by_hand():
    np.random.seed(2)
    _, dx, dy = np.random.random(), np.random.randint(-32, 32), np.random.randint(-32, 32)
    np.random.seed(2)
    out = RandomShift(shift_ratio=1.0)(_sample())
    expected = np.clip(np.array(BOXES, np.float32) + [dx, dy, dx, dy], 0, [80, 60, 80, 60])
    keep = ((expected[:, 2] - expected[:, 0]) > 1) & ((expected[:, 3] - expected[:, 1]) > 1)
    np.testing.assert_allclose(out["gt_bboxes"], expected[keep])
    # a box of 1 px or less is dropped though a sliver may show (filter_thr_px=1)
    assert_consistent(out, tol=0, dropped_invisible=False)


def test_random_shift_skips_when_every_box_would_go():
    sample = make_sample((60, 80), [[0, 0, 3, 3]])
    shift = RandomShift(shift_ratio=1.0, max_shift_px=30, filter_thr_px=5)
    out = shift(sample)  # the box is never wider than 5 px: nothing moves
    np.testing.assert_array_equal(out["gt_bboxes"], [[0, 0, 3, 3]])
    assert out["img"][0, 0].tolist() == [255, 0, 0]
    np.random.seed(0)
    assert RandomShift(shift_ratio=0.0)(_sample())["img"] is not None
