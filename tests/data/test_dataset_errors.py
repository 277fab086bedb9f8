"""Bad input is reported where it is: the file (and line, image id, annotation id), or counted and
skipped with a warning -- never a shape error deep inside a model, never a silent zero mAP."""

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from detlab.data.datasets import (
    CocoDataset,
    CustomDataset,
    VOCDataset,
    XMLDataset,
    YOLODataset,
)

# --------------------------------------------------------------------------------------------
# unreadable and malformed files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, kwargs", [
    (CocoDataset, {}), (CustomDataset, dict(classes=["a"])), (YOLODataset, dict(classes=["a"])),
    (VOCDataset, {}),
])
def test_a_missing_annotation_file_is_named(tmp_path, cls, kwargs):
    with pytest.raises(FileNotFoundError, match="nope.*does not exist"):
        cls(str(tmp_path / "nope"), [], **kwargs)


def test_unreadable_files_are_named(tmp_path):
    garbage = tmp_path / "ann.json"
    garbage.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="ann.json.*not valid JSON.*not UTF-8"):
        CocoDataset(str(garbage), [])
    with pytest.raises(ValueError, match="ann.json.*not UTF-8"):
        CustomDataset(str(garbage), [], classes=["a"])
    broken = tmp_path / "ann.pkl"
    broken.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="ann.pkl.*not a readable pickle"):
        CustomDataset(str(broken), [], classes=["a"])
    with pytest.raises(ValueError, match="is a folder"):
        CustomDataset(str(tmp_path), [], classes=["a"])
    with pytest.raises(ValueError, match="is a folder"):
        CocoDataset(str(tmp_path), [])


def test_malformed_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "middle.json"
    path.write_text('[\n  {"filename": "a.jpg",\n   "width": 10\n   "height": 10}\n]')
    with pytest.raises(ValueError, match="middle.json.*not valid JSON.*line 4"):
        CustomDataset(str(path), [], classes=["a"])
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="middle.json.*'data_infos'"):
        CustomDataset(str(path), [], classes=["a"])
    path.write_text(json.dumps([{"filename": "a.jpg", "width": 10}]))
    with pytest.raises(ValueError, match="image 'a.jpg' has no height"):
        CustomDataset(str(path), [], classes=["a"])
    path.write_text(json.dumps([{"filename": "a.jpg", "width": 10, "height": 0}]))
    with pytest.raises(ValueError, match="'a.jpg' has width=10, height=0"):
        CustomDataset(str(path), [], classes=["a"])


def _voc_tree(root, xml):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / "x1.xml").write_text(xml)
    (root / "ImageSets/Main/all.txt").write_text("x1\n")
    return str(root / "ImageSets/Main/all.txt")


def test_malformed_xml_names_the_file_and_line(tmp_path):
    ann_file = _voc_tree(tmp_path, "<annotation>\n  <size><width>9</width>\n</annotation>")
    with pytest.raises(ValueError, match=r"x1.xml.*not well-formed xml.*line 3"):
        XMLDataset(ann_file, [], classes=["a"], img_prefix=str(tmp_path))


def test_an_xml_listed_but_missing_is_named(tmp_path):
    ann_file = _voc_tree(tmp_path, "<annotation><size><width>9</width><height>9</height>"
                                   "</size></annotation>")
    (tmp_path / "ImageSets/Main/all.txt").write_text("x1\nx2\n")
    with pytest.raises(FileNotFoundError, match="x2.xml.*does not exist"):
        XMLDataset(ann_file, [], classes=["a"], img_prefix=str(tmp_path))


