"""YOLODataset: Ultralytics' images/labels layout, data yaml, class names, sizes from headers,
the COCO export and COCO metrics."""

import copy

import numpy as np
import pytest
from PIL import Image

from detlab.data.datasets import YOLODataset
from detlab.data.datasets.yolo import label_path
from detlab.structures import DetResult

NAMES_YAML = "names:\n  0: cat\n  1: dog\n  2: bird\n"


def write_yolo(root):
    """images/{train,val} + labels/{train,val} and data.yaml under ``root``."""
    images = {"train/a.jpg": (100, 50), "train/b.png": (40, 80), "train/c.jpg": (64, 64),
              "train/sub/d.jpg": (60, 60), "val/e.jpg": (32, 32)}
    labels = {"train/a.txt": "0 0.5 0.5 0.2 0.4\n1 0.1 0.2 0.2 0.4\n",
              "train/b.txt": "2 0.25 0.25 0.75 0.25 0.75 0.75\n",  # a triangle
              "train/sub/d.txt": "\n",  # no objects; c.jpg has no txt at all
              "val/e.txt": "0 0.5 0.5 1 1\n"}
    for name, size in images.items():
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (10, 200, 30)).save(root / "images" / name)
    for name, text in labels.items():
        (root / "labels" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "labels" / name).write_text(text)
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\n{NAMES_YAML}")
    return root


@pytest.fixture
def yolo(tmp_path):
    return write_yolo(tmp_path / "shapes")


def _ds(ann_file, **kwargs):
    kwargs.setdefault("test_mode", True)
    return YOLODataset(str(ann_file), [], **kwargs)


def test_reads_a_data_yaml(yolo):
    ds = _ds(yolo / "data.yaml")
    assert ds.CLASSES == ("cat", "dog", "bird") and ds.img_prefix == str(yolo)
    assert [info["filename"] for info in ds.data_infos] == [
        "images/train/a.jpg", "images/train/b.png", "images/train/c.jpg",
        "images/train/sub/d.jpg"]
    assert [(i["width"], i["height"]) for i in ds.data_infos] == [(100, 50), (40, 80), (64, 64),
                                                                  (60, 60)]
    a = ds.get_ann_info(0)
    # cat: centre (50, 25), 20 x 20; dog: centre (10, 10), 20 x 20 (pixels of a 100 x 50 image)
    np.testing.assert_allclose(a["bboxes"], [[40, 15, 60, 35], [0, 0, 20, 20]], atol=1e-4)
    np.testing.assert_array_equal(a["labels"], [0, 1])
    assert a["bboxes"].dtype == np.float32 and a["labels"].dtype == np.int64
    assert a["masks"] == [None, None]
    b = ds.get_ann_info(1)
    np.testing.assert_allclose(b["bboxes"], [[10, 20, 30, 60]], atol=1e-4)
    np.testing.assert_allclose(b["masks"][0][0], [10, 20, 30, 20, 30, 60], atol=1e-4)
    assert ds.get_ann_info(2)["bboxes"].shape == (0, 4)  # no txt
    assert ds.get_ann_info(3)["bboxes"].shape == (0, 4)  # an empty txt
    assert [info["filename"] for info in _ds(yolo / "data.yaml", split="val").data_infos] == [
        "images/val/e.jpg"]


def test_training_drops_images_without_objects(yolo):
    ds = _ds(yolo / "data.yaml", test_mode=False)
    assert [info["filename"] for info in ds.data_infos] == ["images/train/a.jpg",
                                                           "images/train/b.png"]
    assert ds.flag.tolist() == [1, 0]


def test_an_image_folder_or_a_list_with_classes_of_any_kind(yolo):
    ds = _ds(yolo / "images" / "train", classes=["cat", "dog", "bird"])
    assert ds.img_prefix == str(yolo / "images" / "train")
    assert [info["filename"] for info in ds.data_infos][:2] == ["a.jpg", "b.png"]
    (yolo / "names.txt").write_text("cat\ndog\nbird\n")
    (yolo / "list.txt").write_text("./images/train/a.jpg\nimages/val/e.jpg\n")
    listed = _ds(yolo / "list.txt", classes=str(yolo / "names.txt"))
    assert [info["filename"] for info in listed.data_infos] == ["images/train/a.jpg",
                                                               "images/val/e.jpg"]
    np.testing.assert_allclose(listed.get_ann_info(1)["bboxes"], [[0, 0, 32, 32]])
    from_yaml = _ds(yolo / "list.txt", classes=str(yolo / "data.yaml"))
    assert from_yaml.CLASSES == ("cat", "dog", "bird")


