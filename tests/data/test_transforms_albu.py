"""Albu: albumentations inside a pipeline -- optional import, boxes with their companions,
masks, extra keys, and the errors a user can act on."""

import sys

import numpy as np
import pytest
from transform_scenes import assert_consistent, make_sample

from detlab.data.masks import BitmapMasks
from detlab.data.transforms import Albu

BOXES = [[2, 2, 12, 10], [14, 4, 28, 18]]
BBOX_PARAMS = dict(type="BboxParams", format="pascal_voc", label_fields=["gt_labels"],
                   filter_lost_elements=True)


def test_a_missing_albumentations_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "albumentations", None)
    with pytest.raises(ImportError, match="pip install albumentations"):
        Albu(transforms=[dict(type="HorizontalFlip")])


def test_unknown_transforms_are_named():
    with pytest.raises(ValueError, match="no 'HorizontalFlap'.*HorizontalFlip"):
        Albu(transforms=[dict(type="HorizontalFlap")])


def test_boxes_masks_and_ids_follow_and_polygons_become_bitmaps():
    albu = Albu([dict(type="HorizontalFlip", p=1.0)], bbox_params=BBOX_PARAMS)
    out = albu(make_sample((20, 30), BOXES, polygons=True))
    assert isinstance(out["gt_masks"], BitmapMasks)
    np.testing.assert_allclose(out["gt_bboxes"], [[18, 2, 28, 10], [2, 4, 16, 18]], atol=1e-3)
    assert out["gt_labels"].dtype == np.int64
    assert_consistent(out, tol=1e-3)


def test_lost_boxes_and_skip_img_without_anno():
    crop = [dict(type="Crop", x_min=0, y_min=0, x_max=13, y_max=20, p=1.0)]
    out = Albu(crop, bbox_params=BBOX_PARAMS, update_pad_shape=True)(
        make_sample((20, 30), BOXES, ignore=[[0, 0, 3, 3]]))
    assert out["gt_labels"].tolist() == [0] and out["gt_instance_ids"].tolist() == [0]
    assert out["img_shape"] == out["pad_shape"] == (20, 13, 3) and len(out["gt_masks"]) == 1
    far = [dict(type="Crop", x_min=0, y_min=12, x_max=10, y_max=20, p=1.0)]
    skipping = Albu(far, bbox_params=BBOX_PARAMS, skip_img_without_anno=True)
    assert skipping(make_sample((20, 30), BOXES)) is None


def test_without_bbox_params_boxes_must_not_move():
    colour = Albu([dict(type="ToGray", p=1.0)])
    out = colour(make_sample((20, 30), BOXES))
    np.testing.assert_array_equal(out["gt_bboxes"], BOXES)
    resize = Albu([dict(type="Resize", height=10, width=15)])
    with pytest.raises(ValueError, match="bbox_params"):
        resize(make_sample((20, 30), BOXES))


def test_keymap_passes_semantic_maps():
    sample = make_sample((20, 30), BOXES)
    sample["gt_semantic_seg"] = np.zeros((20, 30), np.uint8)
    sample["gt_semantic_seg"][:, :5] = 1
    keymap = dict(img="image", gt_bboxes="bboxes", gt_masks="masks", gt_semantic_seg="mask")
    out = Albu([dict(type="HorizontalFlip", p=1.0)], bbox_params=BBOX_PARAMS,
               keymap=keymap)(sample)
    assert (out["gt_semantic_seg"][:, 25:] == 1).all() and (out["gt_semantic_seg"][:, :25]
                                                            == 0).all()
