"""Deformable convolutions (DCN, DCNv2): mmcv's formula and parameter names, computed with
``torchvision.ops.deform_conv2d``; the ResNet ``dcn=`` stages and FCOS-like heads'
``dcn_on_last_conv`` as MMDetection 2.28 builds them."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from reference.mmdet_reference import import_mmdet
from torch import nn

from detlab.config import ConfigError
from detlab.engine.optim import is_deformable_conv
from detlab.models.backbones.resnet import ResNet
from detlab.models.heads.fcos_head import FCOSHead
from detlab.models.ops import (
    DeformConv2d,
    DeformConv2dPack,
    ModulatedDeformConv2d,
    ModulatedDeformConv2dPack,
)
from detlab.models.utils import ConvModule, build_conv_layer

LAYOUTS = [dict(stride=1, padding=1, dilation=1, groups=1, deform_groups=1),
           dict(stride=2, padding=1, dilation=1, groups=1, deform_groups=2),
           dict(stride=1, padding=2, dilation=2, groups=2, deform_groups=1)]
LAYOUT_IDS = ["plain", "stride2-deform_groups2", "dilation2-groups2"]


def _randomize(module: nn.Module, seed: int = 0, scale: float = 0.5) -> None:
    """Random weights everywhere, ``conv_offset`` included (offsets of a few pixels)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * scale)


def _mmcv_ops():
    import_mmdet()
    from mmcv.ops import DeformConv2dPack as RefDCN
    from mmcv.ops import ModulatedDeformConv2dPack as RefDCNv2

    return RefDCN, RefDCNv2


# ---- the formula -------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_dcn_with_zero_offsets_is_a_plain_conv(layout):
    torch.manual_seed(0)
    layer = DeformConv2dPack(4, 6, 3, **layout)
    assert not layer.conv_offset.weight.any() and not layer.conv_offset.bias.any()
    x = torch.randn(2, 4, 9, 11)
    expected = F.conv2d(x, layer.weight, None, layout["stride"], layout["padding"],
                        layout["dilation"], layout["groups"])
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_dcnv2_with_zero_offsets_is_half_a_plain_conv_plus_bias(layout):
    """A zero ``conv_offset`` gives zero offsets and mask sigmoid(0) = 0.5 on every sample; the
    bias is added after the mask, as in mmcv."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv2dPack(4, 6, 3, **layout)
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)
    x = torch.randn(2, 4, 9, 11)
    plain = F.conv2d(x, layer.weight, None, layout["stride"], layout["padding"],
                     layout["dilation"], layout["groups"])
    torch.testing.assert_close(layer(x), 0.5 * plain + layer.bias.view(1, -1, 1, 1),
                               rtol=1e-5, atol=1e-5)


def test_integer_offsets_shift_the_samples():
    """An offset of (dy, dx) = (0, 1) at every kernel position reads one pixel to the right
    (out of the image is zero)."""
    torch.manual_seed(0)
    layer = DeformConv2d(3, 5, 3, padding=1)
    x = torch.randn(1, 3, 6, 7)
    offset = torch.zeros(1, 18, 6, 7)
    offset[:, 1::2] = 1.0
    # output column j, kernel column k samples input column j - 1 + k + 1 = j + k
    shifted = F.pad(x, (0, 2, 1, 1))
    torch.testing.assert_close(layer(x, offset), F.conv2d(shifted, layer.weight),
                               rtol=1e-5, atol=1e-5)


# ---- against mmcv ------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("version", ["DCN", "DCNv2"])
def test_same_outputs_as_mmcv_for_the_same_weights(version, layout):
    ref_dcn, ref_dcnv2 = _mmcv_ops()
    ours = build_conv_layer(dict(type=version, deform_groups=layout["deform_groups"]), 4, 6, 3,
                            stride=layout["stride"], padding=layout["padding"],
                            dilation=layout["dilation"], groups=layout["groups"],
                            bias=version == "DCNv2")
    reference = (ref_dcn if version == "DCN" else ref_dcnv2)(
        4, 6, 3, bias=version == "DCNv2", **layout)
    assert type(ours).__name__ == type(reference).__name__
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    _randomize(reference, scale=0.3)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 4, 9, 11)
    offsets = ours.conv_offset(x)
    assert offsets.abs().max() > 1.0  # fractional offsets of more than a pixel are exercised
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)


# ---- gradients, init, building -----------------------------------------------------------


@pytest.mark.parametrize("pack", [DeformConv2dPack, ModulatedDeformConv2dPack])
def test_gradients_reach_the_offset_conv(pack):
    torch.manual_seed(0)
    layer = pack(4, 6, 3, padding=1)
    _randomize(layer.conv_offset, scale=0.1)
    layer(torch.randn(2, 4, 8, 8)).square().sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_offset_convs_start_at_zero_even_from_zero_offsets():
    """From a zero ``conv_offset`` the offset conv still gets a gradient (through the bilinear
    sampling), so training moves it."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv2dPack(4, 6, 3, padding=1)
    layer(torch.randn(2, 4, 8, 8)).square().sum().backward()
    assert layer.conv_offset.weight.grad.abs().sum() > 0


