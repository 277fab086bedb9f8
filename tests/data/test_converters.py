"""Converters: COCO <-> YOLO round trip, VOC and Cityscapes to COCO, on fixtures written here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from detlab.data.converters import cityscapes2coco, coco2yolo, voc2coco, yolo2coco

# ---------------------------------------------------------------------------------------------
# COCO fixture
# ---------------------------------------------------------------------------------------------

CATEGORIES = [dict(id=3, name="cat"), dict(id=7, name="dog"), dict(id=12, name="bird"),
              dict(id=40, name="fish")]
SIZES = [(640, 480), (1999, 1001), (37, 53), (300, 700), (128, 128)]


def _write_image(path: Path, width: int, height: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 30)).save(path, format=fmt)


def _random_coco(rng: np.random.Generator) -> dict:
    images, annotations = [], []
    for image_id, (width, height) in enumerate(SIZES, 1):
        sub = {2: "sub/", 3: "images/x/"}.get(image_id, "")  # an 'images' folder of its own
        images.append(dict(id=image_id * 10, file_name=f"{sub}img_{image_id}.png", width=width,
                           height=height))
        count = 0 if image_id == 5 else int(rng.integers(1, 9))
        for _ in range(count):
            x, y = rng.uniform(0, width - 2), rng.uniform(0, height - 2)
            w, h = rng.uniform(1, width - x), rng.uniform(1, height - y)
            cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]["id"]
            annotations.append(dict(id=100 + len(annotations), image_id=image_id * 10,
                                    category_id=cat, bbox=[x, y, w, h], area=w * h, iscrowd=0))
    return dict(images=images, annotations=annotations, categories=CATEGORIES)


@pytest.fixture
def coco_fixture(tmp_path: Path) -> tuple[str, str, dict]:
    """``(ann_file, img_prefix, coco dict)``: 5 images (one in a sub-folder, one without boxes),
    random boxes of 4 classes with non-contiguous category ids."""
    data = _random_coco(np.random.default_rng(0))
    img_prefix = tmp_path / "coco_images"
    for image in data["images"]:
        _write_image(img_prefix / image["file_name"], image["width"], image["height"])
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(data))
    return str(ann_file), str(img_prefix), data


def _boxes_by_file(data: dict) -> dict[str, list[tuple[int, list[float]]]]:
    by_id = {image["id"]: image["file_name"] for image in data["images"]}
    out: dict[str, list] = {name: [] for name in by_id.values()}
    for ann in data["annotations"]:
        out[by_id[ann["image_id"]]].append((ann["category_id"], ann["bbox"]))
    return out


# ---------------------------------------------------------------------------------------------
# COCO -> YOLO -> COCO
# ---------------------------------------------------------------------------------------------


def test_coco_yolo_round_trip_keeps_boxes_and_classes(coco_fixture, tmp_path):
    ann_file, img_prefix, data = coco_fixture
    yolo_root = tmp_path / "yolo"
    data_yaml = coco2yolo(ann_file, img_prefix, str(yolo_root), copy_images="symlink",
                          split="train")
    written = yolo2coco(data_yaml, str(tmp_path / "back"), splits=("train", "val"))
    assert list(written) == ["train"]
    with open(written["train"]) as f:
        back = json.load(f)
    assert [(c["id"], c["name"]) for c in back["categories"]] == [
        (c["id"], c["name"]) for c in CATEGORIES]
    assert {im["file_name"]: (im["width"], im["height"]) for im in back["images"]} == {
        f"images/train/{im['file_name']}": (im["width"], im["height"]) for im in data["images"]}
    ours = _boxes_by_file(data)
    theirs = {name.removeprefix("images/train/"): boxes
              for name, boxes in _boxes_by_file(back).items()}
    assert ours.keys() == theirs.keys()
    for name, boxes in ours.items():
        assert [c for c, _ in theirs[name]] == [c for c, _ in boxes], name
        np.testing.assert_allclose([b for _, b in theirs[name]] or np.zeros((0, 4)),
                                   [b for _, b in boxes] or np.zeros((0, 4)), rtol=0, atol=1e-3)
    assert len(back["annotations"]) == len(data["annotations"])
    assert min(a["id"] for a in back["annotations"]) == 1
    subset = yolo2coco(str(yolo_root), str(tmp_path / "subset"), classes=["fish", "dog"])
    with open(subset["train"]) as f:
        some = json.load(f)
    assert [(c["id"], c["name"]) for c in some["categories"]] == [(40, "fish"), (7, "dog")]
    assert len(some["annotations"]) == sum(a["category_id"] in (7, 40)
                                           for a in data["annotations"])


def test_coco2yolo_layout_and_data_yaml(coco_fixture, tmp_path):
    ann_file, img_prefix, data = coco_fixture
    root = tmp_path / "yolo"
    data_yaml = coco2yolo(ann_file, img_prefix, str(root), copy_images=True)
    with open(data_yaml) as f:
        meta = yaml.safe_load(f)
    assert meta["names"] == ["cat", "dog", "bird", "fish"]
    assert meta["nc"] == 4 and meta["coco_category_ids"] == [3, 7, 12, 40]
    assert meta["train"] == meta["val"] == "images"
    copied = root / "images" / "sub" / "img_2.png"
    assert copied.is_file() and not copied.is_symlink()
    # the label of images/images/x/img_3.png is where YOLO looks: the last 'images' -> 'labels'
    assert (root / "images" / "labels" / "x" / "img_3.txt").is_file()
    assert (root / "labels" / "img_5.txt").read_text() == ""  # an image without boxes
    first = (root / "labels" / "img_1.txt").read_text().splitlines()[0].split()
    ann = data["annotations"][0]
    x, y, w, h = ann["bbox"]
    assert int(first[0]) == [c["id"] for c in CATEGORIES].index(ann["category_id"])
    assert all(len(v.split(".")[1]) >= 6 for v in first[1:])
    np.testing.assert_allclose([float(v) for v in first[1:]],
                               [(x + w / 2) / 640, (y + h / 2) / 480, w / 640, h / 480],
                               atol=1e-8)


def test_coco2yolo_labels_only_and_left_out_boxes(coco_fixture, tmp_path):
    ann_file, img_prefix, data = coco_fixture
    data["annotations"][0]["iscrowd"] = 1
    data["annotations"][1]["bbox"][2] = 0
    Path(ann_file).write_text(json.dumps(data))
    root = tmp_path / "yolo"
    with pytest.warns(UserWarning, match="1 crowd, .*1 empty or malformed bbox"):
        coco2yolo(ann_file, img_prefix, str(root))
    assert not list(root.rglob("*.png"))  # labels only
    lines = sum(len(p.read_text().splitlines()) for p in root.rglob("*.txt"))
    assert lines == len(data["annotations"]) - 2
    with pytest.raises(ValueError, match="copy_images"):
        coco2yolo(ann_file, img_prefix, str(root), copy_images="hardlink")


def test_coco2yolo_refuses_other_classes_in_same_folder(coco_fixture, tmp_path):
    ann_file, img_prefix, data = coco_fixture
    coco2yolo(ann_file, img_prefix, str(tmp_path / "yolo"), split="train")
    data["categories"] = data["categories"][::-1]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="already lists the classes"):
        coco2yolo(str(other), img_prefix, str(tmp_path / "yolo"), split="val")


def test_yolo2coco_folder_layout(tmp_path):
    root = tmp_path / "yolo"
    _write_image(root / "images" / "train" / "x.jpg", 200, 100, "JPEG")
    (root / "classes.txt").write_text("a\nb\n")
    _write_image(root / "images" / "train" / "empty.jpg", 50, 50, "JPEG")
    _write_image(root / "images" / "val" / "y.png", 10, 20)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "x.txt").write_text(
        "1 0.5 0.5 0.2 0.4\n\n0 0.1 0.2 0.3 0.2 0.3 0.6 0.1 0.6\n")
    (root / "labels" / "val" / "y.txt").write_text("0 0.5 0.5 1 1\n")
    written = yolo2coco(str(root), str(tmp_path / "out"))
    assert sorted(written) == ["train", "val"]
    with open(written["train"]) as f:
        train = json.load(f)
    assert [(c["id"], c["name"]) for c in train["categories"]] == [(1, "a"), (2, "b")]
    assert [im["file_name"] for im in train["images"]] == ["images/train/empty.jpg",
                                                           "images/train/x.jpg"]
    boxes = [(a["image_id"], a["category_id"], a["bbox"]) for a in train["annotations"]]
    assert boxes[0][:2] == (2, 2) and boxes[1][:2] == (2, 1)
    np.testing.assert_allclose(boxes[0][2], [80, 30, 40, 40])
    np.testing.assert_allclose(boxes[1][2], [20, 20, 40, 40])  # a polygon's bounding box


def test_yolo2coco_reports_bad_labels(tmp_path):
    root = tmp_path / "yolo"
    _write_image(root / "images" / "a.png", 10, 10)
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "a.txt").write_text("3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ValueError, match=r"a.txt'?, line 1: class 3 is not one of the 2"):
        yolo2coco(str(root), str(tmp_path / "out"), classes=["p", "q"])
    (root / "labels" / "a.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(ValueError, match="expected 'class cx cy w h'"):
        yolo2coco(str(root), str(tmp_path / "out"), classes=["p", "q"])
    with pytest.raises(FileNotFoundError, match="classes"):
        yolo2coco(str(root), str(tmp_path / "out"))


# ---------------------------------------------------------------------------------------------
# Pascal VOC
# ---------------------------------------------------------------------------------------------

_XML = """<annotation>
  <folder>VOC{year}</folder><filename>{name}.jpg</filename>
  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>
  {objects}
