"""YOLOX against MMDetection 2.28: the config, and, with MMDetection's weights loaded strictly
into a small YOLOX built from the same zoo config, the same head outputs, losses with and
without the L1 loss (also with an empty ground truth and at a resized training input) and
detections. (The zoo's YOLOX configs' parameter counts and state_dict keys are checked by
``test_zoo.py``.)"""

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
from detlab.models.heads.yolox_head import YOLOXHead, decode_yolox_boxes, encode_yolox_boxes
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
YOLOX_S = "yolox/yolox_s_8x8_300e_coco.py"
# a small YOLOX-S: the same overrides on MMDetection's config and on detlab's; no size draws
SMALL = {"model.backbone.widen_factor": 0.125, "model.neck.in_channels": [32, 64, 128],
         "model.neck.out_channels": 16, "model.bbox_head.in_channels": 16,
         "model.bbox_head.feat_channels": 16, "model.bbox_head.num_classes": NUM_CLASSES,
         "model.input_size": (HEIGHT, WIDTH), "model.random_size_interval": 10 ** 9}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / YOLOX_S)
    theirs = Config.fromfile(mmdet_config_dir() / YOLOX_S)
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
        head = model.bbox_head
        for conv in (*head.multi_level_conv_cls, *head.multi_level_conv_obj):
            conv.bias.zero_()
        cls_maps, _, obj_maps = model.eval().bbox_head(model.extract_feat(images))
        for convs, maps, mean in ((head.multi_level_conv_cls, cls_maps, -2.5),
                                  (head.multi_level_conv_obj, obj_maps, 0.0)):
            for conv, level in zip(convs, maps, strict=True):
                logits = level.transpose(0, 1).flatten(1)
                gain = 1.0 / logits.std(dim=1)
                conv.weight.mul_(gain[:, None, None, None])
                conv.bias.copy_(-logits.mean(dim=1) * gain + mean)


@pytest.fixture(scope="module")
def yolox_pair():
    import_mmdet()
    from mmdet.models import build_detector

    mm_cfg = load_mmdet_config(YOLOX_S)
    mm_cfg.merge_from_dict(SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    _randomize(reference, torch.randn(2, 3, HEIGHT, WIDTH,
                                      generator=torch.Generator().manual_seed(3)))
    cfg = Config.fromfile(REPO / "configs" / YOLOX_S)
    cfg.merge_from_dict(SMALL)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    # detlab's Swish is mmcv's x * sigmoid(x), not nn.SiLU, whose rounding differs
    assert not any(isinstance(m, nn.SiLU) for m in ours.modules())
    return reference.eval(), ours.eval()


def test_trainable_parameters_are_mmdetections(yolox_pair):
    reference, ours = yolox_pair
    count = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in yolox_pair]
    assert count[0] == count[1]
    assert list(dict(ours.state_dict())) == list(dict(reference.state_dict()))


def test_head_outputs_match_mmdetection(yolox_pair):
    reference, ours = yolox_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    assert len(actual) == len(expected) == 3
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 3
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def _losses(model, images, targets, metas, reference: bool):
    targets = copy.deepcopy(targets)  # MMDetection scales the boxes in place
    if reference:
        losses = model.train().forward_train(images, copy.deepcopy(metas),
                                             [t["boxes"] for t in targets],
                                             [t["labels"] for t in targets])
    else:
        losses = model.train().loss(Batch(images, targets, metas))
    model.eval()
    return losses


@pytest.mark.parametrize("input_size", [None, (128, 192)], ids=["input-size", "resized"])
@pytest.mark.parametrize("use_l1", [False, True], ids=["no-l1", "l1"])
@pytest.mark.parametrize("empty", [False, True], ids=["objects", "empty"])
def test_losses_match_mmdetection(yolox_pair, use_l1, empty, input_size):
    reference, ours = yolox_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    metas, targets = metas_and_targets(empty=empty)
    try:
        for model in (reference, ours):
            model.bbox_head.use_l1 = use_l1
            model._input_size = input_size or (HEIGHT, WIDTH)
        expected = _losses(reference, images, targets, metas, reference=True)
        actual = _losses(ours, images, targets, metas, reference=False)
    finally:
        for model in (reference, ours):
            model.bbox_head.use_l1 = False
            model._input_size = (HEIGHT, WIDTH)
    keys = {"loss_cls", "loss_bbox", "loss_obj"} | ({"loss_l1"} if use_l1 else set())
    assert set(actual) == set(expected) == keys
    for key in keys:
        torch.testing.assert_close(actual[key], torch.as_tensor(expected[key]).float(),
                                   rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    assert actual["loss_obj"] > 0
    assert all((actual[k] == 0) == empty for k in keys - {"loss_obj"})


def test_detections_match_mmdetection(yolox_pair):
    compare_detections(*yolox_pair)


def test_random_size_changes_every_interval_and_resizes_the_batch():
    cfg = Config.fromfile(REPO / "configs" / YOLOX_S)
    cfg.merge_from_dict({**SMALL, "model.random_size_interval": 2,
                         "model.random_size_range": (3, 5)})
    model = build_model(cfg.model).train()
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    metas, targets = metas_and_targets()
    boxes = [t["boxes"].clone() for t in targets]
    model.loss(Batch(images, targets, metas))
    assert model._input_size == (HEIGHT, WIDTH)
    model.loss(Batch(images, targets, metas))
    height, width = model._input_size
    assert height % 32 == 0 and 96 <= height <= 160 and width == 32 * int(WIDTH / HEIGHT *
                                                                          height / 32)
    resized = model._resize(Batch(images, targets, metas))
    assert resized.images.shape[-2:] == (height, width)
    torch.testing.assert_close(resized.targets[0]["boxes"][:, 0], boxes[0][:, 0] * width / WIDTH)
    assert all(torch.equal(t["boxes"], b) for t, b in zip(targets, boxes, strict=True))


def test_l1_targets_invert_the_decoding():
    priors = torch.tensor([[0.0, 0.0, 8.0, 8.0], [32.0, 16.0, 16.0, 16.0]])
    boxes = torch.tensor([[1.0, 2.0, 30.0, 20.0], [20.0, 10.0, 60.0, 90.0]])
    torch.testing.assert_close(decode_yolox_boxes(priors, encode_yolox_boxes(priors, boxes,
                                                                             eps=0.0)), boxes)


def test_configuration_errors():
    with pytest.raises(ConfigError, match="dcn_on_last_conv"):
        YOLOXHead(3, 8, dcn_on_last_conv=True)
    with pytest.raises(ConfigError, match="test_cfg"):
        head = YOLOXHead(3, 8, feat_channels=8).eval()
        head.predict(head([torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2),
                           torch.randn(1, 8, 1, 1)]), [{}])