def test_classes_pick_a_subset_of_the_yaml_names(yolo):
    ds = _ds(yolo / "data.yaml", classes=["dog", "cat"])
    np.testing.assert_array_equal(ds.get_ann_info(0)["labels"], [1, 0])
    b = ds.get_ann_info(1)
    assert b["bboxes"].shape == (0, 4) and b["masks"] == []  # the bird is not a class
    with pytest.raises(ValueError, match=r"\['horse'\] are not classes"):
        _ds(yolo / "data.yaml", classes=["horse"])


def test_yaml_names_as_a_list_root_path_and_roboflow_parent_paths(tmp_path):
    root = write_yolo(tmp_path / "export")
    (root / "train").mkdir()
    (root / "images").rename(root / "train" / "images")
    (root / "labels").rename(root / "train" / "labels")
    # Roboflow writes "../train/images" next to the yaml; Ultralytics then drops the "../"
    (root / "data.yaml").write_text("train: ../train/images/train\nnames: [cat, dog, bird]\n")
    assert len(_ds(root / "data.yaml")) == 4
    (tmp_path / "elsewhere.yaml").write_text(
        f"path: {root.name}\ntrain: train/images/val\nnames: [cat, dog, bird]\n")
    assert len(_ds(tmp_path / "elsewhere.yaml")) == 1
    with pytest.raises(ValueError, match="no 'test' split.*'train'"):
        _ds(root / "data.yaml", split="test")


def test_sizes_follow_the_exif_orientation(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter
    Image.new("RGB", (100, 50)).save(folder / "turned.jpg", exif=exif.tobytes())
    ds = _ds(folder, classes=["x"])
    assert (ds.data_infos[0]["width"], ds.data_infos[0]["height"]) == (50, 100)


def test_label_paths():
    assert label_path("/d/images/train/x.jpg") == "/d/labels/train/x.txt"
    assert label_path("/images/d/images/x.png") == "/images/d/labels/x.txt"
    assert label_path("/d/pics/x.jpeg") == "/d/pics/x.txt"


def test_samples_load_through_the_pipeline(yolo):
    ds = YOLODataset(str(yolo / "data.yaml"), [dict(type="LoadImageFromFile"),
                                               dict(type="LoadAnnotations")])
    out = ds[0]
    assert out["img"].shape == (50, 100, 3)
    np.testing.assert_allclose(out["gt_bboxes"], [[40, 15, 60, 35], [0, 0, 20, 20]], atol=1e-4)


def test_to_coco_and_bbox_metrics_equal_cocoeval(yolo):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ds = _ds(yolo / "data.yaml")
    coco = ds.to_coco()
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog", "bird"]
    assert [im["id"] for im in coco["images"]] == [1, 2, 3, 4]
    assert coco["annotations"][0]["bbox"] == [40, 15, 20, 20]
    assert coco["annotations"][2]["segmentation"] == [[10, 20, 30, 20, 30, 60]]
    results = [DetResult([[41, 15, 60, 36], [0, 0, 30, 20]], [0.9, 0.8], [0, 1]),
               DetResult([[10, 20, 30, 50]], [0.7], [2]),
               DetResult([[1, 1, 9, 9]], [0.6], [0]), DetResult.empty()]
    metrics = ds.evaluate(results)  # COCO metrics by default
    gt = COCO()
    gt.dataset = copy.deepcopy(coco)
    gt.createIndex()
    rows = [row for i, r in enumerate(results) for row in r.to_coco(i + 1, [1, 2, 3])]
    evaluator = COCOeval(gt, gt.loadRes(rows), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert metrics["bbox_mAP"] == pytest.approx(evaluator.stats[0])
    assert metrics["bbox_mAP_75"] == pytest.approx(evaluator.stats[2])
    assert 0 < metrics["bbox_mAP"] < 1
    voc = ds.evaluate(results, metric="mAP", logger="silent")
    assert 0 < voc["mAP"] <= 1
