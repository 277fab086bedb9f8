"""TOOD against MMDetection 2.28: with MMDetection's weights loaded strictly into a small TOOD
built from the same zoo config (both anchor types), the same head outputs, losses before and
after ``initial_epoch`` (also with an empty ground truth) and detections. (The zoo's TOOD
configs' parameter counts and state_dict keys are checked by ``test_zoo.py``.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import mmdet_config_dir
from test_fcos import HEIGHT, WIDTH, _loss_inputs, build_pair, compare_detections, mmdet_losses

from detlab.config import Config
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
TOOD = "tood/tood_r50_fpn_1x_coco.py"
SMALL = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
         "model.neck.in_channels": [64, 128, 256, 512], "model.neck.out_channels": 32,
         "model.bbox_head.in_channels": 32, "model.bbox_head.feat_channels": 32,
         "model.bbox_head.stacked_convs": 2, "model.bbox_head.num_classes": 6}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / TOOD)
    theirs = Config.fromfile(mmdet_config_dir() / TOOD)
    assert mine.to_dict() == theirs.to_dict()


@pytest.fixture(scope="module", params=["anchor_free", "anchor_based"])
def tood_pair(request):
    return build_pair(TOOD, "tood_cls", dict(SMALL, **{"model.bbox_head.anchor_type":
                                                         request.param}))


def test_head_outputs_match_mmdetection(tood_pair):
    reference, ours = tood_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    assert len(actual) == len(expected) == 2
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("epoch", [0, 4])
@pytest.mark.parametrize("empty", [False, True])
def test_losses_match_mmdetection_before_and_after_initial_epoch(tood_pair, epoch, empty):
    reference, ours = tood_pair
    reference.set_epoch(epoch)
    ours.set_epoch(epoch)
    try:
        images, targets, metas = _loss_inputs(empty)
        expected = mmdet_losses(reference, images, metas, targets)
        actual = ours.train().loss(Batch(images, targets, metas))
    finally:
        ours.eval()
        reference.set_epoch(0)
        ours.set_epoch(0)
    assert set(actual) == set(expected) == {"loss_cls", "loss_bbox"}
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6)
    assert actual["loss_cls"] > 0
    assert (actual["loss_bbox"] == 0) == empty


def test_detections_match_mmdetection(tood_pair):
    compare_detections(*tood_pair)
