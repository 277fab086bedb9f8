"""CustomDataset: the middle format from pickle / json, subclassing it from a notebook cell,
the COCO export and the metrics every dataset shares."""

import copy
import json
import pickle

import numpy as np
import pytest

from detlab.data.builder import build_dataset
from detlab.data.datasets import CustomDataset
from detlab.registry import DATASETS
from detlab.structures import DetResult

CLASSES = ("cat", "dog")


def _infos():
    return [
        dict(filename="a.jpg", width=100, height=80,
             ann=dict(bboxes=np.array([[10, 10, 50, 40], [60, 5, 90, 70]], np.float32),
                      labels=np.array([0, 1], np.int64),
                      bboxes_ignore=np.array([[0, 0, 5, 5]], np.float32),
                      labels_ignore=np.array([1], np.int64))),
        dict(filename="b.jpg", width=64, height=64,
             ann=dict(bboxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64))),
        dict(filename="c.jpg", width=40, height=60,
             ann=dict(bboxes=np.array([[1, 2, 30, 50]], np.float32),
                      labels=np.array([1], np.int64))),
    ]


def _as_json(infos):
    return [dict(info, ann={k: v.tolist() for k, v in info["ann"].items()}) for info in infos]


@pytest.fixture
def pkl(tmp_path):
    path = tmp_path / "ann.pkl"
    path.write_bytes(pickle.dumps(_infos()))
    return path


def _ds(path, **kwargs):
    kwargs.setdefault("classes", CLASSES)
    kwargs.setdefault("test_mode", True)
    return CustomDataset(str(path), [], **kwargs)


def test_middle_format_from_pickle_and_json(pkl, tmp_path):
    ds = _ds(pkl)
    assert len(ds) == 3 and ds.CLASSES == CLASSES
    ann = ds.get_ann_info(0)
    np.testing.assert_array_equal(ann["bboxes"], [[10, 10, 50, 40], [60, 5, 90, 70]])
    np.testing.assert_array_equal(ann["labels_ignore"], [1])
    assert ds.get_cat_ids(0) == [0, 1]
    assert ds.get_ann_info(1)["bboxes_ignore"].shape == (0, 4)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_as_json(_infos())))
    from_json = _ds(path)
    for i in range(3):
        for key in ("bboxes", "labels", "bboxes_ignore"):
            np.testing.assert_array_equal(from_json.get_ann_info(i)[key], ds.get_ann_info(i)[key])
    assert from_json.get_ann_info(0)["bboxes"].dtype == np.float32


def test_ann_info_is_a_copy(pkl):
    ds = _ds(pkl)
    ds.get_ann_info(0)["bboxes"][:] = -1
    assert ds.get_ann_info(0)["bboxes"][0, 0] == 10


def test_a_file_that_names_its_classes_and_a_subset(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(dict(classes=list(CLASSES), data_infos=_as_json(_infos()))))
    assert CustomDataset(str(path), [], test_mode=True).CLASSES == CLASSES
    dogs = CustomDataset(str(path), [], classes=["dog"], test_mode=True)
    np.testing.assert_array_equal(dogs.get_ann_info(0)["bboxes"], [[60, 5, 90, 70]])
    np.testing.assert_array_equal(dogs.get_ann_info(0)["labels"], [0])
    np.testing.assert_array_equal(dogs.get_ann_info(0)["labels_ignore"], [0])


def test_training_filters_and_groups(pkl):
    ds = _ds(pkl, test_mode=False)
    assert [info["filename"] for info in ds.data_infos] == ["a.jpg", "c.jpg"]
    assert ds.flag.tolist() == [1, 0]
    assert ds.filter_stats == dict(images=3, too_small=0, no_annotations=1, min_size=32)
    assert len(_ds(pkl, test_mode=False, filter_empty_gt=False)) == 3


def test_getitem_checks_and_passes_the_annotations(pkl):
    ds = CustomDataset(str(pkl), [lambda r: r], classes=CLASSES, img_prefix="imgs")
    out = ds[1]
    assert out["img_info"]["filename"] == "c.jpg" and out["img_prefix"] == "imgs"
    np.testing.assert_array_equal(out["ann_info"]["labels"], [1])


def test_to_coco(pkl):
    coco = _ds(pkl).to_coco()
    assert coco["categories"] == [dict(id=1, name="cat", supercategory="none"),
                                  dict(id=2, name="dog", supercategory="none")]
    assert coco["images"][2] == dict(id=3, file_name="c.jpg", width=40, height=60)
    anns = coco["annotations"]
    assert [a["bbox"] for a in anns] == [[10, 10, 40, 30], [60, 5, 30, 65], [0, 0, 5, 5],
                                         [1, 2, 29, 48]]
    assert [a["category_id"] for a in anns] == [1, 2, 2, 2]
    assert [a["iscrowd"] for a in anns] == [0, 0, 1, 0]
    assert [a["image_id"] for a in anns] == [1, 1, 1, 3]
    assert [a["area"] for a in anns] == [1200, 1950, 25, 1392]
    assert [a["id"] for a in anns] == [1, 2, 3, 4]