def _object(name="a", box=("1", "2", "9", "9"), extra=""):
    x1, y1, x2, y2 = box
    return (f"<object><name>{name}</name>{extra}<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


@pytest.mark.parametrize("obj, match", [
    (_object(box=("9", "2", "1", "9")), r"object 0 \('a'\) has xmax < xmin"),
    (_object(box=("one", "2", "9", "9")), r"object 0 \('a'\) has a <bndbox> value that is not"),
    ("<object><name>a</name></object>", r"object 0 \('a'\) has no <bndbox>"),
    ("<object><bndbox/></object>", "object 0 has no <name>"),
])
def test_bad_xml_objects_name_the_file_and_object(tmp_path, obj, match):
    xml = f"<annotation><size><width>40</width><height>40</height></size>{obj}</annotation>"
    ann_file = _voc_tree(tmp_path, xml)
    with pytest.raises(ValueError, match=f"x1.xml.*{match}"):
        XMLDataset(ann_file, [], classes=["a"], img_prefix=str(tmp_path))


def test_an_xml_without_size_or_image_is_named(tmp_path):
    ann_file = _voc_tree(tmp_path, f"<annotation>{_object()}</annotation>")
    with pytest.raises(ValueError, match="x1.jpg.*no usable <size>"):
        XMLDataset(ann_file, [], classes=["a"], img_prefix=str(tmp_path))


# --------------------------------------------------------------------------------------------
# wrong box formats
# --------------------------------------------------------------------------------------------


def _coco(tmp_path, anns, categories=({"id": 1, "name": "a"},)):
    path = tmp_path / "coco.json"
    images = [dict(id=5, file_name="x.jpg", width=100, height=100)]
    path.write_text(json.dumps(dict(images=images, annotations=anns,
                                    categories=list(categories))))
    return str(path)


def _coco_ann(ann_id, bbox, category_id=1):
    return dict(id=ann_id, image_id=5, category_id=category_id, bbox=bbox,
                area=abs(bbox[2] * bbox[3]), iscrowd=0)


def test_coco_negative_sizes_are_skipped_with_a_warning_naming_them(tmp_path):
    path = _coco(tmp_path, [_coco_ann(1, [10, 10, 20, 20]), _coco_ann(2, [50, 50, -20, 10])])
    with pytest.warns(UserWarning, match=r"1 boxes have a negative.*image id 5, annotation id 2"):
        ds = CocoDataset(path, [], test_mode=True)
    np.testing.assert_array_equal(ds.get_ann_info(0)["bboxes"], [[10, 10, 30, 30]])


def test_coco_boxes_that_look_like_xyxy_are_pointed_out(tmp_path):
    path = _coco(tmp_path, [_coco_ann(1, [60, 60, 90, 95]), _coco_ann(2, [70, 10, 95, 40])])
    with pytest.warns(UserWarning, match=r"2 boxes reach.*annotation id 1.*\[x1, y1, x2, y2\]"):
        CocoDataset(path, [], test_mode=True)


def test_middle_format_boxes_must_be_xyxy(tmp_path):
    infos = [dict(filename="a.jpg", width=50, height=50,
                  ann=dict(bboxes=[[1, 1, 10, 10], [20, 5, 15, 30]], labels=[0, 0]))]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(infos))
    with pytest.raises(ValueError, match=r"ann.json.*'a.jpg'.*\['bboxes'\]\[1\].*x1 <= x2"):
        CustomDataset(str(path), [], classes=["a"])
    infos[0]["ann"] = dict(bboxes=[[1, 1, 10]], labels=[0])
    path.write_text(json.dumps(infos))
    with pytest.raises(ValueError, match=r"'a.jpg'.*must be \(n, 4\)"):
        CustomDataset(str(path), [], classes=["a"])
    infos[0]["ann"] = dict(bboxes=[[1, 1, 10, 10]], labels=[0, 0])
    path.write_text(json.dumps(infos))
    with pytest.raises(ValueError, match="'a.jpg': 1 boxes but 2 labels"):
        CustomDataset(str(path), [], classes=["a"])


def _yolo(tmp_path, label_text, size=(20, 10)):
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "labels").mkdir(exist_ok=True)
    Image.new("RGB", size).save(tmp_path / "images" / "p.jpg")
    (tmp_path / "labels" / "p.txt").write_text(label_text)
    return str(tmp_path / "images")


@pytest.mark.parametrize("text, match", [
    ("0 0.5 0.5 0.2 0.2\n0 10 5 4 4\n", "line 2.*not normalized"),
    ("0 0.5 0.5 0.2\n", "line 1.*expected 'class cx cy w h'"),
    ("0 0.5 0.5 0.2 zero\n", "line 1.*is not numbers"),
    ("0 0.5 0.5 0 0.2\n", "line 1.*must be positive"),
    ("\n\n3 0.5 0.5 0.2 0.2\n", "line 3: class 3 is not one of the 2 classes"),
    ("0.5 0.5 0.5 0.2 0.2\n", "line 1: class 0.5 is not one"),
])
def test_bad_yolo_lines_name_the_file_and_line(tmp_path, text, match):
    folder = _yolo(tmp_path, text)
    with pytest.raises(ValueError, match=f"p.txt.*{match}"):
        YOLODataset(folder, [], classes=["a", "b"])


def test_yolo_coordinates_a_hair_outside_are_clipped(tmp_path):
    folder = _yolo(tmp_path, "0 0.5 0.5 1.004 0.5\n")
    ds = YOLODataset(folder, [], classes=["a"], test_mode=True)
    np.testing.assert_allclose(ds.get_ann_info(0)["bboxes"], [[0, 2.5, 20, 7.5]], atol=1e-4)


