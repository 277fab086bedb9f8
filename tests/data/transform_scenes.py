"""Test scenes shared by the transform tests: coloured rectangles whose boxes and masks are known.

Each instance ``i`` is a filled rectangle of colour ``PALETTE[label]`` on a black image, with its
box, label, mask and instance id; rectangles never touch, so after any transform the pixels of a
colour are the pixels of one instance.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from detlab.data.masks import BitmapMasks, PolygonMasks

PALETTE = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255),
                    (0, 255, 255)], dtype=np.int64)


def make_sample(shape, boxes, labels=None, polygons=False, ignore=None) -> dict:
    """A loaded sample of ``shape`` ``(h, w)`` with a rectangle per xyxy box (whole pixels)."""
    h, w = shape
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.arange(len(boxes)) if labels is None else np.asarray(labels)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    masks = np.zeros((len(boxes), h, w), dtype=np.uint8)
    for i, (box, label) in enumerate(zip(boxes.astype(int), labels, strict=True)):
        img[box[1]:box[3], box[0]:box[2]] = PALETTE[label]
        masks[i, box[1]:box[3], box[0]:box[2]] = 1
    if polygons:
        gt_masks = PolygonMasks([[[b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]]
                                 for b in boxes.tolist()], h, w)
    else:
        gt_masks = BitmapMasks(masks, h, w)
    sample = dict(img=img, img_shape=img.shape, ori_shape=img.shape, img_fields=["img"],
                  gt_bboxes=boxes, gt_labels=labels.astype(np.int64),
                  gt_instance_ids=np.arange(len(boxes), dtype=np.int64), gt_masks=gt_masks,
                  bbox_fields=["gt_bboxes"], mask_fields=["gt_masks"], seg_fields=[],
                  filename="scene.png", ori_filename="scene.png")
    if ignore is not None:
        sample["gt_bboxes_ignore"] = np.asarray(ignore, dtype=np.float32).reshape(-1, 4)
        sample["bbox_fields"].append("gt_bboxes_ignore")
    return sample


@st.composite
def scenes(draw, max_instances: int = 6, first_label: int = 0, polygons=None) -> dict:
    """A random scene: 1..max_instances rectangles, each in its own cell of a 3 x 2 grid."""
    h = draw(st.integers(40, 72))
    w = draw(st.integers(42, 96))
    n = draw(st.integers(1, max_instances))
    cell_h, cell_w = h // 2, w // 3
    boxes = []
    for i in range(n):
        x0, y0 = (i % 3) * cell_w + 2, (i // 3) * cell_h + 2
        x_end, y_end = x0 + cell_w - 4, y0 + cell_h - 4
        x1 = draw(st.integers(x0, x_end - 6))
        y1 = draw(st.integers(y0, y_end - 6))
        boxes.append([x1, y1, draw(st.integers(x1 + 6, x_end)), draw(st.integers(y1 + 6, y_end))])
    use_polygons = draw(st.booleans()) if polygons is None else polygons
    labels = np.arange(first_label, first_label + n)
    return make_sample((h, w), boxes, labels, polygons=use_polygons)


def color_pixels(img: np.ndarray, label: int) -> np.ndarray:
    """Where ``img`` shows the colour of ``label`` (clearly more than half of it)."""
    img = np.asarray(img, dtype=np.int64)
    return np.abs(img - PALETTE[label]).max(axis=-1) < 127  # half-covered pixels are ties


def extent(pixels: np.ndarray) -> np.ndarray | None:
    """xyxy box of the True pixels, None when there are none."""
    rows, cols = np.flatnonzero(pixels.any(1)), np.flatnonzero(pixels.any(0))
    if not len(rows):
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def _shifted(pixels: np.ndarray, grow: bool) -> np.ndarray:
    """``pixels`` dilated (``grow``) or eroded by one pixel (3 x 3)."""
    padded = np.pad(pixels, 1, constant_values=False)  # the image border is a boundary too
    h, w = pixels.shape
    views = [padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
             for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.logical_or.reduce(views) if grow else np.logical_and.reduce(views)


def assert_consistent(out: dict, tol: float = 1.0, dropped_invisible: bool = True,
                      labels_seen=None, cut_boxes_contain: bool = False) -> None:
    """Each kept box encloses its rectangle's pixels within ``tol``; each mask equals those
    pixels within one pixel; labels, masks and ids stay in step; with ``dropped_invisible``,
    the colour of every dropped instance is gone from the image.

    ``cut_boxes_contain``: a box cut by the image border only has to contain its pixels (the
    clipped box of a rotated rectangle is larger than its visible part)."""
    img, boxes, labels = out["img"], out["gt_bboxes"], out["gt_labels"]
    assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
    assert len(out["gt_masks"]) == len(boxes) == len(out["gt_instance_ids"])
    assert (out["gt_masks"].height, out["gt_masks"].width) == img.shape[:2]
    h, w = img.shape[:2]
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert np.all((boxes[:, 0] < w) & (boxes[:, 2] > 0) & (boxes[:, 1] < h) & (boxes[:, 3] > 0))
    masks = out["gt_masks"].to_ndarray().astype(bool)
    for box, label, mask in zip(boxes, labels, masks, strict=True):
        pixels = color_pixels(img, label)
        seen = extent(pixels)
        cut = box[0] <= 0 or box[1] <= 0 or box[2] >= w or box[3] >= h
        if seen is None:  # only a sliver (or a cut corner) may be kept without pixels
            thin = 1.5 + (tol if cut_boxes_contain and cut else 0)
            assert min(box[2] - box[0], box[3] - box[1]) < thin, f"box {box} has no pixels"
            continue
        # a sliver under 1.5 px, blurred by resampling, shows less of its length
        slack = tol + (1 if min(box[2] - box[0], box[3] - box[1]) < 1.5 else 0)
        if cut_boxes_contain and cut:
            assert np.all(box[:2] <= seen[:2] + slack) and np.all(box[2:] >= seen[2:] - slack)
        else:
            np.testing.assert_allclose(box, seen, atol=slack, err_msg=f"label {label}")
        assert not (mask & ~_shifted(pixels, grow=True)).any(), f"mask {label} too large"
        assert not (_shifted(pixels, grow=False) & ~mask).any(), f"mask {label} too small"
    if dropped_invisible:
        for label in set(labels_seen or ()) - set(labels.tolist()):
            assert not color_pixels(img, label).any(), f"label {label} dropped but visible"
