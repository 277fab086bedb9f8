"""VOCDataset / XMLDataset: MMDetection 2.x's reading of VOC xml (pixel convention, difficult,
min_size, classes), the COCO export and the metrics."""

import copy
import warnings

import numpy as np
import pytest
from PIL import Image

from detlab.data.builder import build_dataset
from detlab.data.datasets import VOCDataset, XMLDataset
from detlab.structures import DetResult

# image id -> (file name written in the xml, image size, <size> in the xml?, objects)
# an object: (name, [xmin, ymin, xmax, ymax] as written, difficult)
IMAGES = {
    "000001": ("000001.jpg", (64, 48), True, [
        ("dog", ["11", "6", "30", "25"], 0),
        ("person", ["1", "1", "10", "20"], 1),
        ("cat", ["20.7", "10.2", "40.9", "30.5"], 0),  # fractions are truncated
    ]),
    "000002": ("000002.jpg", (40, 40), True, [("bird", ["5", "5", "20", "20"], 1)]),
    "000003": ("000003.png", (50, 60), False, [  # no <size>: read from the image
        ("horse", ["2", "3", "40", "50"], 0),
        ("unicorn", ["1", "1", "5", "5"], 0),
    ]),
    "000004": ("000004.jpg", (64, 64), True, []),
}
DOG, CAT, PERSON, BIRD, HORSE = 11, 7, 14, 2, 12


