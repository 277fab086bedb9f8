"""Config: loading, _base_ chains, _delete_, variables, overrides, output, provenance."""

import copy
import pickle
import sys
import warnings
from pathlib import Path

import pytest

from detlab.config import (
    Config,
    ConfigDict,
    ConfigError,
    ConfigFileNotFoundError,
    ConfigKeyError,
    check_top_level_keys,
    load_config,
    parse_cfg_options,
    parse_value,
)

# ---- access --------------------------------------------------------------------------------


def test_attribute_and_item_access_at_any_depth():
    cfg = Config(dict(model=dict(backbone=dict(depth=50)), data=dict(train=dict(pipeline=[
        dict(type="LoadImageFromFile"), dict(type="Resize", img_scale=(1333, 800))]))))
    assert cfg.model.backbone.depth == 50
    assert cfg["model"]["backbone"]["depth"] == 50
    assert cfg.model["backbone"].depth == 50
    assert cfg.data.train.pipeline[1].img_scale == (1333, 800)
    assert isinstance(cfg.data.train.pipeline[1], ConfigDict)
    cfg.model.backbone.depth = 101
    cfg["model"]["neck"] = dict(type="FPN")
    assert cfg.model.backbone.depth == 101 and cfg.model.neck.type == "FPN"
    assert isinstance(cfg.model.neck, ConfigDict)


def test_mapping_protocol():
    cfg = Config(dict(a=1, b=dict(c=2)))
    assert list(cfg) == ["a", "b"] and len(cfg) == 2
    assert "a" in cfg and "z" not in cfg
    assert cfg.get("a") == 1 and cfg.get("z", 7) == 7
    assert dict(cfg.items()) == {"a": 1, "b": {"c": 2}}
    assert cfg.b.get("c") == 2
    with pytest.raises(AttributeError, match="Did you mean 'b'"):
        cfg.bb  # noqa: B018


def test_to_dict_is_plain():
    cfg = Config(dict(a=dict(b=[dict(c=1)], t=(dict(d=2),))))
    plain = cfg.to_dict()
    assert plain == {"a": {"b": [{"c": 1}], "t": ({"d": 2},)}}
    assert type(plain["a"]) is dict and type(plain["a"]["b"][0]) is dict
    assert type(plain["a"]["t"][0]) is dict


def test_copy_deepcopy_pickle_are_independent(configs):
    cfg = Config.fromfile(configs / "chain" / "level3.py")
    for other in (cfg.copy(), copy.copy(cfg), copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert other == cfg and other.filename == cfg.filename
        assert other.provenance("model.backbone.depth") == cfg.provenance("model.backbone.depth")
        other.model.backbone.depth = 18
        assert cfg.model.backbone.depth == 101


def test_config_from_dict_does_not_share_with_the_input():
    pipeline = [dict(type="A")]
    source = dict(val=dict(pipeline=pipeline), test=dict(pipeline=pipeline))
    cfg = Config(source)
    cfg.val.pipeline[0].type = "B"
    assert cfg.test.pipeline[0].type == "A" and pipeline[0]["type"] == "A"


# ---- _base_ ----------------------------------------------------------------------------------


def test_multi_level_chain(configs):
    cfg = Config.fromfile(configs / "chain" / "level3.py")
    # level3 changes the backbone, level2 the head and the lr, level1 the optimizer
    assert cfg.model.backbone.depth == 101
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained",
                                               checkpoint="torchvision://resnet101")
    assert cfg.model.backbone.frozen_stages == 1  # untouched keys survive the merge
    assert cfg.model.bbox_head.num_classes == 3
    assert cfg.model.bbox_head.anchor_generator.ratios == [1.0]
    assert cfg.model.bbox_head.anchor_generator.octave_base_scale == 4
    assert cfg.optimizer == dict(type="SGD", lr=0.005, momentum=0.9, weight_decay=0.0001)
    assert cfg.runner == dict(type="EpochBasedRunner", max_epochs=24)
    assert cfg.lr_config.step == [16, 22] and cfg.lr_config.warmup_iters == 500
    assert cfg.workflow == [("train", 1), ("val", 1)]  # lists replace
    assert cfg.data.train.ann_file == "data/coco/annotations/instances_train2017.json"
    assert "_base_" not in cfg


