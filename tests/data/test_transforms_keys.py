"""Every registered transform adds, updates and removes exactly the keys its docstring names."""

import inspect

import numpy as np
import pytest
from PIL import Image
from transform_scenes import make_sample

from detlab.registry import TRANSFORMS

NORM = dict(mean=[1, 2, 3], std=[2, 2, 2])
GEOMETRY = {"img", "img_shape", "gt_bboxes", "gt_bboxes_ignore", "gt_masks", "gt_semantic_seg"}
DROPS = {"gt_labels", "gt_instance_ids"}
ALBU = dict(transforms=[dict(type="HorizontalFlip", p=1.0)],
            bbox_params=dict(type="BboxParams", format="pascal_voc",
                             label_fields=["gt_labels"]))

# name: (arguments, input kind, keys added, keys that may be updated, keys removed)
SPECS = {
    "Resize": (dict(img_scale=(60, 40)), "sample",
               {"scale", "scale_idx", "scale_factor", "keep_ratio", "pad_shape"}, GEOMETRY, ()),
    "RandomFlip": (dict(flip_ratio=1.0), "sample", {"flip", "flip_direction"},
                   GEOMETRY - {"img_shape"}, ()),
    "Pad": (dict(size_divisor=16), "sample",
            {"pad_shape", "pad_fixed_size", "pad_size_divisor"},
            {"img", "gt_masks", "gt_semantic_seg"}, ()),
    "Normalize": (NORM, "sample", {"img_norm_cfg"}, {"img"}, ()),
    "RandomCrop": (dict(crop_size=(15, 20), allow_negative_crop=True), "sample", set(),
                   GEOMETRY | DROPS, ()),
    "MinIoURandomCrop": (dict(min_ious=(0.0,)), "sample", set(), GEOMETRY | DROPS, ()),
    "Expand": (dict(prob=1.0, seg_ignore_label=255), "sample", set(), GEOMETRY, ()),
    "RandomShift": (dict(shift_ratio=1.0, max_shift_px=4, filter_thr_px=0), "sample", set(),
                    GEOMETRY - {"img_shape"} | DROPS, ()),
    "SegRescale": (dict(scale_factor=0.5), "sample", set(), {"gt_semantic_seg"}, ()),
    "RandomAffine": (dict(max_translate_ratio=0.3), "sample", set(), GEOMETRY | DROPS, ()),
    "PhotoMetricDistortion": ({}, "sample", set(), {"img"}, ()),
    "YOLOXHSVRandomAug": ({}, "sample", set(), {"img"}, ()),
    "CutOut": (dict(n_holes=2, cutout_shape=(4, 4)), "sample", set(), {"img"}, ()),
    "Albu": (ALBU, "sample", set(), {"img", "img_shape", "gt_bboxes", "gt_masks"} | DROPS, ()),
    "Mosaic": (dict(img_scale=(20, 30)), "mix", set(),
               GEOMETRY - {"gt_semantic_seg"} | DROPS, ()),
    "MixUp": (dict(img_scale=(20, 30)), "mix", set(), GEOMETRY - {"gt_semantic_seg"} | DROPS,
              ()),
    "FilterAnnotations": (dict(min_gt_bbox_wh=(8, 8)), "sample", set(),
                          {"gt_bboxes", "gt_masks"} | DROPS, ()),
    "LoadProposals": ({}, "proposals", set(), {"proposals", "bbox_fields"}, ()),
    "DefaultFormatBundle": ({}, "sample", {"img_norm_cfg", "pad_shape", "scale_factor"},
                            {"img", "gt_bboxes", "gt_bboxes_ignore", "gt_labels",
                             "gt_semantic_seg"}, ()),
    "ImageToTensor": (dict(keys=["img"]), "sample", set(), {"img"}, ()),
    "ToTensor": (dict(keys=["gt_labels"]), "sample", set(), {"gt_labels"}, ()),
    "Collect": (dict(keys=["img", "gt_bboxes"], meta_keys=("filename", "img_shape")), "sample",
                {"img_metas"}, set(), "all but keys"),
    "LoadImageFromFile": ({}, "file", {"filename", "ori_filename", "img", "img_shape",
                                       "ori_shape", "img_fields"}, set(), ()),
    "LoadAnnotations": (dict(with_mask=True, with_seg=True), "annotations",
                        {"gt_bboxes", "gt_bboxes_ignore", "gt_labels", "gt_masks",
                         "gt_semantic_seg"}, {"bbox_fields", "mask_fields", "seg_fields"}, ()),
    "RandomCenterCropPad": (dict(crop_size=(16, 24), border=4, test_pad_mode=None, to_rgb=True,
                                 **NORM), "float boxes", {"pad_shape"},
                            {"img", "img_shape", "gt_bboxes", "gt_bboxes_ignore"} | DROPS, ()),
}
NOT_SAMPLE_TRANSFORMS = {"Compose", "MultiScaleFlipAug"}  # they run other transforms
FIELD_LISTS = {"img": "img_fields", "gt_bboxes": "bbox_fields",
               "gt_bboxes_ignore": "bbox_fields", "gt_masks": "mask_fields",
               "gt_semantic_seg": "seg_fields"}
