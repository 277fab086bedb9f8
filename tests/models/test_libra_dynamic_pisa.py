"""Libra R-CNN, Dynamic R-CNN and PISA R-CNN against MMDetection 2.28.

- Libra: the BFP neck (each refine type) gives MMDetection's outputs with its weights; the
  balanced samplers (``CombinedSampler`` of ``InstanceBalancedPosSampler`` and
  ``IoUBalancedNegSampler``) draw MMDetection's RoIs when both sides are seeded alike, so a small
  Libra Faster R-CNN (FPN + BFP, BalancedL1Loss) with MMDetection's weights gives its losses
  (ground truth or none) and detections.
- Dynamic: the losses of two iterations, the IoU threshold and SmoothL1 beta updated in between
  (``update_iter_interval=1``), are MMDetection's; a batch without ground truth, which stops
  MMDetection, trains.
- PISA: ``ScoreHLRSampler`` (ISR-N), ISR-P and CARL give MMDetection's losses, ground truth or
  none. MMDetection's sampler calls mmcv's compiled ``nms_match``, which the CPU stand-in has
  not got: the tests give it a per-box version written from the op's definition.

The zoo rows (parameter counts, state_dict keys) are ``test_zoo.py``'s; the shipped configs
train shrunk in ``test_detector_configs.py``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import test_faster_rcnn as faster
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_faster_rcnn import (
    CHANNELS,
    NUM_CLASSES,
    _images,
    _metas,
    _randomize_detector,
    _targets,
    build_roi_pair,
    compare_roi_losses,
)
from test_plugins import _randomize

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.assigners import nms_match
from detlab.registry import MODELS
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
LIBRA = "libra_rcnn/libra_faster_rcnn_r50_fpn_1x_coco.py"
DYNAMIC = "dynamic_rcnn/dynamic_rcnn_r50_fpn_1x_coco.py"
PISA = "pisa/pisa_faster_rcnn_r50_fpn_1x_coco.py"


@pytest.mark.parametrize("config", [LIBRA, DYNAMIC, PISA])
def test_detlab_config_is_mmdetections(config):
    mine = Config.fromfile(REPO / "configs" / config)
    theirs = Config.fromfile(mmdet_config_dir() / config)
    assert mine.to_dict() == theirs.to_dict()


# ---- MMDetection's reference, made runnable on numpy 2 and without mmcv's compiled ops ------

def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def reference_nms_match(dets, iou_threshold):
    """mmcv's ``nms_match`` box by box: by decreasing score, each box not yet matched leads a
    group of the later unmatched boxes overlapping it by IoU >= the threshold."""
    boxes = dets[:, :4].tolist()
    order = dets[:, 4].sort(descending=True)[1].tolist()
    matched, groups = set(), []
    for at, i in enumerate(order):
        if i in matched:
            continue
        group = [i]
        for j in order[at + 1:]:
            if j not in matched and _iou(boxes[i], boxes[j]) >= iou_threshold:
                matched.add(j)
                group.append(j)
        groups.append(group)
    return groups


@contextlib.contextmanager
def mmdet_runs():
    """MMDetection's samplers as they run with older numpy (``np.int``) and mmcv's
    ``nms_match`` op (the per-box reference above)."""
    import_mmdet()
    mmcv_nms = importlib.import_module("mmcv.ops.nms")
    with mock.patch.object(np, "int", int, create=True), \
            mock.patch.object(mmcv_nms.ext_module, "nms_match",
                              lambda dets, iou_threshold: reference_nms_match(dets,
                                                                               iou_threshold)):
        yield


def test_nms_match_is_mmcvs():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=gen) * 50
    dets = torch.cat([xy, xy + torch.rand(60, 2, generator=gen) * 30 + 5,
                      torch.rand(60, 1, generator=gen)], 1)
    for threshold in (0.3, 0.5):
        groups = [g.tolist() for g in nms_match(dets, threshold)]
        assert groups == reference_nms_match(dets, threshold)
        assert 1 < len(groups) < 60
    assert nms_match(dets[:0], 0.5) == []


# ---- Libra R-CNN -----------------------------------------------------------------------------

@pytest.mark.parametrize("refine_type", [None, "conv", "non_local"])
def test_bfp_is_mmdetections(refine_type):
    import_mmdet()
    from mmdet.models.necks import BFP as ReferenceBFP

    reference = ReferenceBFP(in_channels=8, num_levels=4, refine_level=1,
                             refine_type=refine_type)
    _randomize(reference)
    ours = MODELS.build(dict(type="BFP", in_channels=8, num_levels=4, refine_level=1,
                             refine_type=refine_type))
    ours.load_state_dict(reference.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, 8, 24 // 2 ** i, 30 // 2 ** i, generator=gen) for i in range(4)]
    with torch.no_grad():
        expected, actual = reference(feats), ours(feats)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", [
    dict(type="IoUBalancedNegSampler", floor_thr=0.1, floor_fraction=0.5, num_bins=3),
    dict(type="IoUBalancedNegSampler", floor_thr=0, floor_fraction=0.25, num_bins=1),
    dict(type="CombinedSampler", pos_sampler=dict(type="InstanceBalancedPosSampler"),
         neg_sampler=dict(type="IoUBalancedNegSampler", floor_thr=-1, floor_fraction=0,
                          num_bins=3)),
], ids=["floor-bins", "zero-floor-random", "libra-combined"])
def test_balanced_samplers_draw_mmdetections_rois(sampler):
    """Seeded alike, both sides draw the same RoIs, so the same losses."""
    with mmdet_runs():
        reference, ours = build_roi_pair(sampler=dict(pos_fraction=0.25, **sampler))
        compare_roi_losses(reference, ours)
        compare_roi_losses(reference, ours)  # floor_thr=-1 has become 0 on both sides


def test_balanced_sampler_configuration_errors():
    with pytest.raises(ConfigError, match="floor_fraction"):
        MODELS.build(dict(type="IoUBalancedNegSampler", num=8, pos_fraction=0.25,
                          floor_fraction=2))
    with pytest.raises(ConfigError, match="neg_sampler"):
        MODELS.build(dict(type="CombinedSampler", num=8, pos_fraction=0.25,
                          pos_sampler=dict(type="RandomSampler"),
                          neg_sampler=dict(type="OHEMSampler")))
    with pytest.raises(ConfigError, match="refine_level"):
        MODELS.build(dict(type="BFP", in_channels=8, num_levels=3, refine_level=3))


# ---- small detectors with MMDetection's weights ----------------------------------------------

SMALL = dict(faster.SMALL)
SMALL_LIBRA = {**{k: v for k, v in SMALL.items() if not k.startswith("model.neck.")},
               "model.neck.0.in_channels": [64, 128, 256, 512],
               "model.neck.0.out_channels": CHANNELS, "model.neck.1.in_channels": CHANNELS,
               # room for every positive: where InstanceBalancedPosSampler tops up, MMDetection
               # orders the candidates by tensor id, which no seed reproduces
               "model.train_cfg.rcnn.sampler.num": 512}
OPTIONS = {LIBRA: SMALL_LIBRA,
           DYNAMIC: {**SMALL, "model.train_cfg.rcnn.dynamic_rcnn.update_iter_interval": 1,
                     "model.train_cfg.rcnn.dynamic_rcnn.iou_topk": 20},
           PISA: SMALL}


def build_detector_pair(config):
    """(MMDetection's small detector of ``config``, detlab's with its weights loaded
    strictly), in eval mode."""
    import_mmdet()
    from mmdet.models import build_detector

    mm_cfg = load_mmdet_config(config)
    mm_cfg.merge_from_dict(OPTIONS[config])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    _randomize_detector(reference)
    cfg = Config.fromfile(REPO / "configs" / config)
    cfg.merge_from_dict(OPTIONS[config])
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.fixture(scope="module", params=[LIBRA, DYNAMIC, PISA], ids=["libra", "dynamic", "pisa"])
def detector_pair(request):
    return request.param, *build_detector_pair(request.param)


def compare_detector_losses(reference, ours, empty=False, seed=21):
    images, metas, targets = _images(8), _metas(), _targets(empty=empty)
    with mmdet_runs():
        torch.manual_seed(seed)
        expected = reference.train().forward_train(
            images, copy.deepcopy(metas), [t["boxes"] for t in targets],
            [t["labels"] for t in targets])
    torch.manual_seed(seed)
    actual = ours.train().loss(Batch(images, targets, metas))
    reference.eval(), ours.eval()
    expected = {k: sum(v) if isinstance(v, (list, tuple)) else v for k, v in expected.items()}
    assert set(actual) == set(expected)
    for key in expected:
        torch.testing.assert_close(actual[key].reshape(-1), expected[key].reshape(-1),
                                   rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    return actual


def test_losses_match_mmdetection(detector_pair):
    config, reference, ours = detector_pair
    losses = compare_detector_losses(reference, ours)
    assert losses["loss_bbox"] > 0 and losses["loss_cls"] > 0
    if config == PISA:
        assert losses["loss_carl"] > 0
    if config == DYNAMIC:  # updated after each iteration: the next one assigns with them
        head, theirs = ours.roi_head, reference.roi_head
        assert head.bbox_assigner.pos_iou_thr == pytest.approx(theirs.bbox_assigner.pos_iou_thr)
        assert head.bbox_assigner.pos_iou_thr > 0.4
        assert head.bbox_head.loss_bbox.beta == pytest.approx(theirs.bbox_head.loss_bbox.beta)
        assert head.bbox_head.loss_bbox.beta < 1.0
        compare_detector_losses(reference, ours, seed=22)


def test_empty_ground_truth_losses_match_mmdetection(detector_pair):
    config, reference, ours = detector_pair
    if config == DYNAMIC:  # MMDetection's kthvalue over no positives raises; detlab trains
        with pytest.raises((RuntimeError, IndexError), match="kthvalue"), mmdet_runs():
            reference.train().forward_train(_images(8), copy.deepcopy(_metas()),
                                            [torch.zeros(0, 4)] * 2,
                                            [torch.zeros(0, dtype=torch.long)] * 2)
        reference.eval()
        beta = ours.roi_head.bbox_head.loss_bbox.beta
        losses = ours.train().loss(Batch(_images(8), _targets(empty=True), _metas()))
        ours.eval()
        assert losses["loss_bbox"] == 0 and losses["loss_cls"] > 0
        assert ours.roi_head.bbox_head.loss_bbox.beta == beta  # no statistic: kept
        return
    losses = compare_detector_losses(reference, ours, empty=True)
    assert losses["loss_bbox"] == 0 and losses["loss_rpn_bbox"] == 0


def test_libra_detections_match_mmdetection():
    reference, ours = build_detector_pair(LIBRA)
    images, metas = _images(9), _metas()
    with torch.no_grad():
        expected = reference.simple_test(images, copy.deepcopy(metas), rescale=True)
        actual = ours.predict(Batch(images, _targets(), metas), rescale=True)
    assert all(sum(len(c) for c in image) > 20 for image in expected)
    for ours_image, reference_image in zip(actual, expected, strict=True):
        for a, e in zip(ours_image.to_mmdet(NUM_CLASSES), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)


# ---- RoI heads alone -------------------------------------------------------------------------

@contextlib.contextmanager
def _rcnn_train_cfg(**extra):
    """``build_roi_pair`` with keys added to ``train_cfg.rcnn`` (PISA's isr / carl,
    dynamic_rcnn)."""
    original = faster._roi_head_cfg

    def with_extra(**options):
        head, train, test = original(**options)
        return head, dict(train, **copy.deepcopy(extra)), test

    with mock.patch.object(faster, "_roi_head_cfg", with_extra):
        yield


def test_pisa_roi_head_matches_mmdetection():
    """ISR-N with most negatives above score_thr (ranked, few drawn at random), ISR-P and CARL
    on the RoI head alone, ground truth or none."""
    keys = ("loss_cls", "loss_bbox", "acc", "loss_carl")
    with _rcnn_train_cfg(isr=dict(k=2, bias=0), carl=dict(k=1, bias=0.2)), mmdet_runs():
        reference, ours = build_roi_pair(
            roi_head=dict(type="PISARoIHead"),
            sampler=dict(type="ScoreHLRSampler", k=0.5, bias=0.0, score_thr=0.2),
            bbox_head=dict(loss_bbox=dict(type="SmoothL1Loss", beta=1.0, loss_weight=1.0)))
        assert type(ours.bbox_sampler).__name__ == "ScoreHLRSampler"
        assert compare_roi_losses(reference, ours, keys=keys)["loss_carl"] > 0
        compare_roi_losses(reference, ours, empty=True, keys=keys)


def test_pisa_roi_head_trains_with_class_agnostic_regression():
    """MMDetection's ScoreHLRSampler cannot index class-agnostic deltas; detlab's takes the
    one box of each negative."""
    with _rcnn_train_cfg(isr=dict(k=2, bias=0), carl=dict(k=1, bias=0.2)):
        _, ours = build_roi_pair(
            roi_head=dict(type="PISARoIHead"),
            sampler=dict(type="ScoreHLRSampler", k=0.5, bias=0.0, score_thr=0.0),
            bbox_head=dict(reg_class_agnostic=True, loss_bbox=dict(
                type="SmoothL1Loss", beta=1.0, loss_weight=1.0)))
    feats = [f.requires_grad_() for f in faster._feats()]
    targets = _targets()
    losses = ours.train().loss(feats, faster._proposals(targets), targets, _metas())
    assert all(torch.isfinite(v).all() for v in losses.values()) and losses["loss_carl"] > 0
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert feats[0].grad.abs().sum() > 0


def test_dynamic_roi_head_configuration_errors():
    head, train, test = faster._roi_head_cfg()
    with pytest.raises(ConfigError, match="SmoothL1Loss"):
        MODELS.build(dict(head, type="DynamicRoIHead"))
    head["bbox_head"]["loss_bbox"] = dict(type="SmoothL1Loss", beta=1.0, loss_weight=1.0)
    with pytest.raises(ConfigError, match="dynamic_rcnn"):
        MODELS.build(dict(head, type="DynamicRoIHead", train_cfg=train, test_cfg=test))


@pytest.mark.slow
def test_pisa_mask_rcnn_losses_match_mmdetection():
    """pisa_mask_rcnn: PISA's box losses beside the mask loss, MMDetection's weights in a small
    model (test_mask_rcnn's), ground truth or none."""
    import test_mask_rcnn as masks

    import_mmdet()
    from mmdet.models import build_detector

    config = "pisa/pisa_mask_rcnn_r50_fpn_1x_coco.py"
    reference_cfg = load_mmdet_config(config)
    reference_cfg.merge_from_dict(masks.SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(reference_cfg.model)
    _randomize_detector(reference)
    cfg = Config.fromfile(mmdet_config_dir() / config)  # not shipped: MMDetection's copy
    cfg.merge_from_dict(masks.SMALL)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    images = torch.randn(2, 3, masks.HEIGHT, masks.WIDTH,
                         generator=torch.Generator().manual_seed(4))
    for empty in (False, True):
        metas, targets = masks._metas(), masks._targets(empty)
        with mmdet_runs():
            torch.manual_seed(11)
            expected = masks._mmdet_losses(reference, images, metas, targets)
        torch.manual_seed(11)
        actual = ours.train().loss(Batch(images, targets, metas))
        ours.eval()
        assert set(actual) == set(expected) >= {"loss_carl", "loss_mask"}
        for key in expected:
            torch.testing.assert_close(actual[key].reshape(-1), expected[key].reshape(-1),
                                       rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
        assert (actual["loss_mask"] == 0) == empty