def test_list_of_bases_keeps_order_of_keys(configs):
    cfg = Config.fromfile(configs / "chain" / "level1.py")
    keys = list(cfg)
    assert keys.index("model") < keys.index("data") < keys.index("optimizer") \
        < keys.index("checkpoint_config")


def test_delete_replaces_the_base_dict(configs):
    cfg = Config.fromfile(configs / "delete" / "replace_optimizer.py")
    assert cfg.optimizer == dict(type="AdamW", lr=0.0001, weight_decay=0.05)  # no momentum left
    assert cfg.model.neck == dict(type="PAFPN", in_channels=[512, 1024, 2048], out_channels=256,
                                  num_outs=5)
    assert cfg.model.bbox_head.loss_bbox == dict(type="GIoULoss", loss_weight=2.0)
    assert cfg.model.bbox_head.loss_cls.type == "FocalLoss"
    assert "_delete_" not in repr(cfg.to_dict())


def test_delete_on_a_new_key_never_reaches_a_constructor(configs):
    cfg = Config.fromfile(configs / "delete" / "new_key_with_delete.py")
    assert cfg.fp16 == dict(loss_scale=dict(init_scale=512.0))


def test_delete_replaces_a_non_dict_base_value(configs):
    cfg = Config.fromfile(configs / "delete" / "dict_into_scalar_with_delete.py")
    assert cfg.log_level == dict(level="INFO")


def test_dict_into_a_non_dict_is_an_error_naming_file_and_key(configs):
    with pytest.raises(ConfigError) as err:
        Config.fromfile(configs / "delete" / "dict_into_scalar.py")
    message = str(err.value)
    assert "dict_into_scalar.py" in message and "'log_level'" in message
    assert "runtime.py" in message and "_delete_=True" in message


def test_a_dict_replaces_a_base_none(tmp_path, configs):
    path = tmp_path / "clip.py"
    path.write_text(f"_base_ = {str(configs / '_base_' / 'schedules' / 'toy_1x.py')!r}\n"
                    "optimizer_config = dict(grad_clip=dict(max_norm=35, norm_type=2))\n")
    cfg = Config.fromfile(path)
    assert cfg.optimizer_config.grad_clip == dict(max_norm=35, norm_type=2)
    assert cfg.provenance("optimizer_config.grad_clip") == str(path)


def test_delete_must_be_a_bool(configs):
    with pytest.raises(ConfigError, match=r"bad_delete_value\.py.*optimizer\._delete_"):
        Config.fromfile(configs / "delete" / "bad_delete_value.py")


@pytest.mark.parametrize("name,text", [("top.py", "_delete_ = True\na = 1\n"),
                                       ("top.json", '{"_delete_": true, "a": 1}')])
def test_delete_at_the_top_level_is_an_error(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=f"{name}: _delete_ at the top level"):
        Config.fromfile(tmp_path / name)


def test_duplicate_key_in_two_bases_names_both_files(configs):
    with pytest.raises(ConfigKeyError) as err:
        Config.fromfile(configs / "dup" / "child.py")
    message = str(err.value)
    assert "'optimizer'" in message
    assert str(configs / "dup" / "a.py") in message and str(configs / "dup" / "b.py") in message
    assert isinstance(err.value, KeyError)


@pytest.mark.parametrize("name", ["a.py", "b.py", "self.py"])
def test_cycle_of_bases_is_an_error_listing_the_cycle(configs, name):
    with pytest.raises(ConfigError, match="cycle of _base_ files") as err:
        Config.fromfile(configs / "cycle" / name)
    assert str(configs / "cycle" / name) in str(err.value)


def test_missing_base_names_the_child_and_the_base(configs):
    with pytest.raises(ConfigFileNotFoundError) as err:
        Config.fromfile(configs / "missing" / "child.py")
    message = str(err.value)
    assert "missing/child.py" in message and "does_not_exist.py" in message
    assert isinstance(err.value, FileNotFoundError)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        Config.fromfile(tmp_path / "nope.py")


def test_unknown_suffix(tmp_path):
    path = tmp_path / "cfg.txt"
    path.write_text("a = 1\n")
    with pytest.raises(ConfigError, match=r"\.py, \.json, \.yaml"):
        Config.fromfile(path)


