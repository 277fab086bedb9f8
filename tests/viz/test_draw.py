"""Drawing: pixels change where boxes are, and nowhere else."""

import numpy as np
import pytest
import torch
from PIL import Image

from detlab.structures import DetResult
from detlab.viz import draw_boxes, draw_detections, image_grid, show_result
from detlab.viz.draw import palette_color


def canvas(h=80, w=100, value=0):
    return np.full((h, w, 3), value, dtype=np.uint8)


def ring(shape, x1, y1, x2, y2, thickness):
    """The pixels of an outline of ``thickness`` inside the pixel box [x1, x2) x [y1, y2)."""
    mask = np.zeros(shape[:2], bool)
    mask[y1:y2, x1:x2] = True
    mask[y1 + thickness:y2 - thickness, x1 + thickness:x2 - thickness] = False
    return mask


def changed(before, after):
    return np.any(before != after, axis=2)


@pytest.mark.parametrize("thickness", [1, 2, 3])
def test_outline_changes_exactly_the_pixels_inside_the_box_edge(thickness):
    image = canvas()
    out = draw_boxes(image, np.array([[10, 12, 30, 40], [50.4, 5.6, 90.2, 70.5]]),
                     colors=(255, 0, 0), thickness=thickness)
    expected = ring(image.shape, 10, 12, 30, 40, thickness) \
        | ring(image.shape, 50, 6, 90, 71, thickness)  # fractional corners round
    np.testing.assert_array_equal(changed(image, out), expected)
    assert (out[expected] == [255, 0, 0]).all()


def test_input_is_not_modified_and_output_is_a_new_array():
    image = canvas(value=30)
    before = image.copy()
    result = DetResult([[5, 5, 50, 50]], [0.9], [1], masks=np.ones((1, 80, 100), bool))
    out = draw_detections(image, result)
    np.testing.assert_array_equal(image, before)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert not np.shares_memory(out, image)
    assert not np.shares_memory(draw_boxes(image, np.zeros((0, 4))), image)


def test_boxes_as_tensors_and_labels_pick_the_palette():
    image = canvas()
    out = draw_boxes(image, torch.tensor([[10.0, 10, 30, 30], [50, 10, 70, 30]]),
                     labels=torch.tensor([0, 3]))
    assert tuple(out[10, 10]) == palette_color(0)
    assert tuple(out[10, 50]) == palette_color(3)
    assert palette_color(0) != palette_color(3)
    per_label = draw_boxes(image, [[10, 10, 30, 30]], labels=[1],
                           colors=[(1, 2, 3), (4, 5, 6)])
    assert tuple(per_label[10, 10]) == (4, 5, 6)


def test_palette_colours_of_many_classes_differ():
    colors = [palette_color(i) for i in range(80)]
    assert len(set(colors)) == 80


def test_detections_change_only_their_boxes_and_captions_above():
    image = canvas(120, 160)
    result = DetResult([[40, 50, 100, 110]], [0.87], [2], class_names=("a", "b", "person"))
    out = draw_detections(image, result, thickness=2)
    diff = changed(image, out)
    box = np.zeros_like(diff)
    box[50:110, 40:100] = True
    caption = diff & ~box
    assert (diff & box).sum() == ring(image.shape, 40, 50, 100, 110, 2).sum()
    rows, cols = np.nonzero(caption)
    assert rows.max() < 50 and cols.min() >= 40  # the filled caption sits on top of the box
    assert (out[rows.max(), cols.min()] == palette_color(2)).all()


def test_caption_grows_with_the_text():
    image = canvas(120, 200)
    result = DetResult([[40, 50, 100, 110]], [0.87], [0])
    short = changed(image, draw_detections(image, result, class_names=["a"], show_scores=False))
    longer = changed(image, draw_detections(image, result, class_names=["a long name"]))
    assert longer[:50].sum() > short[:50].sum() > 0


def test_caption_goes_inside_a_box_at_the_top_edge():
    image = canvas()
    diff = changed(image, draw_detections(image, DetResult([[10, 0, 60, 40]], [0.5], [0])))
    assert diff[40:].sum() == 0 and diff[2:8, 12:20].any()


