"""check_dataset: every planted problem is found (problem, image id, ann id); a clean dataset and
config give no error; the box checks scale to 100k annotations."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detlab.data.checks import (
    COLUMNS,
    PROBLEMS,
    check_dataset,
    decode_sample,
    duplicate_pairs,
    format_report,
    head_num_classes,
)

CATEGORIES = [dict(id=2, name="circle"), dict(id=5, name="square"), dict(id=9, name="triangle")]


def _write_image(path: Path, width: int, height: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (10, 200, 40)).save(path, format=fmt)


def _grid_boxes(count: int, width: int, height: int) -> list[list[float]]:
    """``count`` boxes xywh of 8 x 6 px in a grid: none overlaps another."""
    cells = itertools.product(range(0, height - 6, 8), range(0, width - 8, 10))
    return [[float(x), float(y), 8.0, 6.0] for y, x in itertools.islice(cells, count)]


def _clean_coco(root: Path, per_class: int = 6) -> dict:
    """6 images of 96 x 64 (written under ``root``), ``per_class`` boxes of each class."""
    images = [dict(id=i, file_name=f"img_{i}.png", width=96, height=64) for i in range(1, 7)]
    for image in images:
        _write_image(root / image["file_name"], 96, 64)
    annotations = []
    for k, cat in enumerate(CATEGORIES):
        for j in range(per_class):
            image_id = 1 + (k * per_class + j) % 6
            box = _grid_boxes(72, 96, 64)[k * per_class + j]
            annotations.append(dict(id=1000 + len(annotations), image_id=image_id,
                                    category_id=cat["id"], bbox=box, area=48.0, iscrowd=0))
    return dict(images=images, annotations=annotations, categories=list(CATEGORIES))


def _dump(data: dict, path: Path) -> str:
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def clean(tmp_path: Path) -> tuple[str, str, dict]:
    img_dir = tmp_path / "images"
    data = _clean_coco(img_dir)
    return _dump(data, tmp_path / "clean.json"), str(img_dir), data


def test_clean_dataset_has_no_findings(clean):
    ann_file, img_dir, _ = clean
    df = check_dataset(ann_file, img_prefix=img_dir)
    assert list(df.columns) == list(COLUMNS)
    assert df.empty, format_report(df)
    assert format_report(df) == "no problems found"


def _plant_problems(data: dict, img_dir: Path) -> dict:
    """Every problem of PROBLEMS that a COCO file can have; returns where each one is."""
    images, anns = data["images"], data["annotations"]
    (img_dir / "img_2.png").unlink()                              # missing_image
    (img_dir / "img_3.png").write_bytes(b"not an image")          # unreadable_image
    _write_image(img_dir / "img_4.png", 50, 40)                   # size_mismatch
    images.append(dict(id=7, file_name="img_7.png", width=96, height=64))
    _write_image(img_dir / "img_7.png", 96, 64)                   # image_without_annotations
    images.append(dict(id=8, file_name="img_8.png"))              # missing_image_field
    _write_image(img_dir / "img_8.png", 10, 10)
    images.append(dict(id=1, file_name="img_1.png", width=96, height=64))  # duplicate_image_id
    data["categories"].append(dict(id=11, name="star"))          # class_without_instances

    def add(ann_id: int, bbox, image_id: int = 1, category_id: int = 2) -> None:
        anns.append(dict(id=ann_id, image_id=image_id, category_id=category_id, bbox=bbox,
                         area=1.0, iscrowd=0))

    add(2001, [200, 10, 5, 5])                                    # box_outside_image
    add(2002, [90, 10, 20, 5])                                    # box_exceeds_image
    add(2003, [10, 10, 0, 5])                                     # degenerate_box
    add(2004, [10, 40, 0.5, 5])                                   # tiny_box
    add(2005, [30, 50, 4, 4])
    add(2005, [60, 50, 4, 4])                                     # duplicate_ann_id
    first = anns[0]
    add(2006, [v + 0.05 for v in first["bbox"]], first["image_id"], first["category_id"])
    add(2007, [20, 20, 4, 4], category_id=99)                     # unknown_category
    add(2008, [20, 20, 4, 4], image_id=999)                       # orphan_annotation
    add(2009, [1, 2, 3])                                          # malformed_box
    add(2010, [1, 1, 4, 4], image_id=8)
    return dict(first_ann=first["id"], first_image=first["image_id"])


@pytest.fixture
def planted(tmp_path: Path):
    img_dir = tmp_path / "images"
    data = _clean_coco(img_dir)
    where = _plant_problems(data, img_dir)
    return _dump(data, tmp_path / "bad.json"), str(img_dir), where


def _rows(df, problem):
    return df[df.problem == problem]


def test_planted_problems_are_found(planted):
    ann_file, img_dir, where = planted
    df = check_dataset(ann_file, img_prefix=img_dir)
    expect = {  # problem: (image_id, ann_id)
        "missing_image": (2, None), "unreadable_image": (3, None), "size_mismatch": (4, None),
        "image_without_annotations": (7, None), "missing_image_field": (8, None),
        "duplicate_image_id": (1, None), "box_outside_image": (1, 2001),
        "box_exceeds_image": (1, 2002), "degenerate_box": (1, 2003), "tiny_box": (1, 2004),
        "duplicate_ann_id": (1, 2005), "duplicate_box": (where["first_image"], 2006),
        "unknown_category": (1, 2007), "orphan_annotation": (999, 2008),
        "malformed_box": (1, 2009),
    }
    for problem, (image_id, ann_id) in expect.items():
        rows = _rows(df, problem)
        assert len(rows) == 1, (problem, rows)
        row = rows.iloc[0]
        assert (row.image_id, row.ann_id) == (image_id, ann_id), (problem, row.to_dict())
        assert row.severity == PROBLEMS[problem][0]
    assert str(where["first_ann"]) in _rows(df, "duplicate_box").iloc[0].detail
    assert "50x40" in _rows(df, "size_mismatch").iloc[0].detail
    assert _rows(df, "missing_image").iloc[0].file.endswith("img_2.png")
    star = _rows(df, "class_without_instances")
    assert len(star) == 1 and "'star'" in star.iloc[0].detail
    assert list(df.severity) == sorted(df.severity, key=["error", "warning", "info"].index)


def test_class_imbalance(tmp_path):
    data = _clean_coco(tmp_path / "images", per_class=20)
    data["annotations"] = [a for a in data["annotations"]
                           if a["category_id"] != 9 or a["id"] % 20 == 0]
    df = check_dataset(_dump(data, tmp_path / "a.json"), img_prefix=str(tmp_path / "images"))
    rows = _rows(df, "class_imbalance")
    assert len(rows) == 1 and "'triangle'" in rows.iloc[0].detail
    assert set(df.problem) == {"class_imbalance"}


def test_images_not_found_at_all_is_one_finding(clean, tmp_path):
    ann_file, _, _ = clean
    df = check_dataset(ann_file, img_prefix=str(tmp_path))
    rows = _rows(df, "missing_image")
    assert len(rows) == 1 and "none of the 6 images" in rows.iloc[0].detail
    limited = check_dataset(ann_file, img_prefix=str(tmp_path), max_images=1)
    assert list(limited.problem) == ["missing_image", "images_not_checked"]
    unprobed = check_dataset(ann_file)
    assert list(unprobed.problem) == ["images_not_checked"]
    assert check_dataset(ann_file, check_images=False).empty


def _truncate(path: Path, keep: float = 0.6) -> None:
    """Cut ``path`` short: its header (and size) stay readable, its pixels do not."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _noisy_jpegs(root: Path, count: int) -> dict:
    """A COCO dict of ``count`` 64 x 48 JPEGs (noise: a cut file loses pixels) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(1, count + 1):
        Image.effect_noise((64, 48), 40 + i).convert("RGB").save(root / f"{i}.jpg", quality=90)
        images.append(dict(id=i, file_name=f"{i}.jpg", width=64, height=48))
    annotations = [dict(id=i, image_id=i, category_id=1, bbox=[2, 2, 20, 20], iscrowd=0)
                   for i in range(1, count + 1)]
    return dict(images=images, annotations=annotations, categories=[dict(id=1, name="a")])


def test_a_truncated_image_is_found_by_decoding_it(tmp_path):
    data = _noisy_jpegs(tmp_path, 3)
    _truncate(tmp_path / "2.jpg")
    df = check_dataset(data, img_prefix=str(tmp_path))
    assert list(df.problem) == ["unreadable_image"]
    row = df.iloc[0]
    assert (row.image_id, row.severity) == (2, "error") and row.file.endswith("2.jpg")
    assert "truncated" in row.detail and "cannot be decoded" in row.detail
    assert check_dataset(data, img_prefix=str(tmp_path), check_images=False).empty


def test_sample_decodes_images_spread_evenly(tmp_path):
    data = _noisy_jpegs(tmp_path, 9)
    for name in ("1.jpg", "5.jpg", "6.jpg"):  # positions 0 and 4 are in a sample of 3
        _truncate(tmp_path / name)
    df = check_dataset(data, img_prefix=str(tmp_path), sample=3)
    assert sorted(_rows(df, "unreadable_image").image_id) == [1, 5]
    (note,) = _rows(df, "images_not_checked").detail
    assert note.startswith("sample=3: decoded 3 of 9 images")
    assert list(decode_sample(9, 3)) == [0, 4, 8] and list(decode_sample(2, 3)) == [0, 1]
    assert list(decode_sample(10, 4)) == list(decode_sample(10, 4)) == [0, 3, 6, 9]
    assert len(_rows(check_dataset(data, img_prefix=str(tmp_path)), "unreadable_image")) == 3
    assert _rows(check_dataset(data, img_prefix=str(tmp_path), sample=0),
                 "unreadable_image").empty


def test_a_dataset_without_images_is_an_error(tmp_path):
    data = dict(images=[], annotations=[], categories=[dict(id=1, name="a")])
    df = check_dataset(_dump(data, tmp_path / "empty.json"), img_prefix=str(tmp_path))
    assert list(df.problem) == ["no_images"] and list(df.severity) == ["error"]
    assert df.file[0].endswith("empty.json")
    assert format_report(df) != "no problems found"


def test_size_mismatch_follows_exif_orientation(tmp_path):
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # turned by 90 degrees: the loader sees 20 x 40
    image.save(tmp_path / "turned.jpg", exif=exif)
    data = dict(images=[dict(id=1, file_name="turned.jpg", width=40, height=20)],
                annotations=[dict(id=1, image_id=1, category_id=1, bbox=[1, 1, 5, 5])],
                categories=[dict(id=1, name="a")])
    df = check_dataset(data, img_prefix=str(tmp_path))
    assert list(df.problem) == ["size_mismatch"]
    assert "EXIF" in df.detail[0] and "20x40" in df.detail[0]


def test_bad_input_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        check_dataset(str(tmp_path / "nothing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    df = check_dataset(str(broken))
    assert list(df.problem) == ["unreadable_ann_file"]
    broken.write_text(json.dumps(dict(images={}, annotations=[])))
    assert list(check_dataset(str(broken)).problem) == ["unreadable_ann_file"]


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

_CONFIG = """
model = dict(
    type='FasterRCNN',
    rpn_head=dict(type='RPNHead', num_classes=1),
    roi_head=dict(type='StandardRoIHead',
                  bbox_head=[dict(type='Shared2FCBBoxHead', num_classes={num_classes}),
                             dict(type='Shared2FCBBoxHead', num_classes=3)]))
