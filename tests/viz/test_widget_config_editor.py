"""ConfigEditor: provenance of each key, edits checked against constructors, child configs."""

import os

import pytest

from detlab.config import Config, ConfigDiff
from detlab.viz.widgets.config_editor import (
    ConfigEditor,
    config_delta,
    matches,
    parse_annotation,
    value_text,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(REPO, "configs", "quickstart", "retinanet_r18_fpn_shapes.py")


@pytest.fixture
def editor():
    return ConfigEditor(QUICKSTART)


def _accepts(annotation, value):
    kinds = parse_annotation(annotation)
    return kinds is None or any(matches(kind, value) for kind in kinds)


def test_annotations_judge_only_obviously_wrong_values():
    assert _accepts("int", 3) and not _accepts("int", "3") and not _accepts("int", True)
    assert _accepts("float", 3) and not _accepts("float", "0.1")
    assert _accepts("bool", False) and _accepts("bool", 1) and not _accepts("bool", "yes")
    assert _accepts("Sequence[int]", (1, 2)) and _accepts("Sequence[int]", [1])
    assert not _accepts("Sequence[int]", ["a"]) and not _accepts("Sequence[int]", 3)
    assert _accepts("int | Sequence[int]", 3) and _accepts("Optional[str]", None)
    assert _accepts("Literal['a', 'b']", "a") and not _accepts("Literal['a', 'b']", "c")
    assert _accepts("Mapping | nn.Module", {"type": "X"}) and not _accepts("Mapping", 3)
    assert _accepts("Any", object()) and _accepts("SomeClass", 3)  # cannot judge: accepted
    assert not _accepts("float | torch.Tensor", "fast")


def test_the_tree_shows_values_and_the_files_that_set_them(editor):
    assert editor.problems() == [] and not editor.diff()
    rows = {row.key: row for row in editor.rows("model")}
    assert rows["model.bbox_head.num_classes"].value == 3
    assert rows["model.bbox_head.num_classes"].source == "retinanet_r18_fpn_shapes.py"
    assert rows["model.type"].source == os.path.join("..", "_base_", "models",
                                                     "retinanet_r50_fpn.py")
    assert "data.train.pipeline.2.img_scale" in {row.key for row in editor.rows("data")}
    assert editor.sections()[0] == "model" and editor.sections()[-1] == "(top-level values)"
    assert "retinanet_r50_fpn.py" in editor._tree.children[0].value
    bundle = editor._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "image/png" in bundle
    assert bundle["text/plain"].startswith("ConfigEditor: retinanet_r18_fpn_shapes.py, 0 ")
    closed = editor.render_png()
    editor.open("data")  # the picture lists the open section's keys
    assert editor._open_section() == "data" and editor.render_png() != closed
    with pytest.raises(KeyError, match="Did you mean 'data'"):
        editor.open("dtaa")
    editor.open(None)
    assert editor._tree.selected_index is None and editor.render_png() == closed


def test_edits_are_checked_against_the_constructors(editor):
    assert editor.set("model.bbox_head.num_classes", "three") == [
        "model.bbox_head.num_classes: RetinaHead expects num_classes: int, got str 'three'"]
    (unknown,) = editor.set("model.bbox_head.num_clases", 4)[1:]
    assert unknown.startswith("model.bbox_head.num_clases: RetinaHead does not accept "
                              "'num_clases'. Did you mean 'num_classes'?")
    (typo,) = editor.set("model.bbox_head.loss_cls.type", "FocalLos")
    assert "not in the model registry" in typo and "Did you mean 'FocalLoss'" in typo
    (flag,) = editor.set("data.train.pipeline.2.keep_ratio", "yes")
    assert flag.startswith("data.train.pipeline.2.keep_ratio: Resize expects keep_ratio: bool")
    assert "AdamW expects lr" in editor.set("optimizer.lr", "fast")[0]
    assert "StepLrUpdaterHook expects warmup_iters: int" in \
        editor.set("lr_config.warmup_iters", "x")[0]
    assert editor.set("model.bbox_head.norm_cfg.type", "SyncBN") == []  # a layer spec
    (missing,) = editor.set("model.neck", dict(_delete_=True, type="FPN", in_channels=[8],
                                               out_channels=8))
    assert missing == "model.neck: FPN needs 'num_outs', which the config does not set."
    assert len(editor.problems()) == 7
    rows = {r.key: r for r in editor.rows("model")}
    assert rows["model.neck.type"].source == "ConfigEditor"
    assert "needs 'num_outs'" in rows["model.neck.type"].problems[0]
    assert rows["model.neck.in_channels"].edited and not rows["model.neck.type"].edited
    editor.reset()
    assert editor.problems() == [] and not editor.diff() and editor.edits == {}


def test_editing_through_the_controls(editor):
    png = editor.render_png()
    editor._key.value = "model.bbox_head.num_classes"
    assert editor._value.value == "3"
    editor._value.value = "7"
    editor._apply.click()
    assert editor.cfg.model.bbox_head.num_classes == 7
    assert editor.cfg.provenance("model.bbox_head.num_classes") == "ConfigEditor"
    assert "model.bbox_head.num_classes: 3 -&gt; 7" in editor._diff.value
    assert editor.render_png() != png and "1 changed key," in editor._header.value
    editor._key.value = "data.train.pipeline.2.img_scale"
    assert editor._value.value == "(192,192)"
    editor._value.value = "(96, 80)"
    editor._apply.click()
    assert editor.get("data.train.pipeline.2.img_scale") == (96, 80)
    editor._key.value, editor._value.value = "model.bbox_head.num_classes", "many"
    editor._apply.click()
    assert "expects num_classes: int" in editor._problems.value
    editor._reset.click()  # the key in the box only
    assert editor.cfg.model.bbox_head.num_classes == 3
    assert editor.get("data.train.pipeline.2.img_scale") == (96, 80)
    editor._key.value = "optimizer.lr.x"
    editor._apply.click()
    assert "cannot set" in editor._status.value
    assert value_text([1, (2.5, "a"), None]) == "[1,(2.5,a),None]"


def test_save_as_writes_a_child_that_loads_as_the_edit(editor, tmp_path):
    editor.set("model.bbox_head.num_classes", 5)
    editor.set("data.train.pipeline.2.img_scale", (96, 96))
    editor.set("optimizer", dict(_delete_=True, type="SGD", lr=0.01, momentum=0.9))
    editor.set("evaluation.save_best", "auto")
    editor.set("total_epochs", 3)
    editor.set("lr_config.step", 4)  # a list becomes an int
    path = editor.save_as(tmp_path / "edited" / "child.py")
    text = open(path).read()
    relative = os.path.relpath(QUICKSTART, tmp_path / "edited")
    assert text.startswith(f"_base_ = {relative!r}\n")
    assert "model = dict(bbox_head=dict(num_classes=5))" in text
    assert "optimizer = dict(_delete_=True, type='SGD', lr=0.01, momentum=0.9)" in text
    assert "runner" not in text and "img_norm_cfg" not in text
    loaded = Config.fromfile(path)
    assert loaded == editor.cfg and loaded.data.train.pipeline[2].img_scale == (96, 96)
    assert isinstance(editor.diff(), ConfigDiff) and Config.fromfile(QUICKSTART).diff(
        loaded).changed == editor.diff().changed
    with pytest.raises(ValueError, match="the loaded file itself"):
        editor.save_as(QUICKSTART)


def test_changes_made_before_the_editor_are_saved_too(shapes_root, make_config, tmp_path):
    cfg = make_config(shapes_root, 1)  # the quickstart file with overrides in memory
    editor = ConfigEditor(cfg)
    assert "runner.max_epochs" in editor.diff().changed
    editor.set_text("data.samples_per_gpu", "2")
    loaded = Config.fromfile(editor.save_as(tmp_path / "tiny.py"))
    assert loaded == editor.cfg and loaded.data.samples_per_gpu == 2
    plain = ConfigEditor(dict(model=dict(type="RetinaNet"), lr=0.1))
    plain.set("lr", 0.2)
    assert str(plain.diff()) == "~ lr: 0.1 -> 0.2"
    assert Config.fromfile(plain.save_as(tmp_path / "plain.py")) == plain.cfg


def test_config_delta_uses_delete_only_where_a_merge_cannot_reproduce_the_edit():
    base = dict(a=dict(x=1, y=dict(z=2)), b=[1, 2], c=None, d=3)
    edited = dict(a=dict(x=1, y=dict(z=5)), b=[1, 2, 3], c=dict(k=1), d=dict(k=2), e=(1,))
    assert config_delta(base, edited) == dict(a=dict(y=dict(z=5)), b=[1, 2, 3], c=dict(k=1),
                                              d=dict(_delete_=True, k=2), e=(1,))
    assert config_delta(dict(a=dict(x=1, y=2)), dict(a=dict(x=1))) == dict(
        a=dict(_delete_=True, x=1))
    assert config_delta(dict(a=1), dict(a=1.0)) == dict(a=1.0)