def test_json_and_yaml_bases_under_a_py_child(configs):
    cfg = Config.fromfile(configs / "formats" / "child_of_json_and_yaml.py")
    assert cfg.optimizer == dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=0.0001)
    assert cfg.model.bbox_head == dict(type="RetinaHead", num_classes=3)
    assert cfg.model.backbone.out_indices == [0, 1, 2, 3]
    assert cfg.checkpoint_config.interval == 1


def test_json_child_of_py_chain(configs):
    cfg = Config.fromfile(configs / "formats" / "child.json")
    assert cfg.optimizer.lr == 0.001 and cfg.optimizer.momentum == 0.9
    assert cfg.model.backbone.depth == 18 and cfg.model.backbone.frozen_stages == 1
    assert cfg.runner == dict(type="IterBasedRunner", max_iters=1000)


def test_yaml_child_of_json(configs):
    cfg = Config.fromfile(configs / "formats" / "child.yaml")
    assert cfg.optimizer == dict(type="SGD", lr=0.005, momentum=0.9, weight_decay=0.0001,
                                 paramwise_cfg=dict(norm_decay_mult=0.0))
    assert cfg.runner == dict(type="EpochBasedRunner", max_epochs=3)


def test_base_references_are_values_that_take_part_in_expressions(configs):
    cfg = Config.fromfile(configs / "refs" / "base_ref.py")
    assert cfg.norm == cfg.img_norm_cfg
    assert cfg.val_scale == (1333, 800)
    assert cfg.base_lr == 0.02
    assert cfg.optimizer.lr == pytest.approx(0.04) and cfg.optimizer.momentum == 0.9


def test_base_reference_to_a_missing_key(tmp_path, configs):
    base = configs / "_base_" / "schedules" / "toy_1x.py"
    path = tmp_path / "cfg.py"
    path.write_text(f"_base_ = {str(base)!r}\nlr = {{{{_base_.optimizer.lrr}}}}\n")
    with pytest.raises(ConfigKeyError, match=r"_base_\.optimizer\.lrr.*Did you mean 'lr'"):
        Config.fromfile(path)


def test_predefined_variables(configs):
    cfg = Config.fromfile(configs / "refs" / "predefined.py")
    assert cfg.work_dir == f"{configs / 'refs'}/work_dirs/predefined"
    assert cfg.source_name == "predefined.py" and cfg.suffix == ".py"


# ---- variables of .py configs ----------------------------------------------------------------


def test_redefined_variable_does_not_reach_dicts_built_in_the_base(configs):
    cfg = Config.fromfile(configs / "variables" / "redefine_only.py")
    # the variables themselves are new ...
    assert cfg.img_norm_cfg.to_rgb is False
    assert cfg.train_pipeline[2].img_scale == (640, 480)
    # ... but data.train.pipeline and the Normalize step in it were built from the old ones
    assert cfg.data.train.pipeline[2].img_scale == (1333, 800)
    assert cfg.data.train.pipeline[4] == dict(type="Normalize", mean=[123.675, 116.28, 103.53],
                                              std=[58.395, 57.12, 57.375], to_rgb=True)


def test_passing_the_variable_again_changes_the_dict(configs):
    cfg = Config.fromfile(configs / "variables" / "redefine_and_pass.py")
    assert cfg.data.train.pipeline == cfg.train_pipeline
    assert cfg.data.train.pipeline[2].img_scale == [(640, 480), (800, 600)]
    assert cfg.data.samples_per_gpu == 4 and cfg.data.workers_per_gpu == 2
    assert cfg.data.train.ann_file.endswith("instances_train2017.json")
    assert cfg.data.val.pipeline[1].img_scale == (1333, 800)


def test_imports_functions_classes_and_private_names_are_not_keys(configs):
    cfg = Config.fromfile(configs / "variables" / "private_and_imports.py")
    assert set(cfg) == {"pi", "img_scale", "path", "angle"}
    assert cfg.img_scale == (400, 200) and cfg.path == "a/b" and cfg.angle == 3.14


def test_shared_variable_becomes_independent_keys(configs):
    cfg = Config.fromfile(configs / "_base_" / "datasets" / "toy_coco.py")
    cfg.data.val.pipeline[1].img_scale = (1, 1)
    assert cfg.data.test.pipeline[1].img_scale == (1333, 800)
    assert cfg.test_pipeline[1].img_scale == (1333, 800)


