"""CocoDataset: MMDetection 2.x's reading of COCO files, label mapping, filtering, errors."""

import json
import sys
import types

import numpy as np
import pytest
from PIL import Image

from detlab.config import Config
from detlab.data import CocoDataset, CustomDataset, build_dataset, make_shapes_dataset
from detlab.registry import BuildArgumentError
from detlab.structures import DetResult

# the fixture's annotation 6 lies outside its image on purpose (MMDetection drops it)
pytestmark = pytest.mark.filterwarnings("ignore:.*reach more than a pixel past:UserWarning")

CATEGORIES = [dict(id=3, name="cat"), dict(id=7, name="dog"), dict(id=9, name="bird")]
IMAGES = [
    dict(id=10, file_name="a.png", width=100, height=80),
    dict(id=20, file_name="b.png", width=50, height=50),  # no annotation
    dict(id=30, file_name="c.png", width=20, height=100),  # too small to train on
    dict(id=40, file_name="d.png", width=64, height=128),  # only a crowd box
    dict(id=50, file_name="e.png", width=60, height=40),  # only a bird
]


def _ann(ann_id, image_id, cat, bbox, **extra):
    return {**dict(id=ann_id, image_id=image_id, category_id=cat, bbox=bbox,
                   area=bbox[2] * bbox[3], iscrowd=0), **extra}


ANNOTATIONS = [
    _ann(1, 10, 3, [10, 20, 30, 40], segmentation=[[10, 20, 40, 20, 40, 60]]),
    _ann(2, 10, 7, [0.5, 1.5, 20, 10]),
    _ann(3, 10, 7, [5, 5, 30, 30], iscrowd=1),
    _ann(4, 10, 3, [1, 1, 0.5, 10]),  # narrower than a pixel
    _ann(5, 10, 3, [1, 1, 10, 10], area=0),  # no area
    _ann(6, 10, 3, [100, 10, 10, 10]),  # outside the image
    _ann(7, 10, 3, [1, 1, 10, 10], ignore=True),
    _ann(8, 30, 9, [1, 1, 5, 5]),
    _ann(9, 40, 3, [0, 0, 64, 64], iscrowd=1),
    _ann(10, 50, 9, [2, 3, 10, 12]),
]


@pytest.fixture
def coco_file(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(dict(images=IMAGES, annotations=ANNOTATIONS,
                                    categories=CATEGORIES)))
    return path


def _dataset(path, **kwargs):
    kwargs.setdefault("pipeline", [])
    return CocoDataset(str(path), **kwargs)


def test_classes_and_label_mapping_from_the_file(coco_file):
    ds = _dataset(coco_file, test_mode=True)
    assert ds.CLASSES == ("cat", "dog", "bird")
    assert ds.cat_ids == [3, 7, 9]
    assert ds.cat2label == {3: 0, 7: 1, 9: 2}
    assert ds.img_ids == [10, 20, 30, 40, 50]
    assert [info["filename"] for info in ds.data_infos] == ["a.png", "b.png", "c.png", "d.png",
                                                            "e.png"]
    assert ds.data_infos[0]["width"] == 100 and ds.data_infos[0]["id"] == 10


def test_ann_info_is_xyxy_without_minus_one_and_skips_bad_boxes(coco_file):
    ann = _dataset(coco_file, test_mode=True).get_ann_info(0)
    assert ann["bboxes"].dtype == np.float32 and ann["labels"].dtype == np.int64
    np.testing.assert_allclose(ann["bboxes"], [[10, 20, 40, 60], [0.5, 1.5, 20.5, 11.5]])
    np.testing.assert_array_equal(ann["labels"], [0, 1])
    np.testing.assert_allclose(ann["bboxes_ignore"], [[5, 5, 35, 35]])
    assert ann["masks"] == [[[10, 20, 40, 20, 40, 60]], None]
    assert ann["seg_map"] == "a.png"


def test_empty_image_has_empty_arrays(coco_file):
    ann = _dataset(coco_file, test_mode=True).get_ann_info(1)
    assert ann["bboxes"].shape == (0, 4) and ann["labels"].shape == (0,)
    assert ann["bboxes_ignore"].shape == (0, 4)


def test_classes_subset_in_the_given_order(coco_file):
    ds = _dataset(coco_file, classes=["bird", "cat"], test_mode=True)
    assert ds.CLASSES == ("bird", "cat") and ds.cat_ids == [9, 3]
    assert ds.cat2label == {9: 0, 3: 1}
    ann = ds.get_ann_info(0)
    np.testing.assert_allclose(ann["bboxes"], [[10, 20, 40, 60]])  # the dog is not a class
    np.testing.assert_array_equal(ann["labels"], [1])
    assert ann["bboxes_ignore"].shape == (0, 4)  # a crowd of dogs is not ignored either
    np.testing.assert_array_equal(ds.get_ann_info(4)["labels"], [0])


