"""coco_evaluate against direct pycocotools COCOeval runs on the same data."""

import contextlib
import copy
import io
import json
import logging
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detlab.evaluation import coco_evaluate, dump_results, results_to_coco
from detlab.structures import DetResult

CAT_IDS = [3, 7, 12, 40]  # not contiguous, as in COCO itself
NAMES = ["cat", "dog", "bird", "fish"]
MMDET_MAX_DETS = (100, 300, 1000)
AP_KEYS = ["bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l"]


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------


def _box(rng, w, h):
    """A random xywh box on a quarter-pixel grid (exact in float32), sizes from small to large."""
    side = np.exp(rng.uniform(np.log(6), np.log(min(w, h) * 0.9), size=2))
    x, y = rng.uniform(0, w - side[0]), rng.uniform(0, h - side[1])
    return [float(v) for v in np.round(np.array([x, y, *side]) * 4) / 4]


def random_coco(seed, n_images=14, crowd_rate=0.12):
    """A COCO dict with non-contiguous image and category ids, crowd boxes and images without
    ground truth, and detection rows: jittered ground truth, wrong classes, false positives."""
    rng = np.random.default_rng(seed)
    images, anns, rows = [], [], []
    for i in range(n_images):
        img = dict(id=5 + 3 * i, width=int(rng.integers(160, 640)),
                   height=int(rng.integers(160, 480)), file_name=f"{i}.jpg")
        images.append(img)
        n_gt = 0 if i % 4 == 3 else int(rng.integers(1, 7))
        for _ in range(n_gt):
            box = _box(rng, img["width"], img["height"])
            anns.append(dict(id=len(anns) + 1, image_id=img["id"], bbox=box, area=box[2] * box[3],
                             category_id=int(rng.choice(CAT_IDS)),
                             iscrowd=int(rng.random() < crowd_rate)))
            if rng.random() < 0.8:
                rows.append(_detection_of(rng, anns[-1]))
        for _ in range(int(rng.integers(0, 4))):
            rows.append(dict(image_id=img["id"], category_id=int(rng.choice(CAT_IDS)),
                             bbox=_box(rng, img["width"], img["height"]),
                             score=float(np.float32(rng.random()))))
    cats = [dict(id=c, name=n, supercategory="animal") for c, n in zip(CAT_IDS, NAMES, strict=True)]
    return dict(images=images, annotations=anns, categories=cats), rows


def _detection_of(rng, ann):
    x, y, w, h = ann["bbox"]
    jitter = rng.normal(0, 0.08, size=4) * [w, h, w, h]
    box = np.round(np.array([x, y, w, h]) * 4 + jitter * 4) / 4
    box[2:] = np.maximum(box[2:], 1)
    cat = ann["category_id"] if rng.random() < 0.85 else int(rng.choice(CAT_IDS))
    return dict(image_id=ann["image_id"], category_id=cat, bbox=[float(v) for v in box],
                score=float(np.float32(rng.random())))


def hand_coco():
    """Three images: small, medium and large ground truth, a crowd box, one image without gt."""
    images = [dict(id=1, width=200, height=200), dict(id=4, width=300, height=200),
              dict(id=9, width=100, height=100)]
    boxes = [(1, 3, [10, 10, 20, 20], 0), (1, 7, [50, 40, 60, 70], 0),
             (4, 3, [0, 0, 150, 120], 0), (4, 12, [200, 100, 40, 40], 1),
             (4, 7, [160, 10, 12, 8], 0)]
    anns = [dict(id=i + 1, image_id=img, category_id=cat, bbox=box, area=box[2] * box[3],
                 iscrowd=crowd) for i, (img, cat, box, crowd) in enumerate(boxes)]
    cats = [dict(id=c, name=n) for c, n in zip(CAT_IDS, NAMES, strict=True)]
    return dict(images=images, annotations=anns, categories=cats)