def test_yolo_needs_class_names_and_skips_unreadable_images(tmp_path):
    folder = _yolo(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ValueError, match="class numbers only: pass classes"):
        YOLODataset(folder, [])
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="1 images cannot be read.*broken.jpg"):
        ds = YOLODataset(folder, [], classes=["a"], test_mode=True)
    assert len(ds) == 1 and ds.skipped_images[0].endswith("broken.jpg")
    bad_yaml = tmp_path / "data.yaml"
    bad_yaml.write_text("names: [a, b\ntrain: images\n")
    with pytest.raises(ValueError, match="data.yaml.*not valid YAML"):
        YOLODataset(str(bad_yaml), [])
    bad_yaml.write_text("train: images\n")
    with pytest.raises(ValueError, match="data.yaml.*has no 'names'"):
        YOLODataset(str(bad_yaml), [])


# --------------------------------------------------------------------------------------------
# categories that are not in the list
# --------------------------------------------------------------------------------------------


def test_coco_annotations_of_undefined_categories_are_counted_and_skipped(tmp_path):
    path = _coco(tmp_path, [_coco_ann(1, [10, 10, 20, 20]), _coco_ann(2, [1, 1, 5, 5], 9)])
    with pytest.warns(UserWarning, match="1 annotations have a category_id.*annotation id 2"):
        ds = CocoDataset(path, [], test_mode=True)
    assert len(ds.get_ann_info(0)["labels"]) == 1


def test_middle_format_labels_outside_the_classes(tmp_path):
    path = tmp_path / "ann.pkl"
    path.write_bytes(pickle.dumps([dict(filename="a.jpg", width=9, height=9,
                                        ann=dict(bboxes=[[1, 1, 2, 2]], labels=[2]))]))
    with pytest.raises(ValueError, match=r"'a.jpg': labels \[2\] are not class indices 0..1"):
        CustomDataset(str(path), [], classes=["a", "b"])
    with pytest.raises(ValueError, match="needs the class names"):
        CustomDataset(str(path), [])


def test_xml_names_not_in_the_classes_are_counted(tmp_path):
    xml = (f"<annotation><size><width>40</width><height>40</height></size>{_object('a')}"
           f"{_object('typo')}{_object('typo')}</annotation>")
    ann_file = _voc_tree(tmp_path, xml)
    with pytest.warns(UserWarning, match="2 objects.*'typo' x2"):
        ds = XMLDataset(ann_file, [], classes=["a"], img_prefix=str(tmp_path))
    assert ds.skipped_objects == {"typo": 2}


# --------------------------------------------------------------------------------------------
# nothing left to train on
# --------------------------------------------------------------------------------------------


def test_an_empty_training_set_names_the_file_and_the_filters(tmp_path):
    path = _coco(tmp_path, [_coco_ann(1, [10, 10, 20, 20])],
                 categories=[dict(id=1, name="a"), dict(id=2, name="b")])
    with pytest.raises(ValueError, match=r"no image of .*coco.json.* is left for training: of 1 "
                       r"images, 0 have a side under 32 pixels and 1 have no box of the classes "
                       r"\['b'\] \(filter_empty_gt=True\)"):
        CocoDataset(path, [], classes=["b"])
    assert len(CocoDataset(path, [], classes=["b"], test_mode=True)) == 1
    assert len(CocoDataset(path, [], classes=["b"], filter_empty_gt=False)) == 1


def test_an_empty_file_and_tiny_images(tmp_path):
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(pickle.dumps([]))
    with pytest.raises(ValueError, match="empty.pkl.*holds no image"):
        CustomDataset(str(empty), [], classes=["a"])
    tiny = tmp_path / "tiny.pkl"
    tiny.write_bytes(pickle.dumps([dict(filename="t.jpg", width=20, height=64,
                                        ann=dict(bboxes=[[1, 1, 5, 5]], labels=[0]))]))
    with pytest.raises(ValueError, match="1 have a side under 32 pixels"):
        CustomDataset(str(tiny), [], classes=["a"])


class _BadShapes(CustomDataset):
    def load_annotations(self, ann_file):
        return [dict(filename="a.jpg", width=64, height=64)]

    def get_ann_info(self, idx):
        return dict(bboxes=np.zeros((2, 5), np.float32), labels=np.zeros(2, np.int64))


def test_a_subclass_returning_bad_shapes_is_caught_before_the_model(tmp_path):
    ann_file = tmp_path / "anything.txt"
    ann_file.write_text("x")
    with pytest.raises(ValueError, match=r"anything.txt.*'a.jpg'.*must be \(n, 4\)"):
        _BadShapes(str(ann_file), [], classes=["a"])
    ds = _BadShapes(str(ann_file), [], classes=["a"], filter_empty_gt=False)
    with pytest.raises(ValueError, match=r"'a.jpg'.*must be \(n, 4\) xyxy boxes, got shape"):
        ds[0]
