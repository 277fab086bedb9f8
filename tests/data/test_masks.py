"""BitmapMasks and PolygonMasks: MMDetection's structures, polygons and bitmaps in agreement."""

import numpy as np
import pytest
import torch

from detlab.data.masks import (
    BitmapMasks,
    PolygonMasks,
    bitmaps_from_segmentations,
    clip_polygon,
    polygons_from_segmentations,
    polygons_to_bitmap,
    segmentation_to_rle,
)

BOXES = [[3, 2, 10, 8], [20, 10, 29, 19]]  # xyxy, inside a 20 x 30 (h x w) image


def _bitmaps():
    masks = np.zeros((2, 20, 30), dtype=np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(BOXES):
        masks[i, y1:y2, x1:x2] = 1
    return BitmapMasks(masks, 20, 30)


def _polygons():
    return PolygonMasks([[[x1, y1, x2, y1, x2, y2, x1, y2]] for x1, y1, x2, y2 in BOXES], 20, 30)


def test_a_rectangle_polygon_rasterizes_to_its_box_pixels():
    assert np.array_equal(_polygons().to_ndarray(), _bitmaps().masks)
    np.testing.assert_array_equal(_bitmaps().get_bboxes(), BOXES)
    np.testing.assert_array_equal(_polygons().get_bboxes(), BOXES)
    assert _bitmaps().areas.tolist() == _polygons().areas.tolist() == [42, 81]


OPERATIONS = {
    "resize": lambda m: m.resize((40, 60)),
    "rescale": lambda m: m.rescale((60, 40)),
    "flip_h": lambda m: m.flip("horizontal"),
    "flip_v": lambda m: m.flip("vertical"),
    "flip_d": lambda m: m.flip("diagonal"),
    "crop": lambda m: m.crop(np.array([5, 4, 25, 15])),
    "expand": lambda m: m.expand(40, 50, 5, 7),
    "pad": lambda m: m.pad((25, 35)),
    "place": lambda m: m.place((-4, 3), (20, 30)),
    "translate": lambda m: m.translate((20, 30), 6, "vertical"),
    "warp": lambda m: m.warp(np.array([[2.0, 0, 1], [0, 2, -3], [0, 0, 1]]), (30, 50)),
}


@pytest.mark.parametrize("name", OPERATIONS)
def test_polygon_and_bitmap_operations_agree(name):
    bitmap, polygon = OPERATIONS[name](_bitmaps()), OPERATIONS[name](_polygons())
    assert (bitmap.height, bitmap.width) == (polygon.height, polygon.width)
    np.testing.assert_array_equal(polygon.to_ndarray(), bitmap.masks)
    np.testing.assert_allclose(polygon.get_bboxes(), bitmap.get_bboxes())
    np.testing.assert_allclose(polygon.areas, bitmap.areas)


def test_hand_computed_geometry():
    flipped = _bitmaps().flip("horizontal").get_bboxes()
    np.testing.assert_array_equal(flipped, [[20, 2, 27, 8], [1, 10, 10, 19]])  # x -> 30 - x
    cropped = _bitmaps().crop(np.array([5, 4, 25, 15]))
    assert (cropped.height, cropped.width) == (11, 20)
    np.testing.assert_array_equal(cropped.get_bboxes(), [[0, 0, 5, 4], [15, 6, 20, 11]])
    expanded = _polygons().expand(40, 50, top=5, left=7)
    np.testing.assert_array_equal(expanded.get_bboxes(), [[10, 7, 17, 13], [27, 15, 36, 24]])
    # a crop outside the masks keeps one pixel, as MMDetection
    assert _bitmaps().crop(np.array([40, 40, 50, 50])).masks.shape == (2, 1, 1)


def test_polygons_are_clipped_geometrically():
    square = np.array([[-5, -5], [10, -5], [10, 10], [-5, 10]], dtype=float)
    clipped = clip_polygon(square, 8, 6)
    assert sorted(map(tuple, clipped.tolist())) == [(0, 0), (0, 6), (8, 0), (8, 6)]
    # a triangle cut by the right border: area of the part inside
    triangle = PolygonMasks([[[0, 0, 20, 0, 0, 20]]], 30, 30).place((0, 0), (30, 10))
    assert triangle.areas[0] == pytest.approx(200 - 50)
    gone = PolygonMasks([[[40, 40, 50, 40, 50, 50]]], 60, 60).crop(np.array([0, 0, 10, 10]))
    assert len(gone) == 1 and gone.masks == [[]] and gone.areas.tolist() == [0]
    assert not gone.to_ndarray().any() and gone.get_bboxes().tolist() == [[0, 0, 0, 0]]


def test_indexing_and_concatenation():
    for masks in (_bitmaps(), _polygons()):
        assert len(masks[0]) == 1 and len(masks[np.array([True, True])]) == 2
        assert len(masks[[]]) == 0 and len(masks[np.array([], dtype=np.int64)]) == 0
        assert len(masks[torch.tensor([1])]) == 1
        np.testing.assert_array_equal(masks[[1]].get_bboxes(), [BOXES[1]])
        both = type(masks).cat([masks, masks[[0]]])
        assert len(both) == 3 and both.get_bboxes()[2].tolist() == BOXES[0]
    with pytest.raises(ValueError, match="different sizes"):
        BitmapMasks.cat([_bitmaps(), _bitmaps().pad((30, 30))])


def test_conversions():
    tensor = _polygons().to_tensor(torch.bool)
    assert tensor.dtype == torch.bool and tensor.shape == (2, 20, 30)
    assert torch.equal(tensor, _bitmaps().to_tensor(torch.bool, "cpu"))
    assert np.array_equal(_polygons().to_bitmap().masks, _bitmaps().masks)
    empty = BitmapMasks([], 4, 5)
    assert empty.masks.shape == (0, 4, 5) and empty.get_bboxes().shape == (0, 4)
    assert empty.resize((8, 10)).masks.shape == (0, 8, 10)
    assert PolygonMasks([], 4, 5).to_ndarray().shape == (0, 4, 5)


def test_crop_and_resize_gives_mask_targets():
    targets = _bitmaps().crop_and_resize(np.array([[3, 2, 10, 8], [0, 0, 30, 20]],
                                                  dtype=np.float32), (7, 7), np.array([0, 1]))
    assert targets.masks.shape == (2, 7, 7)
    assert targets.masks[0].all()  # the box of mask 0 is all mask
    assert 0 < targets.masks[1].sum() < 49
    polygons = _polygons().crop_and_resize(np.array([[3, 2, 10, 8]]), (7, 7), np.array([0]))
    assert polygons.to_ndarray()[0].all()


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"\(n, 20, 30\)"):
        BitmapMasks(np.zeros((2, 10, 30)), 20, 30)
    with pytest.raises(TypeError, match="one list of polygons per instance"):
        PolygonMasks([[1, 2, 3, 4, 5, 6]], 10, 10)
    with pytest.raises(ValueError, match="odd count"):
        PolygonMasks([[[1, 2, 3]]], 10, 10)


