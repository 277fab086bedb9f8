"""ResNetV1d (and ResNet(deep_stem=True)) against MMDetection 2.28: the deep stem (three 3x3
convs) and average-pooled shortcuts; the same state_dict, trainable count and outputs with
MMDetection's weights, frozen stages that freeze the deep stem, GN norm names."""

from __future__ import annotations

import warnings

import pytest
import torch
from reference.mmdet_reference import import_mmdet
from test_resnet import _randomize_bn
from test_resnext import THREE_STAGES, _shapes, _trainable
from torch import nn

from detlab.registry import MODELS


def _mmdet_backbone(kind: str, **args) -> nn.Module:
    import_mmdet()
    from mmdet.models import backbones

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(backbones, kind)(**args)


@pytest.mark.parametrize(("kind", "args"), [
    ("ResNetV1d", dict(depth=50, frozen_stages=1, **THREE_STAGES)),
    ("ResNetV1d", dict(depth=18, style="caffe", **dict(THREE_STAGES, out_indices=(1, 2)))),
    ("ResNetV1d", dict(depth=50, norm_cfg=dict(type="GN", num_groups=8, requires_grad=True),
                       **THREE_STAGES)),
    ("ResNet", dict(depth=50, deep_stem=True, **THREE_STAGES)),
], ids=["v1d-50", "v1d-18-caffe", "v1d-50-gn", "deep-stem"])
def test_same_state_dict_and_outputs_as_mmdetection(kind, args):
    reference = _mmdet_backbone(kind, **args)
    ours = MODELS.build(dict(type=kind, **args))
    assert _shapes(ours) == _shapes(reference)
    assert _trainable(ours) == _trainable(reference)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    _randomize_bn(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval(), reference.eval()
    x = torch.randn(1, 3, 64, 48, generator=gen)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_frozen_stages_freeze_the_deep_stem_and_shortcuts_pool():
    model = MODELS.build(dict(type="ResNetV1d", depth=50, frozen_stages=1))
    assert not hasattr(model, "conv1") and isinstance(model.stem, nn.Sequential)
    assert all(not p.requires_grad for p in model.stem.parameters())
    assert all(not p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert isinstance(model.layer2[0].downsample[0], nn.AvgPool2d)
    assert model.layer2[0].downsample[1].stride == (1, 1)