def perfect_rows(gt):
    return [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=list(a["bbox"]),
                 score=1.0) for a in gt["annotations"] if not a["iscrowd"]]


def reference(gt, rows, iou_type="bbox", max_dets=MMDET_MAX_DETS, use_cats=True, cat_ids=None,
              img_ids=None, iou_thrs=None):
    """A plain pycocotools run, on copies (pycocotools writes into what it gets)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(rows)), iou_type)
        if max_dets is not None:
            evaluator.params.maxDets = list(max_dets)
        if cat_ids is not None:
            evaluator.params.catIds = list(cat_ids)
        if img_ids is not None:
            evaluator.params.imgIds = list(img_ids)
        if iou_thrs is not None:
            evaluator.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
        evaluator.params.useCats = int(use_cats)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def as_results(gt, rows, with_img_id=True):
    """The rows as one DetResult per image of ``gt`` (labels = positions in CAT_IDS)."""
    results = []
    for img in gt["images"]:
        mine = [r for r in rows if r["image_id"] == img["id"]]
        xywh = np.array([r["bbox"] for r in mine], dtype=np.float32).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        meta = dict(img_id=img["id"]) if with_img_id else {}
        results.append(DetResult(xyxy, [r["score"] for r in mine],
                                 [CAT_IDS.index(r["category_id"]) for r in mine],
                                 class_names=NAMES, meta=meta))
    return results


# ------------------------------------------------------------------------------------------
# numbers equal to pycocotools
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_bbox_metrics_equal_pycocotools(seed):
    gt, rows = random_coco(seed)
    metrics = coco_evaluate(gt, rows)
    stats = reference(gt, rows).stats
    assert np.abs(np.array(metrics["stats"]) - stats).max() == 0
    for index, key in enumerate(AP_KEYS):
        assert metrics[key] == stats[index]
    assert metrics["bbox_mAP_copypaste"] == " ".join(f"{v:.3f}" for v in stats[:6])
    assert list(metrics)[:7] == AP_KEYS + ["bbox_mAP_copypaste"]


def test_hand_written_dataset_equals_pycocotools_and_hand_computed_ap():
    gt = hand_coco()
    rows = perfect_rows(gt)[:1] + [dict(image_id=9, category_id=3, bbox=[5, 5, 30, 30],
                                        score=0.5)]
    metrics = coco_evaluate(gt, rows)
    assert metrics["stats"] == reference(gt, rows).stats.tolist()
    # class 3 has two gt boxes, one found first at every IoU: precision 1 up to recall 0.5
    # (51 of the 101 recall points) then 0; classes 7 has 2 gt, none found; 40 has no gt
    assert metrics["bbox_mAP"] == pytest.approx((51 / 101 + 0) / 2)


def test_perfect_detections_give_map_1():
    gt, _ = random_coco(3, crowd_rate=0.0)
    metrics = coco_evaluate(gt, perfect_rows(gt))
    assert metrics["stats"][:6] == [1.0] * 6
    assert metrics["stats"][6:] == [1.0] * 6


def test_proposal_nums_1_10_100_give_the_pycocotools_defaults():
    gt, rows = random_coco(11)
    metrics = coco_evaluate(gt, rows, proposal_nums=(1, 10, 100),
                            metric_items=["mAP", "AR@1", "AR@10", "AR@100"])
    stats = reference(gt, rows, max_dets=None).stats
    assert metrics["stats"] == stats.tolist()
    assert metrics["bbox_AR@1"] == stats[6] and metrics["bbox_AR@100"] == stats[8]


def test_default_budgets_follow_mmdetection_when_an_image_has_many_detections():
    gt, rows = random_coco(2)
    rng = np.random.default_rng(0)
    image = gt["images"][0]
    assert any(row["image_id"] == image["id"] for row in rows)
    # 400 confident misses push the image's real detections beyond the first 100
    rows += [dict(image_id=image["id"], category_id=CAT_IDS[0], score=0.9 + rng.random() / 20,
                  bbox=[0.0, 0.0, 2.0, 2.0]) for _ in range(400)]
    metrics = coco_evaluate(gt, rows)
    assert metrics["stats"] == reference(gt, rows).stats.tolist()
    pycocotools_defaults = reference(gt, rows, max_dets=None).stats
    # mAP is read at 100 detections in both, MMDetection reads mAP_50 at 1000
    assert metrics["bbox_mAP"] == pycocotools_defaults[0]
    assert metrics["bbox_mAP_50"] != pycocotools_defaults[1]


def test_custom_iou_thrs():
    gt, rows = random_coco(4)
    metrics = coco_evaluate(gt, rows, iou_thrs=[0.3, 0.5, 0.75])
    assert metrics["stats"] == reference(gt, rows, iou_thrs=[0.3, 0.5, 0.75]).stats.tolist()
    assert "0.30:0.75" in metrics["summary"]


def test_cat_ids_and_img_ids_restrict_the_evaluation():
    gt, rows = random_coco(5)
    img_ids = [img["id"] for img in gt["images"][::2]]
    metrics = coco_evaluate(gt, rows, cat_ids=[7, 40], img_ids=img_ids)
    expected = reference(gt, rows, cat_ids=[7, 40], img_ids=img_ids).stats
    assert metrics["stats"] == expected.tolist()


def test_ground_truth_as_path_coco_object_or_dict_and_results_as_path(tmp_path):
    gt, rows = random_coco(6)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(rows))
    expected = coco_evaluate(gt, rows)["stats"]
    assert coco_evaluate(str(tmp_path / "gt.json"), tmp_path / "dt.json")["stats"] == expected
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
    assert coco_evaluate(coco, rows)["stats"] == expected


def test_inputs_are_left_unmodified():
    gt, rows = random_coco(7)
    gt_before, rows_before = copy.deepcopy(gt), copy.deepcopy(rows)
    coco_evaluate(gt, rows, classwise=True)
    assert gt == gt_before and rows == rows_before


# ------------------------------------------------------------------------------------------
# DetResult input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_detresults_and_json_rows_give_identical_metrics(seed):
    gt, rows = random_coco(seed)
    from_rows = coco_evaluate(gt, rows, classwise=True)
    from_results = coco_evaluate(gt, as_results(gt, rows), classwise=True)
    assert from_results["stats"] == from_rows["stats"]
    assert from_results["summary"] == from_rows["summary"]
    assert from_results["classwise"].equals(from_rows["classwise"])
    ids = [img["id"] for img in gt["images"]]
    explicit = coco_evaluate(gt, as_results(gt, rows, with_img_id=False), img_ids=ids,
                             cat_ids=CAT_IDS)
    assert explicit["stats"] == from_rows["stats"]


def test_detresults_of_some_images_evaluate_those_images_with_a_warning():
    gt, rows = random_coco(8)
    results = as_results(gt, rows)[:5]
    ids = [r.meta["img_id"] for r in results]
    with pytest.warns(UserWarning, match="evaluating the 5 images"):
        metrics = coco_evaluate(gt, results)
    assert metrics["stats"] == reference(gt, rows, img_ids=ids).stats.tolist()


def test_results_to_coco_and_dump_results(tmp_path):
    result = DetResult([[10, 20, 40, 60.5]], [0.75], [2], meta=dict(img_id=9))
    rows = results_to_coco([result], None, CAT_IDS)
    assert rows == [dict(image_id=9, category_id=12, bbox=[10.0, 20.0, 30.0, 40.5], score=0.75)]
    assert results_to_coco([result], [4], CAT_IDS)[0]["image_id"] == 4
    path = dump_results([result, DetResult.empty()], [9, 1], CAT_IDS, tmp_path / "a" / "r.json")
    assert json.loads(path.read_text()) == rows
    assert not list(tmp_path.glob("a/*.tmp"))


# ------------------------------------------------------------------------------------------
# classwise, proposals, segm
# ------------------------------------------------------------------------------------------


def _as_nan(value):
    return math.nan if value == -1 else value


@pytest.mark.parametrize("seed", [0, 9])
def test_classwise_table_equals_per_class_pycocotools_runs(seed):
    gt, rows = random_coco(seed)
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != 40]  # 40: no gt
    table = coco_evaluate(gt, rows, classwise=True)["classwise"]
    assert list(table.columns) == ["class", "category_id", "AP", "AP50", "AP75", "AP_s", "AP_m",
                                   "AP_l"]
    assert table["class"].tolist() == NAMES and table["category_id"].tolist() == CAT_IDS
    for row in table.itertuples():
        stats = reference(gt, rows, cat_ids=[row.category_id]).stats
        expected = [_as_nan(v) for v in stats[:6]]
        got = [row.AP, row.AP50, row.AP75, row.AP_s, row.AP_m, row.AP_l]
        np.testing.assert_array_equal(got, expected)
    assert math.isnan(table.set_index("category_id").loc[40, "AP"])


def test_classwise_uses_given_class_names():
    gt, rows = random_coco(1)
    table = coco_evaluate(gt, rows, classwise=True, class_names=list("ABCD"))["classwise"]
    assert table["class"].tolist() == list("ABCD")
    with pytest.raises(ValueError, match="3 class_names for 4 cat_ids"):
        coco_evaluate(gt, rows, classwise=True, class_names=list("ABC"))


def test_proposal_recall_equals_class_agnostic_pycocotools():
    gt, rows = random_coco(10)
    proposals = [dict(row, category_id=1) for row in rows]  # MMDetection writes id 1
    metrics = coco_evaluate(gt, proposals, iou_type="proposal")
    stats = reference(gt, rows, use_cats=False).stats
    assert list(metrics) == ["AR@100", "AR@300", "AR@1000", "AR_s@1000", "AR_m@1000",
                             "AR_l@1000", "stats", "summary"]
    assert [metrics[k] for k in list(metrics)[:6]] == stats[6:].tolist()
    results = [DetResult(r.boxes, r.scores, torch.zeros_like(r.labels), meta=r.meta)
               for r in as_results(gt, rows)]
    assert coco_evaluate(gt, results, iou_type="proposal")["stats"] == stats.tolist()


def _mask_dataset(seed):
    """Small images with polygon and crowd RLE ground truth, and DetResults with masks."""
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for i in range(6):
        h, w = int(rng.integers(40, 70)), int(rng.integers(40, 70))
        images.append(dict(id=10 + i, height=h, width=w))
        masks, scores, labels = [], [], []
        for _ in range(int(rng.integers(1, 4))):
            x1, y1 = int(rng.integers(0, w - 12)), int(rng.integers(0, h - 12))
            x2, y2 = int(rng.integers(x1 + 6, w)), int(rng.integers(y1 + 6, h))
            cat = int(rng.choice(CAT_IDS))
            polygon = [x1, y1, x2, y1, x1, y2]  # a triangle
            anns.append(dict(id=len(anns) + 1, image_id=10 + i, category_id=cat, iscrowd=0,
                             segmentation=[polygon], bbox=[x1, y1, x2 - x1, y2 - y1],
                             area=(x2 - x1) * (y2 - y1) / 2))
            mask = np.zeros((h, w), bool)
            mask[y1 + int(rng.integers(0, 3)):y2, x1:x2 - int(rng.integers(0, 3))] = True
            masks.append(mask)
            scores.append(float(rng.random()))
            labels.append(CAT_IDS.index(cat))
        crowd = np.zeros((h, w), np.uint8)
        crowd[:10, :10] = 1
        rle = mask_utils.encode(np.asfortranarray(crowd))
        uncompressed = dict(size=[h, w], counts=_uncompressed_counts(crowd))
        anns.append(dict(id=len(anns) + 1, image_id=10 + i, category_id=CAT_IDS[0], iscrowd=1,
                         segmentation=uncompressed, bbox=mask_utils.toBbox(rle).tolist(),
                         area=100.0))
        boxes = [[m.nonzero()[1].min(), m.nonzero()[0].min(), m.nonzero()[1].max() + 1,
                  m.nonzero()[0].max() + 1] for m in masks]
        results.append(DetResult(boxes, scores, labels, masks=np.stack(masks),
                                 meta=dict(img_id=10 + i)))
    cats = [dict(id=c, name=n) for c, n in zip(CAT_IDS, NAMES, strict=True)]
    return dict(images=images, annotations=anns, categories=cats), results


def _uncompressed_counts(mask):
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], changes])).tolist()


def test_segm_metrics_equal_pycocotools_on_masks():
    gt, results = _mask_dataset(0)
    rows = []
    for result in results:
        encoded = mask_utils.encode(np.asfortranarray(result.masks.numpy().transpose(1, 2, 0)
                                                      .astype(np.uint8)))
        scored = zip(encoded, result.scores.tolist(), result.labels.tolist(), strict=True)
        for rle, score, label in scored:
            rows.append(dict(image_id=result.meta["img_id"], category_id=CAT_IDS[label],
                             segmentation=dict(size=rle["size"], counts=rle["counts"].decode()),
                             score=score))
    expected = reference(gt, rows, iou_type="segm").stats.tolist()
    metrics = coco_evaluate(gt, results, iou_type="segm")
    assert metrics["stats"] == expected
    assert metrics["segm_mAP"] == expected[0] and "segm_mAP_copypaste" in metrics
    # rows with both keys: the box is dropped, so object sizes come from the masks
    with_boxes = results_to_coco(results, None, CAT_IDS)
    assert coco_evaluate(gt, with_boxes, iou_type="segm")["stats"] == expected
    assert coco_evaluate(gt, results)["stats"] == reference(gt, with_boxes).stats.tolist()


# ------------------------------------------------------------------------------------------
# empty results, messages, output
# ------------------------------------------------------------------------------------------


def test_empty_results_give_zeros_with_a_warning():
    gt = hand_coco()
    for empty in ([], [DetResult.empty(img_id=img["id"]) for img in gt["images"]]):
        with pytest.warns(UserWarning, match="no detection"):
            metrics = coco_evaluate(gt, empty, classwise=True)
        assert metrics["stats"] == [0.0] * 12
        assert all(metrics[key] == 0.0 for key in AP_KEYS)
        table = metrics["classwise"].set_index("category_id")
        assert table.loc[3, "AP"] == 0.0 and math.isnan(table.loc[40, "AP"])
    with pytest.warns(UserWarning, match="no detection"):
        assert coco_evaluate(gt, [], iou_type="proposal")["AR@100"] == 0.0
    masks_gt, _ = _mask_dataset(1)
    with pytest.warns(UserWarning, match="no detection"):
        assert coco_evaluate(masks_gt, [], iou_type="segm")["segm_mAP"] == 0.0


def test_unknown_iou_type_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"\['bbox', 'segm', 'proposal'\].*'keypoints'"):
        coco_evaluate(hand_coco(), [], iou_type="keypoints")


def test_unknown_category_id_is_named():
    rows = [dict(image_id=1, category_id=5, bbox=[1, 1, 5, 5], score=0.5)]
    with pytest.raises(ValueError, match=r"category ids \[5\].*\[3, 7, 12, 40\]"):
        coco_evaluate(hand_coco(), rows)


def test_unknown_image_id_is_named():
    rows = [dict(image_id=77, category_id=3, bbox=[1, 1, 5, 5], score=0.5)]
    with pytest.raises(ValueError, match=r"image ids \[77\]"):
        coco_evaluate(hand_coco(), rows)
    with pytest.raises(ValueError, match=r"img_ids \[2\]"):
        coco_evaluate(hand_coco(), [], img_ids=[1, 2])


def test_detresults_without_img_id_ask_for_img_ids():
    result = DetResult([[0, 0, 5, 5]], [0.5], [0])
    with pytest.raises(ValueError, match="has no meta\\['img_id'\\]: pass img_ids"):
        coco_evaluate(hand_coco(), [result])
    with pytest.raises(ValueError, match="1 results but 2 img_ids"):
        coco_evaluate(hand_coco(), [result], img_ids=[1, 4])


def test_labels_beyond_cat_ids_are_named():
    result = DetResult([[0, 0, 5, 5]], [0.5], [4], meta=dict(img_id=1))
    with pytest.raises(ValueError, match=r"labels \[4\].*labels 0..3"):
        coco_evaluate(hand_coco(), [result])


def test_segm_without_masks_says_so():
    rows = [dict(image_id=1, category_id=3, bbox=[1, 1, 5, 5], score=0.5)]
    with pytest.raises(ValueError, match="segm evaluation needs masks"):
        coco_evaluate(hand_coco(), rows, iou_type="segm")


def test_bad_arguments():
    gt = hand_coco()
    with pytest.raises(KeyError, match="mAP_xl"):
        coco_evaluate(gt, [], metric_items=["mAP", "mAP_xl"])
    with pytest.raises(ValueError, match="three increasing"):
        coco_evaluate(gt, [], proposal_nums=(100, 300))
    with pytest.raises(TypeError, match="gt must be"):
        coco_evaluate(42, [])
    with pytest.raises(ValueError, match="no \\['categories'\\]"):
        coco_evaluate(dict(images=[]), [])
    with pytest.raises(TypeError, match="only COCO result dicts or only DetResult"):
        coco_evaluate(gt, [DetResult.empty(img_id=1), {}])
    with pytest.raises(ValueError, match="backend"):
        coco_evaluate(gt, [], backend="fast")


def test_metric_items_select_keys_as_mmdetection():
    gt, rows = random_coco(12)
    metrics = coco_evaluate(gt, rows, metric_items=["mAP_50", "AR@300"])
    assert list(metrics) == ["bbox_mAP_50", "bbox_AR@300", "bbox_mAP_copypaste", "stats",
                             "summary"]
    assert metrics["bbox_AR@300"] == metrics["stats"][7]
    assert list(coco_evaluate(gt, rows, metric_items="mAP_l"))[0] == "bbox_mAP_l"
    proposals = coco_evaluate(gt, rows, iou_type="proposal", metric_items=["AR_s@1000"])
    assert list(proposals) == ["AR_s@1000", "stats", "summary"]


def test_pycocotools_prints_only_when_verbose(capsys):
    gt, rows = random_coco(13)
    metrics = coco_evaluate(gt, rows)
    assert capsys.readouterr().out == ""
    assert metrics["summary"].count("Average Precision") == 6
    assert metrics["summary"].count("Average Recall") == 6
    coco_evaluate(gt, rows, verbose=True, classwise=True, backend="pycocotools")
    out = capsys.readouterr().out
    assert metrics["summary"] in out and "Accumulating" in out and "fish" in out
    coco_evaluate(gt, rows, verbose=True)  # detlab's engine prints the same summary
    assert metrics["summary"] in capsys.readouterr().out


def test_summary_goes_to_a_logger(caplog):
    gt, rows = random_coco(13)
    with caplog.at_level(logging.INFO, logger="detlab.test"):
        metrics = coco_evaluate(gt, rows, logger=logging.getLogger("detlab.test"),
                                classwise=True)
        coco_evaluate(gt, rows, logger="silent")
    assert len(caplog.records) == 1
    assert metrics["summary"].rstrip() in caplog.text and "fish" in caplog.text


def test_a_budget_without_100_warns_that_map_is_undefined():
    gt, rows = random_coco(14)
    with pytest.warns(UserWarning, match="no 100"):
        metrics = coco_evaluate(gt, rows, proposal_nums=(10, 20, 50))
    assert metrics["bbox_mAP"] == -1
