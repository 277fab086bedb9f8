"""AssignerInspector: the four default assigners on shapes images, driven by its methods and
by its controls; the table follows the image, the assigner, the ground truth and the level."""

import pytest
from conftest import QUICKSTART

import detlab
from detlab.notebooks import quickstart_overrides
from detlab.viz.assigners import inspect_assignment
from detlab.viz.widgets.assignments import (
    ALL,
    DEFAULT_CONFIGS,
    AssignerInspector,
    assigner_inspector,
    build_inspected_model,
)

pytestmark = pytest.mark.usefixtures("one_math_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three 128-pixel shapes images, not flipped, with their ground truths."""
    root = str(tmp_path_factory.mktemp("shapes"))
    detlab.make_shapes_dataset(root, num_train=3, num_val=1, image_size=128, seed=1)
    cfg = detlab.Config.fromfile(str(QUICKSTART))
    cfg.merge_from_dict({**quickstart_overrides(cfg, root, 128),
                         "data.train.pipeline.3.flip_ratio": 0.0})
    return detlab.build_dataset(cfg.data.train)


@pytest.fixture(scope="module")
def inspector(dataset):
    """The default assigners (MaxIoU, ATSS, SimOTA, TaskAligned), shrunk from the configs."""
    return assigner_inspector(dict(DEFAULT_CONFIGS), dataset)


def _with_class(widget, css):
    found = [widget] if css in getattr(widget, "_dom_classes", ()) else []
    for child in getattr(widget, "children", ()):
        found += _with_class(child, css)
    return found


def _positives(table):
    return sorted(zip(table["prior"], table["gt"], strict=True))


def test_controls_and_display(inspector):
    for css in ("image", "model", "gt", "level", "view", "table", "summary", "status"):
        assert len(_with_class(inspector.widget, f"detlab-assign-{css}")) == 1, css
    bundle = inspector._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "image/png" in bundle
    assert bundle["text/plain"].startswith("AssignerInspector: MaxIoU (RetinaNet)")
    assert list(inspector._model.options) == list(DEFAULT_CONFIGS)


def test_each_assigner_is_its_configs(inspector):
    expected = {"MaxIoU (RetinaNet)": "MaxIoUAssigner", "ATSS": "ATSSAssigner",
                "SimOTA (YOLOX)": "SimOTAAssigner", "TaskAligned (TOOD)": "TaskAlignedAssigner"}
    tables = {}
    for name, assigner in expected.items():
        inspector._model.value = name  # the dropdown, as a user would pick it
        assert inspector.state["model"] == name and inspector.frame.attrs["assigner"] == assigner
        assert (inspector.table["prior"] >= 0).any(), name
        tables[name] = _positives(inspector.table)
        assert assigner in inspector._summary.value
    assert len({tuple(t) for t in tables.values()}) == len(tables)  # four different tables
    # the widget's table is inspect_assignment's of that model and image
    direct = inspect_assignment(inspector.models["ATSS"], inspector._batch(0))
    inspector.set(model="ATSS", index=0)
    assert _positives(inspector.table) == _positives(direct)


def test_image_gt_and_level_change_the_table(inspector):
    inspector.set(model="ATSS", index=0, gt=ALL, level=ALL)
    first, html, png = _positives(inspector.table), inspector._table_html.value, inspector._png
    inspector._index.value = 1  # the slider
    assert inspector.state["index"] == 1 and _positives(inspector.table) != first
    assert inspector._table_html.value != html and inspector._png != png
    # one ground truth: only its positive priors, in the table and the picture
    gts = [v for _, v in inspector._gt.options if v != ALL]
    assert len(gts) == inspector.frame.attrs["num_gts"] >= 1
    whole = inspector.table
    inspector._gt.value = gts[-1]
    assert set(inspector.table["gt"]) == {gts[-1]}
    assert len(inspector.table) == (whole["gt"] == gts[-1]).sum() < len(whole) or len(gts) == 1
    # one level: only its rows, the others' counts drop
    levels = sorted(set(whole.loc[whole["prior"] >= 0, "level"]))
    inspector.set(gt=ALL, level=levels[0])
    assert set(inspector.table["level"]) == {levels[0]}
    assert inspector._level.value == levels[0]
    assert sum(inspector.positives_per_gt().values()) == (whole["level"] == levels[0]).sum()
    inspector._level.value = ALL
    assert _positives(inspector.table) == _positives(whole)
    # a new image shows all its ground truths again
    inspector._gt.value = gts[0]
    inspector._index.value = 2
    assert inspector.state["gt"] == ALL and inspector._gt.value == ALL


def test_a_refused_value_is_reported(inspector):
    with pytest.raises(KeyError, match="no model 'DETR'"):
        inspector.set(model="DETR")
    with pytest.raises(IndexError, match="image 7"):
        inspector.set(index=7)
    before = inspector.state["index"]
    inspector._safely(inspector.set, index=7)
    assert "IndexError" in inspector._status.value and inspector.state["index"] == before


def test_build_inspected_model_sets_tood_past_its_initial_epoch():
    model = build_inspected_model("tood/tood_r50_fpn_1x_coco.py", num_classes=3)
    assert not model.bbox_head.initial_phase
    assert model.backbone.depth == 18 and model.bbox_head.num_classes == 3
    with pytest.raises(ValueError, match="at least one model"):
        AssignerInspector({}, [None])
