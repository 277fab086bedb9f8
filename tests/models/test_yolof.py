"""YOLOF against MMDetection 2.28: with MMDetection's weights loaded strictly into a small YOLOF
built from the same zoo config (ResNet-18 caffe, 32 channels), the same head outputs, losses
(also with empty ground truth) and detections; the dilated encoder's blocks; errors.

The batch and the detection comparison are FCOS's (``test_fcos.py``). (The zoo's YOLOF configs'
parameter counts and state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

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
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.heads import YOLOFHead
from detlab.models.necks import DilatedEncoder
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
YOLOF = "yolof/yolof_r50_c5_8x8_1x_coco.py"
SMALL = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
         "model.neck.in_channels": 512, "model.neck.out_channels": 32,
         "model.neck.block_mid_channels": 8, "model.bbox_head.num_classes": NUM_CLASSES,
         "model.bbox_head.in_channels": 32}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / YOLOF)
    theirs = Config.fromfile(mmdet_config_dir() / YOLOF)
    assert mine.to_dict() == theirs.to_dict()


def _randomize(model: nn.Module, images: torch.Tensor) -> None:
    """Varied norm statistics and affines, and class / objectness predictors calibrated on
    ``images`` so that the scores spread around the score threshold."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.weight.numel()
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        head = model.eval().bbox_head
        feats = model.extract_feat(images)
        for conv, subnet, mean in ((head.cls_score, head.cls_subnet, -1.5),
                                   (head.object_pred, head.bbox_subnet, 1.0)):
            conv.bias.zero_()
            logits = conv(subnet(feats[0])).transpose(0, 1).flatten(1)
            gain = 1.0 / logits.std(dim=1)
            conv.weight.mul_(gain[:, None, None, None])
            conv.bias.copy_(-logits.mean(dim=1) * gain + mean)
        head.bbox_pred.weight.mul_(20.0)  # deltas of a few tenths: boxes of varied sizes


@pytest.fixture(scope="module")
def yolof_pair():
    import_mmdet()
    from mmdet.models import build_detector

    mm_cfg = load_mmdet_config(YOLOF)
    mm_cfg.merge_from_dict(SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    reference.init_weights()
    _randomize(reference, torch.randn(2, 3, HEIGHT, WIDTH,
                                      generator=torch.Generator().manual_seed(3)))
    cfg = Config.fromfile(REPO / "configs" / YOLOF)
    cfg.merge_from_dict(SMALL)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def test_trainable_parameters_are_mmdetections(yolof_pair):
    count = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in yolof_pair]
    assert count[0] == count[1]


def test_head_outputs_match_mmdetection(yolof_pair):
    reference, ours = yolof_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    assert len(actual) == len(expected) == 2
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 1
        torch.testing.assert_close(ours_levels[0], reference_levels[0], rtol=1e-5, atol=1e-5)


def _compare_losses(reference, ours, empty: bool):
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    metas, targets = metas_and_targets(empty=empty)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == {"loss_cls", "loss_bbox"}
    for key in expected:
        torch.testing.assert_close(actual[key], torch.as_tensor(expected[key]), rtol=1e-5,
                                   atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    return actual


def test_losses_match_mmdetection(yolof_pair):
    losses = _compare_losses(*yolof_pair, empty=False)
    assert all(v > 0 for v in losses.values())


def test_empty_ground_truth_losses_match_mmdetection(yolof_pair):
    losses = _compare_losses(*yolof_pair, empty=True)
    assert losses["loss_cls"] > 0 and losses["loss_bbox"] == 0


def test_detections_match_mmdetection(yolof_pair):
    compare_detections(*yolof_pair)


def test_box_loss_trains_the_deltas(yolof_pair):
    """The GIoU loss reaches ``bbox_pred`` through the assigner's matched predictions."""
    _, ours = yolof_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    metas, targets = metas_and_targets()
    ours.zero_grad()
    ours.train().loss(Batch(images, targets, metas))["loss_bbox"].backward()
    ours.eval()
    assert ours.bbox_head.bbox_pred.weight.grad.abs().sum() > 0
    assert ours.bbox_head.cls_score.weight.grad is None
    ours.zero_grad()


# ---- without MMDetection -----------------------------------------------------------------

def test_dilated_encoder_reads_the_last_map():
    torch.manual_seed(0)
    neck = DilatedEncoder(16, 8, 4, 2, [2, 4]).eval()
    assert [len(b.conv2.conv.dilation) and b.conv2.conv.dilation[0]
            for b in neck.dilated_encoder_blocks] == [2, 4]
    out = neck([torch.randn(1, 4, 16, 16), torch.randn(1, 16, 8, 8)])
    assert len(out) == 1 and out[0].shape == (1, 8, 8, 8)


def test_configuration_errors():
    with pytest.raises(ConfigError, match="block_dilations"):
        DilatedEncoder(16, 8, 4, 3, [2, 4])
    with pytest.raises(ConfigError, match="strides"):
        YOLOFHead(3, 8, anchor_generator=dict(type="AnchorGenerator", ratios=[1.0],
                                              scales=[1, 2], strides=[16, 32]))
    model = dict(type="YOLOF", backbone=dict(type="ResNet", depth=18, out_indices=(3,)),
                 neck=dict(type="DilatedEncoder", in_channels=256, out_channels=8,
                           block_mid_channels=4, num_residual_blocks=1, block_dilations=[2]),
                 bbox_head=dict(type="YOLOFHead", num_classes=2, in_channels=8))
    with pytest.raises(ConfigError, match="model.neck.in_channels=256"):
        build_model(model)