BOXES = [[2, 2, 12, 10], [14, 4, 28, 18]]


def _sample():
    sample = make_sample((20, 30), BOXES, ignore=[[0, 0, 5, 5]])
    sample["gt_semantic_seg"] = np.zeros((20, 30), np.uint8)
    sample["seg_fields"] = ["gt_semantic_seg"]
    return sample


def _input(kind, tmp_path):
    if kind == "sample":
        return _sample()
    if kind == "mix":
        first, second = make_sample((20, 30), BOXES), make_sample((20, 30), BOXES)
        first["mix_results"] = [second, make_sample((20, 30), BOXES),
                                make_sample((20, 30), BOXES)]
        return first
    if kind == "float boxes":  # a float32 image with boxes only (RandomCenterCropPad)
        sample = make_sample((20, 30), BOXES, ignore=[[0, 0, 5, 5]])
        sample.pop("gt_masks")
        return dict(sample, img=sample["img"].astype(np.float32), mask_fields=[])
    if kind == "proposals":
        return dict(_sample(), proposals=np.array([[1, 2, 3, 4]], np.float32))
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "a_seg.png")
    results = dict(img_info=dict(filename="a.png", id=1, height=20, width=30),
                   img_prefix=str(tmp_path), seg_prefix=str(tmp_path), bbox_fields=[],
                   mask_fields=[], seg_fields=[])
    if kind == "annotations":
        results["ann_info"] = dict(bboxes=np.array(BOXES, np.float32), labels=np.array([0, 1]),
                                   bboxes_ignore=np.zeros((0, 4), np.float32),
                                   masks=[[[2, 2, 12, 2, 12, 10]], [[14, 4, 28, 4, 28, 18]]],
                                   seg_map="a_seg.png")
    return results


def _same(a, b) -> bool:
    if a is b:
        return True
    if hasattr(a, "to_ndarray") and hasattr(b, "to_ndarray"):
        return type(a) is type(b) and np.array_equal(a.to_ndarray(), b.to_ndarray())
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except (TypeError, ValueError):
        return False


def _documented(key: str, transform) -> bool:
    doc = inspect.getdoc(type(transform)) or ""
    named = f"``{key}``" in doc or key in getattr(transform, "keys", [])
    listed = key in FIELD_LISTS and f"``{FIELD_LISTS[key]}``" in doc
    companion = key in ("gt_labels", "gt_masks", "gt_instance_ids") and "companions" in doc
    return named or listed or companion


def test_every_transform_has_a_key_spec():
    assert set(TRANSFORMS.list()) - NOT_SAMPLE_TRANSFORMS == set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_documented_keys(name, tmp_path):
    args, kind, added, updatable, removed = SPECS[name]
    transform = TRANSFORMS.build(dict(type=name, **args))
    before = _input(kind, tmp_path)
    snapshot = dict(before)
    np.random.seed(3)  # a seed with which every random transform acts
    out = transform(dict(before))
    assert out is not None
    new_keys = set(out) - set(snapshot)
    assert new_keys == set(added), f"{name} added {sorted(new_keys)}"
    gone = set(snapshot) - set(out) - {"mix_results"}
    if removed == "all but keys":
        assert gone == set(snapshot) - set(transform.keys)
    else:
        assert not gone, f"{name} removed {sorted(gone)}"
    changed = {k for k in set(out) & set(snapshot) if not _same(out[k], snapshot[k])}
    assert changed <= updatable, f"{name} also changed {sorted(changed - updatable)}"
    assert changed or new_keys or name == "ToTensor", f"{name} did nothing to the sample"
    undocumented = [k for k in new_keys | changed if not _documented(k, transform)]
    assert not undocumented, f"{name}'s docstring does not name {undocumented}"