def test_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("a = 1\nb = dict(\n")
    with pytest.raises(ConfigError, match=r"bad\.py, line \d"):
        Config.fromfile(path)


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"a": 1,,}')
    with pytest.raises(ConfigError, match=r"bad\.json, line 1: invalid JSON"):
        Config.fromfile(path)


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        Config.fromfile(path)


# ---- overrides -------------------------------------------------------------------------------


def test_merge_from_dict_with_list_indices_and_new_keys(configs):
    cfg = Config.fromfile(configs / "chain" / "level1.py")
    cfg.merge_from_dict({
        "model.bbox_head.num_classes": 3,
        "data.train.pipeline.2.img_scale": (640, 480),
        "data.train.pipeline.-1.keys": ["img"],
        "optimizer": dict(lr=0.1),
        "new.nested.key": "x",
        "workflow.0": ("val", 1),
    })
    assert cfg.model.bbox_head.num_classes == 3
    assert cfg.data.train.pipeline[2] == dict(type="Resize", img_scale=(640, 480), keep_ratio=True)
    assert cfg.data.train.pipeline[-1]["keys"] == ["img"]  # .keys is the dict method
    assert cfg.optimizer == dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=0.0001)
    assert cfg.new.nested.key == "x"
    assert cfg.workflow == [("val", 1)]
    assert cfg.data.val.pipeline[1].img_scale == (1333, 800)


def test_merge_from_dict_delete(configs):
    cfg = Config.fromfile(configs / "chain" / "level1.py")
    cfg.merge_from_dict({"optimizer": dict(_delete_=True, type="Adam", lr=0.001)})
    assert cfg.optimizer == dict(type="Adam", lr=0.001)


def test_merge_from_dict_errors_name_the_key(configs):
    cfg = Config.fromfile(configs / "chain" / "level1.py")
    with pytest.raises(ConfigKeyError, match=r"index 12 .*data\.train\.pipeline\.12.* 8 items"):
        cfg.merge_from_dict({"data.train.pipeline.12.img_scale": (1, 2)})
    with pytest.raises(ConfigKeyError, match=r"optimizer\.lr\.x.*'optimizer\.lr' is a float"):
        cfg.merge_from_dict({"optimizer.lr.x": 1})
    with pytest.raises(ConfigKeyError, match=r"integer index"):
        cfg.merge_from_dict({"data.train.pipeline.first": 1})
    assert cfg.optimizer.lr == 0.01  # a failed merge changes nothing


def test_merge_from_dict_without_list_keys(configs):
    cfg = Config.fromfile(configs / "chain" / "level1.py")
    with pytest.raises(ConfigError, match="'data.train.pipeline' is a dict here but a list"):
        cfg.merge_from_dict({"data.train.pipeline.2.img_scale": (1, 2)}, allow_list_keys=False)


OPTION_CASES = [
    ("a.b=1", {"a.b": 1}),
    ("c=[1,2]", {"c": [1, 2]}),
    ("d=(1,2)", {"d": (1, 2)}),
    ("e=True", {"e": True}),
    ("e2=FALSE", {"e2": False}),
    ("f=none", {"f": None}),
    ("f2=None", {"f2": None}),
    ("g=abc", {"g": "abc"}),
    ("h=a,b", {"h": ["a", "b"]}),
    ("i=[(a,b),(c,d)]", {"i": [("a", "b"), ("c", "d")]}),
    ("j=0.5", {"j": 0.5}),
    ("k=1e-4", {"k": 1e-4}),
    ("l=-3", {"l": -3}),
    ("m=[]", {"m": []}),
    ("n=()", {"n": ()}),
    ("o=[[1,2],[3,(4,5)]]", {"o": [[1, 2], [3, (4, 5)]]}),
    ("p='quoted'", {"p": "quoted"}),
    ("q=a=b", {"q": "a=b"}),
    ("r=(640, 480)", {"r": (640, 480)}),
    ("s=torchvision://resnet50", {"s": "torchvision://resnet50"}),
]
# beyond MMDetection: a dict literal (notebook parameters such as cfg_options), and a comma
# inside brackets alone makes no list (MMDetection's parser recurses without end on it)
EXTENDED_CASES = [
    ("t={'optimizer.lr': 0.01, 'img_scale': (1, 2)}",
     {"t": {"optimizer.lr": 0.01, "img_scale": (1, 2)}}),
    ("u=f(1,2)", {"u": "f(1,2)"}),
    ("v=(1,2),(3,4)", {"v": [(1, 2), (3, 4)]}),
    ("w='a,b'", {"w": "a,b"}),
]
# a dict written as in a config file, as MMDetection's users write it on the command line
DICT_CALL_CASES = [
    ("init_cfg=dict(type='Pretrained', checkpoint='x.pth')",
     {"init_cfg": {"type": "Pretrained", "checkpoint": "x.pth"}}),
    ("a=dict(b=dict(c=[1,2],d=(3,4)),e=True,f=none,g=1e-3,h=text,i='x,y')",
     {"a": {"b": {"c": [1, 2], "d": (3, 4)}, "e": True, "f": None, "g": 1e-3, "h": "text",
            "i": "x,y"}}),
    ("pipeline=[dict(type='A'),dict(type='B',p=0.5)]",
     {"pipeline": [{"type": "A"}, {"type": "B", "p": 0.5}]}),
    ("empty=dict()", {"empty": {}}),
]