def test_score_thr_leaves_low_scores_undrawn():
    image = canvas()
    result = DetResult([[5, 30, 40, 70], [50, 30, 90, 70]], [0.2, 0.8], [0, 1])
    diff = changed(image, draw_detections(image, result, score_thr=0.5))
    assert diff[30:70, 5:40].sum() == 0 and diff[30:70, 50:90].sum() > 0


def test_empty_results_draw_nothing():
    image = canvas(value=77)
    np.testing.assert_array_equal(draw_detections(image, DetResult.empty()), image)
    result = DetResult([[5, 30, 40, 70]], [0.2], [0])
    np.testing.assert_array_equal(draw_detections(image, result, score_thr=0.3), image)
    np.testing.assert_array_equal(draw_boxes(image, np.zeros((0, 4))), image)


def test_masks_tint_their_pixels_only():
    image = canvas(value=100)
    masks = np.zeros((1, 80, 100), bool)
    masks[0, 20:30, 20:30] = True
    result = DetResult([[10, 15, 90, 75]], [0.9], [0], masks=masks)
    diff = changed(image, draw_detections(image, result, thickness=1))
    inside = np.zeros_like(diff)
    inside[16:74, 11:89] = True  # within the outline
    np.testing.assert_array_equal(diff & inside, masks[0])
    with pytest.raises(ValueError, match="original image size"):
        draw_detections(canvas(40, 40), result)


def test_boxes_outside_the_image_and_nan_boxes_do_not_fail():
    image = canvas()
    out = draw_boxes(image, [[-50, -50, 20, 20], [90, 70, 400, 300], [np.nan, 0, 5, 5]],
                     texts=["a", "b", "c"], thickness=2)
    assert changed(image, out)[25:65, 25:85].sum() == 0
    assert changed(image, out).any()


def test_bad_images_are_refused_clearly_and_grey_images_accepted():
    with pytest.raises(ValueError, match="uint8"):
        draw_boxes(np.zeros((10, 10, 3), np.float32), [[0, 0, 5, 5]])
    with pytest.raises(ValueError, match="H x W x 3"):
        draw_boxes(np.zeros((10, 10, 2), np.uint8), [[0, 0, 5, 5]])
    assert draw_boxes(np.zeros((10, 12), np.uint8), [[0, 0, 5, 5]]).shape == (10, 12, 3)
    with pytest.raises(ValueError, match="2 texts for 1 boxes"):
        draw_boxes(canvas(), [[0, 0, 5, 5]], texts=["a", "b"])


def test_show_result_reads_paths_and_writes_out_file(tmp_path):
    image = (np.arange(60 * 90 * 3) % 251).astype(np.uint8).reshape(60, 90, 3)
    Image.fromarray(image).save(tmp_path / "in.png")
    result = DetResult([[10, 10, 50, 40], [60, 5, 80, 30]], [0.9, 0.1], [0, 1])
    out_file = tmp_path / "deep" / "er" / "out.png"
    drawn = show_result(tmp_path / "in.png", result, out_file=out_file)
    np.testing.assert_array_equal(np.asarray(Image.open(out_file).convert("RGB")), drawn)
    np.testing.assert_array_equal(drawn, show_result(image, result))
    np.testing.assert_array_equal(drawn, draw_detections(image, result, score_thr=0.3))
    assert changed(image, drawn)[5:30, 60:80].sum() == 0  # 0.1 is below the 0.3 default


def test_image_grid_places_images_and_titles():
    a, b, c = canvas(20, 30, 10), canvas(25, 20, 20), canvas(10, 10, 30)
    grid = image_grid([a, b, c], ncols=2, pad=4)
    assert grid.shape == (2 * 25 + 4, 2 * 30 + 4, 3)
    assert (grid[:20, :30] == 10).all() and (grid[:25, 34:54] == 20).all()
    assert (grid[29:39, :10] == 30).all() and (grid[20:25, :30] == 255).all()
    titled = image_grid([a, b], titles=["prediction", "ground truth"])
    title_h = titled.shape[0] - 25
    assert title_h > 0 and (titled[title_h:title_h + 20, :30] == 10).all()
    assert (titled[:title_h] != 255).any()
    assert image_grid([a, b]).shape == (25, 64, 3)
    with pytest.raises(ValueError, match="1 titles for 2 images"):
        image_grid([a, b], titles=["x"])