data_root = {data_root!r}
data = dict(
    train=dict(type='CocoDataset', data_root=data_root, ann_file='clean.json',
               img_prefix={img_prefix!r}, classes={classes!r}, pipeline=[]),
    val=dict(type='RepeatDataset', times=2,
             dataset=dict(type='CocoDataset', ann_file={missing!r}, img_prefix='', pipeline=[])))
"""


def _config(tmp_path: Path, name: str = "cfg.py", **fields) -> str:
    values = dict(num_classes=3, data_root=str(tmp_path), img_prefix="images",
                  classes=("circle", "square", "triangle"),
                  missing=str(tmp_path / "missing.json"))
    values.update(fields)
    path = tmp_path / name
    path.write_text(_CONFIG.format(**values))
    return str(path)


def test_clean_config(clean, tmp_path):
    df = check_dataset(_config(tmp_path))
    assert df.empty, format_report(df)


def test_config_mismatches(clean, tmp_path):
    cfg = _config(tmp_path, num_classes=80, img_prefix="nowhere",
                  classes=("circle", "sqare", "triangle"))
    df = check_dataset(cfg)
    mismatch = _rows(df, "num_classes_mismatch")
    assert len(mismatch) == 1
    assert "model.roi_head.bbox_head.0.num_classes = 80" in mismatch.iloc[0].detail
    assert mismatch.iloc[0].file == cfg
    absent = _rows(df, "class_not_in_file")
    assert len(absent) == 1 and "'sqare'" in absent.iloc[0].detail
    assert "'square'" in absent.iloc[0].detail  # the closest name is suggested
    assert len(_rows(df, "missing_img_prefix")) == 1
    assert "missing_image" not in set(df.problem)  # not one row per image of a missing folder


def test_config_missing_paths(clean, tmp_path):
    cfg = _config(tmp_path, data_root=str(tmp_path / "no_root"))
    df = check_dataset(cfg)
    assert {"missing_data_root", "missing_ann_file", "missing_img_prefix"} <= set(df.problem)
    val = check_dataset(_config(tmp_path), split="val")
    assert list(val.problem) == ["missing_ann_file"]
    assert "data.val.dataset.ann_file" in val.detail[0]
    overridden = check_dataset(_config(tmp_path), cfg_options={"model.roi_head.bbox_head.1"
                                                                ".num_classes": 4})
    assert list(overridden.problem) == ["num_classes_mismatch"]
    from detlab.config import ConfigError

    with pytest.raises(ConfigError, match="no data.test"):
        check_dataset(_config(tmp_path), split="test")


def test_head_num_classes_skips_rpn():
    model = dict(rpn_head=dict(num_classes=1), bbox_head=dict(num_classes=3),
                 roi_head=dict(mask_head=dict(num_classes=3)))
    assert head_num_classes(model) == [("model.bbox_head.num_classes", 3),
                                       ("model.roi_head.mask_head.num_classes", 3)]


# ---------------------------------------------------------------------------------------------
# Scale
# ---------------------------------------------------------------------------------------------


def test_duplicate_pairs_match_brute_force():
    rng = np.random.default_rng(3)
    n = 300
    images, classes = rng.integers(0, 5, n), rng.integers(0, 3, n)
    boxes = np.round(rng.uniform(0, 3, (n, 4))) * 10 + [0, 0, 10, 10]
    first, second, iou = duplicate_pairs(images, classes, boxes, iou_thr=0.5)
    found = set(zip(first.tolist(), second.tolist(), strict=True))
    expect = set()
    for a, b in itertools.combinations(range(n), 2):
        if images[a] != images[b] or classes[a] != classes[b]:
            continue
        (xa, ya, wa, ha), (xb, yb, wb, hb) = boxes[a], boxes[b]
        inter = max(0, min(xa + wa, xb + wb) - max(xa, xb)) * \
            max(0, min(ya + ha, yb + hb) - max(ya, yb))
        if inter / (wa * ha + wb * hb - inter) > 0.5:
            expect.add((a, b))
    assert found == expect and len(found) > 0
    assert np.all(iou > 0.5)


def test_100k_annotations_in_a_few_seconds(tmp_path):
    rng = np.random.default_rng(0)
    num_images, num_anns = 5000, 100_000
    images = [dict(id=i, file_name=f"{i}.jpg", width=640, height=480)
              for i in range(num_images)]
    xy = rng.uniform(0, 400, (num_anns, 2))
    wh = rng.uniform(2, 200, (num_anns, 2))
    image_ids = rng.integers(0, num_images, num_anns)
    cats = rng.integers(1, 81, num_anns)
    anns = [dict(id=i, image_id=int(image_ids[i]), category_id=int(cats[i]),
                 bbox=[*xy[i].tolist(), *wh[i].tolist()], iscrowd=0) for i in range(num_anns)]
    anns.extend(dict(a, id=num_anns + k) for k, a in enumerate(anns[:50]))
    data = dict(images=images, annotations=anns,
                categories=[dict(id=c, name=f"c{c}") for c in range(1, 81)])
    start = time.perf_counter()
    df = check_dataset(data, check_images=False)
    elapsed = time.perf_counter() - start
    assert len(_rows(df, "duplicate_box")) >= 50
    assert elapsed < 15, elapsed  # about 1 s alone on one core; generous for a shared machine


# ---------------------------------------------------------------------------------------------
# Other formats, read through their datasets' to_coco()
# ---------------------------------------------------------------------------------------------

_VOC_XML = """<annotation><filename>{name}.jpg</filename>
  <size><width>60</width><height>40</height><depth>3</depth></size>
  <object><name>{cls}</name><difficult>0</difficult>
    <bndbox><xmin>5</xmin><ymin>5</ymin><xmax>{xmax}</xmax><ymax>30</ymax></bndbox></object>
