"""Dataset wrappers and build_dataset's shortcuts: lengths, indices, flags and repeat factors
checked by hand."""

import math
import pickle

import numpy as np
import pytest

from detlab.data.builder import build_dataset
from detlab.data.datasets import (
    ClassBalancedDataset,
    ConcatDataset,
    CustomDataset,
    MultiImageMixDataset,
    RepeatDataset,
)
from detlab.data.datasets.wrappers import repeat_factors
from detlab.registry import TRANSFORMS, BuildArgumentError
from detlab.structures import DetResult


class Toy:
    """A dataset of ``cats[i]`` per image; samples are ``dict(idx=i)``."""

    CLASSES = ("a", "b")

    def __init__(self, cats, flag=None, name="toy"):
        self.cats = cats
        self.flag = np.array(flag if flag is not None else [i % 2 for i in range(len(cats))],
                             np.uint8)
        self.name = name
        self.evaluated = []

    def __len__(self):
        return len(self.cats)

    def __getitem__(self, idx):
        return dict(idx=idx, name=self.name, boxes=np.zeros((1, 4)))

    def get_cat_ids(self, idx):
        return list(self.cats[idx])

    def evaluate(self, results, logger=None, **kwargs):
        self.evaluated.append((list(results), kwargs))
        return {"mAP": float(len(results))}


def test_repeat_dataset():
    toy = Toy([[0], [1], [0, 1]], flag=[1, 0, 1])
    ds = RepeatDataset(toy, 3)
    assert len(ds) == 9 and ds.CLASSES == ("a", "b")
    assert [ds[i]["idx"] for i in range(9)] == [0, 1, 2] * 3
    assert ds.flag.tolist() == [1, 0, 1] * 3
    assert ds.get_cat_ids(5) == [0, 1]
    assert ds.evaluate([1, 2, 3], metric="mAP") == {"mAP": 3.0}
    assert toy.evaluated == [([1, 2, 3], {"metric": "mAP"})]
    with pytest.raises(ValueError, match="positive integer"):
        RepeatDataset(toy, 0)


def test_repeat_factors_by_hand():
    # f(0) = 3/4, f(1) = 1/4 at t = .5: r(0) = max(1, sqrt(2/3)) = 1, r(1) = sqrt(2)
    cats = [[0], [0], [0, 1], []]
    np.testing.assert_allclose(repeat_factors(cats, 0.5), [1, 1, math.sqrt(2), 1])
    # empty images as one more category: f = 1/4 too
    np.testing.assert_allclose(repeat_factors(cats, 0.5, empty_category=2),
                               [1, 1, math.sqrt(2), math.sqrt(2)])
    # t = 1: r(0) = sqrt(4/3), r(1) = 2; an image takes its rarest category's factor
    np.testing.assert_allclose(repeat_factors(cats, 1.0),
                               [math.sqrt(4 / 3), math.sqrt(4 / 3), 2, 1])


def test_class_balanced_dataset_rounds_up_as_mmdetection():
    toy = Toy([[0], [0], [0, 1], []], flag=[0, 1, 1, 0])
    ds = ClassBalancedDataset(toy, oversample_thr=0.5)
    assert ds.indices.tolist() == [0, 1, 2, 2, 3] and len(ds) == 5
    assert [ds[i]["idx"] for i in range(5)] == [0, 1, 2, 2, 3]
    assert ds.flag.tolist() == [0, 1, 1, 1, 0]
    assert ds.get_cat_ids(3) == [0, 1]
    kept_empty = ClassBalancedDataset(toy, oversample_thr=0.5, filter_empty_gt=False)
    assert kept_empty.indices.tolist() == [0, 1, 2, 2, 3, 3]
    # t = 1: factors sqrt(4/3) (2 copies), 2 (2 copies) and 1
    assert ClassBalancedDataset(toy, 1.0).indices.tolist() == [0, 0, 1, 1, 2, 2, 3]


def test_class_balanced_dataset_stochastic_rounding():
    toy = Toy([[0]] * 6 + [[0, 1]] * 2)  # f(1) = 1/4: factor sqrt(.5 / .25) = 1.414 at t = .5
    counts = []
    for seed in range(200):
        ds = ClassBalancedDataset(toy, 0.5, rounding="stochastic", seed=seed)
        copies = np.bincount(ds.indices, minlength=8)
        assert copies[:6].tolist() == [1] * 6 and set(copies[6:].tolist()) <= {1, 2}
        counts.append(copies[6:].mean())
    assert np.mean(counts) == pytest.approx(math.sqrt(2), abs=0.05)  # unbiased on average
    with pytest.raises(ValueError, match="rounding"):
        ClassBalancedDataset(toy, 0.5, rounding="round")