@pytest.mark.parametrize("option,expected", OPTION_CASES + EXTENDED_CASES + DICT_CALL_CASES)
def test_parse_cfg_options(option, expected):
    assert parse_cfg_options([option]) == expected


def test_parse_cfg_options_all_at_once():
    options = ["a.b=1", "c=[1,2]", "d=(1,2)", "e=True", "f=none", "g=abc", "h=a,b",
               "i=[(a,b),(c,d)]"]
    assert parse_cfg_options(options) == {
        "a.b": 1, "c": [1, 2], "d": (1, 2), "e": True, "f": None, "g": "abc", "h": ["a", "b"],
        "i": [("a", "b"), ("c", "d")]}


def test_parse_cfg_options_errors():
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_cfg_options(["novalue"])
    with pytest.raises(ValueError, match="unbalanced"):
        parse_value("[1,2")
    with pytest.raises(ValueError, match="not a Python dict literal"):
        parse_value("{'lr': }")
    with pytest.raises(ValueError, match=r"'1=2' .* not KEY=VALUE with KEY a name"):
        parse_value("dict(1=2)")
    with pytest.raises(ValueError, match="'a' is given twice"):
        parse_value("dict(a=1,a=2)")


def test_a_dict_call_option_merges_into_the_dict_it_replaces(configs):
    cfg = load_config(configs / "chain" / "level1.py", [
        "model.backbone.init_cfg=dict(type='Pretrained', checkpoint='x.pth')",
        "model.neck=dict(num_outs=4)"])
    assert cfg.model.backbone.init_cfg == {"type": "Pretrained", "checkpoint": "x.pth"}
    assert cfg.model.neck.num_outs == 4 and cfg.model.neck.type == "FPN"


def test_a_word_where_the_config_holds_a_number_names_the_key(configs):
    path = configs / "chain" / "level1.py"
    with pytest.raises(ConfigError) as info:
        load_config(path, ["optimizer.lr=1e-3x"])
    message = str(info.value)
    assert "optimizer.lr='1e-3x' is not a number" in message
    assert "0.01" in message and "level1.py" in message  # what the config holds, and where
    assert "write a number, e.g. optimizer.lr=0.01" in message
    with pytest.raises(ConfigError, match=r"lr_config\.warmup_iters='x' is not a number"):
        load_config(path, {"lr_config": dict(warmup_iters="x")})  # inside a dict value too
    with pytest.raises(ConfigError, match=r"without quotes: optimizer\.lr=0\.1"):
        load_config(path, {"optimizer.lr": "0.1"})
    allowed = load_config(path, ["optimizer.lr=1", "lr_config.warmup=constant",
                                 "optimizer.type=Adam", "optimizer.lr2=abc",
                                 "optimizer=dict(_delete_=True,type=Adam,lr=fast)"])
    assert allowed.optimizer == {"type": "Adam", "lr": "fast"}
    cfg = load_config(path, ["fp16.loss_scale=512.", "fp16.loss_scale=dynamic"])
    assert cfg.fp16.loss_scale == "dynamic"  # mmcv takes a number or 'dynamic'
    cfg = Config.fromfile(path)
    cfg.merge_from_dict({"optimizer.lr": "fast"})  # unchecked: the config editor's way
    assert cfg.optimizer.lr == "fast"