</annotation>"""
_OBJECT = """<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>
  <difficult>{difficult}</difficult>
  <bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax>
  </bndbox></object>"""

VOC_IMAGES = {
    "2007": {"000005": ((500, 375), [("chair", (263, 211, 324, 339), 0),
                                     ("chair", (5, 244, 67, 374), 1),
                                     ("unicorn", (1, 1, 10, 10), 0)]),
             "000007": ((500, 333), [("car", (141, 50, 500, 330), 0)]),
             "000009": ((500, 375), [("horse", (69, 172, 270, 330), 0),
                                     ("person", (150, 141, 229, 284), 0)])},
    "2012": {"2008_000008": ((500, 442), [("horse", (53, 87, 471, 420), 0)])},
}
VOC_SPLITS = {"2007": {"train": ["000005", "000007"], "val": ["000009"]},
              "2012": {"train": ["2008_000008"]}}


def _write_voc(devkit: Path) -> None:
    for year, images in VOC_IMAGES.items():
        base = devkit / f"VOC{year}"
        for folder in ("Annotations", "ImageSets/Main", "JPEGImages"):
            (base / folder).mkdir(parents=True, exist_ok=True)
        for name, ((width, height), objects) in images.items():
            text = "".join(_OBJECT.format(name=o, box=b, difficult=d) for o, b, d in objects)
            (base / "Annotations" / f"{name}.xml").write_text(_XML.format(
                year=year, name=name, width=width, height=height, objects=text))
            _write_image(base / "JPEGImages" / f"{name}.jpg", width, height, "JPEG")
        for split, names in VOC_SPLITS[year].items():
            (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")


def test_voc2coco_boxes_as_mmdetection(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    _write_voc(devkit)
    with pytest.warns(UserWarning, match="voc07_test.json skipped"), \
            pytest.warns(UserWarning, match="'unicorn' x1"):
        written = voc2coco(str(devkit), str(tmp_path / "out"))
    assert sorted(written) == ["voc07_train", "voc07_val"]
    assert os.path.basename(written["voc07_train"]) == "voc07_train.json"
    with open(written["voc07_train"]) as f:
        data = json.load(f)
    assert [c["name"] for c in data["categories"]][:3] == ["aeroplane", "bicycle", "bird"]
    assert len(data["categories"]) == 20
    assert data["images"] == [
        dict(id=1, file_name="VOC2007/JPEGImages/000005.jpg", width=500, height=375),
        dict(id=2, file_name="VOC2007/JPEGImages/000007.jpg", width=500, height=333)]
    chair = next(c["id"] for c in data["categories"] if c["name"] == "chair")
    rows = [(a["image_id"], a["category_id"], a["bbox"], a["iscrowd"], a["area"])
            for a in data["annotations"]]
    # MMDetection's converter: [xmin - 1, ymin - 1, xmax - xmin, ymax - ymin], difficult ->
    # iscrowd, unknown classes left out
    assert rows[:2] == [(1, chair, [262, 210, 61, 128], 0, 61 * 128),
                        (1, chair, [4, 243, 62, 130], 1, 62 * 130)]
    assert rows[2][2] == [140, 49, 359, 280] and len(rows) == 3
    assert [a["id"] for a in data["annotations"]] == [1, 2, 3]
    assert [a["image_id"] for a in data["annotations"]] == [1, 1, 2]
    assert data["annotations"][0]["segmentation"] == [[262, 210, 262, 338, 323, 338, 323, 210]]


def test_voc2coco_years_together_and_classes(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    _write_voc(devkit)
    with pytest.warns(UserWarning, match="'unicorn'"):
        written = voc2coco(str(devkit), str(tmp_path / "out"),
                           years=[("2007", "2012"), "2012"], splits=("train",),
                           classes=("horse", "car"))
    assert sorted(written) == ["voc0712_train", "voc12_train"]
    with open(written["voc0712_train"]) as f:
        data = json.load(f)
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(1, "horse"), (2, "car")]
    assert [im["file_name"] for im in data["images"]] == [
        "VOC2007/JPEGImages/000005.jpg", "VOC2007/JPEGImages/000007.jpg",
        "VOC2012/JPEGImages/2008_000008.jpg"]
    assert [(a["image_id"], a["category_id"]) for a in data["annotations"]] == [(2, 2), (3, 1)]
    with pytest.raises(FileNotFoundError, match="none of the splits"), pytest.warns(UserWarning):
        voc2coco(str(devkit), str(tmp_path / "out"), years=("2012",), splits=("val",))


# ---------------------------------------------------------------------------------------------
# Cityscapes
# ---------------------------------------------------------------------------------------------


def _write_cityscapes(root: Path) -> np.ndarray:
    """One train image of 40x20 and its instance map; returns the map."""
    ids = np.zeros((20, 40), dtype=np.uint16)
    ids[:, :] = 7                      # road: stuff
    ids[2:6, 3:10] = 26001             # car #1
    ids[10:18, 30:33] = 24000          # person #0
    ids[12:15, 12:20] = 26             # a group of cars: crowd
    ids[0:3, 35:40] = 29000            # caravan: has instances but is not evaluated
    ids[15:20, 0:2] = 33002            # bicycle
    stem = "aachen_000000_000019"
    _write_image(root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png", 40, 20)
    gt = root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_instanceIds.png"
    gt.parent.mkdir(parents=True)
    Image.fromarray(ids).save(gt)
    return ids


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode on numpy 2
def test_cityscapes2coco(tmp_path):
    from pycocotools import mask as mask_utils

    root = tmp_path / "cityscapes"
    ids = _write_cityscapes(root)
    with pytest.warns(UserWarning, match="split 'val' skipped"):
        written = cityscapes2coco(str(root), str(tmp_path / "out"))
    assert list(written) == ["train"]
    assert os.path.basename(written["train"]) == "instancesonly_filtered_gtFine_train.json"
    with open(written["train"]) as f:
        data = json.load(f)
    assert [c["id"] for c in data["categories"]] == [24, 25, 26, 27, 28, 31, 32, 33]
    assert [c["name"] for c in data["categories"]] == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    assert data["images"] == [dict(
        id=1, file_name="aachen/aachen_000000_000019_leftImg8bit.png", width=40, height=20,
        segm_file="aachen/aachen_000000_000019_gtFine_labelIds.png")]
    anns = {(a["category_id"], a["iscrowd"]): a for a in data["annotations"]}
    assert sorted(anns) == [(24, 0), (26, 0), (26, 1), (33, 0)]
    assert anns[(26, 0)]["bbox"] == [3, 2, 7, 4] and anns[(26, 0)]["area"] == 28
    assert anns[(26, 1)]["bbox"] == [12, 12, 8, 3]
    assert anns[(24, 0)]["bbox"] == [30, 10, 3, 8]
    for (cat, crowd), ann in anns.items():
        mask = mask_utils.decode(ann["segmentation"])
        value = cat if crowd else {24: 24000, 26: 26001, 33: 33002}[cat]
        np.testing.assert_array_equal(mask, ids == value)


def test_cityscapes2coco_polygons(tmp_path):
    pytest.importorskip("cv2")
    root = tmp_path / "cityscapes"
    _write_cityscapes(root)
    written = cityscapes2coco(str(root), str(tmp_path / "out"), splits=("train",),
                              mask_format="polygon")
    with open(written["train"]) as f:
        anns = json.load(f)["annotations"]
    car = next(a for a in anns if a["category_id"] == 26 and not a["iscrowd"])
    crowd = next(a for a in anns if a["iscrowd"])
    assert isinstance(car["segmentation"], list) and len(car["segmentation"][0]) >= 6
    xs, ys = car["segmentation"][0][0::2], car["segmentation"][0][1::2]
    assert (min(xs), min(ys), max(xs), max(ys)) == (3, 2, 9, 5)
    assert isinstance(crowd["segmentation"], dict)  # crowd regions stay RLE


def test_cityscapes2coco_missing_instance_map(tmp_path):
    root = tmp_path / "cityscapes"
    _write_image(root / "leftImg8bit" / "val" / "bonn" / "bonn_1_leftImg8bit.png", 8, 8)
    with pytest.raises(FileNotFoundError, match="bonn_1_gtFine_instanceIds.png"):
        cityscapes2coco(str(root), str(tmp_path / "out"), splits=("val",))
    with pytest.raises(FileNotFoundError, match="none of the splits"), \
            pytest.warns(UserWarning, match="split 'test' skipped"):
        cityscapes2coco(str(root), str(tmp_path / "out"), splits=("test",))
