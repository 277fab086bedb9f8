"""Our Config against MMDetection's config engine (mmengine's ``Config``) on the same files.

mmengine is the reference no one here wrote. Where detlab deliberately differs, the test says so:
``_delete_`` is stripped everywhere (mmengine leaves it in dicts the base does not have), a dict
may replace a base ``None`` without ``_delete_`` (mmengine refuses; the detlab test
``test_a_dict_replaces_a_base_none`` covers it), the option parser reads ``none`` in any case
(mmengine only ``None``), and errors are ConfigErrors
with messages naming the files (mmengine: RecursionError on a cycle, a bare FileNotFoundError...).
"""

import argparse
import warnings

import pytest

from detlab.config import Config, ConfigError, parse_cfg_options

mmengine_config = pytest.importorskip("mmengine.config")

SAME_AS_MMENGINE = [
    "chain/level1.py", "chain/level2.py", "chain/level3.py",
    "delete/replace_optimizer.py", "delete/dict_into_scalar_with_delete.py",
    "variables/redefine_only.py", "variables/redefine_and_pass.py",
    "formats/base.json", "formats/base.yaml", "formats/child.json", "formats/child.yaml",
    "formats/child_of_json_and_yaml.py", "refs/predefined.py", "imports/ok.py",
    "_base_/datasets/toy_coco.py", "_base_/models/toy_retinanet.py",
]


def _reference(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mmengine_config.Config.fromfile(str(path), import_custom_modules=False)


def _strip_delete(value):
    if isinstance(value, dict):
        return {k: _strip_delete(v) for k, v in value.items() if k != "_delete_"}
    if isinstance(value, list):
        return [_strip_delete(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_strip_delete(v) for v in value)
    return value


@pytest.mark.parametrize("name", SAME_AS_MMENGINE)
def test_same_merged_result_as_mmengine(configs, name):
    ours = Config.fromfile(configs / name, import_custom_modules=False).to_dict()
    reference = _reference(configs / name)._cfg_dict.to_dict()
    assert ours == reference
    assert list(ours) == list(reference)  # same key order too


def test_delete_on_new_keys_is_stripped_where_mmengine_leaves_it(configs):
    name = configs / "delete" / "new_key_with_delete.py"
    ours = Config.fromfile(name).to_dict()
    reference = _reference(name)._cfg_dict.to_dict()
    assert reference["fp16"].get("_delete_") is True  # mmengine passes it on
    assert ours == _strip_delete(reference)


def test_base_reference_values_match_mmengine(configs):
    name = configs / "refs" / "base_ref.py"
    ours = Config.fromfile(name)
    reference = _reference(name)
    assert ours.norm == reference.norm
    assert ours.base_lr == reference.base_lr


@pytest.mark.parametrize("name", ["delete/dict_into_scalar.py", "dup/child.py", "cycle/a.py",
                                  "cycle/self.py", "missing/child.py"])
def test_both_reject_the_same_broken_files(configs, name):
    with pytest.raises(Exception):  # noqa: B017 -- the reference's error types vary
        _reference(configs / name)
    with pytest.raises(ConfigError):
        Config.fromfile(configs / name)


OVERRIDES = [
    {"model.bbox_head.num_classes": 3},
    {"data.train.pipeline.2.img_scale": (640, 480)},
    {"optimizer": {"lr": 0.1}},
    {"new.nested.key": "x"},
    {"data.val.pipeline.1.transforms.0.keep_ratio": False, "data.samples_per_gpu": 8},
    {"optimizer": {"_delete_": True, "type": "Adam", "lr": 0.001}},
]


@pytest.mark.parametrize("options", OVERRIDES)
def test_merge_from_dict_matches_mmengine(configs, options):
    import copy

    ours = Config.fromfile(configs / "chain" / "level2.py")
    reference = _reference(configs / "chain" / "level2.py")
    ours.merge_from_dict(copy.deepcopy(options))
    reference.merge_from_dict(copy.deepcopy(options), allow_list_keys=True)
    assert ours.to_dict() == reference._cfg_dict.to_dict()


def test_option_parser_matches_mmengine_dictaction():
    from test_config import OPTION_CASES

    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=mmengine_config.DictAction)
    for option, _ in OPTION_CASES:
        reference = parser.parse_args(["--cfg-options", option]).cfg_options
        ours = parse_cfg_options([option])
        key = next(iter(ours))
        if option.split("=", 1)[1] == "none":  # deliberate: 'none' in any case is None here
            assert reference[key] == "none" and ours[key] is None
            continue
        assert ours == reference, option
        assert type(ours[key]) is type(reference[key]), option
