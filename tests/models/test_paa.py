"""PAA against MMDetection 2.28: with MMDetection's weights loaded strictly into a small PAA
built from the same zoo config, the same head outputs, losses (the Gaussian-mixture assignment
fitted by scikit-learn in both) and detections with and without score voting; an empty ground
truth; the error without scikit-learn.

The batch and the comparisons are FCOS's (``test_fcos.py``). (The zoo's PAA configs' parameter
counts and state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch
from reference.mmdet_reference import mmdet_config_dir
from test_fcos import _loss_inputs, build_pair, compare_detections, compare_outputs, mmdet_losses

from detlab.config import Config, ConfigError
from detlab.models.heads.paa_head import PAAHead, aligned_iou, fit_two_gaussians
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
PAA = "paa/paa_r50_fpn_1x_coco.py"
LOSS_KEYS = {"loss_cls", "loss_bbox", "loss_iou"}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / PAA)
    theirs = Config.fromfile(mmdet_config_dir() / PAA)
    assert mine.to_dict() == theirs.to_dict()


@pytest.fixture(scope="module")
def paa_pair():
    pytest.importorskip("sklearn")
    return build_pair(PAA, "atss_cls")


def compare_losses(reference, ours, empty=False):
    images, targets, metas = _loss_inputs(empty)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == LOSS_KEYS
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")
    return actual


def test_head_outputs_match_mmdetection(paa_pair):
    compare_outputs(*paa_pair)


def test_losses_match_mmdetection(paa_pair):
    losses = compare_losses(*paa_pair)
    assert all(v > 0 for v in losses.values())


def test_the_mixture_drops_candidates(paa_pair):
    """The reassignment keeps fewer positives than the first assignment gave."""
    _, ours = paa_pair
    images, targets, metas = _loss_inputs()
    head = ours.bbox_head
    kept = []
    original = head.paa_reassign

    def spy(pos_losses, pos_inds, *args):
        result = original(pos_losses, pos_inds, *args)
        kept.append((len(pos_inds), len(result)))
        return result

    head.paa_reassign = spy
    try:
        ours.train().loss(Batch(images, targets, metas))
    finally:
        del head.paa_reassign
        ours.eval()
    assert len(kept) == 2 and all(0 < after < before for before, after in kept)


def test_empty_ground_truth_losses_match_mmdetection(paa_pair):
    losses = compare_losses(*paa_pair, empty=True)
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"] == 0 and losses["loss_iou"] == 0


@pytest.mark.parametrize("voting", [True, False], ids=["score-voting", "no-voting"])
def test_detections_match_mmdetection(paa_pair, voting):
    reference, ours = paa_pair
    assert reference.bbox_head.with_score_voting and ours.bbox_head.with_score_voting
    reference.bbox_head.with_score_voting = ours.bbox_head.with_score_voting = voting
    try:
        compare_detections(reference, ours)
    finally:
        reference.bbox_head.with_score_voting = ours.bbox_head.with_score_voting = True


# ---- without MMDetection -----------------------------------------------------------------

TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                nms=dict(type="nms", iou_threshold=0.6), max_per_img=100)
TRAIN_CFG = dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.1, neg_iou_thr=0.1,
                               min_pos_iou=0, ignore_iof_thr=-1),
                 allowed_border=-1, pos_weight=-1, debug=False)
META = dict(img_shape=(64, 64, 3), pad_shape=(64, 64, 3))
EMPTY = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
BOX = dict(boxes=torch.tensor([[4.0, 6.0, 40.0, 36.0]]), labels=torch.tensor([2]))


def _small_head(**kwargs) -> PAAHead:
    torch.manual_seed(0)
    args = dict(num_classes=3, in_channels=8, feat_channels=8, stacked_convs=2,
                norm_cfg=dict(type="GN", num_groups=4),
                anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=4,
                                      scales_per_octave=1, strides=[8, 16]),
                bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                target_stds=[0.1, 0.1, 0.2, 0.2]),
                loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25),
                loss_bbox=dict(type="GIoULoss", loss_weight=1.3),
                loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True,
                                     loss_weight=0.5),
                train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)
    return PAAHead(**{**args, **kwargs})


def _feats(batch: int = 2) -> list[torch.Tensor]:
    return [torch.randn(batch, 8, 8, 8), torch.randn(batch, 8, 4, 4)]


def test_empty_ground_truth_gives_classification_loss_only():
    head = _small_head()
    losses = head.loss(head(_feats()), [EMPTY, EMPTY], [META, META])
    assert set(losses) == LOSS_KEYS
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"] == 0 and losses["loss_iou"] == 0
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in head.parameters())  # zeros, still in the graph


def test_loss_with_objects_needs_scikit_learn(monkeypatch):
    head = _small_head()
    raw = head(_feats())
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        head.loss(raw, [BOX, EMPTY], [META, META])
    # building, predicting and an empty ground truth go without it
    head = _small_head(score_voting=True)
    results = head.predict(head(_feats()), [META, META])
    assert len(results) == 2
    head.loss(head(_feats()), [EMPTY, EMPTY], [META, META])


def test_loss_with_objects():
    pytest.importorskip("sklearn")
    head = _small_head()
    losses = head.loss(head(_feats()), [BOX, EMPTY], [META, META])
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_two_gaussians_split_low_from_high():
    pytest.importorskip("sklearn")
    losses = np.array([0.1, 0.12, 0.15, 0.2, 2.0, 2.1, 2.3, 2.5]).reshape(-1, 1)
    for covariance in ("full", "tied", "diag", "spherical"):
        component, likelihood = fit_two_gaussians(losses, covariance)
        assert component.tolist() == [0] * 4 + [1] * 4
        assert likelihood.shape == (8,)


def test_configuration_errors():
    with pytest.raises(ConfigError, match="covariance_type"):
        _small_head(covariance_type="round")
    with pytest.raises(ConfigError, match="topk"):
        _small_head(topk=0)


def test_aligned_iou():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(aligned_iou(a, b), torch.tensor([1 / 3, 0.0]))


def test_predict_keeps_classes_and_count():
    head = _small_head(test_cfg=dict(TEST_CFG, score_thr=0.0, max_per_img=5)).eval()
    with torch.no_grad():
        raw = head(_feats())
        voted = head.predict(raw, [META, META])
        head.with_score_voting = False
        plain = head.predict(raw, [META, META])
    for a, b in zip(voted, plain, strict=True):
        assert len(a.boxes) == len(b.boxes) == 5
        assert sorted(a.labels.tolist()) == sorted(b.labels.tolist())
        assert sorted(a.scores.tolist()) == sorted(b.scores.tolist())
