"""RescoreExplorer: cached raw detections of a tiny trained RetinaNet, re-scored by slider."""

import pytest
import torch
from conftest import tiny_config

from detlab import train
from detlab.engine.tester import build_test_objects, single_gpu_test
from detlab.structures import DetResult
from detlab.viz.widgets.rescore import RescoreExplorer, cache_raw_detections, rescore_result


@pytest.fixture(scope="module")
def trained(shapes_root, tmp_path_factory):
    """A RetinaNet trained for two tiny epochs, its validation set, loader and predictions."""
    cfg = tiny_config(shapes_root, epochs=2)
    run = train(cfg, work_dir=str(tmp_path_factory.mktemp("rescore")), validate=False,
                progress=False, seed=0)
    model, dataset, loader = build_test_objects(cfg, run.checkpoint, torch.device("cpu"),
                                                split="val")
    return model, dataset, loader, single_gpu_test(model, loader, progress=False)


@pytest.fixture(scope="module")
def raw(trained):
    model, _, loader, _ = trained
    return cache_raw_detections(model, loader)


def test_rescore_one_image_by_hand():
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 40, 40]]  # the first two: IoU 0.82
    result = DetResult(boxes, [0.9, 0.8, 0.3], [0, 0, 1])
    assert len(rescore_result(result, 0.0, 0.5, 100)) == 2
    assert len(rescore_result(result, 0.0, 1.0, 100)) == 3  # IoU 1.0: nothing suppressed
    assert len(rescore_result(result, 0.3, 1.0, 100)) == 2  # above the threshold, strictly
    assert len(rescore_result(result, 0.0, 1.0, 1)) == 1
    relabelled = DetResult(boxes, [0.9, 0.8, 0.3], [0, 1, 1])
    assert len(rescore_result(relabelled, 0.0, 0.5, 100)) == 3
    assert len(rescore_result(relabelled, 0.0, 0.5, 100, class_agnostic=True)) == 2


def test_cache_restores_test_cfg_even_on_error(trained, monkeypatch):
    model, _, loader, _ = trained
    before = (model.test_cfg, model.bbox_head.test_cfg)
    seen = []

    def failing_predict(*args, **kwargs):
        seen.append(model.bbox_head.test_cfg)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model.bbox_head, "predict", failing_predict)
    with pytest.raises(RuntimeError, match="out of memory"):
        cache_raw_detections(model, loader)
    assert seen[0]["nms"]["iou_threshold"] == 1.0 and seen[0]["max_per_img"] == 1000
    assert seen[0]["nms_pre"] == before[1]["nms_pre"]
    assert model.test_cfg is before[0] and model.bbox_head.test_cfg is before[1]


def test_own_test_cfg_reproduces_the_detector(trained, raw):
    model, dataset, _, predicted = trained
    assert sum(len(r) for r in raw) > sum(len(r) for r in predicted)
    explorer = RescoreExplorer(raw, dataset, test_cfg=model.test_cfg)
    for mine, theirs in zip(explorer.results, predicted, strict=True):
        assert torch.equal(mine.labels, theirs.labels)
        assert torch.allclose(mine.scores, theirs.scores)
        assert torch.allclose(mine.boxes, theirs.boxes, atol=1e-4)
    expected = dataset.evaluate(predicted, metric_items=["mAP", "mAP_50", "AR@100"])
    for key in ("bbox_mAP", "bbox_mAP_50", "bbox_AR@100"):
        assert explorer.metrics[key] == pytest.approx(expected[key], abs=1e-12), key
    from_dataset = cache_raw_detections(model, dataset)
    assert [len(r) for r in from_dataset] == [len(r) for r in raw]


def test_sliders_change_boxes_metrics_and_picture(trained, raw):
    _, dataset, _, _ = trained
    explorer = RescoreExplorer(raw, dataset)
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "image/png" in bundle
    assert bundle["text/plain"].startswith("RescoreExplorer: score > 0.05, NMS IoU 0.50")
    recalls, counts = [], []
    for thr in (0.05, 0.2, 0.4):
        explorer.set(score_thr=thr)
        recalls.append(explorer.metrics["bbox_AR@100"])
        counts.append(explorer.metrics["num_boxes"])
    assert recalls == sorted(recalls, reverse=True) and counts == sorted(counts, reverse=True)
    explorer.set(score_thr=0.01, nms_iou=0.5, max_dets=1000)  # the cache floor: overlaps
    suppressed, picture = explorer.metrics["num_boxes"], explorer.render_png()
    explorer._nms.value = 1.0  # the slider, as a user would move it
    assert explorer.settings["nms_iou"] == 1.0
    assert explorer.metrics["num_boxes"] > suppressed and explorer.render_png() != picture
    explorer._max_dets.value = 3
    assert max(len(r) for r in explorer.results) == 3
    explorer._score.value = 1.0  # nothing left: every metric 0, the view still draws
    assert explorer.metrics["num_boxes"] == 0 and explorer.metrics["bbox_mAP"] == 0
    assert explorer.render_png()