def test_build_conv_layer_and_conv_module():
    dcn = build_conv_layer(dict(type="DCN", deform_groups=2), 8, 8, 3, padding=1, bias=False)
    assert isinstance(dcn, DeformConv2dPack) and dcn.conv_offset.out_channels == 2 * 2 * 9
    assert list(dict(dcn.named_parameters())) == ["weight", "conv_offset.weight",
                                                  "conv_offset.bias"]
    dcnv2 = build_conv_layer(dict(type="DCNv2", deform_groups=1), 8, 8, 3, padding=1)
    assert isinstance(dcnv2, ModulatedDeformConv2dPack) and dcnv2.conv_offset.out_channels == 27
    assert isinstance(build_conv_layer(None, 8, 8, 3), nn.Conv2d)
    with pytest.raises(ConfigError, match="DCNv2"):
        build_conv_layer(dict(type="DCNv3"), 8, 8, 3)
    with pytest.raises(ConfigError, match="no bias"):
        build_conv_layer(dict(type="DCN"), 8, 8, 3, bias=True)
    with pytest.raises(ConfigError, match="deform_groups"):
        build_conv_layer(dict(type="DCN", deform_groups=3), 8, 8, 3)
    # mmcv's deprecated spelling, which older zoo configs use
    with pytest.warns(DeprecationWarning, match="deform_groups"):
        old = build_conv_layer(dict(type="DCNv2", deformable_groups=2), 8, 8, 3)
    assert old.deform_groups == 2 and old.conv_offset.out_channels == 3 * 2 * 9
    with pytest.raises(ConfigError, match="not both"):
        build_conv_layer(dict(type="DCN", deformable_groups=2, deform_groups=2), 8, 8, 3)

    # ConvModule: 'auto' bias follows the norm; DCNv2 keeps its own init (mmcv's uniform
    # weight, zero bias), the offset conv stays zero
    module = ConvModule(8, 16, 3, padding=1, conv_cfg=dict(type="DCNv2"))
    assert module.conv.bias is not None and not module.conv.bias.any()
    assert module.conv.weight.abs().max() <= 1 / (8 * 9) ** 0.5
    assert not module.conv.conv_offset.weight.any()
    normed = ConvModule(8, 16, 3, padding=1, conv_cfg=dict(type="DCN"),
                        norm_cfg=dict(type="GN", num_groups=4))
    assert list(normed.state_dict()) == ["conv.weight", "conv.conv_offset.weight",
                                         "conv.conv_offset.bias", "gn.weight", "gn.bias"]
    assert normed(torch.randn(1, 8, 5, 5)).shape == (1, 16, 5, 5)


def test_optimizer_recognizes_the_deformable_convs():
    """``paramwise_cfg.dcn_offset_lr_mult`` finds deformable convs by mmcv's class names."""
    for layer in (DeformConv2d(4, 4, 3), DeformConv2dPack(4, 4, 3),
                  ModulatedDeformConv2d(4, 4, 3), ModulatedDeformConv2dPack(4, 4, 3)):
        assert is_deformable_conv(layer)
    assert not is_deformable_conv(nn.Conv2d(4, 4, 3))


# ---- ResNet dcn= and dcn_on_last_conv against MMDetection --------------------------------


@pytest.mark.parametrize("dcn_type", ["DCN", "DCNv2"])
@pytest.mark.parametrize("style", ["pytorch", "caffe"])
def test_resnet_with_dcn_is_mmdetections(dcn_type, style):
    import_mmdet()
    from mmdet.models.backbones import ResNet as Reference

    args = dict(depth=50, style=style, frozen_stages=1, norm_eval=True,
                dcn=dict(type=dcn_type, deform_groups=1, fallback_on_stride=False),
                stage_with_dcn=(False, True, True, True))
    ours = ResNet(**args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(**args)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(ours) == count(reference)
    assert isinstance(ours.layer1[0].conv2, nn.Conv2d)
    assert type(ours.layer4[2].conv2).__name__ == type(reference.layer4[2].conv2).__name__
    assert ours.layer2[0].conv2.stride == reference.layer2[0].conv2.stride
    assert not ours.layer3[1].conv2.conv_offset.weight.any()
    _randomize(reference, scale=0.05)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval(), reference.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(ours(x), reference(x), strict=False):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_resnet_dcn_options():
    fallback = ResNet(50, dcn=dict(type="DCN", fallback_on_stride=True),
                      stage_with_dcn=(False, True, True, True))
    assert not any(is_deformable_conv(m) for m in fallback.modules())
    plain = ResNet(50)
    assert not any(is_deformable_conv(m) for m in plain.modules())
    with pytest.raises(ConfigError, match="stage_with_dcn"):
        ResNet(50, dcn=dict(type="DCN"), stage_with_dcn=(True, True))
    with pytest.raises(ConfigError, match="Bottleneck"):
        ResNet(18, dcn=dict(type="DCN"), stage_with_dcn=(False, True, True, True))


def test_fcos_head_dcn_on_last_conv_is_mmdetections():
    import_mmdet()
    from mmdet.models.dense_heads import FCOSHead as Reference

    args = dict(num_classes=3, in_channels=8, feat_channels=8, stacked_convs=2,
                strides=(8, 16), regress_ranges=((-1, 64), (64, 1e8)),
                norm_cfg=dict(type="GN", num_groups=4), dcn_on_last_conv=True)
    ours = FCOSHead(**args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(**args)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    for tower in (ours.cls_convs, ours.reg_convs):
        assert isinstance(tower[-1].conv, ModulatedDeformConv2dPack)
        assert tower[-1].conv.bias is None  # 'auto' with a norm layer
        assert isinstance(tower[0].conv, nn.Conv2d)
    _randomize(reference, scale=0.2)
    ours.load_state_dict(reference.state_dict(), strict=True)
    feats = [torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)]
    with torch.no_grad():
        got = ours.forward_single(feats[0], 0)
        expected = reference.forward_single(feats[0], reference.scales[0], 8)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-4)
