"""DatasetBrowser: images, classes and pipeline steps, driven by its methods and its controls."""


import numpy as np
import pytest
from conftest import RECT_BOXES, RECT_COLORS, RECT_CONTENT, RECT_NAMES, write_rectangles

from detlab.data import CocoDataset
from detlab.viz.widgets.dataset_browser import ALL_CLASSES, DatasetBrowser

NAMES, BOXES, COLORS, CONTENT = RECT_NAMES, RECT_BOXES, RECT_COLORS, RECT_CONTENT
NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
# a 40-pixel-wide crop keeps the green and blue boxes (cut or not) and may drop the red one
PIPELINE = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_mask=True),
            dict(type="RandomCrop", crop_size=(48, 40)), dict(type="Resize", img_scale=(80, 96)),
            dict(type="Normalize", **NORM), dict(type="Pad", size_divisor=32),
            dict(type="DefaultFormatBundle"),
            dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels", "gt_masks"],
                 meta_keys=("filename", "img_shape", "img_norm_cfg"))]
STEPS = ["LoadImageFromFile", "LoadAnnotations", "RandomCrop", "Resize", "Normalize", "Pad",
         "DefaultFormatBundle", "Collect"]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """Four 64 x 48 images holding the coloured rectangles of CONTENT, and their COCO file."""
    root = tmp_path_factory.mktemp("browser")
    write_rectangles(root, polygons=True)
    return root


@pytest.fixture
def browser(coco):
    return DatasetBrowser(CocoDataset(str(coco / "ann.json"), PIPELINE, img_prefix=str(coco)))


def _with_class(widget, css):
    """The widgets below ``widget`` that carry the CSS class ``css``."""
    found = [widget] if css in getattr(widget, "_dom_classes", ()) else []
    for child in getattr(widget, "children", ()):
        found += _with_class(child, css)
    return found


def test_the_controls_have_stable_css_classes(browser):
    for css in ("detlab-prev", "detlab-next", "detlab-index", "detlab-jump",
                "detlab-jump-button", "detlab-class-filter", "detlab-step", "detlab-resample",
                "detlab-show-boxes", "detlab-show-labels", "detlab-show-masks", "detlab-tabs",
                "detlab-view", "detlab-info", "detlab-step-changes", "detlab-stats-view",
                "detlab-stats-table", "detlab-status"):
        assert len(_with_class(browser.widget, css)) == 1, css
    bundle = browser._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "image/png" in bundle
    assert bundle["text/plain"].startswith("DatasetBrowser: image 1/4")


def test_stepping_through_images_by_method_and_by_control(browser):
    first = browser.current
    assert (first.index, first.image_id, first.file, first.step) == (0, 1, "im0.png", "Collect")
    png = browser.render_png()
    assert browser.next().index == 1 and browser.prev().index == 0
    assert browser.prev().index == 3  # wraps around
    browser._slider.value = 3  # the slider counts from 1, as "image 3/4" does
    assert browser.current.index == 2 and browser.render_png() != png
    assert browser._image.value == browser.render_png()
    _with_class(browser.widget, "detlab-next")[0].click()
    assert browser.current.index == 3
    _with_class(browser.widget, "detlab-prev")[0].click()
    assert browser.current.index == 2 and browser._slider.value == 3
    assert browser.jump("im1.png").index == 1 and browser.jump(4).index == 3
    browser._jump.value = "3"  # an image id
    assert browser.current.image_id == 3
    browser._jump.value = "im9.png"
    assert "im9.png" in browser._status.value and browser.current.image_id == 3
    with pytest.raises(IndexError):
        browser.show(4)


def test_class_filter(browser):
    browser.set_class("blue")
    assert browser.positions == [1, 2] and browser.current.index == 1
    assert browser.next().index == 2 and browser.next().index == 1
    assert browser._classes.value == "blue" and browser._slider.max == 2
    browser.show(3)  # no blue box: the filter goes
    assert browser.positions == [0, 1, 2, 3] and browser._classes.value == ALL_CLASSES
    browser._classes.value = "green"
    assert browser.positions == [0, 3] and browser.current.index == 3
    assert all(1 in browser.annotations()[i]["labels"] for i in browser.positions)
    with pytest.raises(KeyError, match="Did you mean 'green'"):
        browser.set_class("gren")
    browser._classes.value = ALL_CLASSES
    assert len(browser.positions) == 4


def test_pipeline_steps_and_display_toggles(browser):
    assert browser.step_names == STEPS and browser.step_index == 7
    raw = browser.set_step("LoadAnnotations")
    np.testing.assert_allclose(raw.boxes, [BOXES[0], BOXES[1]])
    assert raw.labels.tolist() == [0, 1] and raw.step_index == 1
    browser._step_menu.value = 3
    resized = browser.current
    assert resized.step == "Resize" and browser._step_menu.value == 3
    assert browser.set_step(-1).step == "Collect"
    browser.set_step("Resize")
    assert browser.next().step == "Resize"  # the chosen step stays with the next image
    shown = browser.render_png()
    browser._toggles["boxes"].value = False
    assert not browser.options.boxes and browser.render_png() != shown
    browser.set_display(boxes=True, masks=False)
    assert browser._toggles["masks"].value is False and browser.render_png() != shown
    with pytest.raises(KeyError, match="Did you mean 'Resize'"):
        browser.set_step("Resise")


def test_dropped_and_cut_boxes_are_drawn_and_listed(browser):
    browser.set_step("RandomCrop")
    for _ in range(40):  # draw crops until one drops the red box
        if browser.current.dropped:
            break
        browser.resample()
    crop = browser.current
    assert crop.dropped == [0] and 1 in [int(i) for i in browser.steps[2]["ids"]]
    changes = browser._changes.value
    assert "dropped: box #0 red" in changes
    assert ("cut: box" in changes) == bool(crop.clipped)
    picture = browser.view_image()  # the picture before the crop, beside the one after
    assert picture.shape[1] > 2 * browser.steps[2]["image"].shape[1]
    assert "1 dropped" in browser._step_menu.label


def test_statistics_tab(browser):
    table = browser.stats()
    assert table.index.tolist() == NAMES
    assert table["images"].tolist() == [2, 2, 2] and table["boxes"].tolist() == [2, 2, 2]
    assert table.loc["green", "median_size"] == pytest.approx(np.sqrt(28 * 14))
    boxes = browser.box_table()
    assert len(boxes) == 6 and set(boxes["class"]) == set(NAMES)
    view = browser.render_png()
    browser._tabs.selected_index = 1
    assert browser._stats_image.value and "median_size" in browser._stats_table.value
    assert browser.render_png() != view and browser.render_png()[:4] == b"\x89PNG"


def test_browsing_a_config_split(shapes_root, make_config, tmp_path):
    path = tmp_path / "config.py"
    make_config(shapes_root, 1).dump(path)
    train = DatasetBrowser(make_config(shapes_root, 1))
    assert len(train.dataset) == 8 and "RandomFlip" in train.step_names
    val = DatasetBrowser(str(path), split="val",
                         cfg_options={"data.val.pipeline.1.img_scale": (96, 96)})
    assert len(val.dataset) == 4 and val.step_names == ["LoadImageFromFile",
                                                        "MultiScaleFlipAug"]
    assert val.current.boxes.shape == (0, 4)  # the test pipeline loads no annotations
    assert val.steps[-1]["image"].shape[:2] == (96, 96)
    with pytest.raises(KeyError, match="no data.trian"):
        DatasetBrowser(str(path), split="trian")