def test_coco_segmentations():
    polygon = [[3, 2, 10, 2, 10, 8, 3, 8]]
    rle = segmentation_to_rle(polygon, 20, 30)
    # column-major runs of the same rectangle: 62 zeros, then 7 columns of 6 ones
    uncompressed = dict(size=[20, 30], counts=[62] + [6, 14] * 6 + [6, 412])
    masks = bitmaps_from_segmentations([polygon, rle, uncompressed], 20, 30)
    assert masks.masks.shape == (3, 20, 30)
    assert np.array_equal(masks.masks[0], masks.masks[1])
    np.testing.assert_array_equal(masks.get_bboxes()[:2], [[3, 2, 10, 8]] * 2)
    assert np.array_equal(masks.masks[2], masks.masks[0])
    with pytest.raises(ValueError, match="counts add up to 599"):
        segmentation_to_rle(dict(size=[20, 30], counts=[62, 537]), 20, 30)
    compressed_str = dict(rle, counts=rle["counts"].decode())  # as json.load gives it
    assert np.array_equal(bitmaps_from_segmentations([compressed_str], 20, 30).masks[0],
                          masks.masks[0])
    # polygons of fewer than 3 points are left out, as MMDetection's process_polygons
    kept = polygons_from_segmentations([[[1, 1, 5, 1], [3, 2, 10, 2, 10, 8]]], 20, 30)
    assert len(kept.masks[0]) == 1
    with pytest.raises(ValueError, match="poly2mask=True"):
        polygons_from_segmentations([rle], 20, 30)
    with pytest.raises(ValueError, match="RLE mask of size"):
        segmentation_to_rle(rle, 10, 10)
    assert not polygons_to_bitmap([], 5, 5).any()
