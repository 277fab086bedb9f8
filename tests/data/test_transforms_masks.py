"""Instance masks and semantic maps through loading, the geometric transforms, formatting and
collate; FilterAnnotations, LoadProposals, SegRescale."""

import numpy as np
import pytest
import torch
from PIL import Image
from transform_scenes import assert_consistent, make_sample

from detlab.data import collate
from detlab.data.masks import BitmapMasks, PolygonMasks, segmentation_to_rle
from detlab.data.transforms import (
    Collect,
    DefaultFormatBundle,
    FilterAnnotations,
    LoadAnnotations,
    LoadProposals,
    Pad,
    RandomFlip,
    Resize,
    SegRescale,
)

BOXES = [[3, 2, 10, 8], [20, 10, 29, 19]]  # in a 20 x 30 (h x w) image
POLYGONS = [[[x1, y1, x2, y1, x2, y2, x1, y2]] for x1, y1, x2, y2 in BOXES]


def _annotated(masks, **info):
    return dict(img_info=dict(id=3, height=20, width=30, **info), bbox_fields=[],
                mask_fields=[], seg_fields=[],
                ann_info=dict(bboxes=np.array(BOXES, np.float32), labels=np.array([1, 2]),
                              masks=masks))


# ---- LoadAnnotations -----------------------------------------------------------------------


@pytest.mark.parametrize("poly2mask, kind", [(True, BitmapMasks), (False, PolygonMasks)])
def test_load_polygon_masks(poly2mask, kind):
    out = LoadAnnotations(with_mask=True, poly2mask=poly2mask)(_annotated(POLYGONS))
    assert isinstance(out["gt_masks"], kind) and out["mask_fields"] == ["gt_masks"]
    assert (out["gt_masks"].height, out["gt_masks"].width) == (20, 30)
    np.testing.assert_array_equal(out["gt_masks"].get_bboxes(), BOXES)


def test_load_rle_masks_and_take_the_loaded_image_size():
    rle = segmentation_to_rle(POLYGONS[0], 20, 30)
    rle["counts"] = rle["counts"].decode()  # as in a json file
    sample = _annotated([rle, POLYGONS[1]])
    sample["img"] = np.zeros((20, 30, 3), np.uint8)
    sample["img_info"].update(height=999, width=999)  # the loaded image wins
    out = LoadAnnotations(with_mask=True)(sample)
    np.testing.assert_array_equal(out["gt_masks"].get_bboxes(), BOXES)


def test_mask_annotation_errors_name_the_image():
    with pytest.raises(ValueError, match=r"boxes \[1\] of image id 3 have no segmentation"):
        LoadAnnotations(with_mask=True)(_annotated([POLYGONS[0], None]))
    with pytest.raises(ValueError, match="image id 3 has 2 boxes but 1 masks"):
        LoadAnnotations(with_mask=True)(_annotated([POLYGONS[0]]))
    with pytest.raises(ValueError, match="image id 3 cannot be read.*polygons or an RLE"):
        LoadAnnotations(with_mask=True)(_annotated([POLYGONS[0], "oops"]))
    rle = segmentation_to_rle(POLYGONS[0], 20, 30)
    with pytest.raises(ValueError, match="poly2mask=True"):
        LoadAnnotations(with_mask=True, poly2mask=False)(_annotated([rle, POLYGONS[1]]))


def test_load_semantic_maps(tmp_path):
    seg = np.arange(600, dtype=np.uint8).reshape(20, 30) % 7
    Image.fromarray(seg).save(tmp_path / "map.png")
    sample = _annotated(POLYGONS)
    sample["ann_info"]["seg_map"], sample["seg_prefix"] = "map.png", str(tmp_path)
    out = LoadAnnotations(with_seg=True)(sample)
    np.testing.assert_array_equal(out["gt_semantic_seg"], seg)
    assert out["seg_fields"] == ["gt_semantic_seg"]
    sample = _annotated(POLYGONS)
    sample["ann_info"]["seg_map"], sample["seg_prefix"] = "nope.png", str(tmp_path)
    with pytest.raises(FileNotFoundError, match="image id 3.*seg_prefix"):
        LoadAnnotations(with_seg=True)(sample)


def test_denormalized_boxes():
    sample = _annotated(POLYGONS)
    sample["ann_info"]["bboxes"] = np.array([[0.1, 0.1, 0.5, 0.5]], np.float32)
    out = LoadAnnotations(denorm_bbox=True)(sample)
    np.testing.assert_allclose(out["gt_bboxes"], [[3, 2, 15, 10]])


# ---- geometric transforms with masks and maps ----------------------------------------------


def _with_map(sample):
    h, w = sample["img"].shape[:2]
    sample["gt_semantic_seg"] = np.zeros((h, w), np.uint8)
    for label, (x1, y1, x2, y2) in zip(sample["gt_labels"], sample["gt_bboxes"].astype(int),
                                       strict=True):
        sample["gt_semantic_seg"][y1:y2, x1:x2] = label + 1
    sample["seg_fields"] = ["gt_semantic_seg"]
    return sample


@pytest.mark.parametrize("polygons", [False, True])
@pytest.mark.parametrize("transform", [
    Resize(img_scale=(60, 40)), Resize(img_scale=(45, 50), keep_ratio=False),
    RandomFlip(1.0, "diagonal"), Pad(size=(32, 40)), Pad(size_divisor=16)])
def test_masks_and_maps_follow_the_image(transform, polygons):
    out = transform(_with_map(make_sample((20, 30), BOXES, polygons=polygons)))
    assert_consistent(out, tol=1.0)
    assert out["gt_semantic_seg"].shape == out["img"].shape[:2]
    for label, box in zip(out["gt_labels"], out["gt_bboxes"], strict=True):
        rows, cols = np.nonzero(out["gt_semantic_seg"] == label + 1)
        np.testing.assert_allclose([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1],
                                   box, atol=1)
    if isinstance(transform, Pad):
        assert (out["gt_semantic_seg"][20:] == 255).all()  # maps pad with 255


