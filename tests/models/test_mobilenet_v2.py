"""MobileNetV2 and YOLOv3-MobileNetV2: the backbone's layers against torchvision's
``mobilenet_v2`` (the same weights copied in order give the same features) and MMDetection
2.28's ``MobileNetV2`` (its weights loaded strictly: the same outputs, frozen parameters and
modes); the YOLOv3-MobileNetV2 configs, and with MMDetection's weights loaded strictly into
YOLOv3-MobileNetV2 (fewer classes) the same head outputs, losses (also with an empty ground
truth) and detections. (The zoo's MobileNetV2 configs' parameter counts and state_dict keys are
checked by ``test_zoo.py``.)"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_fcos import HEIGHT, NUM_CLASSES, WIDTH, compare_detections, metas_and_targets
from test_yolov3 import LOSS_KEYS
from test_yolov3 import _randomize as randomize_yolo
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.backbones import MobileNetV2
from detlab.models.backbones.mobilenet_v2 import make_divisible
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
YOLO_320 = "yolo/yolov3_mobilenetv2_320_300e_coco.py"
YOLO_416 = "yolo/yolov3_mobilenetv2_mstrain-416_300e_coco.py"
SMALL = {"model.bbox_head.num_classes": NUM_CLASSES, "model.backbone.init_cfg": None}
ALL_OUTPUTS = tuple(range(8))
# torchvision's features[i] -> our output index: layer1 ... layer7, conv2 end at these
TORCHVISION_ENDS = (1, 3, 6, 10, 13, 16, 17, 18)


def _vary_norms(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.weight.numel()
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


# ---- the backbone ----------------------------------------------------------------------------

def test_make_divisible_rounds_as_mobilenet():
    assert [make_divisible(c * 0.5, 8) for c in (32, 16, 24, 96, 320)] == [16, 8, 16, 48, 160]
    assert make_divisible(32 * 0.35, 8) == 16 and make_divisible(20, 8) == 24
    assert make_divisible(3, 8) == 8


@pytest.mark.parametrize("widen_factor", [1.0, 0.5, 1.4])
def test_same_features_as_torchvision_with_its_weights(widen_factor):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    theirs = mobilenet_v2(weights=None, width_mult=widen_factor).features
    _vary_norms(theirs)
    ours = MobileNetV2(widen_factor=widen_factor, out_indices=ALL_OUTPUTS)
    source, target = theirs.state_dict(), ours.state_dict()
    assert [v.shape for v in source.values()] == [v.shape for v in target.values()]
    ours.load_state_dict(dict(zip(target, source.values(), strict=True)), strict=True)
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        actual = ours.eval()(images)
        x, expected = images, []
        for i, layer in enumerate(theirs.eval()):
            x = layer(x)
            if i in TORCHVISION_ENDS:
                expected.append(x)
    assert [o.shape[1] for o in actual] == ours.out_channels
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def _mmdet_backbone(**kwargs) -> nn.Module:
    import_mmdet()
    from mmdet.models.backbones import MobileNetV2 as Reference

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Reference(**kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(widen_factor=0.5, out_indices=ALL_OUTPUTS,
         norm_cfg=dict(type="BN", eps=0.001, momentum=0.03)),
    dict(widen_factor=1.5, out_indices=(2, 4, 6), act_cfg=dict(type="LeakyReLU",
                                                                negative_slope=0.1)),
], ids=["default", "half-all-outputs", "wide-leaky"])
def test_same_state_dict_and_outputs_as_mmdetection(kwargs):
    reference = _mmdet_backbone(**kwargs)
    _vary_norms(reference)
    ours = MobileNetV2(**kwargs)
    assert ({k: v.shape for k, v in ours.state_dict().items()}
            == {k: v.shape for k, v in reference.state_dict().items()})
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    for train in (False, True):  # training: batch statistics, and the running ones moved alike
        reference.train(train)  # MMDetection's train() returns None
        expected = reference(images)
        actual = ours.train(train)(images)
        assert len(actual) == len(expected) == len(ours.out_channels)
        for a, e in zip(actual, expected, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    for (name, a), e in zip(ours.state_dict().items(), reference.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, e, msg=name)


@pytest.mark.parametrize("frozen_stages,norm_eval", [(-1, True), (0, False), (3, False),
                                                     (7, True)])
def test_frozen_stages_and_norm_eval_as_mmdetection(frozen_stages, norm_eval):
    kwargs = dict(widen_factor=0.25, frozen_stages=frozen_stages, norm_eval=norm_eval)
    reference = _mmdet_backbone(**kwargs)
    reference.train()  # MMDetection's train() returns None
    ours = MobileNetV2(**kwargs).train()
    grads = {n: p.requires_grad for n, p in reference.named_parameters()}
    assert {n: p.requires_grad for n, p in ours.named_parameters()} == grads
    modes = dict(reference.named_modules())  # it also has parameterless drop_path identities
    assert all(m.training == modes[n].training for n, m in ours.named_modules())
    if frozen_stages >= 0:  # conv1 frozen but (as in MMDetection) not in eval mode
        assert not any(p.requires_grad for p in ours.conv1.parameters())
        assert ours.conv1.bn.training is not norm_eval


def test_configuration_errors():
    with pytest.raises(ConfigError, match="out_indices"):
        MobileNetV2(out_indices=(8,))
    with pytest.raises(ConfigError, match="frozen_stages"):
        MobileNetV2(frozen_stages=8)
    with pytest.raises(ConfigError, match="init_cfg or pretrained"):
        MobileNetV2(pretrained="x.pth", init_cfg=dict(type="Kaiming", layer="Conv2d"))
    with pytest.raises(ConfigError, match="widen_factor"):
        MobileNetV2(widen_factor=0)


# ---- YOLOv3-MobileNetV2 ----------------------------------------------------------------------

@pytest.mark.parametrize("config", [YOLO_320, YOLO_416])
def test_detlab_config_is_mmdetections(config):
    mine = Config.fromfile(REPO / "configs" / config)
    theirs = Config.fromfile(mmdet_config_dir() / config)
    assert mine.to_dict() == theirs.to_dict()


@pytest.fixture(scope="module")
def yolo_pair():
    import_mmdet()
    from mmdet.models import build_detector

    mm_cfg = load_mmdet_config(YOLO_320)
    mm_cfg.merge_from_dict(SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    randomize_yolo(reference, torch.randn(2, 3, HEIGHT, WIDTH,
                                          generator=torch.Generator().manual_seed(3)))
    cfg = Config.fromfile(REPO / "configs" / YOLO_320)
    cfg.merge_from_dict(SMALL)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def test_yolo_head_outputs_match_mmdetection(yolo_pair):
    reference, ours = yolo_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    assert len(actual[0]) == len(expected[0]) == 3
    for a, e in zip(actual[0], expected[0], strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("empty", [False, True], ids=["objects", "empty"])
def test_yolo_losses_match_mmdetection(yolo_pair, empty):
    # copies: training mode moves the BatchNorm statistics
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
    assert all((actual[k] == 0) == empty for k in LOSS_KEYS - {"loss_conf"})


def test_yolo_detections_match_mmdetection(yolo_pair):
    compare_detections(*yolo_pair)