def _xml(filename, size, with_size, objects):
    parts = [f"<annotation><folder>VOC2007</folder><filename>{filename}</filename>"]
    if with_size:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height>"
                     "<depth>3</depth></size>")
    for name, (x1, y1, x2, y2), difficult in objects:
        parts.append(f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
                     f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def write_voc(root, year="VOC2007", images=IMAGES):
    """A VOCdevkit tree under ``root``; returns the devkit folder."""
    base = root / "VOCdevkit" / year
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for img_id, (filename, size, with_size, objects) in images.items():
        Image.new("RGB", size, (90, 120, 150)).save(base / "JPEGImages" / filename)
        (base / "Annotations" / f"{img_id}.xml").write_text(
            _xml(filename, size, with_size, objects))
    (base / "ImageSets/Main/test.txt").write_text("\n".join(images) + "\n")
    return root / "VOCdevkit"


@pytest.fixture
def devkit(tmp_path):
    return write_voc(tmp_path)


def _voc(devkit, **kwargs):
    kwargs.setdefault("test_mode", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unicorn
        return VOCDataset("VOC2007/ImageSets/Main/test.txt", [], data_root=str(devkit),
                          img_prefix="VOC2007/", **kwargs)


def test_reads_the_voc_layout_as_mmdetection(devkit):
    ds = _voc(devkit)
    assert len(ds.CLASSES) == 20 and ds.year == 2007 and ds.eval_mode == "11points"
    assert [info["id"] for info in ds.data_infos] == list(IMAGES)
    assert [info["filename"] for info in ds.data_infos] == [
        "JPEGImages/000001.jpg", "JPEGImages/000002.jpg", "JPEGImages/000003.png",
        "JPEGImages/000004.jpg"]
    assert [(info["width"], info["height"]) for info in ds.data_infos] == [
        (64, 48), (40, 40), (50, 60), (64, 64)]
    ann = ds.get_ann_info(0)
    # every coordinate minus 1, fractions truncated first: 20.7 -> 20 -> 19
    np.testing.assert_array_equal(ann["bboxes"], [[10, 5, 29, 24], [19, 9, 39, 29]])
    np.testing.assert_array_equal(ann["labels"], [DOG, CAT])
    np.testing.assert_array_equal(ann["bboxes_ignore"], [[0, 0, 9, 19]])
    np.testing.assert_array_equal(ann["labels_ignore"], [PERSON])
    assert ann["bboxes"].dtype == np.float32 and ann["labels"].dtype == np.int64
    assert ds.get_cat_ids(0) == [DOG, CAT, PERSON]
    assert ds.get_ann_info(3)["bboxes"].shape == (0, 4)


def test_unknown_names_are_skipped_and_counted(devkit):
    with pytest.warns(UserWarning, match=r"1 objects.*'unicorn' x1.*000003.xml"):
        ds = VOCDataset("VOC2007/ImageSets/Main/test.txt", [], data_root=str(devkit),
                        img_prefix="VOC2007/", test_mode=True)
    assert ds.skipped_objects == {"unicorn": 1}
    np.testing.assert_array_equal(ds.get_ann_info(2)["labels"], [HORSE])


def test_a_subset_of_voc_classes_drops_the_others_quietly(devkit):
    with pytest.warns(UserWarning) as record:
        ds = VOCDataset("VOC2007/ImageSets/Main/test.txt", [], classes=["cat", "dog"],
                        data_root=str(devkit), img_prefix="VOC2007/", test_mode=True)
    assert len(record) == 1 and ds.skipped_objects == {"unicorn": 1}  # VOC names are quiet
    ann = ds.get_ann_info(0)
    np.testing.assert_array_equal(ann["labels"], [1, 0])
    assert ann["bboxes_ignore"].shape == (0, 4)


def test_training_filters_keep_difficult_only_images(devkit):
    ds = _voc(devkit, test_mode=False)
    assert [info["id"] for info in ds.data_infos] == ["000001", "000002", "000003"]
    only_cats = _voc(devkit, test_mode=False, classes=["cat"])
    assert [info["id"] for info in only_cats.data_infos] == ["000001"]
    assert len(_voc(devkit, test_mode=False, filter_empty_gt=False)) == 4


def test_min_size_ignores_small_objects_in_training_only(devkit):
    ds = _voc(devkit, test_mode=False, min_size=20)
    ann = ds.get_ann_info(0)
    # the dog is 19 x 19 pixels (xmax - xmin), the cat 20 x 20
    np.testing.assert_array_equal(ann["labels"], [CAT])
    np.testing.assert_array_equal(ann["labels_ignore"], [DOG, PERSON])
    assert len(_voc(devkit, min_size=20).get_ann_info(0)["labels"]) == 2


@pytest.mark.filterwarnings("ignore:VOCDataset.*unicorn")
def test_year_from_the_prefix(tmp_path):
    devkit = write_voc(tmp_path, "VOC2012")
    ds = VOCDataset("VOC2012/ImageSets/Main/test.txt", [], classes=["dog"],
                    data_root=str(devkit), img_prefix="VOC2012/", test_mode=True)
    assert ds.year == 2012 and ds.eval_mode == "area" and ds.legacy_coordinate
    (devkit / "VOC2012").rename(devkit / "mine")
    with pytest.warns(UserWarning, match="cannot tell the year"):
        ds = VOCDataset("mine/ImageSets/Main/test.txt", [], classes=["dog"],
                        data_root=str(devkit), img_prefix="mine/", test_mode=True)
    assert ds.year is None and ds.eval_mode == "area"


def test_xml_dataset_with_its_own_classes_and_a_folder_of_xml(devkit):
    with pytest.warns(UserWarning, match="person' x1") as record:
        ds = XMLDataset(str(devkit / "VOC2007" / "Annotations"), [], classes=["dog", "cat",
                        "horse"], img_prefix=str(devkit / "VOC2007"), test_mode=True)
    assert "bird" in str(record[0].message)
    assert ds.skipped_objects == {"person": 1, "bird": 1, "unicorn": 1}
    assert len(ds) == 4 and ds.eval_mode == "area" and not ds.legacy_coordinate
    np.testing.assert_array_equal(ds.get_ann_info(0)["labels"], [0, 1])
    assert ds.xml_path(2).endswith("000003.xml")
    with pytest.raises(ValueError, match="needs classes"):
        XMLDataset(str(devkit / "VOC2007" / "Annotations"), [], img_prefix=str(devkit))


def test_samples_load_through_the_pipeline(devkit):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = build_dataset(dict(type="VOCDataset", ann_file="VOC2007/ImageSets/Main/test.txt",
                                data_root=str(devkit), img_prefix="VOC2007/",
                                pipeline=[dict(type="LoadImageFromFile"),
                                          dict(type="LoadAnnotations")]))
    out = ds[0]
    assert out["img"].shape == (48, 64, 3)
    np.testing.assert_array_equal(out["gt_bboxes"], [[10, 5, 29, 24], [19, 9, 39, 29]])


# --------------------------------------------------------------------------------------------
# COCO export and metrics
# --------------------------------------------------------------------------------------------


def test_to_coco(devkit):
    ds = _voc(devkit, classes=["dog", "cat", "person", "bird"])
    coco = ds.to_coco()
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4]
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat", "person", "bird"]
    assert coco["images"][0] == dict(id=1, file_name="JPEGImages/000001.jpg", width=64,
                                     height=48)
    first = coco["annotations"][:3]
    assert [a["bbox"] for a in first] == [[10, 5, 19, 19], [19, 9, 20, 20], [0, 0, 9, 19]]
    assert [a["category_id"] for a in first] == [1, 2, 3]
    assert [a["iscrowd"] for a in first] == [0, 0, 1]  # difficult -> ignored -> crowd
    assert [a["area"] for a in first] == [361, 400, 171]
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3, 4]
    assert coco["annotations"][3]["image_id"] == 2


