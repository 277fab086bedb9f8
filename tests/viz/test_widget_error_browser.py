"""ErrorBrowser: filtering a match table of hand-made detections and stepping through it."""

import io

import numpy as np
import pytest
import torch
from conftest import RECT_BOXES, RECT_COLORS, RECT_CONTENT, RECT_NAMES, write_rectangles
from PIL import Image

from detlab.data import CocoDataset
from detlab.evaluation import image_ranking, match_detections
from detlab.structures import DetResult
from detlab.viz.widgets.error_browser import STATUS_COLORS, ErrorBrowser

NAMES, BOXES, COLORS, CONTENT = RECT_NAMES, RECT_BOXES, RECT_COLORS, RECT_CONTENT
PIPELINE = [dict(type="LoadImageFromFile")]
# per image: (box, score, label). Image 1: a TP, a TP at IoU .5 that fails .75 (IoU 0.70) and
# a background FP; image 2: the blue box called red (Cls); image 3: nothing (2 Miss); image 4:
# a TP and its duplicate (Dupe)
DETECTIONS = [
    [(BOXES[0], 0.9, 0), ([35, 6, 63, 20], 0.8, 1), ([44, 30, 60, 44], 0.4, 2)],
    [(BOXES[2], 0.7, 0)],
    [],
    [(BOXES[1], 0.95, 1), ([31, 6, 58, 20], 0.5, 1)],
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    ann_file = write_rectangles(root)
    return CocoDataset(str(ann_file), PIPELINE, img_prefix=str(root), test_mode=True)


@pytest.fixture(scope="module")
def table(dataset):
    results = []
    for i, dets in enumerate(DETECTIONS):
        boxes = torch.tensor([d[0] for d in dets], dtype=torch.float32).reshape(-1, 4)
        results.append(DetResult(boxes, [d[1] for d in dets], [d[2] for d in dets],
                                 meta=dict(img_id=i + 1)))
    return match_detections(dataset.coco, results, iou_thrs=[0.5, 0.75],
                            cat_ids=dataset.cat_ids, img_ids=dataset.img_ids)


@pytest.fixture
def browser(table, dataset):
    return ErrorBrowser(table, dataset)


def _with_class(widget, css):
    found = [widget] if css in getattr(widget, "_dom_classes", ()) else []
    for child in getattr(widget, "children", ()):
        found += _with_class(child, css)
    return found


def _pixels(png):
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _has_color(png, color):
    return bool((_pixels(png) == np.asarray(color, np.uint8)).all(axis=2).any())


def test_controls_and_display_data(browser):
    for css in ("error", "class", "iou-thr", "sort", "score", "iou", "prev", "next", "index",
                "view", "info", "rows", "status"):
        assert len(_with_class(browser.widget, f"detlab-errors-{css}")) == 1, css
    bundle = browser._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "image/png" in bundle
    assert bundle["text/plain"].startswith("ErrorBrowser: 9 rows in 4 images")


def test_coco_kinds_at_each_iou_threshold(browser):
    assert len(browser.filter(error="TP")) == 3
    assert len(browser.filter(error="FP")) == 3  # Bkg, Cls, Dupe
    assert sorted(browser.filter(error="FN")["kind"]) == ["miss"] * 3
    strict = browser.filter(error="TP", iou_thr=0.75)
    assert len(strict) == 2 and browser.iou_thr == 0.75
    lost = browser.filter(error="FN")  # at 0.75 the shifted green detection loses its gt
    assert lost["lost_gt"].sum() == 1 and lost[lost["lost_gt"]]["status"].item() == "FP"
    assert browser.filter(error="FP")["score"].max() == pytest.approx(0.8)


def test_tide_kinds_class_score_and_iou_ranges(browser):
    assert browser.filter(error="Cls")["image_id"].tolist() == [2]
    assert browser.filter(error="Bkg")["image_id"].tolist() == [1]
    assert browser.filter(error="Dupe")["image_id"].tolist() == [4]
    assert browser.filter(error="Miss")["image_id"].tolist() == [3, 3]
    assert set(browser.filter(cls="green")["class"]) == {"green"}
    high = browser.filter(score=(0.75, 1.0))
    dets = high[high["kind"] == "det"]
    assert sorted(dets["score"].round(2)) == [0.8, 0.9, 0.95]  # misses pass a score range
    assert (high["kind"] == "miss").sum() == 3
    assert (browser.filter(iou=(0.9, 1.0))["iou"] >= 0.9).all()
    with pytest.raises(ValueError, match="no class"):
        browser.filter(cls="purple")


def test_worst_first_navigation_and_pictures(browser, table):
    browser.filter()
    ranking = image_ranking(table, 0.5, score_thr=0.0)
    assert browser.images == ranking["image_id"].tolist()
    shown = browser.current
    assert browser.sort_images("image id") == [1, 2, 3, 4]
    assert browser.current == shown  # re-ordering keeps the image shown
    browser.show(1)
    first = browser.render_png()
    assert browser.next() == 2 and browser.prev() == 1 and browser.prev() == 4  # wraps
    assert browser.render_png() != first
    browser.filter(error="FP")
    browser.show(1)
    assert browser.current_rows["status"].tolist() == ["FP"]
    assert _has_color(browser.render_png(), STATUS_COLORS["FP"])
    assert not _has_color(browser.render_png(), STATUS_COLORS["TP"])
    browser.show(3)  # outside the filter: shown, with no rows
    assert browser.position is None and browser.next() == browser.images[0]


def test_controls_drive_the_methods(browser):
    browser._error.value = "Miss"
    assert browser.settings["error"] == "Miss" and browser.images == [3]
    assert _has_color(browser.render_png(), STATUS_COLORS["FN"])
    browser._error.value = "TP"
    browser._iou_thr.value = 0.75
    assert len(browser.rows) == 2 and browser.iou_thr == 0.75
    browser._sort.value = "image id"
    browser._index.value = 2  # counts from 1
    assert browser.current == browser.images[1] and browser._index.max == len(browser.images)
    browser._score.value = (0.92, browser._score.max)
    assert browser.rows["score"].tolist() == [pytest.approx(0.95)]
    browser._class.value = "red"
    assert browser.images == [] and browser.current is None
    assert "no row" in browser.summary() or browser.summary().startswith("ErrorBrowser: 0 rows")
    assert browser.render_png()


def test_ground_truth_masks_are_tinted(tmp_path, table, dataset):
    """With polygon annotations, the ground truth a row is about has its mask tinted in the
    ground truth's colour (blended with the image), under the boxes; without, it has not."""
    from detlab.viz.draw import _blend_masks

    root = tmp_path / "polygons"
    root.mkdir()
    with_masks = CocoDataset(str(write_rectangles(root, polygons=True)), PIPELINE,
                             img_prefix=str(root), test_mode=True)
    browser = ErrorBrowser(table, with_masks)
    browser.filter(error=None)
    browser.show(1)
    red, gt = np.array([COLORS[0]], np.uint8), STATUS_COLORS["gt"]
    tinted = tuple(_blend_masks(red[None], np.ones((1, 1, 1), bool), [gt])[0, 0])
    assert _has_color(browser.render_png(), tinted)
    plain = ErrorBrowser(table, dataset)  # the same rectangles without segmentations
    plain.filter(error=None)
    plain.show(1)
    assert not _has_color(plain.render_png(), tinted)