</annotation>"""


def test_voc_config(tmp_path):
    year = tmp_path / "VOCdevkit" / "VOC2007"
    (year / "ImageSets" / "Main").mkdir(parents=True)
    (year / "Annotations").mkdir()
    for name, cls, xmax in (("a", "car", 30), ("b", "dog", 90)):
        (year / "Annotations" / f"{name}.xml").write_text(
            _VOC_XML.format(name=name, cls=cls, xmax=xmax))
    _write_image(year / "JPEGImages" / "a.jpg", 60, 40, "JPEG")
    (year / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    cfg = dict(model=dict(bbox_head=dict(num_classes=2)),
               data=dict(train=dict(type="VOCDataset", data_root=str(tmp_path / "VOCdevkit"),
                                    ann_file="VOC2007/ImageSets/Main/train.txt",
                                    img_prefix="VOC2007/", classes=("car", "dog"),
                                    pipeline=[])))
    df = check_dataset(cfg)
    errors = df[df.severity == "error"]
    assert sorted(errors.problem) == ["missing_image"]
    assert errors.iloc[0].file.endswith("VOC2007/JPEGImages/b.jpg")
    assert list(_rows(df, "box_exceeds_image").detail) == [
        "bbox (xywh) [4, 4, 85, 25] in a 60x40 image"]


def test_yolo_config_and_unreadable_dataset(tmp_path):
    root = tmp_path / "yolo"
    _write_image(root / "images" / "train" / "a.png", 20, 10)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("train: images/train\nnames: [p, q]\n")
    cfg = dict(model=dict(bbox_head=dict(num_classes=3)),
               data=dict(train=dict(type="YOLODataset", ann_file=str(root / "data.yaml"),
                                    pipeline=[])))
    df = check_dataset(cfg)
    assert list(df.problem) == ["num_classes_mismatch", "class_without_instances"]
    (root / "labels" / "train" / "a.txt").write_text("7 0.5 0.5 0.5 0.5\n")
    df = check_dataset(cfg)
    assert list(df.problem) == ["unreadable_ann_file"]
    assert "class 7" in df.detail[0] and "data.train (YOLODataset)" in df.detail[0]