def test_load_config_applies_string_options(configs):
    cfg = load_config(configs / "chain" / "level1.py",
                      ["data.train.pipeline.2.img_scale=(640,480)", "optimizer.lr=0.5"])
    assert cfg.data.train.pipeline[2].img_scale == (640, 480) and cfg.optimizer.lr == 0.5
    assert cfg.provenance("optimizer.lr") == "cfg_options"


# ---- output ----------------------------------------------------------------------------------

ALL_LOADABLE = ["chain/level3.py", "delete/replace_optimizer.py", "variables/redefine_and_pass.py",
                "formats/child.json", "formats/child.yaml", "refs/base_ref.py",
                "variables/private_and_imports.py"]


@pytest.mark.parametrize("name", ALL_LOADABLE)
def test_pretty_text_loads_back_equal(configs, name):
    cfg = Config.fromfile(configs / name)
    again = Config.fromstring(cfg.pretty_text, ".py")
    assert again.to_dict() == cfg.to_dict()
    compile(cfg.pretty_text, "<pretty_text>", "exec")


def test_pretty_text_of_awkward_values():
    cfg = Config({"a": {"not-an-identifier": 1, 2: "int key", "class": None},
                  "t": (1,), "inf": float("inf"), "s": "quote ' and \" and \\",
                  "nested": [[(1, 2)]] * 30, "not-top-level-name": 3})
    again = Config.fromstring(cfg.pretty_text)
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("suffix", [".py", ".json", ".yaml", ".yml"])
def test_dump_round_trip(configs, tmp_path, suffix):
    cfg = Config.fromfile(configs / "chain" / "level3.py")
    out = tmp_path / f"dumped{suffix}"
    text = cfg.dump(out)
    assert out.read_text() == text
    again = Config.fromfile(out)
    if suffix == ".py":
        assert again.to_dict() == cfg.to_dict()
    else:  # json and yaml have no tuples
        assert _tuples_as_lists(again.to_dict()) == _tuples_as_lists(cfg.to_dict())
    assert not list(tmp_path.glob("*.tmp*"))


def _tuples_as_lists(value):
    if isinstance(value, dict):
        return {k: _tuples_as_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tuples_as_lists(v) for v in value]
    return value


def test_dump_unknown_format(tmp_path):
    with pytest.raises(ConfigError, match="cannot dump"):
        Config(dict(a=1)).dump(tmp_path / "x.toml")


def test_diff(configs):
    base = Config.fromfile(configs / "chain" / "level1.py")
    child = Config.fromfile(configs / "chain" / "level3.py")
    diff = base.diff(child)
    assert diff.changed["model.backbone.depth"] == (50, 101)
    assert diff.changed["model.bbox_head.num_classes"] == (80, 3)
    assert diff.changed["optimizer.lr"] == (0.01, 0.005)
    assert diff.changed["model.bbox_head.anchor_generator.ratios"] == ([0.5, 1.0, 2.0], [1.0])
    assert "model.backbone.frozen_stages" not in diff.changed
    assert "workflow" in diff.changed  # a list of another length is changed as a whole
    other = Config(dict(a=1, b=dict(c=2)))
    d2 = other.diff(dict(b=dict(c=2, d=3), e=4))
    assert d2.added == {"b.d": 3, "e": 4} and d2.removed == {"a": 1} and not d2.changed
    assert bool(d2) and not other.diff(other)
    assert "+ e = 4" in str(d2) and "- a = 1" in str(d2)
    assert {r["change"] for r in d2.rows()} == {"added", "removed"}


# ---- provenance ------------------------------------------------------------------------------


