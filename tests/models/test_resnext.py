"""ResNeXt: torchvision's resnext50_32x4d by name, MMDetection's ResNeXt outputs, its options."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torchvision
from reference.mmdet_reference import import_mmdet
from test_resnet import _randomize_bn, _torchvision_features, offline_hub  # noqa: F401
from torch import nn

from detlab.checkpoint import openmmlab_weights_url
from detlab.config import ConfigError
from detlab.models import build_model
from detlab.models.backbones import ResNeXt
from detlab.models.init import is_pretrained


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_same_features_as_torchvision_resnext50_32x4d():
    torch.manual_seed(0)
    reference = torchvision.models.resnext50_32x4d()  # random init: nothing downloaded
    _randomize_bn(reference)
    ours = ResNeXt(depth=50, groups=32, base_width=4)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert set(state) == set(ours.state_dict())
    ours.load_state_dict(state, strict=True)
    assert ours.layer1[0].conv2.groups == 32 and ours.layer1[0].conv2.out_channels == 128
    reference.eval(), ours.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = _torchvision_features(reference, x), ours(x)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def _mmdet_resnext(**args) -> nn.Module:
    import_mmdet()
    from mmdet.models.backbones import ResNeXt as Reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Reference(**args)


THREE_STAGES = dict(num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1), out_indices=(0, 1, 2))


@pytest.mark.parametrize("args", [  # three stages keep it quick; the zoo checks the fourth
    dict(depth=50, groups=64, base_width=4, style="pytorch", frozen_stages=1, **THREE_STAGES),
    dict(depth=50, groups=32, base_width=4, style="caffe",
         **dict(THREE_STAGES, out_indices=(1, 2))),
    dict(depth=50, groups=1, base_width=4, **dict(THREE_STAGES, out_indices=(0, 2))),
    dict(depth=50, groups=32, base_width=4, dcn=dict(type="DCNv2", deform_groups=1,
                                                     fallback_on_stride=False),
         stage_with_dcn=(False, False, True), **THREE_STAGES),
], ids=["64x4d", "32x4d-caffe", "groups1", "32x4d-dcnv2"])
def test_same_state_dict_and_outputs_as_mmdetection(args):
    reference = _mmdet_resnext(**args)
    ours = ResNeXt(**args)
    assert _shapes(ours) == _shapes(reference)
    assert _trainable(ours) == _trainable(reference)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights everywhere (offsets of the DCNv2 small)
        for name, param in reference.named_parameters():
            scale = 0.01 if "conv_offset" in name else 0.1
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
    _randomize_bn(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval(), reference.eval()
    x = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_resnet_options_keep_working():
    model = ResNeXt(depth=50, groups=32, base_width=4, frozen_stages=2, norm_eval=True,
                    init_cfg=dict(type="Pretrained",
                                  checkpoint="open-mmlab://resnext50_32x4d"))
    assert is_pretrained(model.init_cfg)  # loads only in init_weights(), nothing at build
    for module in (model.conv1, model.bn1, model.layer1, model.layer2):
        assert all(not p.requires_grad for p in module.parameters())
    assert all(p.requires_grad for p in model.layer3.parameters())
    model.train()
    assert not model.layer2.training and model.layer3[0].conv2.training
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.all(model.layer1[0].bn3.weight == 0)  # zero_init_residual
    assert model.out_channels == [256, 512, 1024, 2048]

    with torch.device("meta"):
        x101 = build_model(dict(type="ResNeXt", depth=101, groups=64, base_width=4))
    assert x101.layer3[0].conv2.groups == 64 and x101.layer3[0].conv2.in_channels == 1024


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="ResNeXt depth"):
        ResNeXt(depth=18, groups=32)
    with pytest.raises(ConfigError, match="groups"):
        ResNeXt(depth=50, groups=0)


def test_open_mmlab_weights_load_in_init_weights(offline_hub):  # noqa: F811
    """``init_cfg`` with MMDetection's ``open-mmlab://resnext50_32x4d``: OpenMMLab's file (here
    random weights of a two-stage ResNeXt put in the hub cache under its name) loads by name,
    offline."""
    two_stages = dict(depth=50, groups=32, base_width=4, num_stages=2, strides=(1, 2),
                      dilations=(1, 1), out_indices=(0, 1))
    torch.manual_seed(0)
    source = ResNeXt(**two_stages)
    _randomize_bn(source)
    url = openmmlab_weights_url("open-mmlab://resnext50_32x4d")
    offline_hub.mkdir(parents=True)
    torch.save(source.state_dict(), offline_hub / os.path.basename(url))
    model = ResNeXt(**two_stages, init_cfg=dict(type="Pretrained",
                                                checkpoint="open-mmlab://resnext50_32x4d"))
    model.init_weights()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[name], msg=name)
