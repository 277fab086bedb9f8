"""Proposal evaluation as MMDetection 2.28's ``CocoDataset.evaluate``: ``proposal_fast`` (recall
at 0.5:0.95 against every non-crowd box of the file, whatever its category) and ``proposal``
(pycocotools, class-agnostic), on the same annotation file and the same RPN-style results
(``(N, 5)`` arrays in MMDetection, DetResults of class 0 in detlab)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from reference.mmdet_reference import import_mmdet

from detlab.data import build_dataset
from detlab.evaluation.proposals import fast_eval_recall
from detlab.structures import DetResult

NUM_IMAGES = 6


def _annotation_file(tmp_path) -> str:
    """Six 200 x 160 images with 0-6 boxes each: categories 1, 2 and 3 (the dataset reads only
    'a' and 'b'), a few crowd boxes, one image without any."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(NUM_IMAGES):
        images.append(dict(id=10 + i, file_name=f"{i}.jpg", width=200, height=160))
        for _ in range(0 if i == 2 else int(rng.integers(1, 7))):
            x, y = rng.uniform(0, 120), rng.uniform(0, 100)
            w, h = rng.uniform(8, 80), rng.uniform(8, 60)
            anns.append(dict(id=len(anns) + 1, image_id=10 + i, category_id=int(rng.integers(1, 4)),
                             bbox=[x, y, w, h], area=w * h, iscrowd=int(rng.random() < 0.15)))
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=[
        dict(id=1, name="a"), dict(id=2, name="b"), dict(id=3, name="c")])))
    return str(path), anns


def _proposals(anns) -> list[np.ndarray]:
    """Per image, 400 random boxes and jittered copies of its boxes, with random scores."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(NUM_IMAGES):
        xy = rng.uniform(0, 150, (400, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(4, 90, (400, 2))], 1)
        own = np.array([[x, y, x + w, y + h] for a in anns if a["image_id"] == 10 + i
                        for x, y, w, h in [a["bbox"]]]).reshape(-1, 4)
        near = np.repeat(own, 5, axis=0) + rng.normal(0, 4, (5 * len(own), 4))
        boxes = np.concatenate([boxes, near])
        scores = rng.random(len(boxes))
        out.append(np.concatenate([boxes, scores[:, None]], 1).astype(np.float32))
    return out


class _RaggedNumpy:
    """numpy for MMDetection's ``eval_recalls``, whose ``np.array`` of per-image IoU matrices
    of different sizes needs ``dtype=object`` under numpy >= 1.24 (it was written before)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def array(value, *args, **kwargs):
        if isinstance(value, list) and len({np.shape(v) for v in value}) > 1:
            out = np.empty(len(value), dtype=object)
            out[:] = value
            return out
        return np.array(value, *args, **kwargs)


def test_proposal_metrics_equal_mmdetections(tmp_path, monkeypatch):
    import_mmdet()
    import mmdet.core.evaluation.recall as mmdet_recall
    from mmdet.datasets import CocoDataset as Reference

    monkeypatch.setattr(mmdet_recall, "np", _RaggedNumpy())

    path, anns = _annotation_file(tmp_path)
    proposals = _proposals(anns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(path, pipeline=[], classes=("a", "b"), test_mode=True)
        # (one metric at a time: MMDetection writes both under the same AR@n keys)
        expected = reference.evaluate([p.copy() for p in proposals], metric="proposal_fast",
                                      logger="silent")
    dataset = build_dataset(dict(type="CocoDataset", ann_file=path, pipeline=[],
                                 classes=("a", "b"), test_mode=True, img_prefix=str(tmp_path)))
    results = [DetResult(torch.from_numpy(p[:, :4]), torch.from_numpy(p[:, 4]),
                         torch.zeros(len(p), dtype=torch.long)) for p in proposals]
    actual = dataset.evaluate(results, metric=["proposal_fast", "proposal"], logger="silent")
    # proposal_fast's AR@n come first; the COCO proposal metrics' AR@n get its prefix
    for num in (100, 300, 1000):
        assert actual[f"AR@{num}"] == pytest.approx(float(expected[f"AR@{num}"]), abs=1e-6)
    assert {f"proposal_AR@{num}" for num in (100, 300, 1000)} <= set(actual)
    assert 0.05 < actual["AR@100"] < actual["AR@1000"] < 1


def test_coco_proposal_metrics_equal_mmdetections(tmp_path):
    import_mmdet()
    from mmdet.datasets import CocoDataset as Reference

    path, anns = _annotation_file(tmp_path)
    proposals = _proposals(anns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(path, pipeline=[], classes=("a", "b"), test_mode=True)
        expected = reference.evaluate([p.copy() for p in proposals], metric="proposal",
                                      logger="silent")
    dataset = build_dataset(dict(type="CocoDataset", ann_file=path, pipeline=[],
                                 classes=("a", "b"), test_mode=True, img_prefix=str(tmp_path)))
    results = [DetResult(torch.from_numpy(p[:, :4]), torch.from_numpy(p[:, 4]),
                         torch.zeros(len(p), dtype=torch.long)) for p in proposals]
    actual = dataset.evaluate(results, metric="proposal", logger="silent")
    for key in ("AR@100", "AR@300", "AR@1000", "AR_s@1000", "AR_m@1000", "AR_l@1000"):
        assert actual[key] == pytest.approx(float(expected[key]), abs=1e-4), key


def test_fast_eval_recall_by_hand():
    """One box, proposals at IoU 0.81 and 0.49: recall 1 at thresholds up to 0.8, then 0."""
    gt = [np.array([[0.0, 0.0, 10.0, 10.0]], np.float32)]
    proposals = [np.array([[0.0, 0.0, 10.0, 4.9, 0.9], [0.0, 0.0, 9.0, 9.0, 0.5]], np.float32)]
    metrics = fast_eval_recall(gt, proposals, proposal_nums=(1, 2), logger="silent")
    assert metrics["AR@1"] == pytest.approx(0.0)  # the best-scored proposal has IoU 0.49
    assert metrics["AR@2"] == pytest.approx(7 / 10)  # 0.5 ... 0.8 of 0.5:0.95