def test_to_coco_keeps_integer_image_ids(tmp_path):
    infos = _infos()
    for info, image_id in zip(infos, (7, 3, 11), strict=True):
        info["id"] = image_id
    path = tmp_path / "ids.pkl"
    path.write_bytes(pickle.dumps(infos))
    assert [im["id"] for im in _ds(path).to_coco()["images"]] == [7, 3, 11]


def _results():
    return [DetResult([[10, 10, 50, 40], [0, 0, 5, 5], [60, 5, 90, 40]], [0.9, 0.8, 0.7],
                      [0, 1, 1]),
            DetResult([[5, 5, 20, 20]], [0.95], [0]),
            DetResult([[1, 2, 30, 50]], [0.6], [1])]


def test_evaluate_map_by_hand(pkl):
    ds = _ds(pkl)
    metrics = ds.evaluate(_results(), logger="silent")  # 'mAP' by default, as MMDetection
    # cat: a false positive (.95, image b) before the hit (.9): precision .5 at recall 1 -> .5
    # dog: .8 lies on the ignored box (neither right nor wrong); .7 overlaps image a's dog by
    #   IoU 1050 / 1950 = .54 (a hit) and .6 finds image c's: precision 1 up to recall 1 -> 1
    assert metrics == {"mAP": pytest.approx(0.75), "AP50": pytest.approx(0.75)}


def test_evaluate_bbox_equals_cocoeval_on_to_coco(pkl):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ds = _ds(pkl)
    metrics = ds.evaluate(_results(), metric="bbox")
    gt = COCO()
    gt.dataset = copy.deepcopy(ds.to_coco())
    gt.createIndex()
    rows = [row for i, r in enumerate(_results()) for row in r.to_coco(i + 1, [1, 2])]
    evaluator = COCOeval(gt, gt.loadRes(rows), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert metrics["bbox_mAP"] == pytest.approx(evaluator.stats[0])
    assert metrics["bbox_mAP_50"] == pytest.approx(evaluator.stats[1])


def test_evaluate_accepts_mmdetection_results_and_checks_them(pkl):
    ds = _ds(pkl)
    mmdet = [r.to_mmdet(2) for r in _results()]
    assert ds.evaluate(mmdet, logger="silent")["mAP"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="3 images, got 2 results"):
        ds.evaluate(mmdet[:2])
    with pytest.raises(ValueError, match="'AP'.*choose from"):
        ds.evaluate(mmdet, metric="AP")


def _notebook_class(body):
    """A CustomDataset subclass as a notebook cell defines it (module ``__main__``)."""
    namespace = dict(CustomDataset=CustomDataset, np=np)
    exec(compile(body, "<cell>", "exec"), namespace)
    cls = namespace["CsvDataset"]
    cls.__module__ = "__main__"
    return cls


CELL = '''
class CsvDataset(CustomDataset):
    CLASSES = ("cat", "dog")

    def load_annotations(self, ann_file):
        self.rows = [line.split(",") for line in open(ann_file).read().split()]
        names = sorted({r[0] for r in self.rows})
        return [dict(filename=n, width=64, height=48) for n in names]

    def get_ann_info(self, idx):
        name = self.data_infos[idx]["filename"]
        mine = [r for r in self.rows if r[0] == name]
        boxes = np.array([[float(v) for v in r[1:5]] for r in mine], np.float32)
        return dict(bboxes=boxes.reshape(-1, 4),
                    labels=np.array([self.CLASSES.index(r[5]) for r in mine], np.int64),
                    bboxes_ignore=np.zeros((0, 4), np.float32))
'''


def test_a_subclass_from_a_notebook_cell(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("a.png,1,2,30,40,dog\na.png,5,5,9,9,cat\nb.png,0,0,10,10,cat\n")
    first = _notebook_class(CELL)
    DATASETS.register_module(module=first)
    again = _notebook_class(CELL)  # the cell run a second time
    with pytest.warns(UserWarning, match="defined again in __main__"):
        DATASETS.register_module(module=again)
    try:
        ds = build_dataset(dict(type="CsvDataset", ann_file=str(path), pipeline=[]))
        assert type(ds) is again and len(ds) == 2
        np.testing.assert_array_equal(ds.get_ann_info(0)["labels"], [1, 0])
        coco = ds.to_coco()
        assert [a["bbox"] for a in coco["annotations"]][:1] == [[1, 2, 29, 38]]
        results = [DetResult(ds.get_ann_info(i)["bboxes"], [1.0] * len(ds.get_ann_info(i)[
            "labels"]), ds.get_ann_info(i)["labels"]) for i in range(len(ds))]
        assert ds.evaluate(results, logger="silent")["mAP"] == pytest.approx(1.0)
        assert ds.evaluate(results, metric="bbox")["bbox_mAP"] == pytest.approx(1.0)
    finally:
        DATASETS._modules.pop("CsvDataset", None)


def test_a_list_of_files_is_not_one_dataset(pkl):
    with pytest.raises(TypeError, match="build_dataset.*ConcatDataset"):
        CustomDataset([str(pkl), str(pkl)], [], classes=CLASSES)


def test_is_registered():
    assert DATASETS.get("CustomDataset") is CustomDataset
