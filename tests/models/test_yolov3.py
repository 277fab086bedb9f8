"""YOLOv3 against MMDetection 2.28: the config, and, with MMDetection's weights loaded strictly
into a small YOLOv3 built from the same zoo config (narrow neck and head), the same head
outputs, losses (also with an empty ground truth) and detections; Darknet's frozen stages and
norm_eval. (The zoo's Darknet YOLOv3 configs' parameter counts and state_dict keys are checked
by ``test_zoo.py``.)"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_fcos import HEIGHT, NUM_CLASSES, WIDTH, compare_detections, metas_and_targets
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.backbones.darknet import Darknet
from detlab.models.heads.yolo_head import YOLOV3Head
from detlab.models.necks.yolo_neck import YOLOV3Neck
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
YOLOV3 = "yolo/yolov3_d53_mstrain-608_273e_coco.py"
# a small YOLOv3: the full Darknet-53, a narrow neck and head
SMALL = {"model.neck.out_channels": [32, 16, 8], "model.bbox_head.in_channels": [32, 16, 8],
         "model.bbox_head.out_channels": [16, 16, 16],
         "model.bbox_head.num_classes": NUM_CLASSES}
LOSS_KEYS = {"loss_cls", "loss_conf", "loss_xy", "loss_wh"}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / YOLOV3)
    theirs = Config.fromfile(mmdet_config_dir() / YOLOV3)
    assert mine.to_dict() == theirs.to_dict()


def _randomize(model: nn.Module, images: torch.Tensor) -> None:
    """Varied norm statistics and affines, and predictors calibrated on ``images`` so that the
    objectness and class scores spread around the thresholds."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.weight.numel()
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        head = model.bbox_head
        for conv in head.convs_pred:
            conv.bias.zero_()
        (maps,) = model.eval().bbox_head(model.extract_feat(images))
        for conv, level in zip(head.convs_pred, maps, strict=True):
            logits = level.transpose(0, 1).flatten(1)
            gain = 1.0 / logits.std(dim=1)
            mean = torch.zeros(head.num_base_priors, head.num_attrib)
            mean[:, 4], mean[:, 5:] = -1.0, -1.0
            conv.weight.mul_(gain[:, None, None, None])
            conv.bias.copy_(-logits.mean(dim=1) * gain + mean.flatten())


@pytest.fixture(scope="module")
def yolo_pair():
    import_mmdet()
    from mmdet.models import build_detector

    mm_cfg = load_mmdet_config(YOLOV3)
    mm_cfg.merge_from_dict(SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    _randomize(reference, torch.randn(2, 3, HEIGHT, WIDTH,
                                      generator=torch.Generator().manual_seed(3)))
    cfg = Config.fromfile(REPO / "configs" / YOLOV3)
    cfg.merge_from_dict(SMALL)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def test_trainable_parameters_are_mmdetections(yolo_pair):
    reference, ours = yolo_pair
    count = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in yolo_pair]
    assert count[0] == count[1]
    assert list(dict(ours.state_dict())) == list(dict(reference.state_dict()))


def test_head_outputs_match_mmdetection(yolo_pair):
    reference, ours = yolo_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    assert len(actual) == len(expected) == 1
    assert len(actual[0]) == len(expected[0]) == 3
    for a, e in zip(actual[0], expected[0], strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("empty", [False, True], ids=["objects", "empty"])
def test_losses_match_mmdetection(yolo_pair, empty):
    # copies: training mode moves the neck's and head's BatchNorm statistics
    reference, ours = (copy.deepcopy(m) for m in yolo_pair)
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    metas, targets = metas_and_targets(empty=empty)
    expected = reference.train().forward_train(images, copy.deepcopy(metas),
                                               [t["boxes"] for t in targets],
                                               [t["labels"] for t in targets])
    actual = ours.train().loss(Batch(images, copy.deepcopy(targets), metas))
    assert set(actual) == set(expected) == LOSS_KEYS
    for key in LOSS_KEYS:
        torch.testing.assert_close(actual[key], sum(expected[key]).float(), rtol=1e-5,
                                   atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    assert actual["loss_conf"] > 0
    assert all((actual[k] == 0) == empty for k in LOSS_KEYS - {"loss_conf"})


def test_detections_match_mmdetection(yolo_pair):
    compare_detections(*yolo_pair)


def test_darknet_frozen_stages_and_norm_eval():
    backbone = Darknet(frozen_stages=2).train()
    assert not any(p.requires_grad for p in backbone.conv1.parameters())
    assert not any(p.requires_grad for p in backbone.conv_res_block1.parameters())
    assert all(p.requires_grad for p in backbone.conv_res_block2.parameters())
    assert not any(m.training for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    backbone = Darknet(norm_eval=False, out_indices=(1, 5)).train()
    assert all(m.training for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert backbone.out_channels == [64, 1024]
    outs = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 32, 32), (1, 1024, 2, 2)]


def test_configuration_errors():
    with pytest.raises(ConfigError, match="depth"):
        Darknet(depth=21)
    with pytest.raises(ConfigError, match="num_scales"):
        YOLOV3Neck(3, [8, 4], [4, 2])
    with pytest.raises(ConfigError, match="featmap_strides"):
        YOLOV3Head(3, [8, 8], [8, 8])
    with pytest.raises(ConfigError, match="test_cfg"):
        head = YOLOV3Head(3, [8, 8, 8], [8, 8, 8]).eval()
        head.predict(head([torch.randn(1, 8, 1, 1), torch.randn(1, 8, 2, 2),
                           torch.randn(1, 8, 4, 4)]), [{}])
