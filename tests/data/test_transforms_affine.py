"""RandomAffine: the warp matrix and the box arithmetic by hand, filters, masks and maps."""

import math

import numpy as np
import pytest
from transform_scenes import assert_consistent, make_sample

from detlab.data.transforms import RandomAffine
from detlab.data.transforms.affine import (
    rotation_matrix,
    scaling_matrix,
    shear_matrix,
    translation_matrix,
)
from detlab.data.transforms.imageops import imwarp
from detlab.data.transforms.instances import transform_boxes

BOXES = [[5, 5, 20, 25], [40, 10, 70, 30]]


def test_matrices_by_hand():
    np.testing.assert_allclose(rotation_matrix(90) @ [1, 0, 1], [0, 1, 1], atol=1e-6)
    np.testing.assert_allclose(scaling_matrix(2) @ [3, 4, 1], [6, 8, 1])
    np.testing.assert_allclose(shear_matrix(45, 0) @ [0, 2, 1], [2, 2, 1], atol=1e-6)
    np.testing.assert_allclose(translation_matrix(5, -2) @ [1, 1, 1], [6, -1, 1])


def test_draw_order_is_mmdetection_s():
    affine = RandomAffine(max_rotate_degree=10, max_translate_ratio=0.1,
                          scaling_ratio_range=(0.5, 1.5), max_shear_degree=2)
    np.random.seed(4)
    degrees, ratio = np.random.uniform(-10, 10), np.random.uniform(0.5, 1.5)
    shear_x, shear_y = np.random.uniform(-2, 2), np.random.uniform(-2, 2)
    tx, ty = np.random.uniform(-0.1, 0.1) * 80, np.random.uniform(-0.1, 0.1) * 60
    expected = (translation_matrix(tx, ty) @ shear_matrix(shear_x, shear_y)
                @ rotation_matrix(degrees) @ scaling_matrix(ratio))
    np.random.seed(4)
    matrix, drawn_ratio = affine.draw_matrix(60, 80)
    np.testing.assert_allclose(matrix, expected, rtol=1e-6)
    assert drawn_ratio == pytest.approx(ratio)


def test_boxes_of_warped_corners():
    quarter_turn = translation_matrix(60, 0) @ rotation_matrix(90)  # x' = 60 - y, y' = x
    np.testing.assert_allclose(transform_boxes(np.array([[10, 20, 30, 25]], np.float32),
                                               quarter_turn), [[35, 10, 40, 30]], atol=1e-4)
    turned = RandomAffine(border=(10, -10)).apply(make_sample((60, 80), BOXES), quarter_turn)
    assert turned["img_shape"] == (80, 60, 3)  # 60 + 2 * 10 high, 80 - 2 * 10 wide
    np.testing.assert_allclose(turned["gt_bboxes"], [[35, 5, 55, 20], [30, 40, 50, 70]],
                               atol=1e-4)
    assert_consistent(turned, tol=0)


def test_boxes_leaving_the_image_are_dropped_with_their_companions():
    far = translation_matrix(-50, 0)
    out = RandomAffine().apply(make_sample((60, 80), BOXES), far)
    assert out["gt_labels"].tolist() == [1] and out["gt_instance_ids"].tolist() == [1]
    np.testing.assert_allclose(out["gt_bboxes"], [[0, 10, 20, 30]])
    assert len(out["gt_masks"]) == 1
    assert_consistent(out, tol=0, labels_seen=[0, 1])


def test_filter_rules_when_not_skipped():
    squeeze = np.diag([1.0, 0.05, 1.0])  # boxes become flat: area ratio and size fail
    kept = RandomAffine(skip_filter=True).apply(make_sample((60, 80), BOXES), squeeze, 1.0)
    assert len(kept["gt_bboxes"]) == 2
    dropped = RandomAffine(skip_filter=False).apply(make_sample((60, 80), BOXES), squeeze, 1.0)
    assert len(dropped["gt_bboxes"]) == len(dropped["gt_masks"]) == 0


def test_the_image_warp_keeps_box_coordinates():
    img = np.zeros((20, 20), np.uint8)
    img[4:8, 6:10] = 255
    doubled = imwarp(img, scaling_matrix(2), (40, 40), interpolation="nearest")
    rows, cols = np.nonzero(doubled)
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (12, 8, 20, 16)
    shifted = imwarp(np.dstack([img] * 3), translation_matrix(3, 1), (20, 20), (7, 8, 9))
    assert shifted[5, 9].tolist() == [255] * 3 and shifted[0, 0].tolist() == [7, 8, 9]
    floats = imwarp(img.astype(np.float32), translation_matrix(3, 1), (20, 20), 1.5)
    assert floats.dtype == np.float32 and floats[5, 9] == 255 and floats[0, 0] == 1.5


def test_rotation_keeps_masks_and_pixels_together():
    np.random.seed(0)
    out = RandomAffine(max_rotate_degree=30, border_val=(0, 0, 0))(
        make_sample((60, 80), BOXES, polygons=True))
    assert_consistent(out, tol=2.0, cut_boxes_contain=True)
    assert isinstance(out["gt_masks"].masks, list)  # polygons stay polygons


def test_semantic_maps_are_warped_and_filled_with_255():
    sample = make_sample((60, 80), BOXES)
    sample["gt_semantic_seg"] = np.ones((60, 80), np.uint8)
    sample["seg_fields"] = ["gt_semantic_seg"]
    out = RandomAffine().apply(sample, translation_matrix(10, 0))
    assert (out["gt_semantic_seg"][:, :10] == 255).all() and (out["gt_semantic_seg"][:, 10:]
                                                              == 1).all()


def test_arguments():
    with pytest.raises(ValueError, match="max_translate_ratio"):
        RandomAffine(max_translate_ratio=2)
    with pytest.raises(ValueError, match="scaling_ratio_range"):
        RandomAffine(scaling_ratio_range=(0, 1))
    assert "max_rotate_degree=10.0" in repr(RandomAffine())
    assert math.isclose(RandomAffine().max_shear_degree, 2.0)
