"""Box helpers, Batch and DetResult."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from detlab.structures import (
    Batch,
    DetResult,
    box_areas,
    clip_boxes,
    flip_boxes,
    scale_boxes,
    xywh_to_xyxy,
    xyxy_to_xywh,
)

XYXY = [[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.5, 2.5], [5.0, 5.0, 5.0, 9.0]]
XYWH = [[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 1.5, 2.5], [5.0, 5.0, 0.0, 4.0]]


def both(values):
    """The same boxes as a float32 NumPy array and a float32 tensor."""
    return [np.array(values, dtype=np.float32), torch.tensor(values, dtype=torch.float32)]


def as_numpy(boxes):
    return boxes.numpy() if isinstance(boxes, torch.Tensor) else boxes


# ------------------------------------------------------------------------------------------
# box helpers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("boxes", both(XYXY), ids=["numpy", "torch"])
def test_xyxy_xywh_round_trip_keeps_the_kind_and_the_input(boxes):
    before = as_numpy(boxes).copy()
    xywh = xyxy_to_xywh(boxes)
    assert type(xywh) is type(boxes) and xywh.dtype == boxes.dtype
    np.testing.assert_array_equal(as_numpy(xywh), XYWH)
    np.testing.assert_array_equal(as_numpy(xywh_to_xyxy(xywh)), XYXY)
    np.testing.assert_array_equal(as_numpy(boxes), before)


def test_box_helpers_take_empty_and_batched_boxes():
    assert xyxy_to_xywh(np.zeros((0, 4), np.float32)).shape == (0, 4)
    batched = torch.tensor([XYXY, XYXY])  # (2, 3, 4): the helpers work on the last axis
    assert torch.equal(xywh_to_xyxy(xyxy_to_xywh(batched)), batched)


@pytest.mark.parametrize("boxes", both(XYXY + [[8, 8, 4, 2]]), ids=["numpy", "torch"])
def test_box_areas_by_hand(boxes):
    np.testing.assert_allclose(as_numpy(box_areas(boxes)), [2400, 3.75, 0, 0])


@pytest.mark.parametrize("boxes", both([[-5, 10, 120, 30], [20, -3, 40, 70]]),
                         ids=["numpy", "torch"])
def test_clip_boxes_by_hand(boxes):
    clipped = clip_boxes(boxes, (60, 100, 3))
    assert type(clipped) is type(boxes)
    np.testing.assert_array_equal(as_numpy(clipped), [[0, 10, 100, 30], [20, 0, 40, 60]])
    assert as_numpy(boxes)[0, 0] == -5


@pytest.mark.parametrize("boxes", both([[10, 20, 30, 40]]), ids=["numpy", "torch"])
@pytest.mark.parametrize("factor, expected", [
    (2.0, [20, 40, 60, 80]),
    ((0.5, 2.0), [5, 40, 15, 80]),
    (np.array([0.5, 2.0, 0.5, 2.0], dtype=np.float32), [5, 40, 15, 80]),
])
def test_scale_boxes_by_hand(boxes, factor, expected):
    scaled = scale_boxes(boxes, factor)
    assert type(scaled) is type(boxes) and scaled.dtype == boxes.dtype
    np.testing.assert_array_equal(as_numpy(scaled), [expected])


@pytest.mark.parametrize("boxes", both([[10, 20, 30, 50]]), ids=["numpy", "torch"])
@pytest.mark.parametrize("direction, expected", [
    ("horizontal", [70, 20, 90, 50]),
    ("vertical", [10, 10, 30, 40]),
    ("diagonal", [70, 10, 90, 40]),
])
def test_flip_boxes_by_hand_and_twice_is_identity(boxes, direction, expected):
    shape = (60, 100, 3)
    flipped = flip_boxes(boxes, shape, direction)
    np.testing.assert_array_equal(as_numpy(flipped), [expected])
    np.testing.assert_array_equal(as_numpy(flip_boxes(flipped, shape, direction)),
                                  as_numpy(boxes))


def test_flip_boxes_refuses_unknown_directions():
    with pytest.raises(ValueError, match="'sideways'"):
        flip_boxes(np.zeros((1, 4)), (10, 10), "sideways")


def test_random_round_trips_numpy_and_torch_alike():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, size=(50, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 50, size=(50, 2))], axis=1)
    for kind in (np.asarray, torch.as_tensor):
        b = kind(boxes)
        np.testing.assert_allclose(as_numpy(xywh_to_xyxy(xyxy_to_xywh(b))), boxes, atol=1e-9)
        np.testing.assert_allclose(as_numpy(scale_boxes(scale_boxes(b, 4.0), 0.25)), boxes)
        for direction in ("horizontal", "vertical", "diagonal"):
            twice = flip_boxes(flip_boxes(b, (200, 300), direction), (200, 300), direction)
            np.testing.assert_allclose(as_numpy(twice), boxes, atol=1e-9)
            assert (as_numpy(box_areas(flip_boxes(b, (200, 300), direction)))
                    == pytest.approx(as_numpy(box_areas(b))))


# ------------------------------------------------------------------------------------------
# Batch
# ------------------------------------------------------------------------------------------


def test_batch_len_and_to():
    batch = Batch(torch.zeros(2, 3, 8, 8), [dict(boxes=torch.zeros(1, 4), labels=[0]), {}],
                  [dict(img_id=1), dict(img_id=2)])
    moved = batch.to("cpu")
    assert len(moved) == 2 and moved.metas is batch.metas
    assert moved.targets[0]["labels"] == [0]  # non-tensors are kept as they are


# ------------------------------------------------------------------------------------------
# DetResult
# ------------------------------------------------------------------------------------------


def make_result(**kwargs):
    return DetResult([[10, 20, 40, 60], [0, 0, 5, 5], [30, 30, 90, 70]], [0.9, 0.2, 0.6],
                     [2, 0, 1], class_names=["a", "b", "c"], meta=dict(img_id=7), **kwargs)


def test_detresult_converts_types_and_shapes():
    result = DetResult(np.array([1, 2, 3, 4]), 0.5, [3])
    assert result.boxes.dtype == torch.float32 and result.boxes.shape == (1, 4)
    assert result.scores.dtype == torch.float32 and result.labels.dtype == torch.int64
    assert isinstance(make_result().class_names, tuple)
    empty = DetResult.empty(class_names=["a"], img_id=3)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.meta == dict(img_id=3)


def test_detresult_validates_lengths():
    with pytest.raises(ValueError, match="2 boxes, 1 scores, 2 labels"):
        DetResult(torch.zeros(2, 4), [0.1], [0, 1])
    with pytest.raises(ValueError, match="as many scores, labels \\(and masks\\)"):
        DetResult(torch.zeros(2, 4), [0.1, 0.2], [0, 1], masks=torch.zeros(3, 5, 5))


def test_detresult_indexing_and_filter():
    result = make_result(masks=torch.zeros(3, 4, 4))
    first = result[0]
    assert len(first) == 1 and first.scores.tolist() == [pytest.approx(0.9)]
    assert result[-1].labels.tolist() == [1]
    assert result[1:].labels.tolist() == [0, 1]
    assert result[torch.tensor([2, 0])].labels.tolist() == [1, 2]
    assert result[result.labels > 0].scores.tolist() == pytest.approx([0.9, 0.6])
    kept = result.filter(0.6)
    assert kept.labels.tolist() == [2, 1] and kept.masks.shape == (2, 4, 4)
    assert kept.class_names == result.class_names and kept.meta == result.meta
    kept.meta["img_id"] = 8
    assert result.meta["img_id"] == 7  # indexing copies meta
    assert result.label_names() == ["c", "a", "b"]
    assert DetResult([[0, 0, 1, 1]], [1], [5], class_names=["a"]).label_names() == ["5"]


def test_to_coco_values():
    rows = make_result().to_coco(image_id=42, cat_ids=[3, 7, 12])
    assert rows[0] == dict(image_id=42, category_id=12, bbox=[10.0, 20.0, 30.0, 40.0],
                           score=pytest.approx(0.9))
    assert [row["category_id"] for row in rows] == [12, 3, 7]
    assert rows[2]["bbox"] == [30.0, 30.0, 60.0, 40.0]
    assert all(type(row["score"]) is float and type(row["image_id"]) is int for row in rows)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools under NumPy 2
def test_to_coco_masks_as_rle():
    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4:, :] = True
    result = DetResult([[2, 1, 5, 3], [0, 4, 8, 6]], [0.5, 0.4], [0, 0], masks=masks)
    rows = result.to_coco(1, [9])
    for row, mask in zip(rows, masks, strict=True):
        rle = row["segmentation"]
        assert isinstance(rle["counts"], str) and rle["size"] == [6, 8]
        np.testing.assert_array_equal(mask_utils.decode(rle), mask.numpy())
    assert DetResult.empty().to_coco(1, [9]) == []


def test_to_dataframe():
    frame = make_result().to_dataframe()
    assert list(frame.columns) == ["x1", "y1", "x2", "y2", "score", "label", "class_name"]
    assert frame["class_name"].tolist() == ["c", "a", "b"]
    assert frame[["x1", "y1", "x2", "y2"]].iloc[2].tolist() == [30, 30, 90, 70]
    assert len(DetResult.empty().to_dataframe()) == 0


def test_repr_png_is_a_valid_png():
    result = make_result()
    result.meta["ori_shape"] = (90, 120, 3)
    data = result._repr_png_()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (120, 90) and image.mode == "RGB"
    assert DetResult.empty()._repr_png_().startswith(b"\x89PNG")


def test_draw_uses_the_kept_image_and_the_score_threshold():
    image = np.zeros((80, 100, 3), np.uint8)
    result = make_result()
    result.image = image
    drawn = result.draw(score_thr=0.5)
    assert drawn.shape == image.shape and not image.any()
    assert drawn[20:60, 10:40].any() and not drawn[1:5, 1:5].any()  # 0.2 is below 0.5
    np.testing.assert_array_equal(result.draw(np.full_like(image, 9), score_thr=1.0), 9)


# ------------------------------------------------------------------------------------------
# edge cases
# ------------------------------------------------------------------------------------------


def test_to_dataframe_of_scores_that_require_grad():
    scores = torch.tensor([0.5], requires_grad=True) * 1
    assert DetResult(torch.zeros(1, 4), scores, [0]).to_dataframe().score.tolist() == [0.5]


def test_to_coco_refuses_negative_labels():
    with pytest.raises(ValueError, match=r"labels \[-1\] of image 1"):
        DetResult([[0, 0, 1, 1]], [0.5], [-1]).to_coco(1, [3, 7])
    with pytest.raises(ValueError, match=r"labels \[2\]"):
        DetResult([[0, 0, 1, 1]], [0.5], [2]).to_coco(1, [3, 7])


def test_boxes_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        DetResult(torch.zeros(2, 2), [0.1, 0.2], [0, 0])


def test_index_past_the_end_raises():
    with pytest.raises(IndexError):
        make_result()[3]


def test_numpy_integer_index_with_masks():
    assert len(make_result(masks=torch.zeros(3, 4, 4))[np.int64(1)]) == 1


def test_scale_integer_tensor_boxes():
    scaled = scale_boxes(torch.tensor([[10, 20, 30, 40]]), 0.5)
    assert scaled.tolist() == [[5, 10, 15, 20]]


def test_mmdet_format_round_trip():
    result = DetResult([[0, 0, 4, 4], [1, 1, 5, 6], [2, 2, 3, 3]], [0.2, 0.9, 0.5], [2, 0, 2],
                       class_names=["a", "b", "c"])
    per_class = result.to_mmdet(num_classes=3)
    assert [a.shape for a in per_class] == [(1, 5), (0, 5), (2, 5)]
    assert per_class[0].tolist() == [[1, 1, 5, 6, pytest.approx(0.9)]]
    back = DetResult.from_mmdet(per_class, class_names=result.class_names, img_id=7)
    assert back.scores.tolist() == pytest.approx([0.9, 0.5, 0.2])  # sorted by score
    assert back.labels.tolist() == [0, 2, 2] and back.meta == {"img_id": 7}
    assert back.boxes[2].tolist() == [0, 0, 4, 4]
