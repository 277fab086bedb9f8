"""SSDlite (MobileNetV2, depthwise-separable extra levels and predictors) against MMDetection
2.28: the config, and with MMDetection's weights loaded strictly into a small SSDlite built from
the same zoo config (MobileNetV2 at half width, narrow extra levels, fewer classes) the same
head outputs, losses (also with an empty ground truth) and detections. (The zoo config's
parameter count and state_dict keys are checked by ``test_zoo.py``.)"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_fcos import (
    HEIGHT,
    NUM_CLASSES,
    WIDTH,
    compare_detections,
    metas_and_targets,
    mmdet_losses,
)
from test_mobilenet_v2 import _vary_norms
from torch import nn

from detlab.config import Config
from detlab.models import build_model
from detlab.models.necks.ssd_neck import DepthwiseSeparableConvModule
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
SSDLITE = "ssd/ssdlite_mobilenetv2_scratch_600e_coco.py"
CHANNELS = [48, 1280, 64, 32, 32, 16]
SMALL = {"model.backbone.widen_factor": 0.5, "model.neck.in_channels": CHANNELS[:2],
         "model.neck.out_channels": CHANNELS, "model.bbox_head.in_channels": CHANNELS,
         "model.bbox_head.num_classes": NUM_CLASSES}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / SSDLITE)
    theirs = Config.fromfile(mmdet_config_dir() / SSDLITE)
    assert mine.to_dict() == theirs.to_dict()


def _calibrate(model: nn.Module, images: torch.Tensor) -> None:
    """Varied norm statistics and affines; each classifier output standardized over
    ``images``, the background's raised by 3, so that class scores spread around the score
    threshold."""
    _vary_norms(model)
    with torch.no_grad():
        feats = model.eval().extract_feat(images)
        for branch, feat in zip(model.bbox_head.cls_convs, feats, strict=True):
            conv = branch[-1]
            conv.bias.zero_()
            logits = branch(feat).transpose(0, 1).flatten(1)
            gain = 1.0 / logits.std(dim=1).clamp(min=1e-4)  # 1x1 levels: often constant
            conv.weight.mul_(gain[:, None, None, None])
            conv.bias.copy_(-logits.mean(dim=1) * gain)
            conv.bias[NUM_CLASSES::NUM_CLASSES + 1] += 3.0


@pytest.fixture(scope="module")
def ssdlite_pair():
    """(MMDetection's small SSDlite, detlab's with its weights loaded strictly), in eval
    mode."""
    import_mmdet()
    from mmdet.models import build_detector

    mm_cfg = load_mmdet_config(SSDLITE)
    mm_cfg.merge_from_dict(SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    _calibrate(reference, torch.randn(2, 3, HEIGHT, WIDTH,
                                      generator=torch.Generator().manual_seed(3)))
    cfg = Config.fromfile(REPO / "configs" / SSDLITE)
    cfg.merge_from_dict(SMALL)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def test_layers_are_depthwise_separable(ssdlite_pair):
    _, ours = ssdlite_pair
    assert all(isinstance(level[1], DepthwiseSeparableConvModule)
               for level in ours.neck.extra_layers)
    for branch in (*ours.bbox_head.cls_convs, *ours.bbox_head.reg_convs):
        depthwise, predictor = branch
        assert depthwise.conv.groups == depthwise.conv.in_channels
        assert predictor.kernel_size == (1, 1)


def test_head_outputs_match_mmdetection(ssdlite_pair):
    reference, ours = ssdlite_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 6
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("empty", [False, True], ids=["objects", "empty"])
def test_losses_match_mmdetection(ssdlite_pair, empty):
    # copies: training mode moves the BatchNorm statistics
    reference, ours = (copy.deepcopy(m) for m in ssdlite_pair)
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    metas, targets = metas_and_targets(empty=empty)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, copy.deepcopy(targets), metas))
    assert set(actual) == set(expected) == {"loss_cls", "loss_bbox"}
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key].reshape(()), rtol=1e-5,
                                   atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    assert all((actual[k] == 0) == empty for k in actual)


def test_detections_match_mmdetection(ssdlite_pair):
    compare_detections(*ssdlite_pair)


def test_full_size_zoo_model_matches_mmdetection_at_320():
    """The unmodified zoo SSDlite (MobileNetV2 at full width, 80 classes) on a 320 x 320
    input: MMDetection's weights load strictly and give the same head outputs, six levels of
    20 x 20 down to 1 x 1."""
    import_mmdet()
    from mmdet.models import build_detector

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(load_mmdet_config(SSDLITE).model)
    _vary_norms(reference)
    ours = build_model(Config.fromfile(REPO / "configs" / SSDLITE).model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    images = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.eval().bbox_head(reference.extract_feat(images))
        actual = ours.eval()(images)
    assert [m.shape[-1] for m in actual[0]] == [20, 10, 5, 3, 2, 1]
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