def test_classes_from_a_text_file(coco_file, tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("dog\n\nbird\n")
    assert _dataset(coco_file, classes=str(names), test_mode=True).cat_ids == [7, 9]


def test_training_mode_filters_as_mmdetection(coco_file):
    ds = _dataset(coco_file)
    # b: no annotation; c: narrower than 32 pixels; d (crowd only) stays, as in MMDetection
    assert ds.img_ids == [10, 40, 50]
    assert [info["id"] for info in ds.data_infos] == [10, 40, 50]
    assert _dataset(coco_file, filter_empty_gt=False).img_ids == [10, 20, 40, 50]
    assert _dataset(coco_file, classes=["bird"]).img_ids == [50]


def test_group_flag_by_aspect_ratio(coco_file):
    ds = _dataset(coco_file, test_mode=True)
    np.testing.assert_array_equal(ds.flag, [1, 0, 0, 0, 1])
    assert ds.flag.dtype == np.uint8


def test_getitem_builds_the_results_dict(coco_file):
    seen = []
    ds = _dataset(coco_file, pipeline=[lambda r: seen.append(r) or r], img_prefix="imgs/",
                  data_root="/data/")
    out = ds[0]
    assert out is seen[0]
    assert out["img_info"]["filename"] == "a.png" and out["img_id"] == 10
    assert out["img_prefix"] == "/data/imgs/"
    assert out["seg_prefix"] is None and out["proposal_file"] is None
    assert out["bbox_fields"] == [] and out["mask_fields"] == [] and out["seg_fields"] == []
    np.testing.assert_allclose(out["ann_info"]["bboxes"][0], [10, 20, 40, 60])
    test_out = _dataset(coco_file, pipeline=[lambda r: r], test_mode=True)[0]
    assert "ann_info" not in test_out and test_out["img_id"] == 10


def test_dropped_training_samples_are_replaced(coco_file):
    np.random.seed(0)
    ds = _dataset(coco_file, pipeline=[lambda r: None if r["img_id"] == 10 else r])
    assert ds.flag.tolist() == [1, 0, 1]
    assert ds[0]["img_id"] == 50  # the other image of the same aspect-ratio group


def test_a_pipeline_that_drops_everything_is_reported(coco_file):
    ds = _dataset(coco_file, pipeline=[lambda r: None])
    with pytest.raises(RuntimeError, match="dropped 100 samples in a row"):
        ds[0]


def test_data_root_joins_relative_paths(coco_file):
    ds = CocoDataset("ann.json", pipeline=[], data_root=str(coco_file.parent),
                     img_prefix="images", test_mode=True)
    assert ds.ann_file == str(coco_file)
    assert ds.img_prefix == str(coco_file.parent / "images")


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json.*does not exist"):
        CocoDataset(str(tmp_path / "missing.json"), pipeline=[])


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        CocoDataset(str(path), pipeline=[])
    path.write_text('{"annotations": []}')
    with pytest.raises(ValueError, match="broken.json.*'images' and 'categories'"):
        CocoDataset(str(path), pipeline=[])


@pytest.mark.parametrize("change, match", [
    (lambda d: d["images"][1].pop("width"), "image 20 has no width"),
    (lambda d: d["annotations"].append(_ann(99, 77, 3, [1, 1, 2, 2])), r"\[99\].*image ids"),
    (lambda d: d["annotations"].append(_ann(1, 10, 3, [1, 1, 2, 2])), "annotation ids"),
])
def test_inconsistent_files_name_the_image_or_annotation(tmp_path, change, match):
    data = json.loads(json.dumps(dict(images=IMAGES, annotations=ANNOTATIONS,
                                      categories=CATEGORIES)))
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
        CocoDataset(str(path), pipeline=[], test_mode=True)


def test_malformed_bbox_names_the_image(tmp_path):
    data = dict(images=IMAGES[:1], categories=CATEGORIES,
                annotations=[_ann(1, 10, 3, [1, 2, 3, 4]) | {"bbox": [1, 2, 3]}])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    ds = CocoDataset(str(path), pipeline=[], test_mode=True)
    with pytest.raises(ValueError, match="image id 10.*'bbox'"):
        ds.get_ann_info(0)


def test_unknown_class_names_are_listed(coco_file):
    with pytest.raises(ValueError, match=r"\['horse'\].*\['cat', 'dog', 'bird'\]"):
        _dataset(coco_file, classes=["cat", "horse"])


def test_missing_image_names_file_and_image_id(coco_file):
    ds = _dataset(coco_file, pipeline=[dict(type="LoadImageFromFile")],
                  img_prefix=str(coco_file.parent), test_mode=True)
    with pytest.raises(FileNotFoundError, match=r"a.png.*image id 10"):
        ds[0]


def test_evaluate_checks_and_delegates(coco_file, monkeypatch):
    ds = _dataset(coco_file, test_mode=True)
    calls = []

    def fake(coco, results, **kwargs):
        calls.append((coco, results, kwargs))
        return {f"{kwargs['iou_type']}_mAP": 0.5}

    monkeypatch.setitem(sys.modules, "detlab.evaluation.coco",
                        types.SimpleNamespace(coco_evaluate=fake))
    results = [DetResult.empty(ds.CLASSES, img_id=i) for i in ds.img_ids]
    with pytest.raises(ValueError,
                       match=r"'mAP'.*\('bbox', 'segm', 'proposal', 'proposal_fast'\)"):
        ds.evaluate(results, metric="mAP")
    with pytest.raises(ValueError, match="5 images, got 4 results"):
        ds.evaluate(results[:4])
    with pytest.raises(TypeError, match="result 1 is a dict"):
        ds.evaluate([results[0], {}] + results[2:])
    assert ds.evaluate(results, metric=["bbox", "segm"], classwise=True) == {
        "bbox_mAP": 0.5, "segm_mAP": 0.5}
    coco, passed, kwargs = calls[0]
    assert coco is ds.coco and passed == results
    assert kwargs["cat_ids"] == [3, 7, 9] and kwargs["img_ids"] == [10, 20, 30, 40, 50]
    assert kwargs["class_names"] == ("cat", "dog", "bird") and kwargs["classwise"] is True
    assert kwargs["proposal_nums"] == (100, 300, 1000) and kwargs["iou_thrs"] is None


def test_evaluate_ground_truth_scores_full_marks(tmp_path):
    pytest.importorskip("detlab.evaluation.coco")
    paths = make_shapes_dataset(tmp_path, num_train=1, num_val=3, image_size=64)
    ds = CocoDataset(paths["val_ann_file"], pipeline=[], test_mode=True)
    anns = [ds.get_ann_info(i) for i in range(len(ds))]
    results = [DetResult(a["bboxes"], np.ones(len(a["labels"])), a["labels"], meta=dict(img_id=i))
               for i, a in zip(ds.img_ids, anns, strict=True)]
    metrics = ds.evaluate(results, metric=["bbox", "proposal"])
    assert metrics["bbox_mAP"] == pytest.approx(1.0)
    assert metrics["AR@100"] == pytest.approx(1.0)


def test_build_dataset_from_the_mmdetection_config(tmp_path):
    paths = make_shapes_dataset(tmp_path, num_train=4, num_val=2, image_size=64)
    cfg = Config.fromfile("configs/_base_/datasets/coco_detection.py")
    cfg.data.test.update(ann_file="annotations/instances_val.json", img_prefix="val/",
                         data_root=paths["data_root"])
    ds = build_dataset(cfg.data.test, dict(test_mode=True), _path="data.test")
    assert len(ds) == 2 and ds.test_mode and ds.CLASSES == ("circle", "square", "triangle")
    sample = ds[1]
    assert sample["img"][0].shape == (3, 800, 800) and sample["img_metas"][0]["img_id"] == 2
    Image.open(ds.img_prefix + ds.data_infos[0]["filename"]).verify()


def test_build_dataset_errors_name_the_config_path(tmp_path):
    paths = make_shapes_dataset(tmp_path, num_train=2, num_val=0, image_size=64)
    cfg = dict(type="CocoDataset", ann_file=paths["train_ann_file"],
               pipeline=[dict(type="LoadImageFromFile"), dict(type="Resize", scale=(64, 64))])
    with pytest.raises(BuildArgumentError, match=r"'scale'.*data\.train\.pipeline\.1\.scale"):
        build_dataset(cfg, _path="data.train")
    with pytest.raises(BuildArgumentError, match=r"img_prefx.*data\.train.*img_prefix"):
        build_dataset(dict(cfg, pipeline=[], img_prefx="x"), _path="data.train")


# --------------------------------------------------------------------------------------------
# the COCO export, concatenation and metrics against pycocotools
# --------------------------------------------------------------------------------------------


def _cocoeval_stats(gt, results, img_ids, cat_ids):
    """COCOeval's 12 numbers for ``results`` on ``gt`` (a path or a dict), run directly."""
    import copy
    import os

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if isinstance(gt, (str, os.PathLike)):
        gt = json.loads(open(gt).read())
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    rows = [row for r, i in zip(results, img_ids, strict=True) for row in r.to_coco(i, cat_ids)]
    evaluator = COCOeval(coco, coco.loadRes(rows), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats


def test_to_coco_keeps_the_file_ids_and_what_training_sees(coco_file):
    coco = _dataset(coco_file, classes=["dog", "cat"], test_mode=True).to_coco()
    assert [c["id"] for c in coco["categories"]] == [7, 3]
    assert [im["id"] for im in coco["images"]] == [10, 20, 30, 40, 50]
    assert coco["images"][0] == dict(id=10, file_name="a.png", width=100, height=80)
    # kept: 1 (cat), 2 (dog), 3 (a crowd of dogs), 9 (a crowd of cats); dropped: tiny,
    # no area, outside, ignore=True, and birds
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3, 9]
    assert [a["iscrowd"] for a in coco["annotations"]] == [0, 0, 1, 1]
    assert coco["annotations"][0]["segmentation"] == [[10, 20, 40, 20, 40, 60]]
    assert coco["annotations"][1]["bbox"] == [0.5, 1.5, 20, 10]


def test_evaluate_equals_cocoeval_on_the_file_and_on_to_coco(tmp_path):
    paths = make_shapes_dataset(tmp_path, num_train=1, num_val=4, image_size=64, seed=3)
    ds = CocoDataset(paths["val_ann_file"], pipeline=[], test_mode=True)
    results = []
    for i in range(len(ds)):
        ann = ds.get_ann_info(i)
        boxes = ann["bboxes"] + np.float32(i)  # worse and worse
        scores = np.linspace(0.9, 0.3, len(boxes))
        results.append(DetResult(boxes[:-1] if i == 2 else boxes, scores[:len(boxes) - (i == 2)],
                                 ann["labels"][:len(boxes) - (i == 2)]))
    metrics = ds.evaluate(results)
    on_file = _cocoeval_stats(paths["val_ann_file"], results, ds.img_ids, ds.cat_ids)
    on_export = _cocoeval_stats(ds.to_coco(), results, ds.img_ids, ds.cat_ids)
    assert 0 < metrics["bbox_mAP"] < 1
    np.testing.assert_allclose(metrics["stats"], on_file)
    np.testing.assert_allclose(on_export, on_file)
    generic = CustomDataset.evaluate(ds, results, metric="bbox")  # through to_coco()
    assert generic["bbox_mAP"] == pytest.approx(metrics["bbox_mAP"])
    voc = CustomDataset.evaluate(ds, results, metric="mAP", logger="silent")
    assert 0 < voc["mAP"] < 1


def test_a_list_of_annotation_files_is_a_concatenation(tmp_path):
    paths = make_shapes_dataset(tmp_path, num_train=3, num_val=2, image_size=64)
    cfg = dict(type="CocoDataset", ann_file=[paths["train_ann_file"], paths["val_ann_file"]],
               img_prefix=[paths["train_img_prefix"], paths["val_img_prefix"]], pipeline=[])
    ds = build_dataset(cfg, dict(test_mode=True))
    assert len(ds) == 5 and ds.separate_eval and ds.CLASSES == ds.datasets[0].CLASSES
    assert [d.img_prefix for d in ds.datasets] == [paths["train_img_prefix"],
                                                   paths["val_img_prefix"]]
    results = [DetResult(ds.get_ann_info(i)["bboxes"], np.ones(len(ds.get_ann_info(i)[
        "labels"])), ds.get_ann_info(i)["labels"]) for i in range(len(ds))]
    metrics = ds.evaluate(results)
    assert metrics["0_bbox_mAP"] == pytest.approx(1.0)
    assert metrics["1_bbox_mAP"] == pytest.approx(1.0)
    whole = build_dataset(dict(cfg, separate_eval=False), dict(test_mode=True))
    assert whole.evaluate(results, metric="bbox")["bbox_mAP"] == pytest.approx(1.0)


def test_filter_empty_gt_only_in_training_and_independent_of_classes(coco_file):
    assert len(_dataset(coco_file, classes=["bird"], test_mode=True)) == 5
    assert _dataset(coco_file, classes=["bird"], filter_empty_gt=False).img_ids == [10, 20, 40,
                                                                                    50]


def test_jsonfile_prefix_writes_the_results(tmp_path):
    paths = make_shapes_dataset(tmp_path, num_train=1, num_val=2, image_size=64)
    ds = CocoDataset(paths["val_ann_file"], pipeline=[], test_mode=True)
    results = [DetResult([[1, 1, 9, 9]], [0.5], [0]) for _ in range(len(ds))]
    ds.evaluate(results, jsonfile_prefix=str(tmp_path / "out" / "run"))
    rows = json.loads((tmp_path / "out" / "run.bbox.json").read_text())
    assert [r["image_id"] for r in rows] == ds.img_ids and rows[0]["bbox"] == [1, 1, 8, 8]