def test_concat_dataset():
    one, two = Toy([[0], [1]], flag=[1, 1], name="one"), Toy([[1]] * 3, flag=[0, 0, 0],
                                                              name="two")
    ds = ConcatDataset([one, two])
    assert len(ds) == 5 and ds.cumulative_sizes == [2, 5]
    assert [(ds[i]["name"], ds[i]["idx"]) for i in range(5)] == [
        ("one", 0), ("one", 1), ("two", 0), ("two", 1), ("two", 2)]
    assert ds[-1]["idx"] == 2 and ds.locate(2) == (1, 0)
    assert ds.flag.tolist() == [1, 1, 0, 0, 0] and ds.get_cat_ids(1) == [1]
    assert ds.evaluate(list("abcde"), metric="mAP") == {"0_mAP": 2.0, "1_mAP": 3.0}
    assert one.evaluated[0][0] == ["a", "b"] and two.evaluated[0][0] == ["c", "d", "e"]
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(ValueError, match="5 images, got 4"):
        ds.evaluate(list("abcd"))


# --------------------------------------------------------------------------------------------
# with real datasets
# --------------------------------------------------------------------------------------------


def _pickle(path, labels_per_image, size=(64, 48)):
    infos = [dict(filename=f"{path.stem}_{i}.jpg", width=size[0], height=size[1],
                  ann=dict(bboxes=np.array([[1, 1, 20, 20]] * len(labels), np.float32),
                           labels=np.array(labels, np.int64)))
             for i, labels in enumerate(labels_per_image)]
    path.write_bytes(pickle.dumps(infos))
    return str(path)


@pytest.fixture
def files(tmp_path):
    return (_pickle(tmp_path / "one.pkl", [[0], [1], []]),
            _pickle(tmp_path / "two.pkl", [[1], [0, 1]], size=(40, 60)))


def _cfg(ann_file, **kwargs):
    return dict(type="CustomDataset", ann_file=ann_file, pipeline=[], classes=["a", "b"],
                **kwargs)


def test_build_dataset_concatenates_lists(files):
    ds = build_dataset([_cfg(files[0]), _cfg(files[1])])
    assert isinstance(ds, ConcatDataset) and len(ds) == 4  # the empty image is filtered
    ds = build_dataset(_cfg(list(files), img_prefix=["p1", "p2"], separate_eval=False),
                       dict(test_mode=True))
    assert isinstance(ds, ConcatDataset) and not ds.separate_eval and len(ds) == 5
    assert [d.img_prefix for d in ds.datasets] == ["p1", "p2"]
    assert all(d.test_mode for d in ds.datasets)
    with pytest.raises(ValueError, match="img_prefix has 1 entries for 2 ann_files"):
        build_dataset(_cfg(list(files), img_prefix=["p1"]))


def test_build_dataset_wrappers_with_dataset_configs(files):
    cfg = dict(type="RepeatDataset", times=2,
               dataset=dict(type="ClassBalancedDataset", oversample_thr=0.5,
                            dataset=_cfg(files[0])))
    ds = build_dataset(cfg, dict(test_mode=True))
    inner = ds.dataset.dataset
    assert isinstance(inner, CustomDataset) and inner.test_mode
    # f(a) = 1/3, f(b) = 1/3 < .5: both images with a class twice, the empty one once
    assert ds.dataset.indices.tolist() == [0, 0, 1, 1, 2] and len(ds) == 10
    concat = build_dataset(dict(type="ConcatDataset", datasets=[_cfg(files[0]),
                                                                 _cfg(files[1])]))
    assert len(concat) == 4 and concat.CLASSES == ("a", "b")
    with pytest.raises(BuildArgumentError, match=r"data\.train\.dataset.*img_prefx"):
        build_dataset(dict(cfg, dataset=_cfg(files[0], img_prefx="x")), _path="data.train")
    direct = RepeatDataset(_cfg(files[0]), 2)  # a wrapper also takes a config itself
    assert len(direct) == 4