def test_seg_rescale():
    sample = _with_map(make_sample((20, 30), BOXES))
    out = SegRescale(scale_factor=0.5)(sample)
    assert out["gt_semantic_seg"].shape == (10, 15)
    assert set(np.unique(out["gt_semantic_seg"]).tolist()) == {0, 1, 2}
    assert SegRescale()(dict(seg_fields=["x"], x=np.zeros((2, 2))))["x"].shape == (2, 2)


# ---- formatting and collate ----------------------------------------------------------------


def _formatted(polygons, shape=(20, 30)):
    sample = make_sample(shape, BOXES, polygons=polygons)
    sample.update(flip=False, flip_direction=None, scale_factor=np.ones(4, np.float32))
    sample = DefaultFormatBundle()(sample)
    return Collect(keys=["img", "gt_bboxes", "gt_labels", "gt_masks"])(sample)


def test_default_format_bundle_keeps_mask_objects():
    out = _formatted(polygons=True)
    assert isinstance(out["gt_masks"], PolygonMasks)
    bundled = DefaultFormatBundle()(dict(img=np.zeros((4, 5, 3), np.uint8),
                                         gt_semantic_seg=np.ones((4, 5), np.uint8)))
    assert bundled["gt_semantic_seg"].shape == (1, 4, 5)
    with pytest.raises(ValueError, match="Pad"):
        DefaultFormatBundle(pad_val=dict(img=114))


@pytest.mark.parametrize("polygons", [False, True])
def test_collate_pads_masks_to_the_batch(polygons):
    batch = collate([_formatted(polygons), _formatted(polygons, shape=(32, 24))])
    assert batch.images.shape == (2, 3, 32, 30)
    masks = batch.targets[0]["masks"]
    assert masks.dtype == torch.bool and masks.shape == (2, 32, 30)
    assert not masks[:, 20:].any() and not batch.targets[1]["masks"][:, :, 24:].any()
    rows, cols = torch.nonzero(masks[1], as_tuple=True)
    assert [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] == BOXES[1]


def test_collate_semantic_maps_and_mask_errors():
    sample = _formatted(False)
    sample["gt_semantic_seg"] = torch.ones(1, 20, 30, dtype=torch.uint8)
    other = _formatted(False, shape=(24, 30))
    other["gt_semantic_seg"] = torch.ones(1, 24, 30, dtype=torch.uint8)
    batch = collate([sample, other])
    seg = batch.targets[0]["semantic_seg"]
    assert seg.dtype == torch.int64 and seg.shape == (24, 30) and (seg[20:] == 255).all()
    bad = _formatted(False)
    bad["gt_masks"] = BitmapMasks(np.zeros((2, 40, 30), np.uint8), 40, 30)
    with pytest.raises(ValueError, match="larger than its batch"):
        collate([bad])
    bad["gt_masks"] = BitmapMasks(np.zeros((1, 20, 30), np.uint8), 20, 30)
    with pytest.raises(ValueError, match="2 boxes but 1 masks"):
        collate([bad])


# ---- FilterAnnotations, LoadProposals --------------------------------------------------------


def test_filter_annotations_with_mmdetection_s_keep_empty():
    sample = make_sample((20, 30), [[0, 0, 1, 5], [3, 2, 10, 8]])
    out = FilterAnnotations(min_gt_bbox_wh=(1, 1))(sample)
    assert out["gt_labels"].tolist() == [1] and out["gt_instance_ids"].tolist() == [1]
    assert len(out["gt_masks"]) == 1
    tiny = make_sample((20, 30), [[0, 0, 1, 1]])
    assert FilterAnnotations(keep_empty=True)(tiny) is None  # MMDetection 2.x: None
    kept = FilterAnnotations(keep_empty=False)(make_sample((20, 30), [[0, 0, 1, 1]]))
    assert kept is not None and len(kept["gt_bboxes"]) == 0
    empty = make_sample((20, 30), np.zeros((0, 4)))
    assert FilterAnnotations()(empty) is empty
    by_mask = make_sample((20, 30), BOXES)
    by_mask["gt_masks"].masks[0] = 0
    out = FilterAnnotations(by_box=False, by_mask=True)(by_mask)
    assert out["gt_labels"].tolist() == [1]
    with pytest.raises(KeyError, match="by_mask=True.*gt_masks"):
        FilterAnnotations(by_mask=True)(dict(gt_bboxes=np.zeros((1, 4), np.float32)))
    with pytest.raises(ValueError, match="by_box or by_mask"):
        FilterAnnotations(by_box=False)


def test_load_proposals():
    proposals = np.array([[1, 2, 3, 4, 0.9], [2, 3, 4, 5, 0.8], [0, 0, 1, 1, 0.1]], np.float32)
    out = LoadProposals(num_max_proposals=2)(dict(proposals=proposals, bbox_fields=[]))
    np.testing.assert_array_equal(out["proposals"], proposals[:2, :4])
    assert out["bbox_fields"] == ["proposals"]
    empty = LoadProposals()(dict(proposals=np.zeros((0, 4)), bbox_fields=[]))
    assert empty["proposals"].tolist() == [[0, 0, 0, 0]]
    with pytest.raises(ValueError, match=r"\(n, 4\) or \(n, 5\)"):
        LoadProposals()(dict(proposals=np.zeros((2, 3)), bbox_fields=[]))
    with pytest.raises(KeyError, match="proposal_file"):
        LoadProposals()(dict(bbox_fields=[]))