def _gt_results(ds, shift=0.0):
    results = []
    for i in range(len(ds)):
        ann = ds.get_ann_info(i)
        boxes = ann["bboxes"] + shift
        results.append(DetResult(boxes, np.linspace(0.9, 0.5, len(boxes)), ann["labels"]))
    return results


def _cocoeval(coco_dict, results, img_ids, cat_ids):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = copy.deepcopy(coco_dict)
    gt.createIndex()
    rows = [row for r, i in zip(results, img_ids, strict=True) for row in r.to_coco(i, cat_ids)]
    evaluator = COCOeval(gt, gt.loadRes(rows), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats


def test_evaluate_map_and_recall(devkit):
    ds = _voc(devkit)
    metrics = ds.evaluate(_gt_results(ds), logger="silent")
    assert list(metrics) == ["mAP", "AP50"] and metrics["mAP"] == pytest.approx(1.0)
    shifted = _gt_results(ds, shift=3.0)
    metrics = ds.evaluate(shifted, iou_thr=[0.5, 0.75], logger="silent", classwise=True)
    assert metrics["mAP"] == pytest.approx((metrics["AP50"] + metrics["AP75"]) / 2)
    assert metrics["AP75"] < metrics["AP50"]
    assert metrics["classwise"].columns.tolist() == ["class", "gts", "dets", "recall", "AP50",
                                                     "AP75"]
    recall = ds.evaluate(_gt_results(ds), metric="recall", proposal_nums=(1, 10),
                         iou_thr=[0.5, 0.9], logger="silent")
    # 3 boxes (difficult ones do not count); one proposal finds one of image 1's two
    assert recall["recall@1@0.5"] == pytest.approx(2 / 3)
    assert recall["recall@10@0.9"] == pytest.approx(1.0)
    assert recall["AR@10"] == pytest.approx(1.0)


def test_evaluate_bbox_equals_cocoeval_on_to_coco(devkit):
    ds = _voc(devkit)
    results = _gt_results(ds, shift=2.0)
    results[0] = DetResult(np.concatenate([results[0].boxes.numpy(), [[30, 30, 50, 45]]]),
                           [0.9, 0.4, 0.95], [DOG, CAT, DOG])
    metrics = ds.evaluate(results, metric=["bbox", "mAP"], logger="silent")
    coco = ds.to_coco()
    stats = _cocoeval(coco, results, [im["id"] for im in coco["images"]],
                      [c["id"] for c in coco["categories"]])
    assert metrics["bbox_mAP"] == pytest.approx(stats[0])
    assert metrics["bbox_mAP_50"] == pytest.approx(stats[1])
    assert "mAP" in metrics and "AP50" in metrics