def test_provenance_names_the_file_that_last_set_a_key(configs):
    cfg = Config.fromfile(configs / "chain" / "level3.py")
    base = configs / "_base_"
    assert cfg.provenance("model.backbone.depth") == str(configs / "chain" / "level3.py")
    assert cfg.provenance("model.backbone.frozen_stages") == str(base / "models" /
                                                                 "toy_retinanet.py")
    assert cfg.provenance("model.bbox_head.num_classes") == str(configs / "chain" / "level2.py")
    assert cfg.provenance("optimizer.momentum") == str(configs / "chain" / "level1.py")
    assert cfg.provenance("optimizer.lr") == str(configs / "chain" / "level2.py")
    assert cfg.provenance("data.train.pipeline.2.img_scale") == str(base / "datasets" /
                                                                    "toy_coco.py")
    # a dict: the last file that set anything inside it
    assert cfg.provenance("model") == str(configs / "chain" / "level3.py")
    assert cfg.provenance("checkpoint_config") == str(base / "runtime.py")
    cfg.merge_from_dict({"data.train.pipeline.2.img_scale": (1, 1)}, source="--cfg-options")
    assert cfg.provenance("data.train.pipeline.2.img_scale") == "--cfg-options"
    assert cfg.provenance("data.train.pipeline.2.keep_ratio") == str(base / "datasets" /
                                                                     "toy_coco.py")
    records = cfg.provenance()
    assert records["model.backbone.depth"].endswith("level3.py")
    with pytest.raises(KeyError, match="Did you mean 'backbone'"):
        cfg.provenance("model.backbone_x")


def test_provenance_after_delete(configs):
    cfg = Config.fromfile(configs / "delete" / "replace_optimizer.py")
    here = str(configs / "delete" / "replace_optimizer.py")
    assert cfg.provenance("optimizer") == here
    assert cfg.provenance("optimizer.type") == here
    assert cfg.provenance("model.bbox_head.loss_cls.gamma").endswith("toy_retinanet.py")


# ---- custom_imports --------------------------------------------------------------------------


def test_custom_imports(configs, monkeypatch):
    monkeypatch.syspath_prepend(str(configs / "imports"))
    sys.modules.pop("detlab_test_custom_mod", None)
    Config.fromfile(configs / "imports" / "ok.py")
    assert sys.modules["detlab_test_custom_mod"].LOADED


def test_custom_imports_failure_names_the_module(configs):
    with pytest.raises(ImportError, match="detlab_no_such_module_xyz") as err:
        Config.fromfile(configs / "imports" / "bad.py")
    assert "bad.py" in str(err.value) and "allow_failed_imports" in str(err.value)


def test_custom_imports_failure_allowed_warns(configs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = Config.fromfile(configs / "imports" / "allowed.py")
    assert cfg.value == 1
    assert any("detlab_no_such_module_xyz" in str(w.message) for w in caught)


def test_custom_imports_can_be_skipped(configs):
    cfg = Config.fromfile(configs / "imports" / "bad.py", import_custom_modules=False)
    assert cfg.custom_imports.imports == ["detlab_no_such_module_xyz"]


# ---- top-level keys --------------------------------------------------------------------------

CONFIGS_OF_THE_REPO = sorted((Path(__file__).parents[1] / "configs").rglob("*.py"))


def test_misspelt_top_level_keys_are_reported_with_the_key_they_resemble(tmp_path, configs):
    path = tmp_path / "typos.py"
    path.write_text(f"_base_ = ['{configs / 'chain' / 'level1.py'}']\n"
                    "optimzer = dict(lr=0.01)\ntotal_epoch = 3\nlr_confg = dict(step=[2])\n"
                    "train_pipeline = []\nval_pipeline = []\nimg_size = 640\nmax_epochs = 3\n"
                    "my_classes = ('a', 'b')\n")
    warnings_ = check_top_level_keys(Config.fromfile(path))
    assert len(warnings_) == 3
    optimzer, total_epoch, lr_confg = warnings_
    assert optimzer.startswith(f"{path}: top-level key 'optimzer'")
    assert "Did you mean 'optimizer'?" in optimzer
    assert "Did you mean 'total_epochs'?" in total_epoch
    assert "Did you mean 'lr_config'?" in lr_confg


def test_the_configs_of_the_repository_have_no_misspelt_keys(configs):
    for path in [configs / "chain" / "level3.py", *CONFIGS_OF_THE_REPO]:
        assert check_top_level_keys(Config.fromfile(path)) == [], path
    assert check_top_level_keys(dict(model={}, data={}, classes=("a",), seed=0)) == []
