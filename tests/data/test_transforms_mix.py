"""Mosaic and MixUp with mix_results built by hand: output sizes, where each image lands, and the
bookkeeping of boxes, labels, masks and instance ids."""

import numpy as np
import pytest
from transform_scenes import assert_consistent, make_sample

from detlab.data.transforms import MixUp, Mosaic

# four 30 x 40 (h x w) images, one rectangle each, labels 0..3
CELL_BOXES = [[5, 5, 15, 20], [20, 2, 35, 12], [3, 10, 13, 25], [25, 15, 38, 28]]


def _cells(polygons=False):
    return [make_sample((30, 40), [box], [label], polygons=polygons)
            for label, box in enumerate(CELL_BOXES)]


def _with_mix(samples):
    first, *others = samples
    first["mix_results"] = others
    return first


# ---- Mosaic --------------------------------------------------------------------------------


def test_mosaic_tiles_four_images_around_a_fixed_centre():
    out = Mosaic(img_scale=(30, 40), center_ratio_range=(1, 1))(_with_mix(_cells()))
    assert out["img"].shape == out["img_shape"] == (60, 80, 3)
    # the centre is (40, 30): the images tile the canvas without being cut
    offsets = np.array([[0, 0], [40, 0], [0, 30], [40, 30]])
    expected = np.array(CELL_BOXES, np.float32) + np.tile(offsets, 2)
    np.testing.assert_allclose(out["gt_bboxes"], expected)
    assert out["gt_labels"].tolist() == [0, 1, 2, 3]
    assert out["gt_instance_ids"].tolist() == [0, 1, 2, 3]  # the others get fresh ids
    assert_consistent(out, tol=0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mosaic_centre_cut_and_resize(seed):
    samples = _cells(polygons=seed % 2 == 1)
    samples[1] = make_sample((60, 80), [[40, 4, 70, 24]], [1])  # twice as big: resized by 0.5
    np.random.seed(seed)
    _, ux, uy = np.random.uniform(0, 1), np.random.uniform(0.5, 1.5), np.random.uniform(0.5, 1.5)
    cx, cy = int(ux * 40), int(uy * 30)
    np.random.seed(seed)
    out = Mosaic(img_scale=(30, 40), pad_val=0)(_with_mix(samples))
    origins = [(cx - 40, cy - 30), (cx, cy - 30), (cx - 40, cy), (cx, cy)]
    expected = [np.array(CELL_BOXES[i], np.float32) + [*origins[i], *origins[i]]
                for i in range(4)]
    expected = np.clip(np.stack(expected), 0, [80, 60, 80, 60])
    keep = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
    np.testing.assert_allclose(out["gt_bboxes"], expected[keep], atol=1e-4)
    assert out["gt_labels"].tolist() == np.flatnonzero(keep).tolist()
    assert_consistent(out, tol=0, labels_seen=range(4))


def test_mosaic_filter_probability_and_ignore_boxes():
    small = _cells()
    small[2] = make_sample((30, 40), [[3, 10, 5, 12]], [2])  # 2 x 2 px
    out = Mosaic(img_scale=(30, 40), center_ratio_range=(1, 1), skip_filter=False,
                 min_bbox_size=3)(_with_mix(small))
    assert out["gt_labels"].tolist() == [0, 1, 3]
    with_ignore = _cells()
    with_ignore[0]["gt_bboxes_ignore"] = np.array([[0, 0, 4, 4]], np.float32)
    with_ignore[3]["gt_bboxes_ignore"] = np.array([[0, 0, 4, 4]], np.float32)
    out = Mosaic(img_scale=(30, 40), center_ratio_range=(1, 1))(_with_mix(with_ignore))
    np.testing.assert_allclose(out["gt_bboxes_ignore"], [[0, 0, 4, 4], [40, 30, 44, 34]])
    np.random.seed(0)
    skipped = Mosaic(img_scale=(30, 40), prob=0.0)(_with_mix(_cells()))
    assert skipped["img_shape"] == (30, 40, 3)


def test_mosaic_needs_mix_results():
    with pytest.raises(ValueError, match="MultiImageMixDataset"):
        Mosaic()(_cells()[0])
    with pytest.raises(ValueError, match="3 more"):
        Mosaic()(dict(_cells()[0], mix_results=_cells()[:2]))
    samples = _cells()
    samples[2].pop("gt_masks")
    with pytest.raises(ValueError, match="with_mask=True"):
        Mosaic()(_with_mix(samples))


def test_get_indexes():
    np.random.seed(0)
    indexes = Mosaic().get_indexes(list(range(7)))
    assert len(indexes) == 3 and all(0 <= i < 7 for i in indexes)

    class Dataset:
        def __len__(self):
            return 50

        def get_ann_info(self, index):
            return dict(bboxes=np.zeros((1 if index == 42 else 0, 4)))

    np.random.seed(0)
    found = MixUp(max_iters=1000).get_indexes(Dataset())
    assert found == [42]
    assert len(MixUp(max_iters=1).get_indexes(Dataset())) == 1


# ---- MixUp ---------------------------------------------------------------------------------


def test_mixup_blends_half_and_half_and_appends_boxes():
    main, other = _cells()[:2]
    main["mix_results"] = [other]
    expected_img = (0.5 * main["img"].astype(np.float32)
                    + 0.5 * other["img"].astype(np.float32)).astype(np.uint8)
    out = MixUp(img_scale=(30, 40), ratio_range=(1, 1), flip_ratio=1.0)(main)
    np.testing.assert_array_equal(out["img"], expected_img)
    np.testing.assert_allclose(out["gt_bboxes"], [CELL_BOXES[0], CELL_BOXES[1]])
    assert out["gt_labels"].tolist() == [0, 1] and out["gt_instance_ids"].tolist() == [0, 1]
    assert len(out["gt_masks"]) == 2
    np.testing.assert_array_equal(out["gt_masks"].get_bboxes(), out["gt_bboxes"])


def test_mixup_flips_the_other_image():
    main, other = _cells()[:2]
    main["mix_results"] = [other]
    out = MixUp(img_scale=(30, 40), ratio_range=(1, 1), flip_ratio=0.0)(main)
    x1, y1, x2, y2 = CELL_BOXES[1]
    np.testing.assert_allclose(out["gt_bboxes"][1], [40 - x2, y1, 40 - x1, y2])
    np.testing.assert_array_equal(out["gt_masks"].get_bboxes()[1], out["gt_bboxes"][1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixup_jitter_and_random_cut(seed):
    main, other = _cells()[:2]
    main["mix_results"] = [other]
    np.random.seed(seed)
    np.random.uniform(2, 2), np.random.uniform(0, 1)
    y_off, x_off = np.random.randint(0, 30), np.random.randint(0, 40)
    np.random.seed(seed)
    out = MixUp(img_scale=(30, 40), ratio_range=(2, 2), flip_ratio=1.0)(main)
    assert out["img_shape"] == (30, 40, 3)
    moved = np.array(CELL_BOXES[1], np.float32) * 2 - [x_off, y_off, x_off, y_off]
    moved = np.clip(moved, 0, [40, 30, 40, 30])
    expected = [CELL_BOXES[0]] + ([moved] if moved[2] > moved[0] and moved[3] > moved[1] else [])
    np.testing.assert_allclose(out["gt_bboxes"], expected)
    assert len(out["gt_masks"]) == len(out["gt_labels"]) == len(expected)


def test_mixup_with_an_image_without_boxes_changes_nothing():
    main = _cells()[0]
    main["mix_results"] = [make_sample((30, 40), np.zeros((0, 4)))]
    out = MixUp(img_scale=(30, 40))(main)
    np.testing.assert_array_equal(out["img"], _cells()[0]["img"])
    with pytest.raises(ValueError, match="mix_results"):
        MixUp()(_cells()[0])


def test_mixup_filters_when_asked():
    main, other = _cells()[:2]
    other = make_sample((30, 40), [[20, 2, 23, 12]], [1])  # 3 px wide
    main["mix_results"] = [other]
    out = MixUp(img_scale=(30, 40), ratio_range=(1, 1), flip_ratio=1.0, skip_filter=False,
                min_bbox_size=5)(main)
    assert out["gt_labels"].tolist() == [0]
    assert MixUp(img_scale=(20, 10)).img_scale == (20, 10)
