"""Plugin layers (NonLocal2d, ContextBlock, GeneralizedAttention), ConvWS and ResNet plugins
against mmcv 1.7 / MMDetection 2.28: same parameter names and shapes, same outputs and gradients
with copied weights, and a ResNet / ResNeXt with plugins or ConvWS has MMDetection's
state_dict."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models.plugins import ContextBlock, GeneralizedAttention, NonLocal2d
from detlab.registry import MODELS


def _randomize(module: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in sorted(module.state_dict().items()):
            if value.is_floating_point():
                noise = torch.randn(value.shape, generator=gen) * 0.3
                if "conv_offset" in name:  # small offsets: sampling stays away from jumps
                    noise = noise * 0.05
                value.copy_(noise.abs() + 0.5 if name.endswith("running_var") else noise)


def _same_state(ours: nn.Module, reference: nn.Module) -> None:
    theirs, mine = reference.state_dict(), ours.state_dict()
    assert {k: tuple(v.shape) for k, v in mine.items()} == \
        {k: tuple(v.shape) for k, v in theirs.items()}
    ours.load_state_dict(theirs, strict=True)
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == \
        sum(p.numel() for p in reference.parameters() if p.requires_grad)


def _compare(ours: nn.Module, reference: nn.Module, shape=(2, 16, 7, 9), atol=1e-5,
             gradients: bool = True) -> None:
    """Same state_dict; same outputs and input / parameter gradients with random weights."""
    _randomize(reference)
    _same_state(ours, reference)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out = reference(xa), ours(xb)
    torch.testing.assert_close(out, out_ref, atol=atol, rtol=1e-4)
    if not gradients:
        return
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out_ref * weight).sum().backward()
    (out * weight).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, atol=atol, rtol=1e-4)
    grads = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    for name, param in ours.named_parameters():
        if name in grads:
            torch.testing.assert_close(param.grad, grads[name], atol=atol, rtol=1e-4,
                                       msg=name)


@pytest.mark.parametrize("kwargs", [
    dict(), dict(mode="gaussian"), dict(mode="dot_product", use_scale=False),
    dict(mode="concatenation"), dict(sub_sample=True), dict(mode="gaussian", sub_sample=True),
    dict(reduction=1, use_scale=False, norm_cfg=dict(type="BN")),
])
def test_nonlocal2d_matches_mmcv(kwargs):
    import_mmdet()
    from mmcv.cnn import NonLocal2d as Reference

    torch.manual_seed(0)
    reference = Reference(16, **kwargs).eval()
    # mmcv's concatenation mode divides its ReLU output in place: it cannot backpropagate
    _compare(NonLocal2d(16, **kwargs).eval(), reference,
             gradients=kwargs.get("mode") != "concatenation")


@pytest.mark.parametrize("kwargs", [
    dict(ratio=1 / 4), dict(ratio=1 / 4, pooling_type="avg"),
    dict(ratio=1 / 2, fusion_types=("channel_add", "channel_mul")),
])
def test_context_block_matches_mmcv(kwargs):
    import_mmdet()
    from mmcv.cnn import ContextBlock as Reference

    _compare(ContextBlock(16, **kwargs), Reference(16, **kwargs))


@pytest.mark.parametrize("kwargs", [
    dict(attention_type="1111"), dict(attention_type="0010"), dict(attention_type="1000"),
    dict(attention_type="0001"), dict(attention_type="1010"), dict(attention_type="0101"),
    dict(attention_type="1111", q_stride=2, kv_stride=1),
    dict(attention_type="1011", kv_stride=3, position_magnitude=2),
])
def test_generalized_attention_matches_mmcv(kwargs):
    import_mmdet()
    from mmcv.cnn import GeneralizedAttention as Reference

    _compare(GeneralizedAttention(16, num_heads=4, **kwargs),
             Reference(16, num_heads=4, **kwargs), shape=(2, 16, 6, 7))


def test_generalized_attention_position_without_geometry_on_square_maps():
    """With the query-position term but not the geometry one ('0100', '1100' ...), mmcv's
    y-offset term reads the query grid transposed (it only runs on square query grids); detlab
    computes the term as the paper and the '1111' branch do, so the two agree where the
    transpose does not matter: a query grid symmetric under transposition."""
    import_mmdet()
    from mmcv.cnn import GeneralizedAttention as Reference

    ours = GeneralizedAttention(16, num_heads=4, attention_type="0100")
    reference = Reference(16, num_heads=4, attention_type="0100")
    _randomize(reference)
    _same_state(ours, reference)
    x = torch.randn(1, 16, 5, 5, generator=torch.Generator().manual_seed(1))
    x = x + x.transpose(2, 3)
    torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-4)
    ours(torch.randn(1, 16, 5, 7))  # non-square maps run


def test_generalized_attention_spatial_range_masks_far_keys():
    """spatial_range >= 0: mmcv's constraint map (a non-trainable parameter in the
    state_dict); far keys get no attention."""
    import_mmdet()
    from mmcv.cnn import GeneralizedAttention as Reference

    ours = GeneralizedAttention(256, spatial_range=2, num_heads=8, attention_type="0010")
    reference = Reference(256, spatial_range=2, num_heads=8, attention_type="0010")
    assert torch.equal(ours.local_constraint_map, reference.local_constraint_map)
    with pytest.raises(ConfigError, match="in_channels 256 or 512"):
        GeneralizedAttention(16, spatial_range=2)


def test_plugin_configuration_errors():
    with pytest.raises(ConfigError, match="mode"):
        NonLocal2d(8, mode="cosine")
    with pytest.raises(ConfigError, match="pooling_type"):
        ContextBlock(8, ratio=0.5, pooling_type="max")
    with pytest.raises(ConfigError, match="attention_type"):
        GeneralizedAttention(8, num_heads=2, attention_type="0000")
    assert isinstance(MODELS.build(dict(type="NonLocal2d", in_channels=8)), NonLocal2d)


def test_conv_ws_matches_mmcv():
    import_mmdet()
    from mmcv.cnn.bricks.conv_ws import ConvWS2d as Reference

    from detlab.models.ops.conv_ws import ConvWS2d
    from detlab.models.utils import build_conv_layer

    ours = build_conv_layer(dict(type="ConvWS"), 16, 8, 3, padding=1, groups=2)
    assert isinstance(ours, ConvWS2d)
    _compare(ours, Reference(16, 8, 3, padding=1, groups=2))


GCB = dict(cfg=dict(type="ContextBlock", ratio=1. / 4), stages=(False, True, True),
           position="after_conv3")
ATTENTION = dict(cfg=dict(type="GeneralizedAttention", spatial_range=-1, num_heads=8,
                          attention_type="1111", kv_stride=2),
                 stages=(False, True, True), position="after_conv2")
NONLOCAL = [dict(cfg=dict(type="NonLocal2d", postfix=i), position=position)
            for i, position in ((1, "after_conv1"), (2, "after_conv1"))]


@pytest.mark.parametrize("backbone", [
    dict(type="ResNet", depth=50, plugins=[GCB]),
    dict(type="ResNet", depth=50, plugins=[ATTENTION],
         dcn=dict(type="DCN", deform_groups=1, fallback_on_stride=False),
         stage_with_dcn=(False, True, True)),
    dict(type="ResNeXt", depth=50, groups=4, base_width=4, plugins=[GCB] + NONLOCAL),
    dict(type="ResNet", depth=50, conv_cfg=dict(type="ConvWS"),
         norm_cfg=dict(type="GN", num_groups=8, requires_grad=True)),
    dict(type="ResNeXt", depth=50, groups=4, base_width=4, conv_cfg=dict(type="ConvWS"),
         norm_cfg=dict(type="GN", num_groups=8, requires_grad=True)),
])
def test_resnet_with_plugins_or_conv_ws_is_mmdetections(backbone):
    """Three stages of a ResNet-50 / ResNeXt-50: MMDetection's state_dict, trainable parameter
    count and outputs (train mode: batch statistics) with its weights loaded strictly."""
    mmdet = import_mmdet()
    from mmdet.models import build_backbone

    cfg = dict(backbone, num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1),
               out_indices=(0, 1, 2), stage_with_dcn=backbone.get("stage_with_dcn",
                                                                  (False,) * 3))
    del mmdet
    torch.manual_seed(0)
    reference = build_backbone(cfg)
    ours = MODELS.build(cfg)
    _randomize(reference)
    _same_state(ours, reference)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    # random weights make the attention's softmax sharp: it magnifies float rounding (the
    # outputs are ~5 in size; the plain blocks agree to 1e-5)
    for out, expected in zip(ours(x), reference(x), strict=True):
        torch.testing.assert_close(out, expected, atol=3e-3, rtol=1e-3)


def test_resnet_plugin_errors():
    with pytest.raises(ConfigError, match="position"):
        MODELS.build(dict(type="ResNet", depth=50, plugins=[dict(GCB, position="after_conv4")]))
    with pytest.raises(ConfigError, match="stages"):
        MODELS.build(dict(type="ResNet", depth=50, plugins=[dict(GCB, stages=(True,))]))
    with pytest.raises(ConfigError, match="Bottleneck"):
        MODELS.build(dict(type="ResNet", depth=18, plugins=[GCB], num_stages=3,
                          strides=(1, 2, 2), dilations=(1, 1, 1), out_indices=(2,)))
    with pytest.raises(ConfigError, match="postfix"):
        MODELS.build(dict(type="ResNet", depth=50, plugins=[NONLOCAL[0], NONLOCAL[0]]))


REPO = Path(__file__).resolve().parents[2]


SHIPPED = ["gcnet/mask_rcnn_r50_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco.py",
           "gn+ws/faster_rcnn_r50_fpn_gn_ws-all_1x_coco.py"]


@pytest.mark.parametrize("config", SHIPPED)
def test_detlab_config_is_mmdetections(config):
    """The shipped GCNet (SyncBN builds plain BatchNorm in one process) and GN+WS configs."""
    mine = Config.fromfile(REPO / "configs" / config)
    theirs = Config.fromfile(mmdet_config_dir() / config)
    assert mine.to_dict() == theirs.to_dict()



# ---- in a detector: MMDetection's small Faster R-CNN with GCNet blocks / GN+WS everywhere ----

DETECTOR_VARIANTS = {
    # GCNet's r4 context blocks after conv3 of stages 2-4 (a ResNet-50: plugins need
    # Bottlenecks)
    "gcnet": ("faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py", {
        "model.backbone.depth": 50, "model.backbone.plugins": [GCB | dict(
            stages=(False, True, True, True))],
        "model.neck.in_channels": [256, 512, 1024, 2048]}),
    # weight-standardized convs and GroupNorm in the backbone, the FPN and the box head
    "gn+ws": ("gn+ws/faster_rcnn_r50_fpn_gn_ws-all_1x_coco.py", {
        "model.backbone.depth": 18, "model.neck.in_channels": [64, 128, 256, 512],
        "model.neck.norm_cfg.num_groups": 8,
        "model.roi_head.bbox_head.norm_cfg.num_groups": 8,
        "model.roi_head.bbox_head.conv_out_channels": 16}),
}


@pytest.fixture(scope="module", params=list(DETECTOR_VARIANTS))
def detector_pair(request):
    """(MMDetection's small detector, detlab's with its weights loaded strictly)."""
    import warnings

    import_mmdet()
    from mmdet.models import build_detector
    from reference.mmdet_reference import load_mmdet_config
    from test_faster_rcnn import SMALL, _randomize_detector

    from detlab.models import build_model

    config, options = DETECTOR_VARIANTS[request.param]
    options = {k: v for k, v in SMALL.items() if k != "model.neck.in_channels"} | options
    mm_cfg = load_mmdet_config(config)
    mm_cfg.merge_from_dict(options)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    _randomize_detector(reference)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():  # the context blocks start as the identity (last conv zero)
        for name, param in reference.backbone.named_parameters():
            if "context_block" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    cfg = Config.fromfile(mmdet_config_dir() / config)
    cfg.merge_from_dict(options)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def test_detector_losses_and_detections_match_mmdetection(detector_pair):
    """RPN and RoI losses (both sides seeded alike before sampling) and detections."""
    import copy

    import numpy as np
    from test_faster_rcnn import NUM_CLASSES, _images, _metas, _targets

    from detlab.structures import Batch

    reference, ours = detector_pair
    images, metas, targets = _images(8), _metas(), _targets()
    torch.manual_seed(21)
    expected = reference.train().forward_train(
        images, copy.deepcopy(metas), [t["boxes"] for t in targets],
        [t["labels"] for t in targets])
    torch.manual_seed(21)
    actual = ours.train().loss(Batch(images, targets, metas))
    reference.eval(), ours.eval()
    for key, value in expected.items():
        value = sum(value) if isinstance(value, (list, tuple)) else value
        torch.testing.assert_close(actual[key].reshape(-1), value.reshape(-1), rtol=1e-4,
                                   atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
    with torch.no_grad():
        expected = reference.simple_test(images, copy.deepcopy(metas), rescale=True)
        actual = ours.predict(Batch(images, _targets(), metas), rescale=True)
    assert all(sum(len(c) for c in image) > 20 for image in expected)
    for ours_image, reference_image in zip(actual, expected, strict=True):
        for a, e in zip(ours_image.to_mmdet(NUM_CLASSES), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)


def test_drop_block_matches_mmdetection():
    """Same seed, same dropped blocks and rescaling, through the warm-up; identity in eval."""
    import_mmdet()
    from mmdet.models.plugins import DropBlock as Reference

    from detlab.models.plugins import DropBlock, plugin_abbreviation

    ours, reference = DropBlock(0.3, 3, warmup_iters=2), Reference(0.3, 3, warmup_iters=2)
    x = torch.randn(2, 4, 9, 11)
    for _ in range(3):
        torch.manual_seed(5)
        expected = reference(x)
        torch.manual_seed(5)
        torch.testing.assert_close(ours(x), expected)
    assert (expected == 0).any()
    assert torch.equal(ours.eval()(x), x)
    assert plugin_abbreviation(DropBlock) == "drop_block"
    with pytest.raises(ConfigError, match="odd block_size"):
        DropBlock(0.1, 4)