def test_concat_evaluates_separately_or_as_one(files):
    ds = build_dataset([_cfg(files[0]), _cfg(files[1])], dict(test_mode=True))
    results = [DetResult(ds.get_ann_info(i)["bboxes"], [1.0] * len(ds.get_ann_info(i)[
        "labels"]), ds.get_ann_info(i)["labels"]) for i in range(len(ds))]
    separate = ds.evaluate(results, metric="mAP", logger="silent")
    assert set(separate) == {"0_mAP", "0_AP50", "1_mAP", "1_AP50"}
    ds.separate_eval = False
    whole = ds.evaluate(results, metric=["mAP", "bbox"], logger="silent")
    assert whole["mAP"] == pytest.approx(1.0) and whole["bbox_mAP"] == pytest.approx(1.0)
    coco = ds.to_coco()
    assert [im["id"] for im in coco["images"]] == [1, 2, 3, 4, 5]
    assert [a["image_id"] for a in coco["annotations"]] == [1, 2, 4, 5, 5]
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3, 4, 5]


def test_concat_as_one_needs_the_same_classes(files):
    a = CustomDataset(files[0], [], classes=["a", "b"], test_mode=True)
    b = CustomDataset(files[1], [], classes=["b", "a"], test_mode=True)
    with pytest.raises(ValueError, match=r"same classes; datasets \[1\]"):
        ConcatDataset([a, b], separate_eval=False)


# --------------------------------------------------------------------------------------------
# multi-image mixing
# --------------------------------------------------------------------------------------------


class Pair:
    """Mixes a sample with the next two (records what it saw)."""

    seen: list = []

    def __init__(self, fail_first=0):
        self.fail_first = fail_first

    def get_indexes(self, dataset):
        return [1, 2]

    def __call__(self, results):
        Pair.seen.append([r["idx"] for r in results["mix_results"]])
        if self.fail_first:
            self.fail_first -= 1
            return None
        results["mixed"] = [results["idx"]] + [r["idx"] for r in results["mix_results"]]
        return results


class Mark:
    def __call__(self, results):
        results.setdefault("marks", []).append(results.get("scale"))
        return results


def test_multi_image_mix_dataset():
    Pair.seen = []
    toy = Toy([[0], [1], [0], [1]])
    ds = MultiImageMixDataset(toy, [Pair(), Mark()])
    assert len(ds) == 4 and ds.CLASSES == toy.CLASSES and ds.flag.tolist() == [0, 1, 0, 1]
    out = ds[3]
    assert out["mixed"] == [3, 1, 2] and "mix_results" not in out and out["marks"] == [None]
    assert Pair.seen == [[1, 2]]
    assert ds.pipeline_types == ["Pair", "Mark"]
    ds.update_skip_type_keys(["Pair"])
    assert "mixed" not in ds[0]
    ds.update_dynamic_scale((320, 256))
    assert ds[0]["marks"] == [(320, 256)]
    with pytest.raises(TypeError, match="pair of ints"):
        ds.update_dynamic_scale((320.5, 2))
    with pytest.raises(TypeError, match="type names"):
        ds.update_skip_type_keys([Pair])
    assert ds.get_cat_ids(1) == [1] and ds.evaluate([0] * 4) == {"mAP": 4.0}


def test_multi_image_mix_retries_and_builds_transforms_from_configs():
    Pair.seen = []
    retried = MultiImageMixDataset(Toy([[0]] * 3), [Pair(fail_first=2)])
    assert retried[0]["mixed"] == [0, 1, 2] and len(Pair.seen) == 3
    with pytest.raises(RuntimeError, match="dropped the sample 2 times"):
        MultiImageMixDataset(Toy([[0]] * 3), [Pair(fail_first=5)], max_refetch=2)[0]
    TRANSFORMS.register_module(module=Mark, force=True)
    try:
        ds = MultiImageMixDataset(Toy([[0]]), [dict(type="Mark")], skip_type_keys=["Mark"])
        assert ds.pipeline_types == ["Mark"] and "marks" not in ds[0]
    finally:
        TRANSFORMS._modules.pop("Mark", None)


def test_build_multi_image_mix_from_a_config(files):
    cfg = dict(type="MultiImageMixDataset", dataset=_cfg(files[1]), pipeline=[Mark()],
               dynamic_scale=(64, 64))
    ds = build_dataset(cfg, dict(test_mode=True))
    assert not ds.dataset.test_mode  # as MMDetection: default args stop at the mixing wrapper
    assert ds[0]["marks"] == [(64, 64)]
